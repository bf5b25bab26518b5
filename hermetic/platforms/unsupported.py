"""The backend for this operating system.

Not implemented yet: every entry point raises UnsupportedError, so a spec is
never run with less isolation than it asks for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hermetic.core.errors import UnsupportedError
from hermetic.core.outcome import ExecutionResult
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.capabilities import Capabilities

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "unsupported"
_REASON = "the this operating system backend is not implemented yet"


class Prepared:
    """Never constructed: prepare() refuses first."""

    def __init__(self, spec: SandboxSpec) -> None:
        raise UnsupportedError("sandbox", _REASON)


def capabilities() -> Capabilities:
    return Capabilities(platform=sys.platform, backend=BACKEND, notes=(("sandbox", _REASON),))


def prepare(spec: SandboxSpec) -> Prepared:
    raise UnsupportedError("sandbox", _REASON)


def execute(
    prepared: Prepared,
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    kill_grace: float = 0.5,
    observer: Any = None,
) -> ExecutionResult:
    raise UnsupportedError("sandbox", _REASON)
