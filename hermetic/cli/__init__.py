"""The ``hermetic`` command line: a thin layer over the public API.

One module per subcommand (run, verify, digest, doctor, audit, serve, spec,
and remote for runner and worker), each with its ``add``; they share the
action options (options), the spec those make (spec_args), the files named
on the command line (files), the output (output, json_output, failures)
and the parser with its --help texts and exit statuses (usage).  This
module assembles the parser and holds ``main``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from hermetic.cli import audit, digest, doctor, remote, run, serve, spec, verify
from hermetic.cli.options import _refused_combination
from hermetic.cli.usage import _Parser


def _parser() -> _Parser:
    parser = _Parser(
        prog="hermetic",
        description="Run a command hermetically: declared inputs read-only, declared outputs "
        "writable, nothing else of the host visible, no network, exactly the declared "
        "environment. 'hermetic COMMAND --help' describes each command.",
    )
    from hermetic import __version__

    parser.add_argument("--version", action="version", version=f"hermetic {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run.add(sub)
    verify.add(sub)
    digest.add(sub)
    doctor.add(sub)
    audit.add(sub)
    serve.add(sub)
    spec.add(sub)
    remote.add_runner(sub)
    remote.add_worker(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = sys.argv[1:] if argv is None else list(argv)
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
