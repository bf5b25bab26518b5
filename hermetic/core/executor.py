"""HermeticExecutor: a validated spec, prepared once, that runs many actions.

The executor is the fast path for repeated actions: the spec is validated,
the host probed and the filesystem plan marshalled once, in ``create``; each
``execute`` only adds the command.  It is safe to call from several threads
at once (every execution has its own sandbox and its own buffers).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

from hermetic.core.errors import ActionFailedError, ExecutionTimeout, HermeticError, SpecError
from hermetic.core.outcome import ExecutionResult
from hermetic.core.result import Err, Ok, Result
from hermetic.core.spec import SandboxSpec
from hermetic.monitoring.monitor import Observer, ResourceMonitor
from hermetic.platforms import current
from hermetic.security.audit import AuditLog, new_execution_id, record


def _seconds(timeout: float | datetime.timedelta | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        value = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        value = float(timeout)
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
        self, spec: SandboxSpec, prepared: Any, backend: Any, audit_log: AuditLog | None = None
    ) -> None:
        self._spec = spec
        self._prepared = prepared
        self._backend = backend
        self._audit = audit_log
        self._digest = spec.digest()

    @classmethod
    def create(
        cls, spec: SandboxSpec, *, audit_log: str | os.PathLike[str] | None = None
    ) -> Result[HermeticExecutor]:
        """Validate ``spec`` and prepare it on this host.

        With ``audit_log``, every violation of every execution is also
        appended to that file as JSON Lines (hermetic/security/audit.py).
        Err carries a SpecError (bad spec) or an UnsupportedError (this host
        cannot apply a layer the spec asks for).
        """
        try:
            if not isinstance(spec, SandboxSpec):
                raise SpecError(
                    f"expected a SandboxSpec, got {type(spec).__name__}", field="spec", value=spec
                )
            spec.validate()
            backend = current()
            log = AuditLog(audit_log) if audit_log is not None else None
            return Ok(cls(spec, backend.prepare(spec), backend, log))
        except HermeticError as e:
            return Err(e)

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    def execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | datetime.timedelta | None = None,
        monitor: ResourceMonitor | None = None,
    ) -> Result[ExecutionResult]:
        """Run ``argv`` in a fresh sandbox.

        Ok carries the result whatever the action did (non-zero exit, signal,
        timeout: see ``result.success()`` and ``result.timed_out``).  Err
        carries the reason the action could not run: a SpecError for a bad
        argument, a SandboxError naming the setup step, path and errno.
        """
        try:
            seconds = _seconds(timeout)
            if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
                raise SpecError("stdin must be bytes", field="stdin", value=type(stdin).__name__)
            data = bytes(stdin) if stdin is not None else None
        except HermeticError as e:
            return Err(e)
        # Every started monitor, and ``monitor``, counts this execution.
        observer = Observer(monitor)
        result: ExecutionResult | None = None
        try:
            result = self._backend.execute(
                self._prepared,
                argv,
                cwd=cwd,
                stdin=data,
                timeout=seconds,
                observer=observer if observer else None,
            )
        except HermeticError as e:
            return Err(e)
        finally:
            if observer:
                observer.finished(result)
        assert result is not None
        if self._audit is not None and result.violations:
            execution = new_execution_id()
            self._audit.append(
                record(v, execution_id=execution, spec_digest=self._digest, argv0=result.argv[0])
                for v in result.violations
            )
        return Ok(result)

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


def run(
    argv: Sequence[str],
    spec: SandboxSpec,
    *,
    timeout: float | datetime.timedelta | None = None,
    check: bool = False,
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> ExecutionResult:
    """One call: prepare ``spec``, run ``argv``, return the result.

    Like ``subprocess.run``: raises ExecutionTimeout (a
    ``subprocess.TimeoutExpired``) when the timeout fired, and with
    ``check=True`` ActionFailedError (a ``subprocess.CalledProcessError``)
    when the action did not succeed.  Setup failures raise SandboxError.
    """
    executor = HermeticExecutor.create(spec).unwrap()
    result = executor.execute(argv, cwd=cwd, stdin=stdin, timeout=timeout).unwrap()
    if result.timed_out:
        seconds = _seconds(timeout)
        raise ExecutionTimeout(
            result.argv, seconds or 0.0, output=result.stdout, stderr=result.stderr, result=result
        )
    if check and not result.success():
        raise ActionFailedError(result)
    return result
