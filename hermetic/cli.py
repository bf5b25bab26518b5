"""The ``hermetic`` command line: a thin layer over the public API.

Exit status of ``hermetic run``: the action's own status, or 128+N when a
signal N ended it; of ``hermetic verify``: 0 when the runs agree, 1 when
they differ; of both otherwise one of

  123  the spec or the command line is invalid
  124  the action timed out (and was killed)
  125  the sandbox could not be set up, or this host cannot apply the spec
  126  the command was found but could not be executed
  127  the command was not found in the sandbox
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hermetic.core.builders import HermeticSpecBuilder
from hermetic.core.errors import HermeticError, SandboxError, SpecError
from hermetic.core.executor import HermeticExecutor
from hermetic.core.paths import PathSet, canonical
from hermetic.core.policies import ResourceLimits
from hermetic.core.spec import SandboxSpec

EXIT_SPEC = 123
EXIT_TIMEOUT = 124
EXIT_SETUP = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127


def _fail(message: str, code: int) -> int:
    print(f"hermetic: {message}", file=sys.stderr)
    return code


def _default_spec(toolchain: bool) -> SandboxSpec:
    """Without --spec: the toolchain read-only and the limits any host enforces.

    ResourceLimits.defaults() needs no cgroup (processes, file size, open
    files), so the default works for a normal user too; a spec file can ask
    for more.
    """
    spec = SandboxSpec()
    env = spec.environment.with_var("PATH", HermeticSpecBuilder.DEFAULT_PATH)
    inputs = PathSet(HermeticSpecBuilder.toolchain_inputs() if toolchain else ())
    return SandboxSpec(inputs=inputs, environment=env, resources=ResourceLimits.defaults())


#: A spec file larger than this is refused (a spec is a few kilobytes; a
#: path like /dev/zero would otherwise be read until memory runs out).
MAX_SPEC_BYTES = 16 << 20


def _read_spec(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            f"spec file {path!r} is larger than {MAX_SPEC_BYTES >> 20} MiB",
            field="spec",
            value=path,
        )
    return data


def _spec_from_args(ns: argparse.Namespace) -> SandboxSpec:
    if ns.spec:
        try:
            spec = SandboxSpec.from_json(_read_spec(ns.spec))
        except OSError as e:
            raise SpecError(
                f"cannot read spec file {ns.spec!r}: {e.strerror}", field="spec", value=ns.spec
            ) from e
    else:
        spec = _default_spec(not ns.no_toolchain)
    env = spec.environment
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--env wants KEY=VALUE, got {key!r}", field="env", value=key)
        env = env.with_var(key, value)
    workdir = spec.workdir
    if ns.workdir:
        workdir = canonical(os.path.abspath(ns.workdir), field="workdir")
    spec = dataclasses.replace(
        spec,
        inputs=spec.inputs.union(PathSet(tuple(os.path.abspath(p) for p in ns.input))),
        outputs=spec.outputs.union(PathSet(tuple(os.path.abspath(p) for p in ns.output))),
        temps=spec.temps.union(PathSet(tuple(os.path.abspath(p) for p in ns.temp))),
        environment=env,
        workdir=workdir,
    )
    if spec.workdir is None:
        # Like bubblewrap: keep the current directory when the sandbox shows it.
        here = canonical(os.getcwd())
        if any(PathSet((p,)).contains(here) for p in (*spec.inputs, *spec.outputs, *spec.temps)):
            spec = dataclasses.replace(spec, workdir=here)
    return spec


def _command(ns: argparse.Namespace) -> list[str]:
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _setup_failure(e: HermeticError) -> int:
    """The exit status and message for an action that could not run."""
    if isinstance(e, SpecError):
        return _fail(f"invalid spec: {e}", EXIT_SPEC)
    if isinstance(e, SandboxError):
        code = EXIT_SETUP
        if e.stage == "exec":
            code = EXIT_NOTFOUND if e.errno == errno.ENOENT else EXIT_NOEXEC
        return _fail(str(e), code)
    return _fail(str(e), EXIT_SETUP)


def _cmd_run(ns: argparse.Namespace) -> int:
    command = _command(ns)
    if not command:
        return _fail("run: no command given (hermetic run [options] -- CMD ARGS...)", EXIT_SPEC)
    try:
        spec = _spec_from_args(ns)
        executor = HermeticExecutor.create(spec, audit_log=ns.audit_log).unwrap()
        stdin = sys.stdin.buffer.read() if ns.stdin else None
        result = executor.execute(
            command, stdin=stdin, timeout=ns.timeout, collect_outputs=ns.collect_outputs
        ).unwrap()
    except HermeticError as e:
        return _setup_failure(e)
    if ns.json:
        print(json.dumps(result.to_dict(), indent=2))
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


def _cmd_verify(ns: argparse.Namespace) -> int:
    command = _command(ns)
    if not command:
        return _fail("verify: no command given (hermetic verify [options] -- CMD)", EXIT_SPEC)
    try:
        spec = _spec_from_args(ns)
        executor = HermeticExecutor.create(spec, audit_log=ns.audit_log).unwrap()
        stdin = sys.stdin.buffer.read() if ns.stdin else None
        report = executor.verify_reproducible(
            command, ns.runs, stdin=stdin, timeout=ns.timeout
        ).unwrap()
    except HermeticError as e:
        return _setup_failure(e)
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.reproducible:
        files = sum(1 for e in report.outputs if e.kind == "file")
        print(f"reproducible: {report.runs} runs, {files} output file(s) identical")
    else:
        print(f"NOT reproducible: {len(report.differences)} difference(s) over {report.runs} runs")
        for d in report.differences:
            print(f"  {d.describe()}")
    return 0 if report.reproducible else 1


def _cmd_digest(ns: argparse.Namespace) -> int:
    command = _command(ns)
    if not command:
        return _fail("digest: no command given (hermetic digest [options] -- CMD)", EXIT_SPEC)
    try:
        spec = _spec_from_args(ns)
        executor = HermeticExecutor.create(spec).unwrap()
        system = "content" if ns.hash_system else "path"
        print(executor.action_digest(command, system_inputs=system).unwrap())
    except HermeticError as e:
        return _setup_failure(e)
    return 0


def _cmd_audit(ns: argparse.Namespace) -> int:
    from hermetic.security.audit import summarize

    try:
        summary = summarize(ns.file)
    except OSError as e:
        return _fail(f"cannot read audit log {ns.file!r}: {e.strerror}", EXIT_SPEC)
    except ValueError as e:
        return _fail(f"invalid audit log: {e}", EXIT_SPEC)
    if ns.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['records']} violation(s) in {summary['executions']} execution(s)")
    for title, key in (("kind", "by_kind"), ("decision", "by_decision")):
        for name, count in summary[key].items():
            print(f"  {title} {name:12} {count}")
    return 0


def _cmd_doctor(ns: argparse.Namespace) -> int:
    from hermetic.platforms import current

    caps = current().capabilities()
    data: dict[str, Any] = caps.to_dict()
    if ns.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if key == "notes":
                continue
            if isinstance(value, (list, tuple)):
                value = ", ".join(value) or "-"
            print(f"{key:24} {value}")
        for key, note in caps.notes:
            print(f"note: {key}: {note}")
    return 0 if caps.can_sandbox() else EXIT_SETUP


def _cmd_spec(ns: argparse.Namespace) -> int:
    try:
        spec = SandboxSpec.from_json(_read_spec(ns.file))
        spec.validate()
    except OSError as e:
        return _fail(f"cannot read spec file {ns.file!r}: {e.strerror}", EXIT_SPEC)
    except SpecError as e:
        return _fail(f"invalid spec {ns.file!r}: {e}", EXIT_SPEC)
    print(spec.to_json())
    print(f"digest: {spec.digest()}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """Exits with EXIT_SPEC (123) on a bad command line, as documented,
    instead of argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_SPEC, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hermetic",
        description="Run a command hermetically: declared inputs read-only, declared outputs "
        "writable, nothing else of the host visible, no network, exactly the declared "
        "environment.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser(
        "run",
        help="run a command in a sandbox",
        description="Run CMD in a sandbox. " + __doc__.split("\n\n", 1)[1],
    )
    _add_action_options(run)
    run.add_argument(
        "--collect-outputs",
        action="store_true",
        help="with --json: list every output file with its size, mode and sha256",
    )
    run.set_defaults(func=_cmd_run)
    verify = sub.add_parser(
        "verify",
        help="run a command several times and compare its outputs",
        description="Run CMD --runs times, each with fresh empty outputs and temps, and "
        "report every output, stdout, stderr or exit status that differs.",
    )
    _add_action_options(verify)
    verify.add_argument("--runs", type=int, default=2, metavar="N", help="runs (default 2)")
    verify.set_defaults(func=_cmd_verify)
    digest = sub.add_parser(
        "digest",
        help="print the action digest of a command (spec, argv, environment, inputs)",
    )
    _add_action_options(digest)
    digest.add_argument(
        "--hash-system",
        action="store_true",
        help="hash the system directories' contents too (slow the first time)",
    )
    digest.set_defaults(func=_cmd_digest)
    doctor = sub.add_parser("doctor", help="show what this host can enforce")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=_cmd_doctor)
    audit = sub.add_parser("audit", help="summarise an audit log (JSON Lines)")
    audit.add_argument("file")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=_cmd_audit)
    spec = sub.add_parser("spec", help="validate a spec file and print it with its digest")
    spec.add_argument("file")
    spec.set_defaults(func=_cmd_spec)
    return parser


def _add_action_options(cmd: argparse.ArgumentParser) -> None:
    """The spec and command options run, verify and digest share."""
    cmd.formatter_class = argparse.RawDescriptionHelpFormatter
    cmd.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="P",
        help="a read-only path (repeatable)",
    )
    cmd.add_argument(
        "--output",
        "-o",
        action="append",
        default=[],
        metavar="P",
        help="a writable path that must exist (repeatable)",
    )
    cmd.add_argument(
        "--temp",
        "-t",
        action="append",
        default=[],
        metavar="P",
        help="a writable scratch path that must exist (repeatable)",
    )
    cmd.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (repeatable)",
    )
    cmd.add_argument("--workdir", "-C", metavar="P", help="working directory in the sandbox")
    cmd.add_argument("--timeout", type=float, metavar="S", help="kill the sandbox after S seconds")
    cmd.add_argument("--spec", metavar="FILE.json", help="start from this spec file")
    cmd.add_argument(
        "--no-toolchain",
        action="store_true",
        help="without --spec: do not add the system toolchain paths (/usr, ...)",
    )
    cmd.add_argument("--stdin", action="store_true", help="pass this process's stdin to CMD")
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.add_argument("--audit-log", metavar="FILE", help="append violations to FILE (JSON Lines)")
    cmd.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        return int(ns.func(ns))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
