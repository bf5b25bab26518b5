"""``hermetic serve``: the per-user daemon behind hermetic-launch (its
code is hermetic.serve, imported when the subcommand runs)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hermetic.cli.output import _fail
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import SpecError
from hermetic.exits import EXIT_SETUP, EXIT_SPEC


def add(sub: Subcommands) -> None:
    """Add ``hermetic serve``'s parser, and its command, to ``sub``."""
    serve = sub.add_parser(
        "serve",
        help="the per-user daemon behind hermetic-launch (started by it when needed)",
        description=_describe(
            "Keep warm executors for hermetic-launch. The first launcher starts it (hermetic "
            "serve --detach); it exits after an idle time (600 s, or HERMETIC_SERVE_IDLE "
            "seconds). See docs/launch-protocol.md.",
            "Exit status: 0, or with --status 1 when no daemon runs; 123 when "
            "HERMETIC_SERVE_IDLE is not a positive number of seconds; 125 when the daemon "
            "does not start (--detach) or refuses the request.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_what = serve.add_mutually_exclusive_group()
    serve_what.add_argument(
        "--status", action="store_true", help="print the running daemon's state as JSON"
    )
    serve_what.add_argument(
        "--stop", action="store_true", help="stop the running daemon once its actions end"
    )
    serve_what.add_argument(
        "--detach", action="store_true", help="run in the background; return once it listens"
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="exit after S seconds without a connection (default 600)",
    )
    serve.set_defaults(func=_cmd_serve, cmd_parser=serve)


def _cmd_serve(ns: argparse.Namespace) -> int:
    from hermetic.serve import daemon, protocol

    try:
        if ns.status or ns.stop:
            return _serve_control(ns, daemon, protocol)
        return daemon.serve(idle=ns.idle_timeout, detach=ns.detach)
    except SpecError as e:
        return _fail(str(e), EXIT_SPEC)


def _serve_control(ns: argparse.Namespace, daemon: Any, protocol: Any) -> int:
    """--status: the daemon's state as JSON (exit 1 when none runs);
    --stop: ask it to stop and wait until it has (exit 0 either way)."""
    answer = daemon.control(protocol.STATUS if ns.status else protocol.STOP)
    if answer is None:
        print("no hermetic daemon is running for this user", file=sys.stderr)
        return 1 if ns.status else 0
    status, body = answer
    if status != 0:
        why = " ".join(body.decode("utf-8", "replace").split())
        return _fail(f"the daemon refused the request{': ' + why if why else ''}", EXIT_SETUP)
    if ns.status:
        print(json.dumps(json.loads(body), indent=2))
        return 0
    daemon.wait_stopped()
    return 0
