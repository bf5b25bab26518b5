"""The macOS backend: a generated SBPL profile applied with sandbox_init.

``prepare(spec)`` generates the profile (hermetic/platforms/macos/sbpl.py)
and plans the limits; ``execute`` starts the action through the C core
(csrc/macos/sandbox.c: fork, new session, rlimits,
``sandbox_init_with_parameters``, exec), or, when the C entry point is
missing, through ``sandbox-exec -p PROFILE -D KEY=VALUE``.  It waits with a
20 ms loop that also samples memory and CPU of the session's processes,
and ends the whole process group on timeout, on a breached limit, and when
the main process exits.

What macOS cannot do here, each failing the spec closed unless noted:
fresh outputs for ``verify_reproducible`` (no bind mounts), fresh clocks,
``allow_exec=False`` (the profile would also refuse the action's own
exec).  Memory, summed CPU time, processes, CPU weight and disk I/O limits
are sampled, per process or not applied: one the caller set needs
``ResourceLimits(best_effort=True)``, and one still holding the preset's
value (``ResourceLimits.defaulted``) runs so weakened; either way each is
listed in ``unenforced_limits`` (``weakened_limits``,
hermetic/platforms/base.py, the rule of every backend).  There is no pid
namespace: a process that starts a new session leaves the process group
(it stays inside the profile).

Not run here: no macOS machine exists where this project is developed; the
profile generator is tested as text on Linux and the C core type-checked
there, and cibuildwheel's macOS test run executes the suite.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hermetic.core.errors import SandboxError, SpecError, UnsupportedError
from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.spec import SandboxSpec, check_argv, process_limit
from hermetic.core.usage import ResourceUsage
from hermetic.platforms.base import (
    Cancel,
    Observer,
    action_environment,
    fit_rlimits,
    weakened_limits,
)
from hermetic.platforms.capabilities import Capabilities
from hermetic.platforms.macos.sbpl import macos_path, sbpl_profile
from hermetic.security.proxy import EgressProxy
from hermetic.security.timeout import DEFAULT_KILL_GRACE

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "macos-sandbox"
SANDBOX_EXEC = "/usr/bin/sandbox-exec"
CHECK_INTERVAL = 0.02
#: sandbox-exec children, kept referenced until reaped (see _spawn).
_FALLBACK: dict[int, subprocess.Popen[bytes]] = {}
DEFAULT_SEARCH_PATH = "/bin:/usr/bin"


def _native() -> Any:
    try:
        from hermetic import _native
    except ImportError:
        return None
    return _native if hasattr(_native.lib, "hm_mac_spawn") else None


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    notes = {
        "filesystem": "an SBPL profile: inputs read-only, outputs and temps writable, "
        "system roots readable, everything else denied",
        "processes": "no pid namespace: the action's process group is ended; a new "
        "session escapes the group, not the profile",
        "limits": "rlimits per process, memory and summed CPU sampled every 20 ms",
    }
    available = _native() is not None or os.access(SANDBOX_EXEC, os.X_OK)
    if not available:
        notes["sandbox"] = "neither sandbox_init_with_parameters nor sandbox-exec is available"
    return Capabilities(
        platform=sys.platform,
        backend=BACKEND,
        limits="rlimits",
        isolation="sbpl" if available else "none",
        notes=tuple(sorted(notes.items())),
    )


def _limits(spec: SandboxSpec) -> tuple[list[tuple[int, int, int]], tuple[str, ...]]:
    import resource  # POSIX only: this module is imported on every OS

    r = spec.resources
    rl: list[tuple[int, int, int]] = [(resource.RLIMIT_CORE, 0, 0)]
    if r.max_open_files:
        rl.append((resource.RLIMIT_NOFILE, r.max_open_files, r.max_open_files))
    if r.max_file_size:
        rl.append((resource.RLIMIT_FSIZE, r.max_file_size, r.max_file_size))
    weak: list[tuple[str, str]] = []
    if r.max_cpu_time_ms:
        secs = max(1, -(-r.max_cpu_time_ms // 1000))
        rl.append((resource.RLIMIT_CPU, secs, secs + 1))
        weak.append(("max_cpu_time_ms", "per process (RLIMIT_CPU) and sampled, not summed exactly"))
    if r.max_memory_bytes:
        weak.append(("max_memory_bytes", "sampled every 20 ms, not a hard limit"))
    if r.max_processes:
        # Not RLIMIT_NPROC: it counts every process of the user, so a busy
        # machine would refuse the action's first fork.
        weak.append(("max_processes", "the session's processes counted every 20 ms"))
    if r.cpu_shares != 1024:
        weak.append(("cpu_shares", "not applied"))
    if r.max_disk_io:
        weak.append(("max_disk_io", "not counted"))
    if r.max_network_io and not spec.network.uses_proxy:
        weak.append(("max_network_io", "not counted"))
    if os.geteuid() != 0:
        # Unprivileged, the action cannot raise a hard limit above this
        # process's: defaults are lowered to it, the caller's fail closed.
        fields = {
            resource.RLIMIT_NOFILE: "max_open_files",
            resource.RLIMIT_FSIZE: "max_file_size",
            resource.RLIMIT_CPU: "max_cpu_time_ms",
        }
        rl = fit_rlimits(r, rl, fields)
    # What the caller set fails closed unless best_effort; the preset's
    # defaults run weakened and listed, as on Linux.
    return rl, weakened_limits(r, weak)


class Prepared:
    """A spec made ready to run on macOS: its profile and plan."""

    @property
    def unenforced_limits(self) -> tuple[str, ...]:
        return tuple(self.unenforced)

    def close(self) -> None:
        """Nothing to release: every resource is per action here."""

    def __init__(self, spec: SandboxSpec, remap: dict[str, str] | None = None) -> None:
        caps = capabilities()
        if caps.isolation == "none":
            raise UnsupportedError("filesystem isolation", dict(caps.notes)["sandbox"])
        if remap:
            raise UnsupportedError(
                "fresh outputs", "binding fresh copies at the outputs needs mount namespaces"
            )
        if spec.reproducibility.fresh_clocks:
            raise UnsupportedError("fresh clocks", "macOS has no time namespaces")
        if not spec.process.allow_exec:
            raise UnsupportedError(
                "process policy",
                "allow_exec=False: the profile cannot tell the action's own exec from later ones",
            )
        for p in (*spec.outputs, *spec.temps):
            if not os.path.exists(p):
                raise SpecError(f"output or temp path does not exist: {p!r}", value=p)
        self.spec = spec
        self.workdir = spec.workdir or "/"
        self.rlimits, self.unenforced = _limits(spec)
        self.env = spec.action_environment()
        # Profiles without a proxy port are the same for every execution.
        self.profile = None if spec.network.uses_proxy else sbpl_profile(spec)
        if not spec.process.allow_fork and self.profile is not None:
            text, params = self.profile
            self.profile = (text + '(deny process-fork (with message "hermetic:fork"))\n', params)

    def exec_candidates(self, arg0: str, env: Mapping[str, str] | None = None) -> list[str]:
        """Where argv[0] is looked for: the PATH of ``env`` (the action's
        environment), by default the prepared one."""
        if "/" in arg0:
            return [arg0]
        search = (self.env if env is None else env).get("PATH", DEFAULT_SEARCH_PATH)
        return [os.path.join(d or ".", arg0) for d in search.split(":")]


def prepare(
    spec: SandboxSpec,
    *,
    remap: dict[str, str] | None = None,
    require_hermetic: bool = True,
    audit_writes: bool = True,
) -> Prepared:
    """``require_hermetic`` and ``audit_writes`` change nothing here: every
    layer is applied or refused, and denials come from the unified log."""
    return Prepared(spec, remap)


def _spawn(
    prepared: Prepared,
    argv: Sequence[str],
    cwd: str,
    env: dict[str, str],
    profile: tuple[str, dict[str, str]],
    fds: tuple[int, int, int],
) -> int:
    text, params = profile
    nat = _native()
    if nat is None:
        import resource

        cmd = [SANDBOX_EXEC, "-p", text]
        for k, v in params.items():
            cmd += ["-D", f"{k}={v}"]

        def limits() -> None:
            os.umask(0o022)
            for res, cur, mx in prepared.rlimits:
                resource.setrlimit(res, (cur, mx))

        p = subprocess.Popen(
            [*cmd, "--", *argv],
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=limits,  # noqa: PLW1509 - umask and setrlimit only
        )
        # Kept until our own wait4 reaped it: a dropped Popen is reaped by
        # the next Popen anywhere in the process.
        _FALLBACK[p.pid] = p
        return p.pid
    ffi, lib = nat.ffi, nat.lib
    keep: list[Any] = []

    def cs(s: str) -> Any:
        c = ffi.new("char[]", os.fsencode(s))
        keep.append(c)
        return c

    def strv(items: Sequence[str]) -> Any:
        arr = ffi.new("char *[]", [cs(s) for s in items] + [ffi.NULL])
        keep.append(arr)
        return arr

    cands = prepared.exec_candidates(argv[0], env)
    flat = [x for kv in params.items() for x in kv]
    rl = ffi.new("struct hm_mac_rlimit[]", len(prepared.rlimits))
    for i, (res, cur, mx) in enumerate(prepared.rlimits):
        rl[i].resource, rl[i].cur, rl[i].max = res, cur, mx
    err = ffi.new("char[]", 1024)
    pid = lib.hm_mac_spawn(
        strv(cands),
        len(cands),
        strv(argv),
        strv([f"{k}={v}" for k, v in sorted(env.items())]),
        cs(cwd),
        cs(text),
        strv(flat),
        fds[0],
        fds[1],
        fds[2],
        rl,
        len(prepared.rlimits),
        err,
        1024,
    )
    if pid < 0:
        message = ffi.string(err).decode("utf-8", "replace")
        step = message.split(":", 1)[0] or "spawn"
        raise SandboxError(1, stage=step, path=cwd if step == "chdir" else None, detail=message)
    return int(pid)


#: A Sandbox denial as the unified log shows it, e.g.
#: "Sandbox: sh(1234) deny(1) file-write-create /private/tmp/x".
_DENIAL = re.compile(r"\((\d+)\) deny\(\d+\) (\S+)(?: (.*))?$")


def sandbox_denials(since: float, until: float) -> list[Violation]:
    """The profile's denials between two times, read from the unified log.

    Only the denials of hermetic's profiles are read (their rules carry
    ``hermetic:*`` message tags).  ``log show`` takes about a second, so
    ``execute`` calls this only for actions that failed.  Returns nothing
    when the log cannot be read.
    """
    fmt = "%Y-%m-%d %H:%M:%S"
    cmd = [
        "/usr/bin/log",
        "show",
        "--style",
        "ndjson",
        "--start",
        time.strftime(fmt, time.localtime(since - 1)),
        "--end",
        time.strftime(fmt, time.localtime(until + 1)),
        "--predicate",
        'sender == "Sandbox" AND eventMessage CONTAINS "deny"',
    ]
    try:
        shown = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out: dict[tuple[ViolationKind, str], int] = {}
    for line in shown.stdout.splitlines():
        try:
            message = json.loads(line).get("eventMessage", "")
        except (ValueError, AttributeError):
            continue  # the header line, or anything else that is not a record
        m = _DENIAL.search(message)
        if m is None:
            continue
        operation, target = m.group(2), (m.group(3) or "").strip()
        kind = (
            ViolationKind.NETWORK
            if operation.startswith("network")
            else ViolationKind.FILESYSTEM
            if operation.startswith("file")
            else ViolationKind.PROCESS
            if operation.startswith(("process", "signal"))
            else ViolationKind.SYSCALL
        )
        key = (kind, f"{operation} {target}".strip())
        out[key] = out.get(key, 0) + 1
    return [
        Violation(kind, attempted, "denied", observed=f"{n} times" if n > 1 else None)
        for (kind, attempted), n in out.items()
    ]


def _group_usage(pid: int) -> tuple[int, float, int]:
    """(resident bytes, CPU seconds, processes) of the session, sampled."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0, 0.0, 0
    rss = cpu = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
    return int(rss), cpu, len(procs)


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
    """Run one action under the spec's profile and return its result
    (``env``: the action's own variables, platforms/base.py's rule;
    ``streams``: the caller's descriptors, -1 for a captured one)."""
    args = check_argv(argv)
    if read_only:
        raise UnsupportedError(
            "read-only paths",
            "an execution's own read-only paths are mounts in its mount namespace, "
            "which macOS's sandbox has not",
        )
    spec = prepared.spec
    workdir = macos_path(cwd or prepared.workdir)
    # The proxy's variables, set below, win over these.
    env = action_environment(spec, prepared.env, env)
    proxy: EgressProxy | None = None
    listener = None
    sbpl = prepared.profile
    violations: list[Violation] = []
    limits = spec.resources
    with contextlib.ExitStack() as stack:
        if sbpl is None:
            import socket

            from hermetic.security.proxy import proxy_env

            listener = socket.socket()
            stack.callback(listener.close)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            sbpl = sbpl_profile(spec, proxy_port=port)
            env.update(
                {
                    k: v.replace(":3128", f":{port}")
                    for k, v in proxy_env(spec.network.allowed_hosts).items()
                }
            )
            proxy = EgressProxy.for_spec(listener.fileno(), spec).start()
        files = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(3)]
        if stdin:
            files[0].write(stdin)
            files[0].seek(0)
        start = time.monotonic()
        given = streams or (-1, -1, -1)
        fds = (
            given[0] if given[0] >= 0 else files[0].fileno(),
            given[1] if given[1] >= 0 else files[1].fileno(),
            given[2] if given[2] >= 0 else files[2].fileno(),
        )
        pid = _spawn(prepared, args, workdir, env, sbpl, fds)
        if observer is not None:
            observer.started(pid)
        try:
            status, ru, timed_out, breach = _wait(
                pid, timeout, kill_grace, limits, files, cancel, process_limit(spec)
            )
        finally:
            popen = _FALLBACK.pop(pid, None)
            if popen is not None:
                popen.returncode = 0  # reaped by _wait: the Popen must not wait again
        duration = time.monotonic() - start
        if proxy is not None:
            violations += proxy.stop()
        outs = []
        for f in files[1:]:
            f.seek(0)
            outs.append(f.read())
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    if timed_out:
        violations.append(
            Violation(ViolationKind.TIMEOUT, f"ran longer than {timeout:g} s", "killed")
        )
    if breach:
        violations.append(Violation(ViolationKind.RESOURCE, breach, "killed"))
    if exit_code != 0:
        # What the profile refused, for the audit (only on failure: reading
        # the unified log takes about a second).
        violations += sandbox_denials(time.time() - duration, time.time())
    return ExecutionResult(
        argv=args,
        exit_code=exit_code,
        signal=sig,
        stdout=outs[0],
        stderr=outs[1],
        duration=duration,
        timed_out=timed_out,
        usage=ResourceUsage.from_rusage(duration, ru),
        violations=tuple(violations),
        hermetic=not spec.network.host_network,
        unenforced_limits=tuple(prepared.unenforced),
        isolation="sbpl",
    )


def _wait(
    pid: int,
    timeout: float | None,
    grace: float,
    limits: Any,
    files: list[Any],
    cancel: Cancel | None,
    processes: str = "",
) -> tuple[int, Any, bool, str | None]:
    """Poll the main process every 20 ms; end the whole group when it is
    done, on timeout, on cancel or on a breached limit."""
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    breach = None
    while True:
        got, status, ru = os.wait4(pid, os.WNOHANG)
        if got == pid:
            break
        now = time.monotonic()
        if deadline is not None and now >= deadline and not timed_out:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = now + grace
            continue
        if timed_out and deadline is not None and now >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if breach is None and (
            limits.max_memory_bytes or limits.max_cpu_time_ms or limits.max_processes
        ):
            rss, cpu, count = _group_usage(pid)
            if limits.max_memory_bytes and rss > limits.max_memory_bytes:
                breach = f"memory beyond max_memory_bytes={limits.max_memory_bytes}"
            elif limits.max_cpu_time_ms and cpu * 1000 > limits.max_cpu_time_ms:
                breach = f"CPU time beyond max_cpu_time_ms={limits.max_cpu_time_ms}"
            elif limits.max_processes and count > limits.max_processes:
                limit = processes or f"max_processes={limits.max_processes}"
                breach = f"processes beyond {limit}"
        if breach is None and limits.max_output_bytes:
            written = sum(os.fstat(f.fileno()).st_size for f in files[1:])
            if written > limits.max_output_bytes:
                breach = f"output beyond max_output_bytes={limits.max_output_bytes}"
        if breach is not None or (cancel is not None and cancel.is_set()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        time.sleep(CHECK_INTERVAL)
    # The main process is done: nothing of its group may outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return status, ru, timed_out, breach
