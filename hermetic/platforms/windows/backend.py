"""The Windows backend: a job object per execution (csrc/windows/job.c).

What a job object enforces: the whole process tree is in the job from the
first instruction (created suspended, assigned, resumed) and dies with it
(KILL_ON_JOB_CLOSE; a timeout terminates the job and waits until no
process is left); ``max_processes`` (ACTIVE_PROCESS), ``max_memory_bytes``
(JOB_MEMORY) and ``max_cpu_time_ms`` (JOB_TIME) for the whole tree;
accounting of CPU, I/O and peak memory for the whole tree; exactly the
spec's environment, stdio captured, and a private temp directory
(``TEMP``/``TMP``) removed afterwards.

What it does not: job objects isolate neither files (the action reads the
whole machine and writes wherever the caller may) nor the network.  So a
spec cannot run hermetically here: ``HermeticExecutor.create`` fails closed
naming both layers, unless the caller accepts a non-hermetic run with
``HermeticExecutor.create(spec, require_hermetic=False)``; such results
have ``hermetic=False`` and name the missing layers in
``unenforced_layers``.

Not run here: no Windows machine exists where this project is developed;
the C core is compiled with mingw-w64 (-Werror) on Linux and cibuildwheel's
Windows test run executes the suite.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hermetic.core.errors import SandboxError, UnsupportedError
from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.spec import SandboxSpec, check_argv, process_limit
from hermetic.core.usage import ResourceUsage
from hermetic.platforms.base import Cancel, Observer, action_environment, weakened_limits
from hermetic.platforms.capabilities import Capabilities
from hermetic.security.timeout import DEFAULT_KILL_GRACE

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "windows-job"
#: What a job object cannot apply, whatever the spec says.
UNENFORCED_LAYERS = (
    "filesystem isolation: the action reads the whole machine and writes wherever the "
    "caller may (a job object does not restrict files)",
    "network isolation: a job object does not restrict the network",
)
_KILLED = {1: "memory beyond max_memory_bytes", 2: "CPU time beyond max_cpu_time_ms"}
_PROCESS_REFUSED = 4


def _native() -> Any:
    from hermetic import _native

    return _native


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    notes = {
        "processes": "a job object: the whole tree, killed on timeout and when the job closes",
        "limits": "processes, memory and CPU time for the whole tree (job limits)",
        "not isolated": "; ".join(UNENFORCED_LAYERS),
    }
    return Capabilities(
        platform=sys.platform,
        backend=BACKEND,
        limits="job-object",
        isolation="none",
        notes=tuple(sorted(notes.items())),
    )


class Prepared:
    """A spec made ready to run in job objects."""

    @property
    def unenforced_limits(self) -> tuple[str, ...]:
        return tuple(self.unenforced)

    def close(self) -> None:
        """Nothing to release: every resource is per action here."""

    def __init__(
        self,
        spec: SandboxSpec,
        remap: dict[str, str] | None = None,
        require_hermetic: bool = True,
    ) -> None:
        if require_hermetic:
            raise UnsupportedError(
                "filesystem and network isolation",
                "; ".join(UNENFORCED_LAYERS)
                + ". HermeticExecutor.create(spec, require_hermetic=False) runs it anyway, "
                "marked hermetic=False",
            )
        if remap:
            raise UnsupportedError("fresh outputs", "Windows has no bind mounts")
        if spec.reproducibility.fresh_clocks:
            raise UnsupportedError("fresh clocks", "Windows has no time namespaces")
        if not (spec.process.allow_fork and spec.process.allow_exec):
            raise UnsupportedError(
                "process policy", "a job object cannot refuse fork or exec (only count them)"
            )
        r = spec.resources
        weak: list[tuple[str, str]] = []
        if r.cpu_shares != 1024:
            weak.append(("cpu_shares", "not applied"))
        if r.max_disk_io:
            weak.append(("max_disk_io", "not counted"))
        if r.max_network_io:
            weak.append(("max_network_io", "not counted"))
        if r.max_file_size:
            weak.append(("max_file_size", "no per-file limit"))
        if r.max_open_files:
            weak.append(("max_open_files", "no handle limit"))
        if r.max_output_bytes:
            weak.append(("max_output_bytes", "not checked while the action runs"))
        self.spec = spec
        # What the caller set fails closed unless best_effort; the preset's
        # defaults run without it and are listed, as on every backend.
        self.unenforced = weakened_limits(r, weak)
        self.workdir = spec.workdir or os.getcwd()
        env = spec.action_environment()
        # Windows itself needs these to start most programs.
        for key in ("SYSTEMROOT", "WINDIR"):
            if key in os.environ and key not in env:
                env[key] = os.environ[key]
        self.env = env


def prepare(
    spec: SandboxSpec,
    *,
    remap: dict[str, str] | None = None,
    require_hermetic: bool = True,
    audit_writes: bool = True,
) -> Prepared:
    return Prepared(spec, remap, require_hermetic)


def _application(arg0: str, cwd: str, env: dict[str, str]) -> str:
    """The program CreateProcess runs: argv[0] against the action's cwd, or
    searched on the spec's PATH (System32 when it has none), not the host's."""
    if os.path.dirname(arg0):
        return os.path.join(cwd, arg0)
    system32 = os.path.join(env.get("SYSTEMROOT", r"C:\Windows"), "System32")
    found = shutil.which(arg0, path=env.get("PATH") or system32)
    return found or arg0


def _env_block(env: dict[str, str]) -> str:
    # Sorted case-insensitively, as CreateProcess expects.
    items = sorted(env.items(), key=lambda kv: kv[0].upper())
    return "".join(f"{k}={v}\0" for k, v in items) + "\0"


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
    """Run one action in a fresh job object and return its result
    (``env``: the action's own variables, platforms/base.py's rule;
    ``streams``: the caller's descriptors, -1 for a captured one)."""
    import importlib

    # Windows-only modules and functions (typed as Any: checked on every OS).
    msvcrt: Any = importlib.import_module("msvcrt")
    set_inheritable: Any = getattr(os, "set_handle_inheritable")  # noqa: B009

    args = check_argv(argv)
    if read_only:
        raise UnsupportedError(
            "read-only paths",
            "an execution's own read-only paths are mounts in its mount namespace, "
            "which Windows's sandbox has not",
        )
    nat = _native()
    ffi, lib = nat.ffi, nat.lib
    spec = prepared.spec
    limits = spec.resources
    private_tmp = tempfile.mkdtemp(prefix="hermetic-tmp-")
    env = {
        **action_environment(spec, prepared.env, env),
        "TEMP": private_tmp,
        "TMP": private_tmp,
    }
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, private_tmp, True)
        files = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(3)]
        if stdin:
            files[0].write(stdin)
            files[0].seek(0)
        fds = [f.fileno() for f in files]
        for i, fd in enumerate(streams or ()):
            if fd >= 0:
                # A private inheritable copy: the caller's own handle keeps
                # its inheritance (as subprocess does with DuplicateHandle).
                fds[i] = os.dup(fd)
                stack.callback(os.close, fds[i])
        handles = [msvcrt.get_osfhandle(fd) for fd in fds]
        for h in handles:
            set_inheritable(h, True)
        lim = ffi.new("struct hm_win_limits *")
        lim.memory_bytes = limits.max_memory_bytes
        lim.cpu_time_100ns = limits.max_cpu_time_ms * 10_000
        lim.max_processes = limits.max_processes
        proc = ffi.new("struct hm_win_proc *")
        err = ffi.new("unsigned long *")
        cmdline = ffi.new("wchar_t[]", subprocess.list2cmdline(args))
        block = ffi.new("wchar_t[]", _env_block(env))
        app = _application(args[0], cwd or prepared.workdir, env)
        start = time.monotonic()
        rc = lib.hm_win_spawn(
            app,
            cmdline,
            block,
            cwd or prepared.workdir,
            ffi.cast("void *", handles[0]),
            ffi.cast("void *", handles[1]),
            ffi.cast("void *", handles[2]),
            lim,
            proc,
            err,
        )
        if rc < 0:
            import ctypes

            code_ = int(err[0])
            detail = getattr(ctypes, "FormatError", lambda c: f"error {c}")(code_)
            raise SandboxError(0, stage="spawn", path=app, detail=f"CreateProcess: {detail}")
        stack.callback(lib.hm_win_close, proc)
        if observer is not None:
            observer.started(int(proc.pid))
        timed_out = False
        deadline = None if timeout is None else start + timeout
        while True:
            step = 100 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            step = min(step, 100)
            done = lib.hm_win_wait(proc, step)
            if done == 0:
                break
            if done < 0:
                raise SandboxError(0, stage="wait", detail="GetQueuedCompletionStatus failed")
            if cancel is not None and cancel.is_set():
                lib.hm_win_kill(proc, 1)
            if deadline is not None and time.monotonic() >= deadline and not timed_out:
                timed_out = True
                lib.hm_win_kill(proc, 1)
                deadline = None
        duration = time.monotonic() - start
        code = ffi.new("unsigned long *")
        exit_code = int(code[0]) if lib.hm_win_exit_code(proc, code) == 0 else None
        usage_c = ffi.new("struct hm_win_usage *")
        lib.hm_win_usage(proc, usage_c)
        outs = []
        for f in files[1:]:
            f.seek(0)
            outs.append(f.read())
    violations = []
    if timed_out:
        violations.append(
            Violation(ViolationKind.TIMEOUT, f"ran longer than {timeout:g} s", "killed")
        )
    for bit, what in _KILLED.items():
        if proc.breaches & bit:
            violations.append(Violation(ViolationKind.RESOURCE, what, "killed"))
    if proc.breaches & _PROCESS_REFUSED:
        violations.append(
            Violation(
                ViolationKind.PROCESS,
                attempted="a process beyond the process limit",
                decision="denied",
                limit=process_limit(spec),
            )
        )
    cpu = (usage_c.user_100ns + usage_c.kernel_100ns) / 1e7
    usage = ResourceUsage(
        wall_time=duration,
        cpu_time=cpu,
        user_time=usage_c.user_100ns / 1e7,
        system_time=usage_c.kernel_100ns / 1e7,
        peak_memory=int(usage_c.peak_job_memory),
        io_read_bytes=int(usage_c.read_bytes),
        io_write_bytes=int(usage_c.write_bytes),
    )
    return ExecutionResult(
        argv=args,
        exit_code=exit_code,
        signal=None,
        stdout=outs[0],
        stderr=outs[1],
        duration=duration,
        timed_out=timed_out,
        usage=usage,
        violations=tuple(violations),
        hermetic=False,
        unenforced_limits=prepared.unenforced,
        isolation="job-object",
        unenforced_layers=UNENFORCED_LAYERS,
    )
