"""What an execution produced: ExecutionResult and the Violation records."""

from __future__ import annotations

import enum
import os
import signal as _signal
from dataclasses import dataclass, field
from typing import Any

from hermetic.core import text
from hermetic.core.errors import ActionFailedError
from hermetic.core.manifest import OutputEntry
from hermetic.core.usage import ResourceUsage

#: The version of the JSON form of a result (``ExecutionResult.to_dict``,
#: and the command line's ``--json``): raised when a field changes meaning
#: or goes away, not when one is added.
RESULT_SCHEMA_VERSION = 1


def new_execution_id() -> str:
    """A random UUID (version 4) in hex, as ``uuid.uuid4().hex``, without
    importing uuid (and with it platform and more) for every command-line
    run."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


class ViolationKind(str, enum.Enum):
    """What kind of rule an action broke.  The value is the string form."""

    FILESYSTEM = "filesystem"
    NETWORK = "network"
    PROCESS = "process"
    RESOURCE = "resource"
    TIMEOUT = "timeout"
    SYSCALL = "syscall"


@dataclass(frozen=True)
class Violation:
    """One violation that was stopped or seen.

    ``attempted`` says what the action tried (a path, an address, a syscall,
    a duration); ``decision`` what was done about it ("denied", "killed",
    "discarded").  Never holds environment values.

    A path is held as ``os.fsdecode`` gives it; ``to_dict`` shows one that is
    not UTF-8 with each bad byte as ``\\xNN`` and adds its bytes in base64
    (``attempted_b64``...): see hermetic/core/text.py.
    """

    kind: ViolationKind
    attempted: str
    decision: str
    limit: str | None = None
    observed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind.value}
        text.put(d, "attempted", self.attempted)
        text.put(d, "decision", self.decision)
        text.put(d, "limit", self.limit)
        text.put(d, "observed", self.observed)
        return d


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one action.

    ``exit_code`` is the main process's exit status, or None when it was
    killed by a signal (then ``signal`` holds the number).  ``hermetic`` is
    True when every isolation layer the spec asks for was applied.

    It reads like ``subprocess.CompletedProcess``: ``args``, ``returncode``
    (``-N`` for signal N), ``stdout``, ``stderr`` and ``check_returncode()``;
    ``success`` is a bool, as in ``to_dict()``.
    """

    argv: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool = False
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    violations: tuple[Violation, ...] = ()
    hermetic: bool = True
    unenforced_limits: tuple[str, ...] = ()
    #: What isolated the action: "namespaces", or "landlock" where user
    #: namespaces are forbidden (see docs/platforms.md).
    isolation: str = ""
    #: What the action left under its outputs, with sha256 per file; filled
    #: only by ``execute(..., collect_outputs=True)``.
    outputs: tuple[OutputEntry, ...] = ()
    #: Isolation layers that were not applied, when the caller accepted that
    #: (``HermeticExecutor.create(spec, require_hermetic=False)`` on Windows).
    unenforced_layers: tuple[str, ...] = ()
    #: Why this execution's violations could not be written to the audit log
    #: (the write failed); None when they were, or when there is no log.
    audit_error: str | None = None
    #: This execution's id: the audit log's records of its violations carry
    #: the same ``execution_id``.
    execution_id: str = field(default_factory=new_execution_id)

    @property
    def success(self) -> bool:
        """Exit status 0, no signal, no timeout."""
        return self.exit_code == 0 and self.signal is None and not self.timed_out

    @property
    def args(self) -> tuple[str, ...]:
        """The command that ran (``subprocess.CompletedProcess.args``)."""
        return self.argv

    def check_returncode(self) -> None:
        """Raise ActionFailedError (a ``subprocess.CalledProcessError``) unless
        the action succeeded: exit status 0, no signal, no timeout."""
        if not self.success:
            raise ActionFailedError(self)

    @property
    def returncode(self) -> int:
        """subprocess's convention: the exit status, or -N for signal N."""
        if self.signal is not None:
            return -self.signal
        return self.exit_code if self.exit_code is not None else -1

    def shell_status(self) -> int:
        """A shell's convention: the exit status, or 128+N for signal N."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 1

    def to_dict(self, *, text: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; output is decoded (replacing bad bytes) when
        text is True, and then a stream that is not UTF-8 also comes whole
        as ``stdout_base64`` / ``stderr_base64``: nothing is lost."""

        def out(b: bytes) -> Any:
            return b.decode("utf-8", "replace") if text else list(b)

        sig_name = None
        if self.signal is not None:
            try:
                sig_name = _signal.Signals(self.signal).name
            except ValueError:
                sig_name = None
        d = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "execution_id": self.execution_id,
            "argv": list(self.argv),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": sig_name,
            "success": self.success,
            "timed_out": self.timed_out,
            "duration": self.duration,
            "hermetic": self.hermetic,
            "isolation": self.isolation,
            "unenforced_limits": list(self.unenforced_limits),
            "unenforced_layers": list(self.unenforced_layers),
            "usage": self.usage.to_dict(),
            "violations": [v.to_dict() for v in self.violations],
            "audit_error": self.audit_error,
            "outputs": [e.to_dict() for e in self.outputs],
            "stdout": out(self.stdout),
            "stderr": out(self.stderr),
        }
        if text:
            for name, raw in (("stdout", self.stdout), ("stderr", self.stderr)):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    import base64

                    d[f"{name}_base64"] = base64.b64encode(raw).decode("ascii")
        return d
