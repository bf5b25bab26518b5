"""The Linux backend: namespaces, a tmpfs root, pivot_root, rlimits.

``prepare(spec)`` turns a validated spec into everything the C core needs
that does not depend on the command (the op list, id maps, environment,
rlimits), marshalled once into C memory.  ``execute(prepared, argv, ...)``
adds the command, clones the sandbox's pid 1 from this process
(csrc/linux/spawn.c), waits for it and collects the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hermetic.core.errors import SandboxError, SpecError, UnsupportedError
from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.paths import is_within
from hermetic.core.spec import SandboxSpec, check_argv, process_limit
from hermetic.core.usage import ResourceUsage
from hermetic.monitoring.cgroup_v1 import SlotUsage, V1Slot
from hermetic.monitoring.cgroup_v2 import PARENT as V2
from hermetic.monitoring.cgroup_v2 import V2Group
from hermetic.platforms import linux_landlock, linux_plan, linux_template
from hermetic.platforms.capabilities import Capabilities
from hermetic.platforms.linux_limits import _global_root, plan_limits
from hermetic.platforms.linux_netns import POOL as NETNS
from hermetic.platforms.linux_probe import (
    ALL_NAMESPACES,
    CAP_SETFCAP,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    ROOT_PATH_CAPS,
    capability_names,
    clone_error,
    effective_capabilities,
    flag_names,
    probe,
)
from hermetic.platforms.linux_reap import Rusage as _Rusage
from hermetic.platforms.linux_reap import reap as _reap
from hermetic.platforms.linux_standby import KEEPER, Standby, StandbySlot, Unavailable
from hermetic.platforms.linux_watch import Watch
from hermetic.platforms.linux_workers import POOL as WORKERS
from hermetic.platforms.linux_workers import Worker
from hermetic.security.outputs import scan as scan_outputs
from hermetic.security.syscalls import SyscallAudit
from hermetic.security.timeout import DEFAULT_KILL_GRACE, Serve, wait_or_kill, wait_readable

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "linux-namespaces"
HOSTNAME = "localhost"
#: The signal that asks pid 1 to end the sandbox (HM_SIG_END in hermetic.h).
HM_SIG_END = 64
#: Room for the default seccomp program, in instructions.
SECCOMP_MAX = 4096  # BPF_MAXINSNS
#: Seconds pid 1 gets to kill and reap everything before it is SIGKILLed.
END_WAIT = 1.0
DOMAINNAME = "localdomain"
#: Bytes of each captured stream (stdout, stderr) the caller keeps when the
#: spec sets no ``max_output_bytes``: the caller holds the output in its own
#: memory, and an action can make a stream look as large as it likes for
#: free (ftruncate leaves a hole), so some bound always applies.  A stream
#: cut to it is reported as a "resource" violation, decision "truncated".
DEFAULT_STREAM_CAP = 64 << 20
#: PATH searched for argv[0] when the spec's environment has none (execvp's).
DEFAULT_SEARCH_PATH = "/bin:/usr/bin"
#: Root callers build each spec's root once and copy it per action
#: (hermetic/platforms/linux_template.py).  False builds it per action, as
#: for unprivileged callers (benchmarks compare both).
MOUNT_TEMPLATE = True
#: A reused executor sets up the next action's sandbox while the current one
#: runs (hermetic/platforms/linux_standby.py).  False: never (benchmarks).
STANDBY = True
#: The prepared mount namespace is built in the background as the executor
#: is created, ready for its first action.  False: by the first action.
PRIME_TEMPLATE = True

_STAGES = {
    1: "fds",
    2: "parent",
    3: "setgroups",
    4: "uid_map",
    5: "gid_map",
    6: "mount-private",
    7: "root-tmpfs",
    8: "pivot_root",
    9: "op",
    10: "detach-oldroot",
    11: "root-readonly",
    12: "hostname",
    13: "loopback",
    14: "spawn",
    15: "signals",
    16: "setsid",
    17: "chdir",
    18: "rlimit",
    19: "no_new_privs",
    20: "capabilities",
    21: "seccomp",
    22: "exec",
    23: "clone",
    24: "netns",
    25: "seccomp-listener",
    26: "proxy",
    27: "landlock",
    28: "subreaper",
    29: "time-namespace",
    30: "mount-namespace",
}
_OP_STAGES = {
    linux_plan.OP_MKDIR: "mkdir",
    linux_plan.OP_MKFILE: "mkfile",
    linux_plan.OP_SYMLINK: "symlink",
    linux_plan.OP_BIND: "bind",
    linux_plan.OP_TMPFS: "tmpfs",
    linux_plan.OP_PROC: "proc",
    linux_plan.OP_REMOUNT_RO: "remount-ro",
    linux_plan.OP_MKNOD: "mknod",
    linux_plan.OP_GRAB: "bind",
    linux_plan.OP_PLACE: "bind",
}


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


def _proxy_port() -> int:
    # The egress proxy's module (sockets, selectors, ipaddress) is imported
    # only by specs that use it.
    from hermetic.security.proxy import PROXY_PORT

    return PROXY_PORT


def _native() -> Any:
    from hermetic import _native

    return _native


class _CMemory:
    """C strings and arrays that must outlive every spawn that uses them."""

    def __init__(self) -> None:
        self.ffi = _native().ffi
        self.keep: list[Any] = []
        # One C copy per distinct string (the C side never writes them): a
        # plan names most of its paths twice or more.
        self._strings: dict[str, Any] = {}

    def cstr(self, s: str | None) -> Any:
        if s is None:
            return self.ffi.NULL
        c = self._strings.get(s)
        if c is None:
            c = self._strings[s] = self.ffi.new("char[]", os.fsencode(s))
        return c

    def ops(self, ops: Sequence[linux_plan.Op]) -> Any:
        # Initialised from tuples in the struct's field order (kind, flags,
        # mode, src, dst, data): cffi fills them in C, several times faster
        # than setting each field from Python.
        cstr = self.cstr
        arr = self.ffi.new(
            "struct hm_op[]",
            [(op.kind, op.flags, op.mode, cstr(op.src), cstr(op.dst), cstr(op.data)) for op in ops],
        )
        self.keep.append(arr)
        return arr

    def strv(self, items: Sequence[str]) -> Any:
        arr = self.ffi.new("char *[]", len(items) + 1)
        for i, s in enumerate(items):
            arr[i] = self.cstr(s)
        arr[len(items)] = self.ffi.NULL
        self.keep.append(arr)
        return arr


class _StackPool:
    """Stack regions for pid 1 and the action, reused across spawns.

    A region goes back to the pool only once its pid 1 has been reaped.
    """

    def __init__(self) -> None:
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        region = _native().lib.hm_stack_new()
        if region == _native().ffi.NULL:
            raise MemoryError("cannot map a stack for the sandbox")
        return region

    def give(self, region: Any) -> None:
        with self._lock:
            if len(self._free) < 64:
                self._free.append(region)
                return
        _native().lib.hm_stack_free(region)


STACKS = _StackPool()


class Prepared:
    """A spec made ready to run: validated, planned and marshalled once."""

    def __init__(
        self,
        spec: SandboxSpec,
        remap: dict[str, str] | None = None,
        audit_writes: bool = True,
    ) -> None:
        caps = capabilities()
        #: "namespaces", or "landlock" where user namespaces are forbidden.
        self.isolation = isolation_mode(caps)
        net = spec.network
        if self.isolation == "namespaces":
            if not caps.mount_setattr:
                raise UnsupportedError("read-only inputs", dict(caps.notes)["mount_setattr"])
            if not os.path.isdir(linux_plan.STAGING):
                raise UnsupportedError(
                    "root filesystem", f"{linux_plan.STAGING} is missing on the host"
                )
        elif remap:
            raise UnsupportedError(
                "fresh outputs",
                "binding fresh copies at the outputs needs mount namespaces, and user "
                "namespaces are unavailable here (Landlock-only isolation)",
            )
        elif net.uses_proxy:
            raise UnsupportedError(
                "network",
                "allowed_hosts are reached through a proxy inside a network namespace, and "
                "user namespaces are unavailable here (Landlock-only isolation)",
            )
        for p in (*spec.outputs, *spec.temps):
            if not os.path.exists(p):
                raise SpecError(
                    f"output or temp path does not exist: {p!r}", field="paths", value=p
                )
        # Before anything is built: a refusal leaves nothing behind.
        _refuse_ipc_inputs(spec, self.isolation == "namespaces")
        require_exec_layer(spec, caps, namespaces=self.isolation == "namespaces")
        self.spec = spec
        self.workdir = spec.workdir or "/"
        namespaces = self.isolation == "namespaces"
        writable = {*spec.outputs, *spec.temps}
        for p in remap or {}:
            if p not in writable:
                raise SpecError(f"only outputs and temps can be remapped: {p!r}", value=p)
        # The host's root needs no user namespace: its sandbox runs as uid 0
        # either way (a namespace would map 0 to 0), capabilities dropped.
        # Skipping it saves creating it and writing the id maps, and pid 1,
        # still root, makes /dev's nodes instead of binding them.  That path
        # needs some of root's capabilities (ROOT_PATH_CAPS): a root with
        # any of them dropped takes the user namespace path, as any user
        # does, and both are probed here, at create(), with what they will
        # use: a plan that cannot start fails now, naming why, never at
        # every execute.
        root = os.geteuid() == 0
        eff = effective_capabilities() if root else 0
        root_caps = root and eff & ROOT_PATH_CAPS == ROOT_PATH_CAPS
        privileged = (
            namespaces
            and root_caps
            and _global_root()
            and clone_error(ALL_NAMESPACES & ~CLONE_NEWUSER, eff) == 0
        )
        self.userns = namespaces and not privileged
        if self.userns and root and not eff >> CAP_SETFCAP & 1:
            # Mapping uid 0 into a user namespace needs CAP_SETFCAP
            # (Linux >= 5.12): the id map write would fail in every action.
            missing = capability_names(ROOT_PATH_CAPS & ~eff)
            why = (
                f"this root lacks {missing}, which its own path needs"
                if missing
                else "this root cannot create namespaces without a user namespace"
            )
            raise UnsupportedError(
                "namespaces",
                f"{why}, and the user namespace path cannot map uid 0 without setfcap, "
                "which it lacks too",
            )
        if namespaces:
            # The namespaces this plan creates (pid 1's, and on root's path
            # the prepared mount namespace's and the pooled network
            # namespaces'), probed as such once per process.
            needed = ALL_NAMESPACES if self.userns else ALL_NAMESPACES & ~CLONE_NEWUSER
            if net.host_network:
                needed &= ~CLONE_NEWNET
            err = clone_error(needed, eff)
            if err:
                raise UnsupportedError(
                    "namespaces",
                    f"creating {flag_names(needed)} namespaces failed here: {os.strerror(err)}",
                )
        self.ops = (
            linux_plan.build_ops(
                spec, self.workdir, remap, make_nodes=namespaces and not self.userns
            )
            if namespaces
            else ()
        )
        self.env = spec.action_environment()
        if net.uses_proxy:
            # The proxy's variables win over the spec's: they are the only
            # way out of the sandbox.
            from hermetic.security.proxy import proxy_env  # (sockets: only here)

            self.env.update(proxy_env(net.allowed_hosts))
        self.fresh_clocks = spec.reproducibility.fresh_clocks
        if self.fresh_clocks and not (namespaces and os.path.exists("/proc/self/ns/time")):
            raise UnsupportedError(
                "fresh clocks",
                "time namespaces are unavailable here"
                + ("" if namespaces else " (no namespaces at all: Landlock-only isolation)"),
            )
        #: False when the action shares the host's network.
        self.hermetic = not net.host_network
        self.cgroup_version, no_cgroup = cgroup_mechanism()
        self.limits = plan_limits(
            spec.resources, no_cgroup, network_counted=net.is_hermetic or net.uses_proxy
        )
        #: The private /tmp's size (0: none), watched while the action runs.
        self.tmp_bytes = linux_plan.private_tmp(spec, self.ops)
        self._exec_cache: dict[str, tuple[str, ...]] = {}
        self._host_paths: dict[str, str | None] = {}

        mem = _CMemory()
        ffi = mem.ffi
        self._mem = mem
        #: The host paths the sandbox binds (checked before a prepared
        #: namespace or a standby is used).
        self.host_sources = linux_template.host_sources(self.ops)
        # The ops pid 1 runs; with a prepared mount namespace, only the
        # per-action part, the rest being built once into the namespace.
        self.action_ops = self.ops
        self.template_ops: tuple[linux_plan.Op, ...] = ()
        self.mount_template: linux_template.MountTemplate | None = None
        split = (
            linux_template.split_ops(self.ops)
            if MOUNT_TEMPLATE and namespaces and not self.userns
            else None
        )
        if split is not None:
            self.template_ops, self.action_ops = split
            t_ops = self.template_ops
            tplan = ffi.new(
                "struct hm_plan *",
                {
                    "staging": mem.cstr(linux_plan.STAGING),
                    "oldroot": mem.cstr(linux_plan.OLDROOT),
                    "ops": mem.ops(self.template_ops),
                    "n_ops": len(self.template_ops),
                },
            )
            mem.keep.append(tplan)
            terr = ffi.new("struct hm_error *")
            mem.keep.append(terr)
            self.mount_template = linux_template.MountTemplate(
                self.host_sources,
                linux_template.native_build(
                    tplan, terr, lambda e: _setup_error(None, ("",), "/", e, t_ops), mem
                ),
            )
            if PRIME_TEMPLATE:
                # Built beside the rest of create() and the first execute's
                # own preparation, on the standby thread.
                with contextlib.suppress(RuntimeError):  # no thread can start
                    KEEPER.submit(self.mount_template.prime)
        ops = mem.ops(self.action_ops)
        rl = ffi.new("struct hm_rlimit[]", len(self.limits.rlimits))
        for i, (res, cur, mx) in enumerate(self.limits.rlimits):
            rl[i].resource = res
            rl[i].cur = cur
            rl[i].max = mx
        mem.keep.append(rl)
        uid, gid = os.getuid(), os.getgid()
        # A pooled namespace already has loopback up, and the sandbox has no
        # capability over it to change that.
        # setns() into a network namespace needs CAP_SYS_ADMIN in the caller's
        # own user namespace too, so only a privileged caller can use the pool.
        # Making one needs CAP_NET_ADMIN too (loopback up): only a root with
        # root's path capabilities, whose clone of a network namespace works.
        self.pooled_network = (
            not net.fresh_namespace
            and not net.host_network
            and root_caps
            and (privileged or clone_error(CLONE_NEWNET, eff) == 0)
        )
        ns_flags = ALL_NAMESPACES
        if self.pooled_network or net.host_network:
            ns_flags &= ~CLONE_NEWNET
        if namespaces and not self.userns:
            ns_flags &= ~CLONE_NEWUSER
        if self.mount_template is not None:
            ns_flags &= ~CLONE_NEWNS  # pid 1 copies the prepared one
        if not namespaces:
            self.pooled_network = False
            ns_flags = 0
        landlock, self.landlock_rules = _landlock_plan(spec, caps, namespaces, mem, self.ops)
        # The seccomp program (csrc/linux/seccomp.c), built for this
        # architecture; installed last, just before exec.  With a listener,
        # denials and refused writes are recorded (hermetic/security/syscalls.py).
        self.notify = caps.seccomp_user_notif
        self.audit_writes = audit_writes
        self.deny_exec = not spec.process.allow_exec
        self.writable = tuple(spec.outputs) + tuple(spec.temps)
        if namespaces and not any(p == "/tmp" for p in self.writable + tuple(spec.inputs)):
            self.writable += ("/tmp",)  # the sandbox's private /tmp
        self.audit_roots = SyscallAudit.roots(self.writable, spec.inputs)
        #: The host paths the action could write (its outputs and temps, or
        #: their fresh copies), scanned for set-id files after each run.
        self.scan_roots = _outermost((remap or {}).get(p, p) for p in (*spec.outputs, *spec.temps))
        seccomp, n_seccomp = self._filter(())
        mem.keep.append(seccomp)
        template = {
            "ns_flags": ns_flags,
            "netns_fd": -1,
            "cgroup_fd": -1,
            "mntns_fd": -1,
            "uid_map": mem.cstr(f"{uid} {uid} 1\n" if self.userns else None),
            "gid_map": mem.cstr(f"{gid} {gid} 1\n" if self.userns else None),
            "staging": mem.cstr(linux_plan.STAGING),
            "oldroot": mem.cstr(linux_plan.OLDROOT),
            "ops": ops,
            "n_ops": len(self.action_ops),
            "hostname": mem.cstr(HOSTNAME if namespaces else None),
            "domainname": mem.cstr(DOMAINNAME if namespaces else None),
            "loopback_up": 0 if self.pooled_network or net.host_network or not namespaces else 1,
            "no_namespaces": 0 if namespaces else 1,
            **landlock,
            "proxy_port": _proxy_port() if net.uses_proxy else 0,
            "envp": mem.strv([f"{k}={v}" for k, v in sorted(self.env.items())]),
            "rlimits": rl,
            "n_rlimits": len(self.limits.rlimits),
            "seccomp_filter": seccomp,
            "seccomp_len": n_seccomp,
            "seccomp_notify": 1 if self.notify else 0,
        }
        # Per action the plan is a memmove of this, not a dict conversion.
        self._template = ffi.new("struct hm_plan *", template)
        self._plan_size = ffi.sizeof("struct hm_plan")
        self._c_cache: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._c_lock = threading.Lock()
        #: The next action's sandbox, set up ahead once the spec is reused.
        self.standby: StandbySlot | None = None
        if (
            STANDBY
            and namespaces
            and not self.deny_exec
            and not self.fresh_clocks
            and not net.uses_proxy
        ):
            self.standby = StandbySlot(self, _make_standby)

    def close(self) -> None:
        """Release the prepared mount namespace, if any, and drop the standby
        sandbox (running actions keep theirs until they end; a later execute
        prepares again)."""
        if self.standby is not None:
            self.standby.close()
        if self.mount_template is not None:
            self.mount_template.close()

    def _filter(self, exec_ptrs: Sequence[int]) -> tuple[Any, int]:
        """The seccomp program for this spec; ``exec_ptrs`` the action's own
        execve paths, the only ones allowed when the spec forbids exec."""
        ffi, lib = _native().ffi, _native().lib
        opts = ffi.new("struct hm_filter_opts *")
        opts.notify = 1 if self.notify else 0
        opts.audit_writes = 1 if self.notify and self.audit_writes else 0
        opts.deny_fork = 0 if self.spec.process.allow_fork else 1
        opts.deny_exec = 1 if self.deny_exec else 0
        ptrs = ffi.new("unsigned long long[]", list(exec_ptrs) or [0])
        opts.exec_ptrs = ptrs
        opts.n_exec_ptrs = len(exec_ptrs)
        if self.isolation == "landlock":
            # No network namespace contains sockets, no pid namespace ends
            # the processes: seccomp closes both gaps.
            opts.deny_sockets = 0 if self.spec.network.host_network else 1
            opts.deny_sessions = 1
        prog = ffi.new("unsigned char[]", 8 * SECCOMP_MAX)  # struct sock_filter[]
        n = lib.hm_seccomp_build(prog, SECCOMP_MAX, opts)
        if n < 0:
            raise UnsupportedError("seccomp", "the filter does not fit its buffer")
        return prog, n

    def new_plan(self, workdir: str, arg0: str) -> tuple[Any, list[Any]]:
        """A fresh plan for one action, cwd and argv[0]'s candidates filled in.

        Returns the plan and what must stay alive as long as it is used.
        """
        ffi = self._mem.ffi
        plan = ffi.new("struct hm_plan *")
        ffi.memmove(plan, self._template, self._plan_size)
        return plan, self.fill_action(plan, workdir, arg0)

    def fill_action(self, plan: Any, workdir: str, arg0: str) -> list[Any]:
        """Set ``plan``'s cwd and argv[0]'s candidates; returns what keeps them alive."""
        cwd, keep_cwd = self._cached("cwd", workdir)
        plan.cwd = cwd
        plan.n_exec_paths = len(self.exec_candidates(arg0))
        if self.deny_exec:
            # The filter names this action's execve paths by address: both
            # come from one cache entry, built together, with the Landlock
            # rules that make the action's own program the only executable.
            # A relative candidate is resolved from the working directory,
            # which then keys the entry too.
            relative = any(not c.startswith("/") for c in self.exec_candidates(arg0))
            (paths, prog, n, rules, n_rules), keep_exec = self._cached(
                "exec+filter", arg0, workdir if relative else ""
            )
            plan.seccomp_filter = prog
            plan.seccomp_len = n
            plan.landlock_rules = rules
            plan.n_landlock_rules = n_rules
        else:
            paths, keep_exec = self._cached("exec", arg0)
        plan.exec_paths = paths
        return [keep_cwd, keep_exec]

    def _cached(self, kind: str, key: str, workdir: str = "") -> tuple[Any, Any]:
        """A C string (cwd), array (candidates), or array and the seccomp
        program naming its pointers and the Landlock rules ("exec+filter",
        ``workdir`` resolving relative candidates), reused across actions
        up to a bound.  Returns the value and what keeps it alive."""
        entry = (kind, f"{workdir}\0{key}" if workdir else key)
        with self._c_lock:
            found = self._c_cache.get(entry)
        if found is not None:
            return found
        mem = _CMemory()
        value: Any
        if kind == "cwd":
            value = mem.cstr(key)
        else:
            paths = mem.strv(self.exec_candidates(key))
            value = paths
            if kind == "exec+filter":
                ffi = mem.ffi
                n = len(self.exec_candidates(key))
                prog, length = self._filter(
                    [int(ffi.cast("uintptr_t", paths[i])) for i in range(n)]
                )
                mem.keep.append(prog)
                rules, n_rules = self._exec_rules(key, workdir or "/", mem)
                value = (paths, prog, length, rules, n_rules)
        found = (value, mem)
        with self._c_lock:
            if len(self._c_cache) < 1024:
                self._c_cache[entry] = found
        return found

    def action_landlock_rules(
        self, arg0: str, workdir: str = "/"
    ) -> tuple[linux_landlock.Rule, ...]:
        """An action's Landlock rules: the prepared ones, then, under
        allow_exec=False, EXECUTE on its program and interpreters (those
        declared paths hold: a rule on a missing file would fail setup)."""
        if not self.deny_exec:
            return self.landlock_rules
        spec = self.spec
        roots = (*spec.inputs, *spec.outputs, *spec.temps)
        files = linux_landlock.exec_files(
            [os.path.join(workdir, c) for c in self.exec_candidates(arg0)],
            lambda p: any(is_within(p, r) for r in roots),
        )
        extra = (linux_landlock.Rule(f, linux_landlock.EXECUTE) for f in files)
        return (*self.landlock_rules, *extra)

    def _exec_rules(self, arg0: str, workdir: str, mem: _CMemory) -> tuple[Any, int]:
        """The Landlock rules of an action whose argv[0] is ``arg0`` under
        allow_exec=False: the prepared ones (nothing executable, same
        order, so a failing rule's index names the same path), then
        EXECUTE on its program and interpreters."""
        rules = self.action_landlock_rules(arg0, workdir)
        arr = mem.ffi.new("struct hm_landlock_rule[]", max(len(rules), 1))
        for i, rule in enumerate(rules):
            arr[i].path = mem.cstr(rule.path)
            arr[i].access = rule.access
        mem.keep.append(arr)
        return arr, len(rules)

    def host_path(self, path: str) -> str | None:
        """linux_template.host_path of ``path`` in this sandbox, cached."""
        try:
            return self._host_paths[path]
        except KeyError:
            found = linux_template.host_path(self.ops, path)
            if len(self._host_paths) < 1024:
                self._host_paths[path] = found
            return found

    def exec_candidates(self, arg0: str) -> tuple[str, ...]:
        """Where execve looks for argv[0]: the spec's PATH, as inside the sandbox."""
        found = self._exec_cache.get(arg0)
        if found is None:
            if "/" in arg0:
                found = (arg0,)
            else:
                search = self.env.get("PATH", DEFAULT_SEARCH_PATH)
                found = tuple(os.path.join(d or ".", arg0) for d in search.split(":"))
            self._exec_cache[arg0] = found
        return found


def _outermost(paths: Iterable[str]) -> tuple[str, ...]:
    """``paths`` without those under another of them, in order."""
    unique = list(dict.fromkeys(paths))
    return tuple(p for p in unique if not any(q != p and is_within(p, q) for q in unique))


def isolation_mode(caps: Capabilities) -> str:
    """ "namespaces" where user namespaces work, else "landlock" where Landlock
    (ABI >= 6) and seccomp can stand alone; else UnsupportedError (fail closed)."""
    if caps.user_namespaces:
        return "namespaces"
    notes = dict(caps.notes)
    why_ns = notes.get("user_namespaces", "user namespaces unavailable")
    abi = caps.landlock_abi or 0
    if abi < linux_landlock.MIN_ABI_ALONE:
        why_ll = notes.get("landlock") or (
            f"Landlock ABI {abi} is below {linux_landlock.MIN_ABI_ALONE}, the first that keeps "
            "signals inside the sandbox"
        )
        raise UnsupportedError("filesystem isolation", f"{why_ns}; and {why_ll}")
    if not caps.seccomp:
        raise UnsupportedError("filesystem isolation", f"{why_ns}; and seccomp is unavailable")
    return "landlock"


def _mount_point_kinds(ops: Sequence[linux_plan.Op]) -> dict[str, bool]:
    """Path -> whether it is a directory, for the mount points the plan
    makes (a mount point has its source's type)."""
    return {
        op.dst: op.kind == linux_plan.OP_MKDIR
        for op in ops
        if op.kind in (linux_plan.OP_MKDIR, linux_plan.OP_MKFILE)
    }


def _private_tmp(spec: SandboxSpec) -> bool:
    """Whether a sandbox with namespaces mounts its own /tmp."""
    return not any(p == "/tmp" for p in (*spec.inputs, *spec.outputs, *spec.temps))


def _refuse_ipc_inputs(spec: SandboxSpec, namespaces: bool) -> None:
    """SpecError for the inputs no layer keeps read-only, whatever the
    Landlock ABI: a FIFO or socket declared as an input, or held by an input
    beneath a writable path (the private /tmp), whose Landlock rights then
    cover it (hermetic/platforms/linux_landlock.py)."""
    linux_landlock.refuse_ipc_inputs(spec.inputs)
    tmp = ("/tmp",) if namespaces and _private_tmp(spec) else ()
    linux_landlock.refuse_ipc_beneath_writable(spec.inputs, (*spec.outputs, *spec.temps, *tmp))


def require_exec_layer(spec: SandboxSpec, caps: Capabilities, *, namespaces: bool = True) -> None:
    """UnsupportedError when ``allow_exec=False`` has no Landlock layer to hold it.

    The seccomp filter lets through the execve whose path pointer is the
    plan's, and an action can put any path at that address after its own
    exec: only Landlock's EXECUTE right, granted on the action's program
    and its interpreters alone, makes the refusal a boundary."""
    if spec.process.allow_exec:
        return
    abi = linux_landlock.layer_abi(caps.landlock_abi or 0, namespaces=namespaces)
    if abi <= 0:
        why = dict(caps.notes).get("landlock") or (
            f"Landlock ABI {caps.landlock_abi} is below {linux_landlock.MIN_ABI_LAYER}"
        )
        raise UnsupportedError(
            "allow_exec=False",
            f"only Landlock's EXECUTE right can refuse other programs (seccomp compares "
            f"pointers): {why}",
        )


def _landlock_plan(
    spec: SandboxSpec,
    caps: Capabilities,
    namespaces: bool,
    mem: _CMemory,
    ops: Sequence[linux_plan.Op] = (),
) -> tuple[dict[str, Any], tuple[linux_landlock.Rule, ...]]:
    """The plan's Landlock fields: an extra layer under namespaces, the only
    filesystem layer without them (hermetic/platforms/linux_landlock.py)."""
    private_tmp = namespaces and _private_tmp(spec)
    abi = linux_landlock.layer_abi(caps.landlock_abi or 0, namespaces=namespaces)
    if abi <= 0:
        return {"landlock_abi": 0}, ()
    rules = linux_landlock.rules(
        spec,
        abi=abi,
        namespaces=namespaces,
        private_tmp=private_tmp,
        dirs=_mount_point_kinds(ops),
        # allow_exec=False: nothing executable here; each action's plan adds
        # its own program (Prepared.fill_action).
        exec_files=None if spec.process.allow_exec else (),
    )
    arr = mem.ffi.new("struct hm_landlock_rule[]", len(rules))
    for i, rule in enumerate(rules):
        arr[i].path = mem.cstr(rule.path)
        arr[i].access = rule.access
    mem.keep.append(arr)
    net = 0
    if not namespaces and abi >= 4 and not spec.network.host_network:
        net = linux_landlock.NET_BIND_TCP | linux_landlock.NET_CONNECT_TCP
    return {
        "landlock_abi": abi,
        "landlock_fs": linux_landlock.handled_fs(abi),
        "landlock_net": net,
        "landlock_scoped": linux_landlock.scopes(abi),
        "landlock_rules": arr,
        "n_landlock_rules": len(rules),
    }, rules


def prepare(
    spec: SandboxSpec,
    *,
    remap: dict[str, str] | None = None,
    require_hermetic: bool = True,
    audit_writes: bool = True,
) -> Prepared:
    """``require_hermetic`` changes nothing on Linux: every layer is applied or
    refused.  ``audit_writes=False`` stops recording refused path writes
    (they stay refused), which saves a listener round trip per write."""
    return Prepared(spec, remap, audit_writes)


def _fresh_clock_offsets() -> str:
    """Offsets that start the action's monotonic and boot clocks near one second."""
    lines = []
    for name, clock in (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME)):
        now = time.clock_gettime_ns(clock)
        lines.append(f"{name} {-(now // 1_000_000_000) + 1} 0\n")
    return "".join(lines)


def _fill(fd: int, data: bytes) -> None:
    """``data`` into the action's stdin memfd, read from its start."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)


def _kept_sizes(limit: int, out_size: int, err_size: int) -> tuple[int, int]:
    """How many bytes of stdout and stderr the result holds, from their
    sizes as the action left them (st_size: a hole counts in full).

    With ``max_output_bytes`` (``limit``) the two share it, stdout first;
    without, each is kept to DEFAULT_STREAM_CAP.  Either way the caller's
    memory is bounded by the cap, never by what the action claims."""
    if limit:
        kept_out = min(out_size, limit)
        return kept_out, min(err_size, limit - kept_out)
    return min(out_size, DEFAULT_STREAM_CAP), min(err_size, DEFAULT_STREAM_CAP)


def _default_cap_violations(streams: Sequence[tuple[str, int, int]]) -> list[Violation]:
    """One "truncated" record per stream (name, size, kept) cut to
    DEFAULT_STREAM_CAP."""
    return [
        Violation(
            ViolationKind.RESOURCE,
            attempted=f"{name} beyond the default output cap (output_truncated)",
            decision="truncated",
            limit=f"{DEFAULT_STREAM_CAP} bytes per stream (the spec sets no max_output_bytes)",
            observed=f"{size} bytes, the first {kept} kept",
        )
        for name, size, kept in streams
        if size > kept
    ]


def _read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of a captured stream (``size`` from
    _kept_sizes, so never more than the cap, whatever the action wrote: a
    sparse gigabyte costs it nothing, reading it would cost the caller a
    gigabyte).  One read usually does it, into a buffer of ``size`` bytes
    and no copy; a file cut short meanwhile ends the read early."""
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _setup_error(
    prepared: Prepared | None,
    argv: tuple[str, ...],
    cwd: str,
    err: Any,
    ops: tuple[linux_plan.Op, ...] | None = None,
) -> SandboxError:
    """The error for a failed setup; ``ops``: the list op_index is in (the
    prepared namespace's, or by default the one pid 1 runs)."""
    stage = _STAGES.get(err.stage, f"stage {err.stage}")
    path = None
    detail = None
    idx = err.op_index
    if ops is None:
        ops = prepared.action_ops if prepared is not None else ()
    if err.stage == 9 and 0 <= idx < len(ops):
        op = ops[idx]
        stage = _OP_STAGES.get(op.kind, stage)
        path = op.dst
        detail = op.origin
    elif stage == "exec" and prepared is not None:
        cands = prepared.exec_candidates(argv[0])
        path = cands[idx] if 0 <= idx < len(cands) else argv[0]
        if err.err == 2:
            detail = f"{argv[0]!r} not found in the sandbox (searched {':'.join(cands)})"
    elif stage == "landlock" and prepared is not None:
        rules = prepared.action_landlock_rules(argv[0], cwd) if argv else prepared.landlock_rules
        if 0 <= idx < len(rules):
            path = rules[idx].path
            detail = "Landlock rule"
    elif stage == "chdir":
        path = cwd
        detail = "working directory"
    elif stage in ("uid_map", "gid_map", "setgroups"):
        path = f"/proc/self/{stage}"
    limits = prepared.spec.resources if prepared is not None else None
    if err.stage == 0:
        stage = "start"
        if err.err == 0:
            detail = "the sandbox ended before it reported its setup"
            if limits is not None and limits.max_memory_bytes:
                detail += (
                    f": max_memory_bytes={limits.max_memory_bytes} may be too small to start it"
                )
        elif err.err == 110:  # ETIMEDOUT
            detail = "no report of its setup in time: the sandbox was ended"
        else:
            detail = "its setup report could not be read: the sandbox was ended"
    if err.err == 24 and limits is not None and limits.max_open_files:  # EMFILE
        detail = (detail + "; " if detail else "") + (
            f"max_open_files={limits.max_open_files} leaves the setup too few descriptors"
        )
    return SandboxError(
        err.err, stage=stage, path=path, op_index=idx if idx >= 0 else None, detail=detail
    )


def _wait(
    proc: Any, timeout: float | None, grace: float, check: Any, serve: Serve | None = None
) -> tuple[bool, str | None, int | None, Any]:
    """Wait for the sandbox's pid 1 and reap it: (timed_out, breach, status, rusage).

    ``status`` is None (and the rusage too) when something else reaped pid 1.
    """
    pidfd = proc.pidfd

    def send(sig: int) -> None:
        if sig == signal.SIGKILL:
            # Ask pid 1 to kill and reap everything, so the rusage covers
            # every process; SIGKILL it only if it does not finish.
            signal.pidfd_send_signal(pidfd, HM_SIG_END)
            if wait_readable(pidfd, END_WAIT):
                return
        signal.pidfd_send_signal(pidfd, sig)

    timed_out, breach = wait_or_kill(pidfd, timeout, send, grace, check, serve)
    try:
        status, ru = _reap(pidfd)
    except ChildProcessError:
        # Reaped by someone else (a waitpid with __WALL elsewhere in the
        # caller): pid 1's records of the action's status and of the
        # sandbox's rusage are still valid.
        return timed_out, breach, None, _pid1_rusage(proc)
    return timed_out, breach, status, ru


def _pid1_rusage(proc: Any) -> _Rusage | None:
    if not proc.ru_valid:
        return None
    return _Rusage(proc.ru_utime_us / 1e6, proc.ru_stime_us / 1e6, proc.ru_inblock, proc.ru_oublock)


#: Stage names for a profile, from the caller's and pid 1's stamps.
STAGES = (
    "clone until pid 1 runs",
    "id maps",
    "mounts: the root built, or the prepared one copied, and the op list",
    "old root detached, root read-only (when built), names, loopback",
    "action: clone, setup, seccomp, exec",
    "setup report back in the caller",
    "the action runs until reaped by pid 1",
    "pid 1 ends and reaps the rest",
    "pid 1 exits (namespaces torn down), caller wakes, reaps",
)


def _stages(out: dict[str, float], proc: Any, called: int, returned: int, reaped: int) -> None:
    s = [proc.stamps[i] for i in range(7)]
    if s[1] == 0:  # no id maps written (Landlock-only): no such stages
        s[1] = s[2] = s[0]
    points = [called, *s[:5], returned]
    for name, (a, b) in zip(STAGES[:6], zip(points, points[1:], strict=False), strict=False):
        out[name] = (b - a) / 1e9
    out[STAGES[6]] = (s[5] - s[4]) / 1e9
    out[STAGES[7]] = (s[6] - s[5]) / 1e9
    out[STAGES[8]] = (reaped - s[6]) / 1e9


def _cancellable(check: Any, cancel: threading.Event) -> Any:
    """The periodic check, ending the sandbox once ``cancel`` is set."""

    def checked() -> str | None:
        if cancel.is_set():
            return "cancelled"
        return check() if check is not None else None

    return checked


def _kill_and_reap(pidfd: int) -> None:
    """End a sandbox whose wait was interrupted, and reap its pid 1.

    Never raises: pid 1 runs on a stack in this process's memory, so it must
    be gone before that memory is released, whatever else is going on.
    """
    asked = False
    while True:
        try:
            if not asked:
                # pid 1 ends everything first: without a pid namespace,
                # SIGKILL of pid 1 alone would leave the action running.
                asked = True
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, HM_SIG_END)
                wait_readable(pidfd, END_WAIT)
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            _reap(pidfd)
            return
        except OSError:  # ECHILD: reaped already; anything else would repeat
            return
        except BaseException:  # a second interrupt: finish the reap first
            continue


def execute(
    prepared: Prepared,
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
    observer: Any = None,
    cancel: threading.Event | None = None,
    profile: dict[str, float] | None = None,
) -> ExecutionResult:
    """Run one action in a fresh sandbox and return its result.

    ``cancel``, once set, ends the sandbox (SIGKILL) within 20 ms.
    ``profile``, a dict, receives the seconds each stage took (pid 1 stamps
    its stages: see enum hm_stamp; benchmarks/profile_stages.py).

    Raises SandboxError when setup fails (the action did not run).  With
    limits that need a cgroup, the sandbox is cloned by a worker thread
    resident in a cgroup slot (hermetic/platforms/linux_workers.py); the
    calling thread still does all the waiting.
    """
    args = check_argv(argv)
    workdir = cwd or prepared.workdir
    if "\0" in workdir or not workdir.startswith("/"):
        raise SpecError(f"cwd must be an absolute path: {workdir!r}", field="cwd", value=workdir)
    if cwd is not None and not (
        is_within(cwd, prepared.workdir) or linux_plan.visible(prepared.spec, cwd) or cwd == "/"
    ):
        raise SpecError(f"cwd {cwd!r} is not visible in the sandbox", field="cwd", value=cwd)
    run = functools.partial(
        _run,
        prepared,
        args,
        workdir,
        stdin,
        timeout,
        kill_grace,
        observer=observer,
        cancel=cancel,
        profile=profile,
    )
    if prepared.standby is None:
        return _execute_fresh(prepared, run)
    with prepared.standby.running():
        # The standby is in ``held`` from before it leaves the slot: a
        # signal handler raising anywhere from here on cannot lose it.
        held: list[Standby] = []
        try:
            standby = prepared.standby.take(workdir, into=held) if profile is None else None
            if standby is None:
                return _execute_fresh(prepared, run)
            try:
                return run(standby=standby)
            except _StandbyLost:
                pass
        finally:
            for sb in held:
                if not sb.used:  # failed before its activation
                    sb.drop()
                else:
                    # Its slot or group, network and mount namespaces: after
                    # the result has read the group's counters, as for a
                    # fresh one.
                    sb.done()
        return _execute_fresh(prepared, run)


class _StandbyLost(Exception):
    """A standby gone before its activation: the execution starts afresh."""


def _execute_fresh(prepared: Prepared, run: Callable[..., ExecutionResult]) -> ExecutionResult:
    """``run`` in a sandbox spawned now, in its cgroup slot or group if limited."""
    if prepared.limits.cgroup and prepared.cgroup_version == 1:
        with WORKERS.lease() as worker:
            return run(worker=worker)
    if prepared.limits.cgroup:
        leased: list[V2Group] = []
        try:
            try:
                group = V2.new_group(prepared.spec.resources, leased)
            except OSError as e:
                raise UnsupportedError(
                    "resource limits", f"cannot create a cgroup v2 group: {e}"
                ) from e
            return run(group=group)
        finally:
            for g in leased:
                g.close()
    return run()


def _make_standby(prepared: Prepared, cwd: str) -> Standby | None:
    """A sandbox for ``prepared`` set up to its action's exec in working
    directory ``cwd`` (on the keeper thread); None when setup failed (the
    next execute spawns directly and reports the error).  Raises
    Unavailable when a path it would bind or enter is missing."""
    lib = _native().lib
    leases = contextlib.ExitStack()
    stack = None
    try:
        worker = group = None
        if prepared.limits.cgroup and prepared.cgroup_version == 1:
            worker = leases.enter_context(WORKERS.lease())
            worker.slot.prepare(prepared.spec.resources)
        elif prepared.limits.cgroup:
            made: list[V2Group] = []

            def close_groups() -> None:
                for g in made:
                    g.close()

            leases.callback(close_groups)
            group = V2.new_group(prepared.spec.resources, made)
        # The identity of the bound host paths, and of the working
        # directory's own, as the sandbox will bind and enter them: take()
        # checks it again, so that a path replaced on the host since (or
        # while this is set up) is never the one the action sees.  The
        # prepared namespace's was taken as it was built and checked as it
        # was leased; without one, the binds come after this.
        sources = prepared.host_sources
        at = prepared.host_path(cwd)
        extra = (at,) if at is not None and at not in sources else ()
        plan, keep = prepared.new_plan(cwd, "/")
        plan.standby = 1
        plan.stdin_fd = plan.stdout_fd = plan.stderr_fd = -1
        if group is not None:
            plan.cgroup_fd = group.fd
        if prepared.pooled_network:
            plan.netns_fd = leases.enter_context(NETNS.lease())
        if prepared.mount_template is not None:
            # take() checks the identity: no need to look at the paths twice.
            lease = prepared.mount_template.lease(check=False)
            plan.mntns_fd, bound = leases.enter_context(lease)
            own = linux_template.identity(extra)
            ident = bound + own if bound is not None and own is not None else None
        else:
            ident = linux_template.identity(sources + extra)
        if ident is None:
            # The handler below ends the leases taken so far.
            raise Unavailable("a bound path or the working directory is missing")
        ffi = _native().ffi
        proc = ffi.new("struct hm_proc *")
        proc.notify_fd = proc.proxy_fd = -1
        proc.pid = -1
        error = ffi.new("struct hm_error *")
        stack = STACKS.take()
        proc.stack = stack
        spawn = worker.spawn if worker is not None else lib.hm_spawn
        if spawn(plan, proc, error) < 0:
            # Released by hm_spawn; the stack was borrowed.
            given, stack = stack, None
            STACKS.give(given)
            leases.close()
            return None
    except BaseException:
        if stack is not None and proc.pid <= 0:
            STACKS.give(stack)
        leases.close()
        raise

    def release(sb: Standby) -> None:
        lib.hm_proc_release(sb.proc)
        STACKS.give(sb.stack)

    keep.append(prepared._mem)
    return Standby(plan, keep, proc, stack, leases, ident, cwd, release, worker, group)


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


def _want_next(prepared: Prepared, workdir: str) -> None:
    """Ask for the next standby (see StandbySlot.want), never at the cost of
    the action being started (a thread that cannot start).  Nothing broader
    is caught: what a signal handler raises here must reach the caller."""
    if prepared.standby is not None:
        with contextlib.suppress(RuntimeError, OSError):
            prepared.standby.want(workdir)


def _run(
    prepared: Prepared,
    args: tuple[str, ...],
    workdir: str,
    stdin: bytes | None,
    timeout: float | None,
    kill_grace: float,
    *,
    worker: Worker | None = None,
    group: V2Group | None = None,
    standby: Standby | None = None,
    observer: Any = None,
    cancel: threading.Event | None = None,
    profile: dict[str, float] | None = None,
) -> ExecutionResult:
    nat = _native()
    ffi, lib = nat.ffi, nat.lib
    limits = prepared.spec.resources
    if standby is not None:
        worker, group = standby.worker, standby.group
    slot: V1Slot | V2Group | None = worker.slot if worker is not None else group
    spawn = worker.spawn if worker is not None else lib.hm_spawn
    mem = _CMemory()
    if standby is not None:
        plan = standby.plan
        keep = prepared.fill_action(plan, workdir, args[0])
    else:
        plan, keep = prepared.new_plan(workdir, args[0])
    if group is not None:
        plan.cgroup_fd = group.fd
    plan.argv = mem.strv(args)
    if prepared.fresh_clocks:
        plan.timens_offsets = mem.cstr(_fresh_clock_offsets())
    if profile is not None:
        plan.profile = 1
    if worker is not None and standby is None:
        try:
            worker.slot.prepare(limits)
        except OSError as e:
            raise UnsupportedError("resource limits", f"cannot set cgroup limits: {e}") from e

    # Made in C into this array, which the finally closes: made one by one
    # here, a descriptor would be lost to a signal handler raising as its
    # call returns.
    capture = ffi.new("int[3]", [-1, -1, -1])
    try:
        rc = lib.hm_capture_fds(capture, stdin is None)
        if rc < 0:
            raise SandboxError(-rc, stage="stdio", detail="the action's stdin, stdout, stderr")
        stdin_fd, out_fd, err_fd = capture[0], capture[1], capture[2]
        if stdin is not None:
            _fill(stdin_fd, stdin)
        if standby is None:
            plan.stdin_fd = stdin_fd
            plan.stdout_fd = out_fd
            plan.stderr_fd = err_fd
        watch = Watch(
            prepared.limits,
            bool(limits.max_memory_bytes),
            slot,
            out_fd,
            err_fd,
            prepared.tmp_bytes,
            linux_plan.private_tmp_limit(prepared.spec),
        )
        # The private /tmp is always watched: the first check comes after
        # an interval, so a short action costs nothing more.
        watched = prepared.limits.watched or prepared.tmp_bytes
        check = watch if watched or (slot and limits.max_memory_bytes) else None
        if cancel is not None:
            check = _cancellable(check, cancel)
        if standby is not None:
            proc = standby.proc
        else:
            proc = ffi.new("struct hm_proc *")
            proc.notify_fd = proc.proxy_fd = -1
        error = ffi.new("struct hm_error *")
        audit = SyscallAudit(prepared.audit_roots) if prepared.notify else None
        with contextlib.ExitStack() as lease:
            # A standby holds its own leases; execute() ends them.
            if standby is None and prepared.pooled_network:
                plan.netns_fd = lease.enter_context(NETNS.lease())
            if standby is None and prepared.mount_template is not None:
                plan.mntns_fd, _ = lease.enter_context(prepared.mount_template.lease())
            start = time.monotonic()
            proxy: Any = None  # an EgressProxy once started
            proxied: list[Violation] = []
            if standby is not None:
                stack = standby.stack
            else:
                proc.pid = -1
                stack = STACKS.take()
                proc.stack = stack
            reaped = False
            if standby is not None:
                # From here on this execution ends, reaps and releases it.
                standby.used = True
            try:
                # Inside the try: an exception raised as the call returns
                # (a signal handler's) must still end and reap the sandbox.
                called = time.monotonic_ns()
                if standby is not None:
                    # The next standby is asked for before this one's exec:
                    # its setup has the whole action to catch up (measured:
                    # ready in time, about 10 % less per action than asking
                    # once the exec is done).
                    _want_next(prepared, workdir)
                    rc = lib.hm_activate(proc, stdin_fd, out_fd, err_fd, error)
                else:
                    rc = spawn(plan, proc, error)
                returned = time.monotonic_ns()
                if rc < 0:
                    if standby is not None and error.stage == 0:
                        # No word from it at all: it had died (killed from
                        # outside) before its go.  Not this action's fault.
                        raise _StandbyLost
                    raise _setup_error(prepared, args, workdir, error)
                if standby is None and profile is None:
                    _want_next(prepared, workdir)
                watch.pid1 = proc.pid
                if proc.proxy_fd >= 0:
                    from hermetic.security.proxy import EgressProxy

                    proxy = EgressProxy.for_spec(proc.proxy_fd, prepared.spec).start()
                if observer is not None:
                    observer.started(proc.pid)
                serve: Serve | None = None
                if audit is not None and proc.notify_fd >= 0:
                    serve = audit.attach(proc.notify_fd)
                timed_out, breach, status, ru = _wait(proc, timeout, kill_grace, check, serve)
                reaped = True
                if profile is not None:
                    _stages(profile, proc, called, returned, time.monotonic_ns())
            except BaseException:
                if proc.pid > 0 and not reaped:
                    _kill_and_reap(proc.pidfd)
                    reaped = True
                raise
            finally:
                try:
                    if proxy is not None:
                        proxied = proxy.stop()
                finally:
                    # Only once pid 1 is gone is its stack free.  (A failed
                    # spawn has released everything itself: pid is -1.)
                    if reaped or proc.pid <= 0:
                        lib.hm_proc_release(proc)
                        STACKS.give(stack)
                    if audit is not None:
                        audit.close()
            duration = time.monotonic() - start
        if proc.main_exited:
            status = proc.status
        exit_code = sig = None
        if status is not None:
            exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        usage = ResourceUsage.from_rusage(duration, ru)
        violations: list[Violation] = audit.violations() if audit is not None else []
        violations += proxied
        if timed_out:
            violations.append(
                Violation(
                    ViolationKind.TIMEOUT,
                    attempted=f"ran longer than {timeout:g} s",
                    decision="killed",
                    limit=f"{timeout:g} s",
                    observed=f"{duration:.3f} s",
                )
            )
        if group is not None:
            counted = group.usage()
            usage = usage.with_cgroup(counted.peak_memory, "cgroup-v2")
            tasks = group.peak_processes()
            if tasks is not None:
                usage = usage.with_figure("peak_processes", tasks, "cgroup-v2")
        elif slot is not None:
            counted = slot.usage()
            usage = usage.with_cgroup(counted.peak_memory, "cgroup-v1")
        else:
            counted = SlotUsage(None, 0, 0)
        if watch.peak_processes is not None:
            usage = usage.with_figure("peak_processes", watch.peak_processes, "sampled")
        out_size, err_size = os.fstat(out_fd).st_size, os.fstat(err_fd).st_size
        keep_out, keep_err = _kept_sizes(prepared.limits.output_bytes, out_size, err_size)
        streams = (("stdout", out_size, keep_out), ("stderr", err_size, keep_err))
        violations += _limit_violations(
            prepared.spec,
            counted,
            breach,
            watch.observed,
            sig if not timed_out else None,
            out_size + err_size,
            [name for name, size, kept in streams if size > kept],
        )
        tmp_full = watch.tmp_violation()
        if tmp_full is not None:
            violations.append(tmp_full)
        if not prepared.limits.output_bytes:
            violations += _default_cap_violations(streams)
        if prepared.scan_roots:
            # After pid 1 is reaped: nothing of the action's is left to race.
            violations += scan_outputs(prepared.scan_roots)
        stdout, stderr = _read_all(out_fd, keep_out), _read_all(err_fd, keep_err)
        return ExecutionResult(
            argv=args,
            exit_code=exit_code,
            signal=sig,
            stdout=stdout,
            stderr=stderr,
            duration=duration,
            timed_out=timed_out,
            usage=usage,
            violations=tuple(violations),
            hermetic=prepared.hermetic,
            isolation=prepared.isolation,
            unenforced_limits=prepared.limits.unenforced,
        )
    finally:
        # All three in one C call: no signal handler runs between them.
        lib.hm_close_fds(capture, 3)


#: Signals the kernel sends for a breached rlimit: the limit and what was tried.
_RLIMIT_SIGNALS: dict[int, tuple[str, str]] = {
    int(signal.SIGXFSZ): ("max_file_size", "a file larger than max_file_size"),
    int(signal.SIGXCPU): ("max_cpu_time_ms", "CPU time beyond max_cpu_time_ms in one process"),
}


def _limit_violations(
    spec: SandboxSpec,
    counted: SlotUsage,
    breach: str | None,
    observed: dict[str, int],
    sig: int | None,
    written: int,
    cut: Sequence[str] = (),
) -> list[Violation]:
    """Every limit breach of one action: from the cgroup's counters, the
    periodic check (``breach``), the main process's end signal, and the
    captured output's size (``written``; ``cut``: the streams the result
    holds only part of)."""
    limits = spec.resources
    out = []

    def resource_killed(what: str, limit: str, seen: str) -> None:
        out.append(
            Violation(
                ViolationKind.RESOURCE,
                attempted=what,
                decision="killed",
                limit=limit,
                observed=seen,
            )
        )

    if breach == "memory" or counted.oom_kills:
        peak = counted.peak_memory if counted.peak_memory is not None else observed.get("memory")
        resource_killed(
            "memory beyond max_memory_bytes",
            f"max_memory_bytes={limits.max_memory_bytes}",
            f"peak {peak} bytes",
        )
    if counted.fork_refusals:
        out.append(
            Violation(
                ViolationKind.PROCESS,
                attempted="fork beyond the process limit",
                decision="denied",
                limit=process_limit(spec),
                observed=f"{counted.fork_refusals} fork(s) refused",
            )
        )
    if breach == "cpu":
        resource_killed(
            "CPU time beyond max_cpu_time_ms",
            f"max_cpu_time_ms={limits.max_cpu_time_ms}",
            f"{observed.get('cpu', 0) / 1e6:.0f} ms",
        )
    if breach == "disk_io":
        resource_killed(
            "disk I/O beyond max_disk_io",
            f"max_disk_io={limits.max_disk_io}",
            f"{observed.get('disk_io', 0)} bytes",
        )
    if breach == "output":
        resource_killed(
            "output beyond max_output_bytes",
            f"max_output_bytes={limits.max_output_bytes}",
            f"{observed.get('output', 0)} bytes",
        )
    elif limits.max_output_bytes and written > limits.max_output_bytes:
        # Written faster than the periodic check: cut to the limit afterwards.
        out.append(
            Violation(
                ViolationKind.RESOURCE,
                attempted="output beyond max_output_bytes"
                + (f" ({', '.join(cut)} output_truncated)" if cut else ""),
                decision="truncated",
                limit=f"max_output_bytes={limits.max_output_bytes}",
                observed=f"{written} bytes",
            )
        )
    if sig in _RLIMIT_SIGNALS:
        # The kernel ended the main process for a per-process rlimit.
        name, what = _RLIMIT_SIGNALS[sig]
        resource_killed(
            what, f"{name}={getattr(limits, name)}", f"signal {signal.Signals(sig).name}"
        )
    return out
