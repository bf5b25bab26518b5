"""The options run, verify and digest share, and the checks of their
values made as the command line is parsed."""

from __future__ import annotations

import argparse
import re

from hermetic.cli.usage import _describe
from hermetic.core.errors import SpecError
from hermetic.core.policies import NetworkPolicy

#: --network's choices: one mode, two names (as Docker's ``none`` has a
#: loopback interface; nsjail and bubblewrap bring it up too).  The
#: library has no network without a loopback of the sandbox's own.
NETWORK_MODES = ("none", "loopback")

#: --memory's units, powers of 1024 (as ``ulimit``, Docker and systemd
#: read K, M, G).
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_TEXT = re.compile(r"([0-9]{1,20})\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
#: The largest limit a kernel field holds (as ResourceLimits checks).
_MAX_LIMIT = 2**63 - 1


def _memory_size(text: str) -> int:
    """--memory: bytes, or a number with K, M, G or T."""
    found = _SIZE_TEXT.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"wants a size in bytes, or with K, M, G or T (512M, 2G, 1048576), got {text!r}"
        )
    value = int(found.group(1)) * _UNITS[found.group(2).lower()]
    if value > _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is larger than 2**63-1 bytes")
    return value


def _cpu_time_ms(text: str) -> int:
    """--cpu-time: seconds (a fraction allowed), as whole milliseconds
    rounded up, so that a limit is never looser than asked."""
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"wants a number of seconds >= 0, got {text!r}")
    ms = math.ceil(seconds * 1000)
    if ms > _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} seconds is more than a limit holds")
    return ms


def _process_count(text: str) -> int:
    """--processes: a count >= 0."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise argparse.ArgumentTypeError(f"wants a whole number >= 0, got {text!r}")
    return int(text)


def _env_name(text: str) -> str:
    """--env-pass: a variable's name (its value is read when the spec is made)."""
    if not text or "=" in text or "\0" in text:
        raise argparse.ArgumentTypeError(
            f"wants a variable's name, got {text!r} (to set a value: --env K=V)"
        )
    return text


def _host_port(text: str) -> str:
    """--allow-host: ``host:port``, normalised as NetworkPolicy stores it."""
    try:
        return NetworkPolicy.allow_hosts([text]).allowed_hosts[0]
    except SpecError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("allowed_hosts entry ")) from None


def _refused_combination(ns: argparse.Namespace) -> str | None:
    """Why the options given cannot go together (an option that would be
    accepted and then ignored is refused), or None."""
    if getattr(ns, "no_toolchain", False) and getattr(ns, "spec", None) is not None:
        return "--no-toolchain applies without --spec only (the spec file lists its inputs)"
    if getattr(ns, "collect_outputs", False) and not ns.json:
        return "--collect-outputs lists the outputs in the --json result: give --json too"
    if getattr(ns, "network", None) is not None and ns.allow_host:
        return (
            f"--network {ns.network} reaches nothing outside the sandbox, and --allow-host "
            "asks to reach a host: give one or the other"
        )
    return None


def _command(ns: argparse.Namespace) -> list[str]:
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _no_command(name: str) -> SpecError:
    """The one refusal of run, verify and digest given no command (an
    invalid command line, with --json said as JSON too)."""
    return SpecError(f"{name}: no command given (hermetic {name} [options] -- CMD ARGS...)")


def _add_action_options(cmd: argparse.ArgumentParser, *, runs: bool = True) -> None:
    """The options run, verify and digest share: the spec's, and (``runs``:
    run and verify) those of running the action.  digest runs nothing, so
    it has no --timeout, --json or --audit-log to ignore."""
    cmd.formatter_class = argparse.RawDescriptionHelpFormatter
    paths = cmd.add_argument_group("what the sandbox shows")
    paths.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="P",
        help="a read-only path (repeatable)",
    )
    paths.add_argument(
        "--output",
        "-o",
        action="append",
        default=[],
        metavar="P",
        help="a writable path that must exist (repeatable)",
    )
    paths.add_argument(
        "--temp",
        "-t",
        action="append",
        default=[],
        metavar="P",
        help="a writable scratch path that must exist (repeatable)",
    )
    paths.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (repeatable); nothing else of this environment is passed",
    )
    paths.add_argument(
        "--env-pass",
        action="append",
        default=[],
        type=_env_name,
        metavar="NAME",
        help="pass variable NAME with the value it has here (repeatable); one not set here "
        "is not set in the sandbox either, and a warning says so",
    )
    paths.add_argument(
        "--workdir",
        "-C",
        metavar="P",
        help="working directory in the sandbox (default: the current one when the sandbox "
        "shows it, else /)",
    )
    paths.add_argument(
        "--spec",
        metavar="FILE.json",
        help="start from this spec file; the options given with it change it",
    )
    paths.add_argument(
        "--no-toolchain",
        action="store_true",
        help="without --spec: do not add the system toolchain paths (/usr, ...)",
    )
    limits = cmd.add_argument_group(
        "limits",
        _describe(
            "A limit given here is enforced for the whole sandbox, or the action does not "
            "run (exit status 125) unless --best-effort is given. 0: no limit."
        ),
    )
    limits.add_argument(
        "--memory",
        type=_memory_size,
        metavar="SIZE",
        help="memory in bytes, or with K, M, G or T (powers of 1024): 512M, 2G",
    )
    limits.add_argument(
        "--cpu-time",
        type=_cpu_time_ms,
        metavar="SECONDS",
        help="CPU time of all the sandbox's processes together",
    )
    limits.add_argument(
        "--processes",
        type=_process_count,
        metavar="N",
        help="processes (threads count too) the sandbox may have at once",
    )
    limits.add_argument(
        "--best-effort",
        action="store_true",
        help="where this host cannot enforce a limit for the whole sandbox (no usable "
        "cgroup), apply it as well as it can (memory sampled, CPU time per process) and "
        "say so, instead of refusing to run",
    )
    network = cmd.add_argument_group(
        "network", _describe("Without these, the spec's network (with no --spec: none).")
    )
    network.add_argument(
        "--network",
        choices=NETWORK_MODES,
        help="none, or loopback, which names the same mode: nothing outside the sandbox is "
        "reachable, only a loopback interface of its own (over --spec: drops what the file "
        "allows)",
    )
    network.add_argument(
        "--allow-host",
        action="append",
        default=[],
        type=_host_port,
        metavar="HOST:PORT",
        help="let the action reach HOST:PORT over HTTP and HTTPS, through a proxy hermetic "
        "runs outside the sandbox, which resolves host names too; nothing else is reachable "
        "(repeatable; IPv6: [ADDR]:PORT)",
    )
    if runs:
        action = cmd.add_argument_group("running")
        action.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="kill the sandbox after S seconds (exit status 124)",
        )
        action.add_argument("--json", action="store_true", help="print the result as JSON")
        action.add_argument(
            "--audit-log",
            metavar="FILE",
            help="append the violations the sandbox recorded to FILE (JSON Lines; "
            "'hermetic audit FILE' summarises it)",
        )
    cmd.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        help="the command and its arguments",
    )
