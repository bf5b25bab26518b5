"""Prepared: a spec made ready to run on Linux, decided and marshalled once.

``prepare(spec)`` turns a validated spec into everything the C core needs
that does not depend on the command (the op list, id maps, environment,
rlimits, Landlock rules, the seccomp program), marshalled once into C
memory; linux/run.py adds the command per action.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hermetic.core.errors import SpecError, UnsupportedError
from hermetic.core.paths import is_within
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.base import action_environment
from hermetic.platforms.capabilities import Capabilities
from hermetic.platforms.linux import landlock as linux_landlock
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux import template as linux_template
from hermetic.platforms.linux.limits import _global_root, cgroup_mechanism, plan_limits
from hermetic.platforms.linux.memory import CMemory, native
from hermetic.platforms.linux.probe import (
    ALL_NAMESPACES,
    CAP_SETFCAP,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    ROOT_PATH_CAPS,
    capabilities,
    capability_names,
    clone_error,
    effective_capabilities,
    flag_names,
)
from hermetic.platforms.linux.setup_errors import setup_error
from hermetic.platforms.linux.standby import KEEPER, StandbySlot, make_standby
from hermetic.security.syscalls import Roots, SyscallAudit

HOSTNAME = "localhost"
DOMAINNAME = "localdomain"
#: Room for the default seccomp program, in instructions.
SECCOMP_MAX = 4096  # BPF_MAXINSNS
#: PATH searched for argv[0] when the spec's environment has none (execvp's).
DEFAULT_SEARCH_PATH = "/bin:/usr/bin"
#: The longest file name (a command name longer than this exists nowhere).
NAME_MAX = 255
#: PATH's directories searched for a command, at most.
MAX_SEARCH_DIRS = 4096
#: What an executor keeps of its actions' environments, PATHs and command
#: names (see Prepared._cache_room): in all, and for one entry.
CACHE_BYTES = 16 * 1024 * 1024
CACHE_ENTRY_BYTES = 256 * 1024
#: Root callers build each spec's root once and copy it per action
#: (hermetic/platforms/linux/template.py).  False builds it per action, as
#: for unprivileged callers (benchmarks compare both).
MOUNT_TEMPLATE = True
#: A reused executor sets up the next action's sandbox while the current one
#: runs (hermetic/platforms/linux/standby.py).  False: never (benchmarks).
STANDBY = True
#: The prepared mount namespace is built in the background as the executor
#: is created, ready for its first action.  False: by the first action.
PRIME_TEMPLATE = True


def _proxy_port() -> int:
    # The egress proxy's module (sockets, selectors, ipaddress) is imported
    # only by specs that use it.
    from hermetic.security.proxy import PROXY_PORT

    return PROXY_PORT


#: Working directories whose visibility a Prepared remembers (Prepared.shows).
SHOWN = 256


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
        elif spec.inputs_within_writable():
            # Landlock only adds rights: a rule letting the action write an
            # output covers everything below it, inputs included.  Only a
            # read-only mount can carve an input out of a writable tree.
            raise UnsupportedError(
                "read-only inputs",
                f"input {spec.inputs_within_writable()[0]!r} lies inside a writable output or "
                "temp, and only a read-only mount keeps it read-only there; user namespaces "
                "are unavailable here (Landlock-only isolation)",
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
        #: shows()'s answers so far (at most SHOWN of them).
        self._shown: dict[str, bool] = {}
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
        #: The variables the sandbox sets itself, which win over an
        #: action's own (execute's ``env``).
        self.own_env: tuple[str, ...] = ()
        if net.uses_proxy:
            # The proxy's variables win over the spec's: they are the only
            # way out of the sandbox.
            from hermetic.security.proxy import proxy_env  # (sockets: only here)

            proxy_vars = proxy_env(net.allowed_hosts)
            self.env.update(proxy_vars)
            self.own_env = tuple(proxy_vars)
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
        self._exec_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        #: What both caches hold, in bytes of the strings they were made from.
        self._cache_bytes = 0
        self._c_lock = threading.Lock()
        self._host_paths: dict[str, str | None] = {}

        mem = CMemory()
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
                    tplan, terr, lambda e: setup_error(None, ("",), "/", e, t_ops), mem
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
        #: Inputs nested in an output or temp: the caller's files, which the
        #: scan leaves alone (the sandbox showed them read-only).
        self.scan_skip = spec.inputs_within_writable()
        #: The same roots for hm_outputs_plain (csrc/linux/outputs.c), which
        #: tells whether the scan has anything to look at.
        self.scan_roots_c = native().ffi.new(
            "char[]", b"".join(os.fsencode(p) + b"\0" for p in self.scan_roots) + b"\0"
        )
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
        self._c_cache: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}
        #: The next action's sandbox, set up ahead once the spec is reused.
        self.standby: StandbySlot | None = None
        if (
            STANDBY
            and namespaces
            and not self.deny_exec
            and not self.fresh_clocks
            and not net.uses_proxy
        ):
            self.standby = StandbySlot(self, make_standby)

    @property
    def unenforced_limits(self) -> tuple[str, ...]:
        return self.limits.unenforced

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
        ffi, lib = native().ffi, native().lib
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
            # the processes or hides the host's: seccomp closes these gaps.
            opts.deny_sockets = 0 if self.spec.network.host_network else 1
            opts.deny_sessions = 1
            # Landlock does not cover a file's mode, owner or times.
            opts.emulate_metadata = 1
        prog = ffi.new("unsigned char[]", 8 * SECCOMP_MAX)  # struct sock_filter[]
        n = lib.hm_seccomp_build(prog, SECCOMP_MAX, opts)
        if n < 0:
            raise UnsupportedError("seccomp", "the filter does not fit its buffer")
        # Kept as long as its program is used (per action's command under
        # allow_exec=False): its own length, not the buffer's 32 KiB.
        kept = ffi.new("unsigned char[]", 8 * n)
        ffi.memmove(kept, prog, 8 * n)
        return kept, n

    def shows(self, cwd: str) -> bool:
        """Whether the sandbox shows the (canonical) directory ``cwd``: one
        a declared path shows, or within the spec's working directory (the
        sandbox makes that one) unless it is "/" (all of the host is within
        that).  The answer depends on the spec alone, so the few working
        directories of a build are each looked at once."""
        shown = self._shown.get(cwd)
        if shown is None:
            shown = (
                (self.workdir != "/" and is_within(cwd, self.workdir))
                or linux_plan.visible(self.spec, cwd)
                or cwd == "/"
            )
            if len(self._shown) < SHOWN:
                self._shown[cwd] = shown
        return shown

    @functools.cached_property
    def env_bound(self) -> tuple[int, int]:
        """``env_bound`` of the prepared environment, computed once."""
        return env_bound(self.env)

    def action_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        """The environment of an action given ``execute(..., env=env)``
        (platforms/base.py's rule); None when it is the prepared one."""
        if not env:
            return None
        return action_environment(self.spec, self.env, env, self.own_env)

    def audit_roots_with(self, read_only: tuple[str, ...]) -> Roots:
        """The audit's roots for an execution with read-only paths of its
        own (``execute(read_only=...)``): a write there is refused like one
        to an input."""
        if not read_only:
            return self.audit_roots
        return SyscallAudit.roots(self.writable, (*self.spec.inputs, *read_only))

    def new_plan(
        self, workdir: str, arg0: str, env: Mapping[str, str] | None = None
    ) -> tuple[Any, list[Any]]:
        """A fresh plan for one action, cwd and argv[0]'s candidates filled in.

        Returns the plan and what must stay alive as long as it is used.
        """
        ffi = self._mem.ffi
        plan = ffi.new("struct hm_plan *")
        ffi.memmove(plan, self._template, self._plan_size)
        return plan, self.fill_action(plan, workdir, arg0, env)

    def fill_action(
        self, plan: Any, workdir: str, arg0: str, env: Mapping[str, str] | None = None
    ) -> list[Any]:
        """Set ``plan``'s cwd, environment (``env``: an action_env(), None
        for the prepared one) and argv[0]'s candidates; returns what keeps
        them alive.  pid 1 reads all three only after this (a standby's after
        its go), so a standby made for the prepared environment serves."""
        cwd, keep_cwd = self._cached("cwd", workdir)
        plan.cwd = cwd
        keep_env = None
        search = None
        if env is not None:
            # Cached by the whole environment: the same one for every
            # action of a build step costs one marshalling.
            envp, keep_env = self._cached(
                "envp", "\0".join(f"{k}={v}" for k, v in sorted(env.items()))
            )
            plan.envp = envp
            search = self.search_path(env)
        plan.n_exec_paths = len(self.exec_candidates(arg0, search))
        if self.deny_exec:
            # The filter names this action's execve paths by address: both
            # come from one cache entry, built together, with the Landlock
            # rules that make the action's own program the only executable.
            # A relative candidate is resolved from the working directory,
            # which then keys the entry too.
            relative = any(not c.startswith("/") for c in self.exec_candidates(arg0, search))
            (paths, prog, n, rules, n_rules), keep_exec = self._cached(
                "exec+filter", arg0, workdir if relative else "", search
            )
            plan.seccomp_filter = prog
            plan.seccomp_len = n
            plan.landlock_rules = rules
            plan.n_landlock_rules = n_rules
        else:
            paths, keep_exec = self._cached("exec", arg0, "", search)
        plan.exec_paths = paths
        return [keep_cwd, keep_env, keep_exec]

    def _cached(
        self, kind: str, key: str, workdir: str = "", search: str | None = None
    ) -> tuple[Any, Any]:
        """A C string (cwd), string array (an action's own environment,
        "envp"; argv[0]'s candidates, "exec"), or array and the seccomp
        program naming its pointers and the Landlock rules ("exec+filter",
        ``workdir`` resolving relative candidates), reused across actions
        up to a bound.  ``search``: the action's own PATH, when its
        environment is not the prepared one; the candidates, and so the
        program and rules naming them, depend on it.  Returns the value and
        what keeps it alive."""
        entry = (kind, f"{workdir}\0{key}" if workdir else key, search)
        with self._c_lock:
            found = self._c_cache.get(entry)
        if found is not None:
            return found
        mem = CMemory()
        value: Any
        if kind == "cwd":
            value = mem.cstr(key)
        elif kind == "envp":
            value = mem.strv(key.split("\0"))
        else:
            paths = mem.strv(self.exec_candidates(key, search))
            value = paths
            if kind == "exec+filter":
                ffi = mem.ffi
                n = len(self.exec_candidates(key, search))
                prog, length = self._filter(
                    [int(ffi.cast("uintptr_t", paths[i])) for i in range(n)]
                )
                mem.keep.append(prog)
                mem.charge(ffi.sizeof(prog))
                rules, n_rules = self._exec_rules(key, workdir or "/", mem, search)
                value = (paths, prog, length, rules, n_rules)
        found = (value, mem)
        # What the entry takes: its C copies, and its key (Python strings).
        size = mem.cost + 2 * (len(entry[1]) + len(search or ""))
        with self._c_lock:
            if self._cache_room(size):
                self._c_cache[entry] = found
        return found

    def action_landlock_rules(
        self, arg0: str, workdir: str = "/", search: str | None = None
    ) -> tuple[linux_landlock.Rule, ...]:
        """An action's Landlock rules: the prepared ones, then, under
        allow_exec=False, EXECUTE on its program and interpreters (those
        declared paths hold: a rule on a missing file would fail setup)."""
        if not self.deny_exec:
            return self.landlock_rules
        spec = self.spec
        roots = (*spec.inputs, *spec.outputs, *spec.temps)
        files = linux_landlock.exec_files(
            [os.path.join(workdir, c) for c in self.exec_candidates(arg0, search)],
            lambda p: any(is_within(p, r) for r in roots),
        )
        extra = (linux_landlock.Rule(f, linux_landlock.EXECUTE) for f in files)
        return (*self.landlock_rules, *extra)

    def _exec_rules(
        self, arg0: str, workdir: str, mem: CMemory, search: str | None = None
    ) -> tuple[Any, int]:
        """The Landlock rules of an action whose argv[0] is ``arg0`` under
        allow_exec=False: the prepared ones (nothing executable, same
        order, so a failing rule's index names the same path), then
        EXECUTE on its program and interpreters."""
        rules = self.action_landlock_rules(arg0, workdir, search)
        arr = mem.ffi.new("struct hm_landlock_rule[]", max(len(rules), 1))
        for i, rule in enumerate(rules):
            arr[i].path = mem.cstr(rule.path)
            arr[i].access = rule.access
        mem.keep.append(arr)
        mem.charge(mem.ffi.sizeof(arr))
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

    @staticmethod
    def search_path(env: Mapping[str, str]) -> str:
        """The PATH argv[0] is looked up in, under environment ``env``."""
        return env.get("PATH", DEFAULT_SEARCH_PATH)

    def exec_candidates(self, arg0: str, search: str | None = None) -> tuple[str, ...]:
        """Where execve looks for argv[0]: the spec's PATH, or ``search``
        (an action's own), as inside the sandbox."""
        if search is None:
            search = self.search_path(self.env)
        found = self._exec_cache.get((search, arg0))
        if found is None:
            if "/" in arg0:
                found = (arg0,)
            else:
                # Each directory once (a repeat finds nothing new); past
                # NAME_MAX no name can exist, and the first candidate fails
                # with ENAMETOOLONG as execvp's would: no product of a long
                # PATH and a long name is ever built.
                dirs = list(dict.fromkeys(search.split(":")))
                if len(arg0.encode(errors="surrogateescape")) > NAME_MAX:
                    dirs = dirs[:1]
                if len(dirs) > MAX_SEARCH_DIRS:
                    raise SpecError(
                        f"PATH has {len(dirs)} directories; at most {MAX_SEARCH_DIRS} are "
                        "searched for the command",
                        field="env",
                        value=len(dirs),
                    )
                found = tuple(os.path.join(d or ".", arg0) for d in dirs)
            # Python strings: about 60 bytes each besides their characters.
            size = 2 * (len(search) + len(arg0)) + sum(len(c) + 64 for c in found)
            with self._c_lock:
                if self._cache_room(size):
                    self._exec_cache[(search, arg0)] = found
        return found

    def _cache_room(self, size: int) -> bool:
        """Whether an entry of about ``size`` bytes may be kept (the caller
        holds _c_lock): the caches hold what actions give (environments,
        PATHs, command names), so they are bounded by bytes, not only by
        entries, and an entry too large for them is made every time."""
        if size > CACHE_ENTRY_BYTES or self._cache_bytes + size > CACHE_BYTES:
            return False
        self._cache_bytes += size
        return True


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
    cover it (hermetic/platforms/linux/landlock.py)."""
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
    mem: CMemory,
    ops: Sequence[linux_plan.Op] = (),
) -> tuple[dict[str, Any], tuple[linux_landlock.Rule, ...]]:
    """The plan's Landlock fields: an extra layer under namespaces, the only
    filesystem layer without them (hermetic/platforms/linux/landlock.py)."""
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


def env_bound(env: Mapping[str, str]) -> tuple[int, int]:
    """The longest variable of ``env`` and all of them, in characters of
    name and value: run.py's quick bound on what execve is passed."""
    longest = chars = 0
    for k, v in env.items():
        n = len(k) + len(v)
        longest = max(longest, n)
        chars += n
    return longest, chars


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
