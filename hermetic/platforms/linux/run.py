"""Running an action: clone the sandbox's pid 1 from this process
(csrc/linux/spawn.c), or activate a standby, wait for it and collect the
result."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hermetic.core import tree
from hermetic.core.errors import SandboxError, SpecError, UnsupportedError
from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.spec import check_argv
from hermetic.core.usage import ResourceUsage
from hermetic.monitoring.cgroup_v1 import SlotUsage, V1Slot
from hermetic.monitoring.cgroup_v2 import PARENT as V2
from hermetic.monitoring.cgroup_v2 import V2Group
from hermetic.platforms.base import Cancel, Observer
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux.memory import STACKS, CMemory, native
from hermetic.platforms.linux.netns import POOL as NETNS
from hermetic.platforms.linux.prepared import Prepared, env_bound
from hermetic.platforms.linux.reap import Rusage as _Rusage
from hermetic.platforms.linux.reap import reap as _reap
from hermetic.platforms.linux.setup_errors import setup_error
from hermetic.platforms.linux.standby import Standby
from hermetic.platforms.linux.violations import (
    default_cap_violations,
    kept_sizes,
    limit_violations,
)
from hermetic.platforms.linux.watch import Watch
from hermetic.platforms.linux.workers import POOL as WORKERS
from hermetic.platforms.linux.workers import Worker
from hermetic.security.outputs import scan as scan_outputs
from hermetic.security.syscalls import SyscallAudit
from hermetic.security.timeout import (
    DEFAULT_KILL_GRACE,
    Serve,
    check_interval,
    wait_or_kill,
    wait_readable,
)

#: Seconds pid 1 gets to kill and reap everything before it is SIGKILLed.
END_WAIT = 1.0
#: How deep and how many entries hm_outputs_plain looks before it leaves
#: the answer to the set-id scan (which goes to any depth).
QUICK_SCAN_DEPTH = 32
QUICK_SCAN_ENTRIES = 100_000


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


def _wait(
    proc: Any,
    timeout: float | None,
    grace: float,
    check: Any,
    serve: Serve | None = None,
    interval: Callable[[float], float] = check_interval,
) -> tuple[bool, str | None, int | None, Any]:
    """Wait for the sandbox's pid 1 and reap it: (timed_out, breach, status, rusage).

    ``status`` is None (and the rusage too) when something else reaped pid 1.
    """
    pidfd = proc.pidfd

    def send(sig: int) -> None:
        if sig == signal.SIGKILL:
            # Ask pid 1 to kill and reap everything, so the rusage covers
            # every process; SIGKILL it only if it does not finish.
            signal.pidfd_send_signal(pidfd, native().lib.HM_SIG_END)
            if wait_readable(pidfd, END_WAIT):
                return
        signal.pidfd_send_signal(pidfd, sig)

    timed_out, breach = wait_or_kill(pidfd, timeout, send, grace, check, serve, interval)
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
    lib = native().lib
    s = [proc.stamps[i] for i in range(lib.HM_STAMP_DONE + 1)]
    if s[lib.HM_STAMP_IDS] == 0:  # no id maps written (Landlock-only): no such stages
        s[lib.HM_STAMP_IDS] = s[lib.HM_STAMP_OPS] = s[lib.HM_STAMP_START]
    points = [called, *s[: lib.HM_STAMP_EXEC + 1], returned]
    for name, (a, b) in zip(STAGES[:6], zip(points, points[1:], strict=False), strict=False):
        out[name] = (b - a) / 1e9
    out[STAGES[6]] = (s[lib.HM_STAMP_EXITED] - s[lib.HM_STAMP_EXEC]) / 1e9
    out[STAGES[7]] = (s[lib.HM_STAMP_DONE] - s[lib.HM_STAMP_EXITED]) / 1e9
    out[STAGES[8]] = (reaped - s[lib.HM_STAMP_DONE]) / 1e9


def _cancellable(check: Any, cancel: Cancel) -> Any:
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
                    signal.pidfd_send_signal(pidfd, native().lib.HM_SIG_END)
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
    observer: Observer | None = None,
    cancel: Cancel | None = None,
    profile: dict[str, float] | None = None,
    env: Mapping[str, str] | None = None,
    streams: tuple[int, int, int] | None = None,
    read_only: tuple[str, ...] = (),
) -> ExecutionResult:
    """Run one action in a fresh sandbox and return its result.

    ``env``: the action's own variables, over the prepared environment
    (platforms/base.py's action_environment says how; validated by the
    caller).  ``cancel``, once set, ends the sandbox (SIGKILL) at the next
    periodic check (20-100 ms apart: hermetic/security/timeout.py).
    ``profile``, a dict, receives the seconds each stage took (pid 1 stamps
    its stages: see enum hm_stamp; benchmarks/profile_stages.py).
    ``streams``: the caller's descriptors for stdin, stdout, stderr (-1:
    the default), checked by hermetic/core/streams.py; a stream passed is
    not captured.

    Raises SandboxError when setup fails (the action did not run).  With
    limits that need a cgroup, the sandbox is cloned by a worker thread
    resident in a cgroup slot (hermetic/platforms/linux/workers.py); the
    calling thread still does all the waiting.
    """
    args = check_argv(argv)
    workdir = cwd or prepared.workdir
    if "\0" in workdir or not workdir.startswith("/"):
        raise SpecError(f"cwd must be an absolute path: {workdir!r}", field="cwd", value=workdir)
    if cwd is not None and not prepared.shows(cwd):
        raise SpecError(f"cwd {cwd!r} is not visible in the sandbox", field="cwd", value=cwd)
    action_env = prepared.action_env(env)
    exec_env = prepared.env if action_env is None else action_env
    bound = prepared.env_bound if action_env is None else env_bound(action_env)
    _check_exec_size(args, exec_env, bound)
    if read_only and prepared.isolation != "namespaces":
        raise UnsupportedError(
            "read-only paths",
            "an execution's own read-only paths are bind mounts, and this sandbox has no "
            "mount namespace (Landlock alone cannot take back a write it grants)",
        )
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
        env=action_env,
        streams=streams or (-1, -1, -1),
        read_only=read_only,
    )
    if prepared.standby is None:
        return _execute_fresh(prepared, run)
    with prepared.standby.running():
        # The standby is in ``held`` from before it leaves the slot: a
        # signal handler raising anywhere from here on cannot lose it.
        held: list[Standby] = []
        try:
            standby = (
                prepared.standby.take(workdir, into=held, late=bool(read_only))
                if profile is None
                else None
            )
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


#: execve's bound on one argument or environment string, its NUL included
#: (MAX_ARG_STRLEN: 32 pages); the longest path, its NUL included.
MAX_ARG_STRLEN = 32 * 4096
PATH_MAX = 4096


def _check_exec_size(args: tuple[str, ...], env: Mapping[str, str], bound: tuple[int, int]) -> None:
    """SpecError unless execve can pass ``args`` and ``env``: one string
    over MAX_ARG_STRLEN, or all of them (with their pointers) over ARG_MAX,
    fails it with E2BIG.  Checked before anything is built from them, so a
    hostile command line costs nothing kept (an executor caches what it
    makes of an environment and a command name).  A variable is named,
    never shown: values may be secrets.  ``bound`` is ``env_bound(env)``,
    which an executor computes once for its own environment."""
    # Read each time: it follows RLIMIT_STACK, which the caller may change.
    # The kernel also counts the program's path as execve gets it (at most
    # PATH_MAX with its NUL) and a pointer.
    arg_max = os.sysconf("SC_ARG_MAX")
    limit = arg_max - PATH_MAX - 8
    # A character is at most 4 bytes in UTF-8 (a surrogate escape is 1):
    # when even that bound passes, so do the exact counts below.
    longest = max(bound[0], max(map(len, args), default=0))
    chars = bound[1] + sum(map(len, args))
    if 4 * longest + 2 <= MAX_ARG_STRLEN and 4 * chars + 10 * (len(args) + len(env)) <= limit:
        return
    total = 0
    for i, a in enumerate(args):
        n = len(a.encode(errors="surrogateescape")) + 1
        if n > MAX_ARG_STRLEN:
            raise SpecError(
                f"argv[{i}] is {n - 1} bytes: execve passes at most "
                f"{MAX_ARG_STRLEN - 1} per argument",
                field=f"argv[{i}]",
                value=n - 1,
            )
        total += n + 8
    for k, v in env.items():
        n = len(k.encode(errors="surrogateescape")) + len(v.encode(errors="surrogateescape")) + 2
        if n > MAX_ARG_STRLEN:
            raise SpecError(
                f"environment variable {k!r} is {n - 1} bytes with its name: execve passes "
                f"at most {MAX_ARG_STRLEN - 1} per variable",
                field="env",
                value=k,
            )
        total += n + 8
    if total > limit:
        raise SpecError(
            f"argv and the environment are {total} bytes: more than execve passes here "
            f"(ARG_MAX {arg_max}, less {PATH_MAX + 8} for the program's path)",
            field="argv",
            value=total,
        )


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


def _want_next(prepared: Prepared, workdir: str, late: bool) -> None:
    """Ask for the next standby (see StandbySlot.want; ``late``: for an
    execution with read-only paths of its own), never at the cost of the
    action being started (a thread that cannot start).  Nothing broader is
    caught: what a signal handler raises here must reach the caller."""
    if prepared.standby is not None:
        with contextlib.suppress(RuntimeError, OSError):
            prepared.standby.want(workdir, late)


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
    observer: Observer | None = None,
    cancel: Cancel | None = None,
    profile: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    streams: tuple[int, int, int] = (-1, -1, -1),
    read_only: tuple[str, ...] = (),
) -> ExecutionResult:
    nat = native()
    ffi, lib = nat.ffi, nat.lib
    limits = prepared.spec.resources
    if standby is not None:
        worker, group = standby.worker, standby.group
    slot: V1Slot | V2Group | None = worker.slot if worker is not None else group
    spawn = worker.spawn if worker is not None else lib.hm_spawn
    mem = CMemory()
    if standby is not None:
        plan = standby.plan
        keep = prepared.fill_action(plan, workdir, args[0], env)
    else:
        plan, keep = prepared.new_plan(workdir, args[0], env)
    # What the set-id scan leaves alone, identified before the action runs
    # (see security/outputs.py's scan).
    skip = tree.places((*prepared.scan_skip, *read_only)) if prepared.scan_roots else ()
    ops = prepared.action_ops
    if read_only:
        # After every op of the plan (the root is built, or the prepared one
        # copied): each path bound onto itself, read-only, nosuid, nodev.
        # A late standby's action makes them at its go (op_index n_ops + i
        # on failure, as here).
        own = linux_plan.read_only_ops(read_only)
        ops = ops + own
        if standby is not None:
            plan.late_ops = mem.ops(own)
            plan.n_late_ops = len(own)
        else:
            plan.ops = mem.ops(ops)
            plan.n_ops = len(ops)
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
        # What the action gets: the caller's own descriptor where one was
        # passed (the capture file, never written, then reads as empty).
        given = [g if g >= 0 else c for g, c in zip(streams, capture[0:3], strict=True)]
        if standby is None:
            plan.stdin_fd, plan.stdout_fd, plan.stderr_fd = given
        watch = Watch(
            prepared.limits,
            bool(limits.max_memory_bytes),
            slot,
            out_fd,
            err_fd,
            prepared.tmp_bytes,
            linux_plan.private_tmp_limit(prepared.spec),
            captured=streams[1] < 0 or streams[2] < 0,
        )
        # The private /tmp is always watched: the first check comes after
        # an interval, so a short action costs nothing more.
        watched = bool(prepared.limits.watched or prepared.tmp_bytes)
        watched = watched or bool(slot and limits.max_memory_bytes)
        check = watch if watched else None
        if cancel is not None:
            check = _cancellable(check, cancel)
        if standby is not None:
            proc = standby.proc
        else:
            proc = ffi.new("struct hm_proc *")
            proc.notify_fd = proc.proxy_fd = -1
        error = ffi.new("struct hm_error *")
        audit = SyscallAudit(prepared.audit_roots_with(read_only)) if prepared.notify else None
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
                    _want_next(prepared, workdir, bool(read_only))
                    rc = lib.hm_activate(proc, given[0], given[1], given[2], error)
                else:
                    rc = spawn(plan, proc, error)
                returned = time.monotonic_ns()
                if rc < 0:
                    if standby is not None and error.stage == lib.HM_STAGE_NONE:
                        # No word from it at all: it had died (killed from
                        # outside) before its go.  Not this action's fault.
                        raise _StandbyLost
                    search = prepared.search_path(env) if env is not None else None
                    raise setup_error(prepared, args, workdir, error, ops, search=search)
                if standby is None and profile is None:
                    _want_next(prepared, workdir, bool(read_only))
                watch.pid1 = proc.pid
                if proc.proxy_fd >= 0:
                    from hermetic.security.proxy import EgressProxy

                    proxy = EgressProxy.for_spec(proc.proxy_fd, prepared.spec).start()
                if observer is not None:
                    observer.started(proc.pid)
                serve: Serve | None = None
                if audit is not None and proc.notify_fd >= 0:
                    serve = audit.attach(proc.notify_fd)
                timed_out, breach, status, ru = _wait(
                    proc,
                    timeout,
                    kill_grace,
                    check,
                    serve,
                    watch.interval if watched else check_interval,
                )
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
        keep_out, keep_err = kept_sizes(prepared.limits.output_bytes, out_size, err_size)
        captured = (("stdout", out_size, keep_out), ("stderr", err_size, keep_err))
        violations += limit_violations(
            prepared.spec,
            counted,
            breach,
            watch.observed,
            sig if not timed_out else None,
            out_size + err_size,
            [name for name, size, kept in captured if size > kept],
        )
        tmp_full = watch.tmp_violation()
        if tmp_full is not None:
            violations.append(tmp_full)
        if not prepared.limits.output_bytes:
            violations += default_cap_violations(captured)
        # After pid 1 is reaped: nothing of the action's is left to race.
        # The quick look in C answers only "no regular file with a set-id
        # bit, nor an executable one with file capabilities, anywhere"; on
        # any other answer the scan runs.
        if prepared.scan_roots and (
            lib.hm_outputs_plain(prepared.scan_roots_c, QUICK_SCAN_DEPTH, QUICK_SCAN_ENTRIES) != 1
        ):
            violations += scan_outputs(prepared.scan_roots, skip)
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
