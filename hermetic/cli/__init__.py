"""The ``hermetic`` command line: a thin layer over the public API.

One module per subcommand (run, verify, digest, doctor, audit, serve, spec,
and remote for runner and worker), each with its ``add``; they share the
action options (options), the spec those make (spec_args), the files named
on the command line (files), the output (output, json_output, failures)
and the parser with its --help texts and exit statuses (usage).  This
module assembles the parser from ``COMMANDS`` and holds ``main``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from hermetic.cli.options import _refused_combination
from hermetic.cli.usage import _Parser

#: The subcommands in the order --help lists them: each name, its module
#: in this package, and the function of it that adds its parser.
COMMANDS = (
    ("run", "run", "add"),
    ("verify", "verify", "add"),
    ("digest", "digest", "add"),
    ("doctor", "doctor", "add"),
    ("audit", "audit", "add"),
    ("serve", "serve", "add"),
    ("spec", "spec", "add"),
    ("runner", "remote", "add_runner"),
    ("worker", "remote", "add_worker"),
)


def _parser(command: str | None = None) -> _Parser:
    """The command line's parser; with ``command``, one that knows that
    subcommand alone (its module alone is imported).  Building every
    subcommand's parser costs milliseconds at each start, and a command
    line naming its subcommand first needs no other: it parses the same,
    and top-level help, which lists them all, cannot be asked for past the
    subcommand's name."""
    parser = _Parser(
        prog="hermetic",
        description="Run a command hermetically: declared inputs read-only, declared outputs "
        "writable, nothing else of the host visible, no network, exactly the declared "
        "environment. 'hermetic COMMAND --help' describes each command.",
    )
    from hermetic import __version__

    parser.add_argument("--version", action="version", version=f"hermetic {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, module, add in COMMANDS:
        if command is None or name == command:
            getattr(importlib.import_module(f"hermetic.cli.{module}"), add)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(args[0] if args and args[0] in {c[0] for c in COMMANDS} else None)
    if not args:
        # A bare `hermetic`: what it can do, not an error about a missing word.
        parser.print_help()
        return 0
    ns, unknown = parser.parse_known_args(args)
    # The subcommand's parser says what it does not take, pointing to its
    # own --help (argparse would leave it to the top-level one).
    said_by = getattr(ns, "cmd_parser", parser)
    if unknown:
        said_by.error(f"unrecognized arguments: {' '.join(unknown)}")
    problem = _refused_combination(ns)
    if problem is not None:
        said_by.error(problem)
    try:
        return int(ns.func(ns))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`hermetic run ... | head -1`): nothing more to
        # say, and nothing for the interpreter to complain of when it
        # flushes stdout at exit.  128 + SIGPIPE, as a killed writer shows.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
