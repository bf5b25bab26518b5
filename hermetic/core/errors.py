"""The exceptions hermetic raises.

Every exception derives from :class:`HermeticError`, and each one also
derives from the standard exception a caller would otherwise catch
(``ValueError``, ``OSError``, ``subprocess.TimeoutExpired``), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "ActionFailedError",
    "ExecutionTimeout",
    "HermeticError",
    "SandboxError",
    "SpecError",
    "UnsupportedError",
]


def _rebuild(
    cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> BaseException:
    # Module-level so pickle can find it: the default BaseException reduction
    # calls cls(*self.args), which does not match our keyword-only signatures.
    return cls(*args, **kwargs)


_REBUILT = frozenset(
    {"errno", "strerror", "filename", "filename2", "cmd", "timeout", "output", "stderr"}
)


def _extra_state(exc: BaseException, rebuilt: dict[str, Any]) -> dict[str, Any]:
    # Attributes the constructor does not rebuild (e.g. __notes__) ride along
    # as pickle state so copies keep them.
    return {k: v for k, v in vars(exc).items() if k not in rebuilt and k not in _REBUILT}


class HermeticError(Exception):
    """Root of every error hermetic raises."""


class SpecError(HermeticError, ValueError):
    """A sandbox spec (or a part of one) is invalid.

    ``field`` names the offending field or key path (``"resources.max_processes"``)
    when there is one, ``value`` holds the rejected value.  The message always
    names the culprit, so ``str(err)`` alone is enough to fix the spec.
    """

    field: str | None
    value: object

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"field": self.field, "value": self.value}
        return (_rebuild, (type(self), (str(self),), kwargs), _extra_state(self, kwargs))


class SandboxError(HermeticError, OSError):
    """A sandbox setup step failed before the action could run.

    Behaves like an ``OSError`` (``errno``, ``strerror``, ``filename``) and
    adds where it failed: ``stage`` (e.g. ``"bind"``), ``path`` (also
    ``filename``), ``op_index`` (the position of the failing filesystem
    operation, when the stage runs a list of them) and a free-form ``detail``.
    """

    stage: str
    path: str | None
    op_index: int | None
    detail: str | None

    def __init__(
        self,
        errno: int,
        *,
        stage: str,
        path: str | None = None,
        op_index: int | None = None,
        detail: str | None = None,
    ) -> None:
        strerror = os.strerror(errno)
        super().__init__(errno, strerror)
        # Set explicitly: OSError only fills these from positional arguments,
        # and then only in some argument-count combinations.
        self.errno = errno
        self.strerror = strerror
        self.filename = path
        self.stage = stage
        self.path = path
        self.op_index = op_index
        self.detail = detail

    def __str__(self) -> str:
        where = f"sandbox setup failed at stage {self.stage!r}"
        if self.path is not None:
            where += f" for {self.path!r}"
        # errno 0: no call failed (the sandbox ended before it reported).
        text = f"{where}: [Errno {self.errno}] {self.strerror}" if self.errno else where
        if self.detail:
            text += f" ({self.detail})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "stage": self.stage,
            "path": self.path,
            "op_index": self.op_index,
            "detail": self.detail,
        }
        return (_rebuild, (type(self), (self.errno,), kwargs), _extra_state(self, kwargs))


class UnsupportedError(HermeticError, OSError):
    """This host cannot apply an isolation layer the spec asks for.

    Raised instead of running with weaker isolation than requested.

    ``reason`` says why, with the host's details and advice for the
    library's caller.  A refusal of resource limits this host could only
    weaken (``ResourceLimits.best_effort`` would run them weakened) says it
    in parts as well, for a front end to word in its own terms:
    ``limits`` names them (``("max_memory_bytes",)``) and ``cause`` is
    the reason in a few words, without the details (``"no usable
    cgroup"``).  Other refusals leave ``limits`` empty and ``cause`` None.
    """

    layer: str
    reason: str
    limits: tuple[str, ...]
    cause: str | None

    def __init__(
        self,
        layer: str,
        reason: str,
        *,
        limits: Sequence[str] = (),
        cause: str | None = None,
    ) -> None:
        strerror = os.strerror(_errno.ENOTSUP)
        super().__init__(_errno.ENOTSUP, strerror)
        self.errno = _errno.ENOTSUP
        self.strerror = strerror
        self.filename = None
        self.layer = layer
        self.reason = reason
        self.limits = tuple(limits)
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot apply {self.layer}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "layer": self.layer,
            "reason": self.reason,
            "limits": self.limits,
            "cause": self.cause,
        }
        return (_rebuild, (type(self), (), kwargs), _extra_state(self, kwargs))


class ExecutionTimeout(HermeticError, subprocess.TimeoutExpired):
    """The action ran past its timeout and was killed.

    ``result`` carries the ``ExecutionResult`` of the killed run (typed as
    ``object`` here so this module does not import the executor).
    """

    result: object

    def __init__(
        self,
        cmd: Sequence[str],
        timeout: float,
        output: bytes | None = None,
        stderr: bytes | None = None,
        result: object = None,
    ) -> None:
        super().__init__(list(cmd), timeout, output=output, stderr=stderr)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "cmd": self.cmd,
            "timeout": self.timeout,
            "output": self.output,
            "stderr": self.stderr,
            "result": self.result,
        }
        return (_rebuild, (type(self), (), kwargs), _extra_state(self, kwargs))


class CompletedAction(Protocol):
    """What ActionFailedError reads of an ``ExecutionResult`` (a protocol, so
    that this module does not import hermetic/core/outcome.py, whose
    ``check_returncode`` raises ActionFailedError)."""

    @property
    def argv(self) -> tuple[str, ...]: ...

    @property
    def returncode(self) -> int: ...

    @property
    def stdout(self) -> bytes: ...

    @property
    def stderr(self) -> bytes: ...


class ActionFailedError(HermeticError, subprocess.CalledProcessError):
    """The action ran to completion in the sandbox but did not succeed.

    Raised on request, like ``subprocess.run``: by ``hermetic.run(...,
    check=True)`` and ``ExecutionResult.check_returncode()``.
    ``returncode`` follows subprocess (``-N`` for signal N); ``result`` is
    the full ``ExecutionResult``.
    """

    result: CompletedAction

    def __init__(self, result: CompletedAction) -> None:
        super().__init__(
            result.returncode, list(result.argv), output=result.stdout, stderr=result.stderr
        )
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        rebuilt = {"result": self.result, "returncode": None}
        return (_rebuild, (type(self), (self.result,), {}), _extra_state(self, rebuilt))
