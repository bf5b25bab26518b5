"""The function set of a backend that is not implemented on this OS yet.

Every entry point raises UnsupportedError, so a spec is never run with less
isolation than it asks for; ``capabilities()`` says why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hermetic.core.errors import UnsupportedError
from hermetic.core.outcome import ExecutionResult
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.base import Cancel, Observer
from hermetic.platforms.capabilities import Capabilities


def refusing_backend(
    backend: str, reason: str
) -> tuple[type, Callable[[], Capabilities], Callable[..., Any], Callable[..., ExecutionResult]]:
    """(Prepared, capabilities, prepare, execute) that refuse with ``reason``."""

    class Prepared:
        """Never constructed: prepare() refuses first."""

        def __init__(self, spec: SandboxSpec) -> None:
            raise UnsupportedError("sandbox", reason)

    def capabilities() -> Capabilities:
        return Capabilities(platform=sys.platform, backend=backend, notes=(("sandbox", reason),))

    def prepare(
        spec: SandboxSpec,
        *,
        remap: dict[str, str] | None = None,
        require_hermetic: bool = True,
        audit_writes: bool = True,
    ) -> Prepared:
        raise UnsupportedError("sandbox", reason)

    def execute(
        prepared: Prepared,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        kill_grace: float = 0.5,
        observer: Observer | None = None,
        cancel: Cancel | None = None,
        profile: dict[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        streams: tuple[int, int, int] | None = None,
        read_only: tuple[str, ...] = (),
    ) -> ExecutionResult:
        raise UnsupportedError("sandbox", reason)

    return Prepared, capabilities, prepare, execute
