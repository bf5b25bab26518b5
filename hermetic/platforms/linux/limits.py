"""Which mechanism enforces each ResourceLimits field on this Linux host.

- rlimits, set in the action's process before exec: ``max_file_size``
  (RLIMIT_FSIZE), ``max_open_files`` (RLIMIT_NOFILE), core dumps off, and
  ``max_processes`` as RLIMIT_NPROC, which the kernel counts per user
  namespace and uid, so in the sandbox's fresh user namespace it bounds the
  whole sandbox (the kernel exempts the global root user, though).
- cgroup v1 slots (see hermetic/platforms/linux/workers.py):
  ``max_memory_bytes`` (memory.limit_in_bytes; an action that reaches it
  is killed when the group reports under_oom), ``max_processes`` for root
  (pids.max), ``max_cpu_time_ms`` summed over the sandbox (cpuacct.usage,
  checked at each periodic check), ``cpu_shares`` (cpu.shares).
- the caller's wait loop, at each periodic check (20 to 100 ms apart:
  platforms/linux/watch.py): ``max_disk_io`` (storage bytes read
  and written, summed through /proc: hermetic/monitoring/proctree.py) and
  ``max_output_bytes`` (the size of the captured stdout and stderr).
- the network namespace: ``max_network_io`` needs nothing while the
  network is hermetic (nothing leaves the sandbox); through the egress
  proxy, the proxy counts the bytes it relays; on the host network nothing
  counts them.

A limit the caller set that needs a cgroup where none can be used fails
the spec closed (UnsupportedError naming each limit), unless
``best_effort`` is set: then memory is sampled (summed resident size,
killed past the limit), CPU time is per process (RLIMIT_CPU), CPU weight
is not applied, and each is listed in the result's ``unenforced_limits``.
A limit still holding the ``ResourceLimits.hermetic()`` preset's value
(``ResourceLimits.defaulted``) is treated as with ``best_effort``: the
default spec runs for a normal user without cgroup delegation, with what
it could not enforce listed.  A default above this process's own hard
rlimit is lowered to it (only tighter); a value the caller set above it
fails closed.  Both rules are every backend's: ``weakened_limits`` and
``fit_rlimits`` in hermetic/platforms/base.py.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from hermetic.core.policies import ResourceLimits
from hermetic.monitoring.cgroup_v2 import PARENT as V2
from hermetic.platforms.base import fit_rlimits, weakened_limits
from hermetic.platforms.linux.workers import POOL as WORKERS

#: Why a refused limit is weakened, in a few words (UnsupportedError.cause):
#: the details (which hierarchy, which group) are in the reason, and
#: ``hermetic doctor`` shows them.
NO_CGROUP = "no usable cgroup"
HOST_NETWORK = "not counted on the host network"


@dataclass(frozen=True)
class LimitPlan:
    rlimits: tuple[tuple[int, int, int], ...]
    cgroup: bool  # run in a cgroup v1 slot
    cpu_ns: int  # summed CPU limit checked on the slot (0: none)
    sampled_memory: int  # memory limit checked by sampling (0: none)
    disk_io: int  # bytes, checked by sampling (0: none)
    output_bytes: int  # stdout + stderr bytes (0: none)
    unenforced: tuple[str, ...]

    @property
    def watched(self) -> bool:
        """Whether the wait needs a periodic check."""
        return bool(self.cpu_ns or self.sampled_memory or self.disk_io or self.output_bytes)


def _global_root() -> bool:
    """True for the host's root: uid 0 that is uid 0 of the initial user
    namespace too (the one RLIMIT_NPROC exempts).  Root of a nested user
    namespace maps to another uid and is counted like any user."""
    if os.geteuid() != 0:
        return False
    # Kept per user namespace (its device and inode): a uid_map is written
    # once, and a process that unshares or joins another one looks again.
    try:
        st = os.stat("/proc/self/ns/user")
        key: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        key = None
    if key is not None and key in _ROOT_OF:
        return _ROOT_OF[key]
    answer = True
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= 0 < inside + count:
                    answer = outside - inside == 0
                    break
    except (OSError, ValueError):
        pass
    if key is not None:
        _ROOT_OF[key] = answer
    return answer


#: _global_root()'s answer per user namespace (/proc/self/ns/user's device, inode).
_ROOT_OF: dict[tuple[int, int], bool] = {}


def plan_limits(
    r: ResourceLimits, cgroup_unavailable: str | None, *, network_counted: bool = True
) -> LimitPlan:
    """``cgroup_unavailable`` is None when cgroup slots work here, else why not."""
    import resource  # POSIX only: this module is imported on every OS

    root = _global_root()
    values = [(resource.RLIMIT_CORE, 0, 0)]
    if r.max_open_files:
        values.append((resource.RLIMIT_NOFILE, r.max_open_files, r.max_open_files))
    if r.max_file_size:
        values.append((resource.RLIMIT_FSIZE, r.max_file_size, r.max_file_size))
    needs_cgroup: list[str] = []
    if r.max_processes:
        values.append((resource.RLIMIT_NPROC, r.max_processes + 1, r.max_processes + 1))
        if root:
            needs_cgroup.append("max_processes")
    if r.max_cpu_time_ms:
        # Per process, as a backstop; the cgroup check sums the sandbox.
        secs = max(1, math.ceil(r.max_cpu_time_ms / 1000))
        values.append((resource.RLIMIT_CPU, secs, secs + 1))
        needs_cgroup.append("max_cpu_time_ms")
    if r.max_memory_bytes:
        needs_cgroup.append("max_memory_bytes")
    if r.cpu_shares != 1024:
        needs_cgroup.append("cpu_shares")
    use_cgroup = bool(needs_cgroup) and cgroup_unavailable is None
    #: The limits this host can only weaken (platforms/base.py's rule
    #: decides which of them fail closed).
    weak: list[tuple[str, str]] = []
    causes: dict[str, str] = {}
    if needs_cgroup and not use_cgroup:
        how = {
            "max_processes": "RLIMIT_NPROC, from which the kernel exempts root",
            "max_cpu_time_ms": "per process (RLIMIT_CPU), not summed",
            "max_memory_bytes": "sampled 20-100 ms apart, not a hard limit",
            "cpu_shares": "not applied",
        }
        weak += [(name, f"{how[name]} ({cgroup_unavailable})") for name in needs_cgroup]
        causes.update(dict.fromkeys(needs_cgroup, NO_CGROUP))
    if r.max_network_io and not network_counted:
        weak.append(("max_network_io", "not counted on the host network"))
        causes["max_network_io"] = HOST_NETWORK
    if not root:
        # Without CAP_SYS_RESOURCE on the host the action cannot raise a
        # hard limit above this process's: defaults are lowered to it.
        fields = {
            resource.RLIMIT_NOFILE: "max_open_files",
            resource.RLIMIT_FSIZE: "max_file_size",
            resource.RLIMIT_NPROC: "max_processes",
            resource.RLIMIT_CPU: "max_cpu_time_ms",
        }
        values = fit_rlimits(r, values, fields)
    # Only limits the caller chose fail closed; the preset's defaults
    # (ResourceLimits.defaulted) run weakened and are listed instead.
    unenforced = weakened_limits(r, weak, causes)
    sampled = r.max_memory_bytes if (r.max_memory_bytes and not use_cgroup) else 0
    return LimitPlan(
        rlimits=tuple(values),
        cgroup=use_cgroup,
        cpu_ns=r.max_cpu_time_ms * 1_000_000 if use_cgroup else 0,
        sampled_memory=sampled,
        disk_io=r.max_disk_io,
        output_bytes=r.max_output_bytes,
        unenforced=unenforced,
    )


#: How long cgroup_mechanism()'s answer is kept for the same membership.
MECHANISM_TTL = 1.0
_mechanism: tuple[float, int, bytes, tuple[int | None, str | None]] | None = None


def cgroup_mechanism() -> tuple[int | None, str | None]:
    """(1 or 2, None) for the cgroup version limits use here, v2 first; else (None, why).

    Looking costs two parses of the mount table (about 0.4 ms), once per
    executor created: the answer is kept for MECHANISM_TTL seconds for this
    process and its membership (/proc/self/cgroup, read each time), so
    that a build creating an executor per action does not pay it each
    time.  A hierarchy unmounted or a delegation withdrawn within that
    second makes the action's group fail to set up, with the reason: it
    never runs with less.
    """
    global _mechanism
    try:
        fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        try:
            membership = os.read(fd, 65536)
        finally:
            os.close(fd)
    except OSError:
        membership = b""
    now = time.monotonic()
    kept = _mechanism
    if (
        kept is not None
        and now - kept[0] < MECHANISM_TTL
        and kept[1] == os.getpid()
        and kept[2] == membership
    ):
        return kept[3]
    no_v2 = V2.available()
    if no_v2 is None:
        answer: tuple[int | None, str | None] = (2, None)
    else:
        no_v1 = WORKERS.available()
        answer = (1, None) if no_v1 is None else (None, f"{no_v2}; {no_v1}")
    _mechanism = (now, os.getpid(), membership, answer)
    return answer
