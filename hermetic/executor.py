"""HermeticExecutor: a validated spec, prepared once, that runs many actions.

The executor is the fast path for repeated actions: the spec is validated,
the host probed and the filesystem plan marshalled once, in ``create``; each
``execute`` only adds the command.  It is safe to call from several threads
at once (every execution has its own sandbox and its own buffers).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hermetic.core import manifest, tree, verify
from hermetic.core.errors import (
    ExecutionTimeout,
    HermeticError,
    SandboxError,
    SpecError,
    UnsupportedError,
)
from hermetic.core.outcome import ExecutionResult
from hermetic.core.policies import EnvSet
from hermetic.core.result import Err, Ok, Result
from hermetic.core.spec import SandboxSpec, check_argv, check_cwd, check_read_only
from hermetic.core.streams import Streams, check_streams
from hermetic.core.verify import ReproducibilityReport, compare
from hermetic.monitoring.monitor import Observer, ResourceMonitor
from hermetic.platforms import current
from hermetic.platforms.base import Backend, Cancel, PreparedSpec, action_environment
from hermetic.security.audit import AuditLog, record

if TYPE_CHECKING:
    import concurrent.futures
    import datetime

# asyncio, concurrent.futures, datetime, shutil and tempfile are imported
# where they are used: together they are about a third of the package's
# import time, which a command-line run per action pays every time.


def _is_timedelta(value: object) -> bool:
    import datetime

    return isinstance(value, datetime.timedelta)


def _seconds(timeout: float | datetime.timedelta | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        value = float(timeout)
    elif _is_timedelta(timeout):
        value = timeout.total_seconds()  # type: ignore[union-attr]
    else:
        raise SpecError(
            f"timeout must be seconds or a timedelta, got {timeout!r}",
            field="timeout",
            value=timeout,
        )
    if not value > 0:
        raise SpecError(
            f"timeout must be positive, got {timeout!r}", field="timeout", value=timeout
        )
    return value


class HermeticExecutor:
    """Runs actions under one spec.  Build it with ``HermeticExecutor.create``."""

    def __init__(
        self,
        spec: SandboxSpec,
        prepared: PreparedSpec,
        backend: Backend[Any],
        audit_log: AuditLog | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self._spec = spec
        self._prepared = prepared
        self._backend = backend
        self._audit = audit_log
        self._spec_digest: str | None = None
        self._max_concurrency = max_concurrency or os.cpu_count() or 1
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        spec: SandboxSpec,
        *,
        audit_log: str | os.PathLike[str] | None = None,
        max_concurrency: int | None = None,
        require_hermetic: bool = True,
        audit_writes: bool = True,
    ) -> Result[HermeticExecutor]:
        """Validate ``spec`` and prepare it on this host.

        With ``audit_log``, every violation of every execution is also
        appended to that file as JSON Lines (hermetic/security/audit.py).
        ``max_concurrency`` bounds the actions ``execute_async`` runs at once
        (default: the number of CPUs).  ``require_hermetic=False`` lets a
        backend that cannot apply every isolation layer (Windows) run
        anyway; its results say ``hermetic=False`` and name the missing
        layers in ``unenforced_layers``.  ``audit_writes=False`` stops
        recording refused path writes (they are still refused): each path
        write otherwise costs a round trip to the seccomp listener (about
        20 us on Linux), which matters to actions that write many files.
        Err carries a SpecError (bad spec) or an UnsupportedError (this host
        cannot apply a layer the spec asks for).
        """
        try:
            if not isinstance(spec, SandboxSpec):
                raise SpecError(
                    f"expected a SandboxSpec, got {type(spec).__name__}", field="spec", value=spec
                )
            if max_concurrency is not None and (
                isinstance(max_concurrency, bool)
                or not isinstance(max_concurrency, int)
                or max_concurrency < 1
            ):
                raise SpecError(
                    f"max_concurrency must be an int >= 1, got {max_concurrency!r}",
                    field="max_concurrency",
                    value=max_concurrency,
                )
            spec.validate()
            backend = current()
        except HermeticError as e:
            return Err(e)
        log = None
        try:
            if audit_log is not None:
                # Opened now, once, never again by path: see audit.py.
                log = AuditLog(audit_log, writable=(*spec.outputs, *spec.temps))
            prepared = backend.prepare(
                _applied(spec), require_hermetic=require_hermetic, audit_writes=audit_writes
            )
            return Ok(cls(spec, prepared, backend, log, max_concurrency))
        except HermeticError as e:
            if log is not None:
                log.close()
            return Err(e)

    def close(self) -> None:
        """Stop the threads ``execute_async`` started (running actions finish
        first) and release what the prepared spec holds (on Linux, for a root
        caller, the mount namespace its actions copy).  An execute after
        close prepares again."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._prepared.close()
        if self._audit is not None:
            self._audit.close()

    def __enter__(self) -> HermeticExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def execute_async(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | datetime.timedelta | None = None,
        monitor: ResourceMonitor | None = None,
        collect_outputs: bool = False,
        env: Mapping[str, str] | None = None,
        streams: Streams | None = None,
        read_only: Sequence[str] = (),
    ) -> Result[ExecutionResult]:
        """``execute`` for asyncio: at most ``max_concurrency`` actions run at
        once, on a pool of threads (the C core and the waits release the
        GIL).  Cancelling the awaiting task ends the sandbox."""
        import asyncio
        import concurrent.futures

        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._max_concurrency, thread_name_prefix="hermetic"
                )
            pool = self._pool
        cancel = threading.Event()
        call = functools.partial(
            self._execute,
            argv,
            cwd=cwd,
            stdin=stdin,
            timeout=timeout,
            monitor=monitor,
            collect_outputs=collect_outputs,
            cancel=cancel,
            env=env,
            streams=streams,
            read_only=read_only,
        )
        future = asyncio.get_running_loop().run_in_executor(pool, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    @property
    def spec_digest(self) -> str:
        """The spec's digest, as the audit log's records carry it."""
        return self._spec_digest_once()

    @property
    def unenforced_limits(self) -> tuple[str, ...]:
        """The spec's default limits this host can only weaken, each with
        why; every result lists them too (``result.unenforced_limits``).
        Empty when every limit is enforced."""
        return tuple(self._prepared.unenforced_limits)

    def execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | datetime.timedelta | None = None,
        monitor: ResourceMonitor | None = None,
        collect_outputs: bool = False,
        env: Mapping[str, str] | None = None,
        streams: Streams | None = None,
        cancel: Cancel | None = None,
        read_only: Sequence[str] = (),
    ) -> Result[ExecutionResult]:
        """Run ``argv`` in a fresh sandbox.

        Ok carries the result whatever the action did (non-zero exit, signal,
        timeout: see ``result.success`` and ``result.timed_out``).  Err
        carries the reason the action could not run: a SpecError for a bad
        argument, a SandboxError naming the setup step, path and errno.
        ``collect_outputs`` fills ``result.outputs`` with a manifest of
        the outputs (sizes, modes, sha256): it reads every output file.

        ``env`` gives this action variables of its own, within what the
        spec allows: it extends the spec's environment (a name it gives
        replaces the spec's value; the spec's other variables stay), and
        the variables the sandbox sets itself still win: the egress proxy's
        and the reproducibility policy's SOURCE_DATE_EPOCH.  Names and
        values are checked as an EnvSet's are.  A PATH in ``env`` is where
        argv[0] is looked for.  Nothing of the host's environment comes in.

        ``streams`` gives the action the caller's own descriptors as its
        stdin, stdout or stderr (hermetic/core/streams.py): its output then
        goes there as it is written, uncaptured; ``Streams.inherit()`` gives
        it this process's own, as a shell would.

        ``cancel``, a ``threading.Event`` (or anything with ``is_set()``,
        asked at each periodic check, 20-100 ms apart), ends the sandbox
        (all its processes) once set; the result then shows the action
        killed (SIGKILL).

        ``read_only`` names paths at or below the spec's outputs and temps
        that this action sees read-only (their whole subtree): inputs staged
        into a writable exec root, as a build farm's worker stages each
        action's, on one executor reused across actions.  Each is a bind
        mount of the path onto itself in the action's own mount namespace,
        resolved without following symlinks (a missing path or one reached
        through a symlink fails the setup, naming it); at most
        MAX_READ_ONLY_PATHS.  Only this execution sees them read-only: an
        action running at the same time in the same directories could write
        them (one exec root per running action).  Where the sandbox has no
        mount namespace
        (Landlock alone) they cannot be applied, and the action does not
        run (UnsupportedError).
        """
        return self._execute(
            argv,
            cwd=cwd,
            stdin=stdin,
            timeout=timeout,
            monitor=monitor,
            collect_outputs=collect_outputs,
            env=env,
            streams=streams,
            cancel=cancel,
            read_only=read_only,
        )

    def _execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None,
        stdin: bytes | None,
        timeout: float | datetime.timedelta | None,
        monitor: ResourceMonitor | None,
        collect_outputs: bool,
        cancel: Cancel | None = None,
        env: Mapping[str, str] | None = None,
        streams: Streams | None = None,
        read_only: Sequence[str] = (),
    ) -> Result[ExecutionResult]:
        try:
            seconds, data = _checked(timeout, stdin)
            islands = check_read_only(read_only, self._spec)
            fds = check_streams(streams, data, self._spec.resources)
            cwd = check_cwd(cwd)
            action_env = _checked_env(env)
            if monitor is not None and not isinstance(monitor, ResourceMonitor):
                raise SpecError(
                    f"monitor must be a ResourceMonitor, got {type(monitor).__name__}",
                    field="monitor",
                    value=monitor,
                )
            self._audit_open()
        except HermeticError as e:
            return Err(e)
        # Every started monitor, and ``monitor``, counts this execution.
        observer = Observer(monitor)
        result: ExecutionResult | None = None
        # The manifest leaves out what was read-only, identified now.
        skip = (
            tree.places((*self._spec.inputs_within_writable(), *islands))
            if collect_outputs
            else frozenset()
        )
        try:
            result = self._backend.execute(
                self._prepared,
                argv,
                cwd=cwd,
                stdin=data,
                timeout=seconds,
                observer=observer if observer else None,
                cancel=cancel,
                env=action_env,
                streams=fds if streams is not None else None,
                read_only=islands,
            )
        except HermeticError as e:
            return Err(e)
        finally:
            if observer:
                observer.finished(result)
        assert result is not None
        result = self._record(result)
        if collect_outputs:
            try:
                entries = manifest.collect(self._spec.outputs, skip=skip)
            except OSError as e:
                return Err(_unreadable_outputs(e, "listing the outputs"))
            result = dataclasses.replace(result, outputs=entries)
        return Ok(result)

    def _spec_digest_once(self) -> str:
        """The spec's digest for audit records, computed when first needed
        (about 0.15 ms: an executor made for one action that breaks no rule
        never needs it)."""
        if self._spec_digest is None:
            self._spec_digest = self._spec.digest()
        return self._spec_digest

    def _audit_open(self) -> None:
        """Refuse to run an action whose violations could not be recorded."""
        if self._audit is not None and self._audit.closed:
            raise SpecError(
                f"the audit log {self._audit.path!r} was closed with the executor; "
                "create a new executor to run more actions",
                field="audit_log",
                value=self._audit.path,
            )

    def _record(self, result: ExecutionResult) -> ExecutionResult:
        """Append the result's violations to the audit log.  A failed write
        never costs the result: it comes back with ``audit_error`` saying why."""
        if self._audit is None or not result.violations:
            return result
        execution = result.execution_id
        try:
            self._audit.append(
                record(
                    v,
                    execution_id=execution,
                    spec_digest=self._spec_digest_once(),
                    argv0=result.argv[0],
                )
                for v in result.violations
            )
        except (OSError, ValueError) as e:
            return dataclasses.replace(
                result, audit_error=f"audit log {self._audit.path!r} not written: {e}"
            )
        return result

    def action_digest(
        self,
        argv: Sequence[str],
        cwd: str | None = None,
        *,
        system_inputs: str = "path",
        env: Mapping[str, str] | None = None,
    ) -> Result[str]:
        """A stable hex digest of everything that decides ``argv``'s result here.

        The spec's digest, argv, the working directory, the environment the
        action gets (with ``env`` as ``execute`` takes it), and a Merkle
        tree of every input's content (cached by path, size, mtime and
        inode: see hermetic/core/digest.py).  The host's system directories
        are identified by path unless ``system_inputs="content"``.
        """
        from hermetic.core import digest  # (hashing: imported when first asked)

        try:
            args = list(check_argv(argv))
            cwd = check_cwd(cwd)
            prepared_env = getattr(self._prepared, "env", None) or self._spec.action_environment()
            env = action_environment(
                self._spec, prepared_env, _checked_env(env), _own_env(self._prepared)
            )
            return Ok(digest.action_digest(self._spec, args, cwd, env, system_inputs=system_inputs))
        except HermeticError as e:
            return Err(e)
        except OSError as e:
            return Err(SpecError(f"cannot read an input: {e}", field="inputs", value=e.filename))

    def verify_reproducible(
        self,
        argv: Sequence[str],
        runs: int = 2,
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | datetime.timedelta | None = None,
    ) -> Result[ReproducibilityReport]:
        """Run ``argv`` ``runs`` times and compare what the runs produced.

        Each run gets fresh, empty copies of the outputs and temps, bound
        where the spec declares them, so the runs see the same starting
        state and the declared outputs are left as they are.  The report
        lists every difference (output files, stdout, stderr, exit status).
        The fresh copies are removed without following any link an action
        left in them, and copies a killed caller left behind are removed
        first (hermetic/core/verify.py).  Err: a bad argument, a run that
        could not start, outputs that cannot be read back, a fresh copy that
        cannot be removed, or a host that cannot bind fresh copies
        (Landlock-only isolation).
        """
        try:
            seconds, data = _checked(timeout, stdin)
            cwd = check_cwd(cwd)
            if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
                raise SpecError(f"runs must be an int >= 2, got {runs!r}", field="runs", value=runs)
            self._audit_open()
        except HermeticError as e:
            return Err(e)
        # Copies a killed caller left behind: theirs, never a live caller's.
        verify.remove_stale()
        fresh_dirs: list[str] = []
        try:
            outcome = self._verify_runs(argv, runs, cwd, data, seconds, fresh_dirs)
        finally:
            failed = verify.remove_copies(fresh_dirs)
        if failed:
            path, err = failed[0]
            return Err(
                SandboxError(
                    err.errno or errno.EIO,
                    stage="verify cleanup",
                    path=path,
                    detail=f"removing a fresh copy of the outputs: {err}",
                )
            )
        return outcome

    def _verify_runs(
        self,
        argv: Sequence[str],
        runs: int,
        cwd: str | None,
        data: bytes | None,
        seconds: float | None,
        fresh_dirs: list[str],
    ) -> Result[ReproducibilityReport]:
        try:
            results: list[ExecutionResult] = []
            manifests = []
            real_paths = []
            for run in range(1, runs + 1):
                remap = {
                    p: verify.fresh_copy(p, fresh_dirs)
                    for p in (*self._spec.outputs, *self._spec.temps)
                }
                nested = self._spec.inputs_within_writable()
                points = [
                    made
                    for p, fresh in remap.items()
                    for made in verify.mount_points(fresh, p, nested)
                ]
                skip = tree.places(points)
                prepared = self._backend.prepare(_applied(self._spec), remap=remap)
                try:
                    result = self._backend.execute(
                        prepared, argv, cwd=cwd, stdin=data, timeout=seconds
                    )
                finally:
                    prepared.close()
                result = self._record(result)
                roots = [remap[p] for p in self._spec.outputs]
                shown = {remap[p]: p for p in self._spec.outputs}
                try:
                    entries = manifest.collect(roots, shown_as=shown, skip=skip)
                except OSError as e:
                    raise _unreadable_outputs(
                        e, f"reading what run {run} left in its outputs"
                    ) from None
                reverse = {p: remap[p] for p in self._spec.outputs}
                real_paths.append({e.path: verify.real_path(e.path, reverse) for e in entries})
                results.append(result)
                manifests.append(entries)
            differences = compare(results, manifests, real_paths)
            return Ok(
                ReproducibilityReport(
                    reproducible=not differences,
                    runs=runs,
                    differences=differences,
                    results=tuple(results),
                    outputs=manifests[0],
                )
            )
        except HermeticError as e:
            return Err(e)

    def execute_with_timeout(
        self,
        argv: Sequence[str],
        timeout: float | datetime.timedelta,
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result[ExecutionResult]:
        """``execute`` with a timeout in seconds or as a timedelta."""
        return self.execute(argv, cwd=cwd, stdin=stdin, timeout=timeout)


def _applied(spec: SandboxSpec) -> SandboxSpec:
    """``spec`` as the backends apply it: ``process.max_children`` bounds
    the action's processes together with ``resources.max_processes`` (the
    smaller one, the action itself counted), and a sandbox never outlives
    its caller, so ``kill_on_parent_exit=False`` cannot be honoured."""
    process = spec.process
    if not process.kill_on_parent_exit:
        raise UnsupportedError(
            "process policy",
            "kill_on_parent_exit=False: a sandbox always ends with its caller "
            "(its first process dies with the caller's)",
        )
    limits = spec.resources
    cap = process.max_children + 1 if process.max_children else 0
    if cap and (not limits.max_processes or limits.max_processes > cap):
        return dataclasses.replace(spec, resources=dataclasses.replace(limits, max_processes=cap))
    return spec


def _checked(
    timeout: float | datetime.timedelta | None, stdin: bytes | None
) -> tuple[float | None, bytes | None]:
    seconds = _seconds(timeout)
    if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
        raise SpecError("stdin must be bytes", field="stdin", value=type(stdin).__name__)
    return seconds, bytes(stdin) if stdin is not None else None


def _checked_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """``execute``'s ``env``, checked as an EnvSet's variables are."""
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise SpecError(
            f"env must be a mapping of names to values, got {type(env).__name__}",
            field="env",
            value=type(env).__name__,
        )
    try:
        return dict(EnvSet.of(env).vars)
    except SpecError as e:
        # The name, never the value: values may be secrets.
        raise SpecError(f"env: {e}", field="env", value=e.value) from None


def _own_env(prepared: PreparedSpec) -> tuple[str, ...]:
    """The variables a backend sets itself (Linux's egress proxy's)."""
    own: tuple[str, ...] = getattr(prepared, "own_env", ())
    return own


def _unreadable_outputs(e: OSError, doing: str) -> SandboxError:
    """What an action left under its outputs could not be read back (it made
    a directory unreadable, say); manifest.collect names the path as the
    action saw it."""
    name = e.filename if isinstance(e.filename, str) else None
    return SandboxError(
        e.errno or errno.EIO, stage="outputs", path=name, detail=f"{doing}: {e.strerror}"
    )


def run(
    argv: Sequence[str],
    spec: SandboxSpec,
    *,
    timeout: float | datetime.timedelta | None = None,
    check: bool = False,
    cwd: str | None = None,
    stdin: bytes | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> ExecutionResult:
    """One call: prepare ``spec``, run ``argv``, return the result.

    Like ``subprocess.run``: ``input`` is the bytes the action reads on its
    stdin (``stdin=`` is the same, kept from before; give one of them),
    raises ExecutionTimeout (a ``subprocess.TimeoutExpired``) when the
    timeout fired, and with ``check=True`` ActionFailedError (a
    ``subprocess.CalledProcessError``) when the action did not succeed.
    ``env``: the action's own variables, as ``HermeticExecutor.execute``
    takes them.  Setup failures raise SandboxError.
    """
    if input is not None:
        if stdin is not None:
            raise SpecError(
                "stdin and input may not both be used (they are the same bytes)",
                field="input",
                value=None,
            )
        stdin = input
    executor = HermeticExecutor.create(spec).unwrap()
    try:
        result = executor.execute(argv, cwd=cwd, stdin=stdin, timeout=timeout, env=env).unwrap()
    finally:
        # Its prepared mount namespace goes now, not when it is collected.
        executor.close()
    if result.timed_out:
        seconds = _seconds(timeout)
        raise ExecutionTimeout(
            result.argv, seconds or 0.0, output=result.stdout, stderr=result.stderr, result=result
        )
    if check:
        result.check_returncode()
    return result
