"""Probing the Linux host: namespaces, cgroups, seccomp, Landlock, pidfd, clone3."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

from hermetic._native import lib
from hermetic.platforms.capabilities import Capabilities
from hermetic.platforms.linux import landlock as linux_landlock

# Namespace flags (linux/sched.h), read from the compiled core.
CLONE_NEWNS: int = lib.HM_CLONE_NEWNS
CLONE_NEWCGROUP: int = lib.HM_CLONE_NEWCGROUP
CLONE_NEWUTS: int = lib.HM_CLONE_NEWUTS
CLONE_NEWIPC: int = lib.HM_CLONE_NEWIPC
CLONE_NEWUSER: int = lib.HM_CLONE_NEWUSER
CLONE_NEWPID: int = lib.HM_CLONE_NEWPID
CLONE_NEWNET: int = lib.HM_CLONE_NEWNET

NAMESPACES = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "cgroup": CLONE_NEWCGROUP,
}
ALL_NAMESPACES = sum(NAMESPACES.values())


#: clone_error()'s answers, by (process, flag set, effective capabilities).
_CLONED: dict[tuple[int, int, int], int] = {}

#: Capability numbers (linux/capability.h), for messages.
CAP_NAMES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap "
    "linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner "
    "sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice "
    "sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap "
    "mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf "
    "checkpoint_restore"
).split()
CAP_SETFCAP: int = lib.HM_CAP_SETFCAP
#: What root's own path (no user namespace) needs, each found by running
#: without it: sys_admin (namespaces, mounts), sys_chroot (entering the
#: prepared mount namespace), mknod (/dev's nodes), net_admin (loopback
#: up), setpcap (dropping the bounding set in the action).
ROOT_PATH_CAPS = sum(
    1 << CAP_NAMES.index(name)
    for name in ("sys_admin", "sys_chroot", "mknod", "net_admin", "setpcap")
)


def effective_capabilities() -> int:
    """This thread's effective capabilities as a bit mask, read now: a
    process may drop some at any time."""
    # Read raw (one read of the ~1.5 KiB the kernel formats): this runs at
    # every create(), and a text-mode open costs several times more.
    status = b""
    for path in ("/proc/thread-self/status", "/proc/self/status"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            status = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        break
    at = status.find(b"\nCapEff:")
    if at < 0:
        return 0
    end = status.find(b"\n", at + 8)
    return int(status[at + 8 : end if end >= 0 else None].strip() or b"0", 16)


def capability_names(mask: int) -> str:
    """ "sys_admin, mknod" for the capabilities set in ``mask``."""
    return ", ".join(
        CAP_NAMES[i] if i < len(CAP_NAMES) else f"capability {i}"
        for i in range(mask.bit_length())
        if mask >> i & 1
    )


def clone_error(flags: int, capabilities: int) -> int:
    """0 when this process can create the namespaces ``flags`` names (one
    clone with exactly these flags, whose child returns at once), else the
    errno.  Asked once per process, flag set and ``capabilities`` (the
    effective set, for a root that drops some while it runs): a plan is
    checked against the flags it will use, not against another path's
    (root's path creates no user namespace and needs CAP_SYS_ADMIN; the
    user namespace path needs none)."""
    key = (os.getpid(), flags, capabilities)
    found = _CLONED.get(key)
    if found is None:
        from hermetic._native import lib

        found = _CLONED[key] = -lib.hm_probe_clone(flags)
    return found


def flag_names(flags: int) -> str:
    """The namespaces ``flags`` names, as "user+mount+pid"."""
    return "+".join(name for name, flag in NAMESPACES.items() if flags & flag) or "no"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _cgroups() -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    v1: set[str] = set()
    v2_root = None
    for line in (_read("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup":
            for opt in parts[3].split(","):
                if opt in ("memory", "pids", "cpu", "cpuacct", "blkio", "cpuset", "freezer", "io"):
                    v1.add(opt)
        elif parts[2] == "cgroup2" and v2_root is None:
            v2_root = parts[1]
    controllers: tuple[str, ...] = ()
    if v2_root is not None:
        text = _read(os.path.join(v2_root, "cgroup.controllers")) or ""
        controllers = tuple(sorted(text.split()))
    return tuple(sorted(v1)), v2_root is not None, controllers


def probe() -> Capabilities:
    from hermetic._native import lib

    notes: dict[str, str] = {}
    # Keyed as Prepared asks (the effective capabilities for root, else 0),
    # so that its check of the same flags finds this answer.
    r = -clone_error(ALL_NAMESPACES, effective_capabilities() if os.geteuid() == 0 else 0)
    userns = r == 0
    namespaces: list[str] = []
    if userns:
        namespaces = list(NAMESPACES)
    else:
        notes["user_namespaces"] = (
            f"creating user+mount+pid+net+ipc+uts namespaces failed: {os.strerror(-r)}"
            " (user namespaces disabled, or forbidden by a container's seccomp profile)"
        )
        for name, flag in NAMESPACES.items():
            extra = CLONE_NEWUSER if name != "user" else 0
            if lib.hm_probe_clone(flag | extra) == 0:
                namespaces.append(name)
    from hermetic.platforms.linux.limits import _global_root

    if userns and _global_root():
        eff = effective_capabilities()
        if eff & ROOT_PATH_CAPS != ROOT_PATH_CAPS:
            missing = capability_names(ROOT_PATH_CAPS & ~eff)
            notes["privileged_namespaces"] = (
                f"root without {missing}: actions run in a user namespace, as for any user"
                + ("" if eff >> CAP_SETFCAP & 1 else ", which needs CAP_SETFCAP (missing too)")
            )
    mount_setattr = lib.hm_probe_mount_setattr() == 0
    if not mount_setattr:
        notes["mount_setattr"] = "mount_setattr(2) is missing (Linux >= 5.12 needed)"
    v1, v2, v2c = _cgroups()
    status = _read("/proc/self/status") or ""
    seccomp = "Seccomp:" in status
    actions = _read("/proc/sys/kernel/seccomp/actions_avail") or ""
    abi = lib.hm_probe_landlock_abi()
    if abi < 0:
        notes["landlock"] = f"Landlock unavailable: {os.strerror(-abi)}"
    try:
        fd = os.pidfd_open(os.getpid())
        os.close(fd)
        pidfd = True
    except (OSError, AttributeError):
        pidfd = False
        notes["pidfd"] = "pidfd_open(2) is missing (Linux >= 5.3 needed)"
    from hermetic.platforms.linux.limits import cgroup_mechanism

    version, no_slots = cgroup_mechanism()
    if no_slots is not None:
        notes["limits"] = (
            f"memory, summed CPU time, CPU weight (and, for root, process) limits "
            f"are not enforced: {no_slots}; file size, open files and (for a normal "
            f"user) processes are enforced by rlimits"
        )
    return Capabilities(
        platform=sys.platform,
        backend="linux-namespaces",
        user_namespaces=userns,
        namespaces=tuple(namespaces),
        mount_setattr=mount_setattr,
        cgroup_v1_controllers=v1,
        cgroup_v2=v2,
        cgroup_v2_controllers=v2c,
        seccomp=seccomp,
        seccomp_user_notif="user_notif" in actions.split(),
        landlock_abi=abi if abi > 0 else None,
        pidfd=pidfd,
        clone3=lib.hm_probe_clone3() == 0,
        limits=f"cgroup-v{version}" if version else "rlimits",
        isolation="namespaces"
        if userns
        else "landlock"
        if abi >= 6 and seccomp  # linux_landlock.MIN_ABI_ALONE
        else "none",
        notes=tuple(sorted(notes.items())),
    )


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """What this host supports, probed once per process."""
    caps = probe()
    if caps.landlock_abi == 1:
        # Said where a user looks: the layer the ABI would give is left out.
        caps = dataclasses.replace(
            caps, notes=(*caps.notes, ("landlock_layer", linux_landlock.ABI1_NOTE))
        )
    return caps
