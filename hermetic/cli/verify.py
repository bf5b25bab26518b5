"""``hermetic verify``: run a command several times and compare its outputs."""

from __future__ import annotations

import argparse
import json

from hermetic.cli.failures import _setup_failure
from hermetic.cli.files import MAX_STDIN_BYTES, _audit_log, _stdin
from hermetic.cli.options import _add_action_options, _command, _no_command
from hermetic.cli.output import _say
from hermetic.cli.spec_args import _spec_from_args
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.bounded import size_text
from hermetic.core.errors import HermeticError
from hermetic.core.spec import SandboxSpec
from hermetic.executor import HermeticExecutor


def add(sub: Subcommands) -> None:
    """Add ``hermetic verify``'s parser, and its command, to ``sub``."""
    verify = sub.add_parser(
        "verify",
        help="run a command several times and compare its outputs",
        description=_describe(
            "Run CMD --runs times, each with fresh empty outputs and temps, and report every "
            "output, stdout, stderr or exit status that differs.",
            status="Exit status: 0 when the runs agree, 1 when they differ; otherwise one of",
        ),
    )
    _add_action_options(verify)
    verify.add_argument(
        "--runs", type=int, default=2, metavar="N", help="how many times to run CMD (default 2)"
    )
    verify.add_argument(
        "--stdin",
        action="store_true",
        help="give each run this process's stdin, read once "
        f"(at most {size_text(MAX_STDIN_BYTES)}; without it, stdin is empty)",
    )
    verify.set_defaults(func=_cmd_verify, cmd_parser=verify)


def _cmd_verify(ns: argparse.Namespace) -> int:
    command = _command(ns)
    spec: SandboxSpec | None = None
    try:
        if not command:
            raise _no_command("verify")
        spec = _spec_from_args(ns)
        audit_log = _audit_log(ns.audit_log)
        stdin = _stdin(ns)
        executor = HermeticExecutor.create(spec, audit_log=audit_log).unwrap()
        report = executor.verify_reproducible(
            command, ns.runs, stdin=stdin, timeout=ns.timeout
        ).unwrap()
    except HermeticError as e:
        return _setup_failure(e, ns, command, spec)
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.reproducible:
        files = sum(1 for e in report.outputs if e.kind == "file")
        print(f"reproducible: {report.runs} runs, {files} output file(s) identical")
    else:
        print(f"NOT reproducible: {len(report.differences)} difference(s) over {report.runs} runs")
        for d in report.differences:
            _say(f"  {d.describe()}")
    return 0 if report.reproducible else 1
