"""``hermetic run``: run a command in a sandbox."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hermetic.cli.failures import _setup_failure
from hermetic.cli.files import _audit_log
from hermetic.cli.json_output import _write_json_result
from hermetic.cli.options import _add_action_options, _command, _no_command
from hermetic.cli.output import _fail, _one_line
from hermetic.cli.spec_args import _spec_from_args
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import HermeticError
from hermetic.core.spec import SandboxSpec
from hermetic.core.streams import Streams, caps_output
from hermetic.executor import HermeticExecutor
from hermetic.exits import EXIT_TIMEOUT


def add(sub: Subcommands) -> None:
    """Add ``hermetic run``'s parser, and its command, to ``sub``."""
    run = sub.add_parser(
        "run",
        help="run a command in a sandbox",
        description=_describe(
            "Run CMD in a sandbox: the declared inputs read-only, the declared outputs and "
            "temps writable, nothing else of the host visible, no network, exactly the "
            "declared environment. Without --spec the system toolchain (/usr, ...) is an "
            "input and PATH is set.",
            status="Exit status: the action's own, or 128+N when signal N ended it; "
            "otherwise one of",
        ),
    )
    _add_action_options(run)
    run.add_argument(
        "--collect-outputs",
        action="store_true",
        help="with --json: list every output file with its size, mode and sha256",
    )
    run.set_defaults(func=_cmd_run, cmd_parser=run)


def _streams(ns: argparse.Namespace, spec: SandboxSpec) -> Streams:
    """This process's stdin for the action, as a shell gives it; its stdout
    and stderr too, so the action's output appears as it is written --
    unless ``--json`` (the streams go into the result) or the spec sets
    ``max_output_bytes`` (it bounds captured output: then output is
    captured and printed once the action ends)."""
    here = Streams.inherit()
    if ns.json or caps_output(spec.resources):
        return Streams(stdin=here.stdin)
    return here


def _without_reason(limit: str) -> str:
    """``"max_memory_bytes: sampled ... (why)"`` without its closing
    ``(why)``: the reason is the same for each, and `hermetic doctor` says it."""
    if not limit.endswith(")"):
        return limit
    depth = 0
    for i in range(len(limit) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(limit[i], 0)
        if depth == 0:
            return limit[:i].rstrip()
    return limit


def _say_weakened(limits: Sequence[str]) -> None:
    """Once, before the action's own output: the limits this host could
    only weaken (the spec's defaults, or any with --best-effort; a limit set
    without it fails instead), short; the result (--json) carries each with
    its reason."""
    if limits:
        weak = "; ".join(_without_reason(limit) for limit in limits)
        print(
            _one_line(f"hermetic: limits weakened here ('hermetic doctor' says why): {weak}"),
            file=sys.stderr,
            flush=True,
        )


def _cmd_run(ns: argparse.Namespace) -> int:
    command = _command(ns)
    spec: SandboxSpec | None = None
    try:
        if not command:
            raise _no_command("run")
        spec = _spec_from_args(ns)
        audit_log = _audit_log(ns.audit_log)
        executor = HermeticExecutor.create(spec, audit_log=audit_log).unwrap()
        _say_weakened(executor.unenforced_limits)
        streams = _streams(ns, spec)
        result = executor.execute(
            command, timeout=ns.timeout, collect_outputs=ns.collect_outputs, streams=streams
        ).unwrap()
    except HermeticError as e:
        return _setup_failure(e, ns, command, spec)
    if ns.json:
        _write_json_result(result, spec_digest=executor.spec_digest)
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.buffer.flush()
    if result.timed_out:
        if not ns.json:
            _fail(f"timed out after {ns.timeout:g} s; the sandbox was killed", EXIT_TIMEOUT)
        return EXIT_TIMEOUT
    return result.shell_status()
