"""An action that could not run: its exit status, its one-line message
(the command line's own where the library's advises Python), and with
--json the object that says why."""

from __future__ import annotations

import argparse
import errno
from collections.abc import Sequence
from typing import Any

from hermetic.cli.json_output import _write_json
from hermetic.cli.output import _fail, _one_line
from hermetic.core import text
from hermetic.core.errors import HermeticError, SandboxError, SpecError, UnsupportedError
from hermetic.core.outcome import RESULT_SCHEMA_VERSION, new_execution_id
from hermetic.core.spec import SandboxSpec
from hermetic.exits import EXIT_NOTFOUND, failure_status


def _setup_failure(
    e: HermeticError,
    ns: argparse.Namespace | None = None,
    command: Sequence[str] = (),
    spec: SandboxSpec | None = None,
) -> int:
    """The exit status and message for an action that could not run; with
    ``--json``, also a JSON object on stdout saying why (see _error_json)."""
    code, message = failure_status(e)
    message = _host_refusal(e, message)
    if ns is not None and getattr(ns, "json", False):
        _write_json(_error_json(e, message, code, command, spec))
    return _fail(message, code)


def _error_json(
    e: HermeticError, message: str, code: int, command: Sequence[str], spec: SandboxSpec | None
) -> dict[str, Any]:
    """The ``--json`` object of an action that did not run: the fields every
    result has that still mean something (``success`` false, no exit code),
    and ``error``: its kind, the message, the exit status, and what the
    exception names (the spec field, the setup stage and errno, the layer)."""
    error: dict[str, Any] = {
        "kind": {SpecError: "spec", SandboxError: "setup"}.get(type(e), "unsupported"),
        "message": _one_line(message),
        "exit_status": code,
    }
    if isinstance(e, SandboxError) and e.stage == "exec":
        error["kind"] = "not-found" if code == EXIT_NOTFOUND else "not-executable"
    for name in ("field", "stage", "layer", "path"):
        value = getattr(e, name, None)
        if isinstance(value, str):
            text.put(error, name, value)
    if isinstance(e, SandboxError) and e.errno:
        error["errno"] = errno.errorcode.get(e.errno, str(e.errno))
    data: dict[str, Any] = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "execution_id": new_execution_id(),
        "spec_digest": spec.digest() if spec is not None else None,
        "argv": list(command),
        "success": False,
        "exit_code": None,
        "signal": None,
        "timed_out": False,
        "error": error,
    }
    return data


def _host_refusal(e: HermeticError, message: str) -> str:
    """``message`` for ``e``, or for a spec whose limits this host could only
    weaken, a short one of the command line's own: the limits named with the
    reason once, and the advice in the command line's terms (the library's
    message advises Python and carries the host's details, which
    ``hermetic doctor`` shows)."""
    if not isinstance(e, UnsupportedError) or not e.limits:
        return message
    them = "it" if len(e.limits) == 1 else "them"
    return (
        f"cannot enforce {', '.join(e.limits)} here ({e.cause}); add --best-effort "
        f"to run with {them} weakened, or see 'hermetic doctor'"
    )
