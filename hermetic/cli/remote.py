"""``hermetic runner`` and ``hermetic worker``: the remote-execution
subcommands.  hermetic.remote (and grpcio, protobuf) is imported only when
one runs."""

from __future__ import annotations

import argparse

from hermetic.cli.files import _read_spec
from hermetic.cli.output import _fail
from hermetic.cli.spec_args import _default_spec
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import SpecError
from hermetic.core.spec import SandboxSpec
from hermetic.exits import EXIT_SETUP, EXIT_SPEC


def _without_the_extra(command: str, e: ImportError) -> int:
    """runner or worker where the 'remote' extra is missing: exit 125, as
    where this host cannot run an action, and the command that installs it."""
    missing = f"no module {e.name!r}" if e.name else str(e)
    return _fail(
        f"{command} needs the 'remote' extra: pip install 'hermetic[remote]' ({missing})",
        EXIT_SETUP,
    )


def add_runner(sub: Subcommands) -> None:
    """Add ``hermetic runner``'s parser, and its command, to ``sub``."""
    runner = sub.add_parser(
        "runner",
        help="serve Buildbarn's runner protocol, so bb_worker runs its actions in the sandbox",
        description=_describe(
            "Serve buildbarn.runner.Runner on a Unix socket until SIGTERM, for bb_worker. "
            "Each Run: the input root read-only, its empty directories (the outputs' parents) "
            "writable, the temporary directory a temp, exactly the request's environment. "
            "Needs the 'remote' extra. See docs/remote-runner.md.",
            "Exit status: 0 after SIGTERM; 123 when it cannot serve what it is given (the "
            "socket, the build directory, the spec, the concurrency); 125 without the "
            "'remote' extra.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runner.add_argument("--listen", required=True, metavar="unix:PATH", help="the socket")
    runner.add_argument(
        "--build-directory",
        default="/worker/build",
        metavar="DIR",
        help="bb_worker's build directory: the request's paths are relative to it "
        "(default /worker/build, as bb_runner's)",
    )
    runner.add_argument(
        "--spec", metavar="FILE.json", help="the base spec (default: the toolchain read-only)"
    )
    runner.add_argument(
        "--concurrency", type=int, metavar="N", help="actions at once (default: CPUs)"
    )
    runner.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append every violation of every Run to FILE as JSON Lines (docs/audit-log.md)",
    )
    runner.set_defaults(func=_cmd_runner, cmd_parser=runner)


def _cmd_runner(ns: argparse.Namespace) -> int:
    try:
        from hermetic.remote import runner
    except ImportError as e:
        return _without_the_extra("runner", e)
    try:
        base = SandboxSpec.from_json(_read_spec(ns.spec)) if ns.spec else _default_spec(True)
        return runner.serve(
            ns.listen,
            ns.build_directory,
            base,
            concurrency=ns.concurrency,
            audit_log=ns.audit_log,
        )
    except SpecError as e:
        return _fail(str(e), EXIT_SPEC)


def add_worker(sub: Subcommands) -> None:
    """Add ``hermetic worker``'s parser, and its command, to ``sub``."""
    worker = sub.add_parser(
        "worker",
        help="a Remote Workers API bot for a REAPI build farm (BuildGrid); needs the "
        "'remote' extra",
        description=_describe(
            "Take leases from a build farm's Bots service and run each action hermetically; "
            "SIGTERM signs off. See docs/remote.md.",
            "Exit status: 0 after SIGTERM; 123 when an option is invalid; 125 without the "
            "'remote' extra.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--server", required=True, help="grpc://HOST:PORT (or unix:PATH)")
    worker.add_argument("--instance", required=True, help="the farm's instance name")
    worker.add_argument("--concurrency", type=int, default=1, metavar="N", help="bots (default 1)")
    worker.add_argument("--bot-id", help="the bot id (default HOSTNAME-PID; -0, -1... for N>1)")
    worker.add_argument(
        "--work-dir", help="cache and exec roots (default ~/.cache/hermetic/worker)"
    )
    worker.add_argument(
        "--platform",
        action="append",
        metavar="KEY=VALUE",
        help="a platform property besides OSFamily and ISA (repeatable)",
    )
    worker.add_argument(
        "--cache-size",
        type=int,
        metavar="BYTES",
        help="the local CAS cache's bound; least recently used files are evicted "
        "(default 10737418240, 10 GiB)",
    )
    worker.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append every violation of every lease to FILE as JSON Lines "
        "(docs/audit-log.md); each lease's result carries them too",
    )
    worker.set_defaults(func=_cmd_worker, cmd_parser=worker)


def _cmd_worker(ns: argparse.Namespace) -> int:
    try:
        from hermetic.remote import worker
    except ImportError as e:
        return _without_the_extra("worker", e)
    try:
        return worker.main(ns)
    except ValueError as e:
        return _fail(str(e), EXIT_SPEC)
