"""``hermetic digest``: the action digest of a command, without running it."""

from __future__ import annotations

import argparse

from hermetic.cli.failures import _setup_failure
from hermetic.cli.options import _add_action_options, _command, _no_command
from hermetic.cli.spec_args import _spec_from_args
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import HermeticError
from hermetic.executor import HermeticExecutor


def add(sub: Subcommands) -> None:
    """Add ``hermetic digest``'s parser, and its command, to ``sub``."""
    digest = sub.add_parser(
        "digest",
        help="print the action digest of a command (spec, argv, environment, inputs)",
        description=_describe(
            "Print the action digest of CMD under the spec, without running it: a hex "
            "SHA-256 of the spec, the command, the working directory, the environment and "
            "the content of every input. Two actions with the same digest give the same "
            "result, so it can key a cache of results.",
            status="Exit status: 0 when the digest was printed; otherwise one of",
            codes="123 125",
        ),
    )
    _add_action_options(digest, runs=False)
    digest.add_argument(
        "--hash-system",
        action="store_true",
        help="hash the system directories' contents too, not only their paths (slow the "
        "first time)",
    )
    digest.set_defaults(func=_cmd_digest, cmd_parser=digest)


def _cmd_digest(ns: argparse.Namespace) -> int:
    command = _command(ns)
    try:
        if not command:
            raise _no_command("digest")
        spec = _spec_from_args(ns)
        executor = HermeticExecutor.create(spec).unwrap()
        system = "content" if ns.hash_system else "path"
        print(executor.action_digest(command, system_inputs=system).unwrap())
    except HermeticError as e:
        return _setup_failure(e, ns, command)
    return 0
