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
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from hermetic.core import text
from hermetic.core.bounded import check_regular, chunks, open_regular, read_regular, size_text
from hermetic.core.builders import HermeticSpecBuilder
from hermetic.core.errors import HermeticError, SandboxError, SpecError, UnsupportedError
from hermetic.core.outcome import RESULT_SCHEMA_VERSION, new_execution_id
from hermetic.core.paths import PathSet, canonical, is_within
from hermetic.core.policies import EnvSet, NetworkPolicy, ResourceLimits
from hermetic.core.spec import SandboxSpec
from hermetic.core.streams import Streams, caps_output
from hermetic.executor import HermeticExecutor
from hermetic.exits import (
    EXIT_NOTFOUND,
    EXIT_SETUP,
    EXIT_SPEC,
    EXIT_TIMEOUT,
    failure_status,
)

#: The longest message printed; a longer one (a path of 100,000
#: characters, say) is cut, saying how long it was.
MAX_MESSAGE = 4000


#: Characters a terminal acts on: C0 and C1 controls, DEL, and the
#: bidirectional overrides that reorder what is shown.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """``text`` as it can be written to any stream and shown as it is:
    surrogates (a name JSON could hold and UTF-8 cannot) escaped as
    ``\\udXXX``, and every control character as ``\\xNN`` or
    ``\\uNNNN``, so that a name an action chose cannot drive the
    caller's terminal (move the cursor, clear the screen, forge lines)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _one_line(text: str) -> str:
    """A message on one line, of bounded length: an error is one line."""
    text = _printable(text)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text)} characters)"
    return text


def _say(text: str) -> None:
    """Print a line of output holding text from outside (file names, log entries)."""
    print(_printable(text))


def _fail(message: str, code: int) -> int:
    print(f"hermetic: {_one_line(message)}", file=sys.stderr)
    return code


def _default_spec(toolchain: bool) -> SandboxSpec:
    """Without --spec: the toolchain read-only and the library's default
    limits (``ResourceLimits.hermetic()``), so the command line and
    ``SandboxSpec()`` run an action alike.  Those the host can only weaken
    (memory and CPU time for a normal user without a delegated cgroup) are
    said once on stderr and listed in the result; none fails the run."""
    spec = SandboxSpec()
    env = spec.environment.with_var("PATH", HermeticSpecBuilder.DEFAULT_PATH)
    inputs = PathSet(HermeticSpecBuilder.toolchain_inputs() if toolchain else ())
    return dataclasses.replace(spec, inputs=inputs, environment=env)


# Files the command line reads are regular files of bounded size: a FIFO
# would block the open (or the read) for ever, /dev/zero or an endless file
# would be read until memory runs out.
#: A spec file larger than this is refused (a spec is a few kilobytes).
MAX_SPEC_BYTES = 16 << 20
#: An audit log larger than this is refused (a record is about 300 bytes)...
MAX_AUDIT_BYTES = 1 << 30
#: ...and so is one with a line longer than this (it is read line by line).
MAX_AUDIT_LINE = 1 << 20
#: --stdin: standard input longer than this is refused (it is held in memory).
MAX_STDIN_BYTES = 512 << 20


def _read_spec(path: str) -> bytes:
    return read_regular(path, "spec file", MAX_SPEC_BYTES)


def _audit_lines(fd: int, path: str) -> Iterator[str]:
    """The lines of an open audit log as text, each and all bounded."""
    pending = b""
    number = 0
    for chunk in chunks(fd, path, "audit log", MAX_AUDIT_BYTES):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            number += 1
            yield _audit_line(line, number, path)
        if len(pending) > MAX_AUDIT_LINE:
            _audit_line(pending, number + 1, path)  # raises: too long
    if pending:
        yield _audit_line(pending, number + 1, path)


def _audit_line(line: bytes, number: int, path: str) -> str:
    if len(line) > MAX_AUDIT_LINE:
        raise SpecError(
            f"audit log {path!r}: line {number} is longer than {size_text(MAX_AUDIT_LINE)}"
        )
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            f"audit log {path!r}: line {number} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _absolute(path: str, option: str) -> str:
    """``path`` made absolute against the current directory, or SpecError
    naming ``option`` (the current directory may have been removed)."""
    if not path:
        raise SpecError(f"{option} must not be empty", field=option, value=path)
    if path.startswith("/"):
        return path
    try:
        here = os.getcwd()
    except OSError as e:
        raise SpecError(
            f"{option} {path!r} is relative and the working directory is unavailable "
            f"({e.strerror})",
            field=option,
            value=path,
        ) from None
    return os.path.join(here, path)


def _paths(spec_paths: PathSet, given: Sequence[str], option: str) -> PathSet:
    try:
        return spec_paths.union(PathSet(tuple(_absolute(p, option) for p in given)))
    except SpecError as err:
        raise SpecError(f"{option}: {err}", field=option, value=err.value) from None


# -- the spec's options: values checked as the command line is parsed ------

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


def _limits_from_args(limits: ResourceLimits, ns: argparse.Namespace) -> ResourceLimits:
    """``limits`` with those the command line sets.  A limit given on the
    command line is the caller's, a hard one, even at the preset's value:
    it leaves ``defaulted`` (which would weaken it where the host cannot
    enforce it)."""
    given = {
        name: value
        for name, value in (
            ("max_memory_bytes", ns.memory),
            ("max_cpu_time_ms", ns.cpu_time),
            ("max_processes", ns.processes),
        )
        if value is not None
    }
    if not given and not ns.best_effort:
        return limits
    return dataclasses.replace(
        limits,
        **given,
        best_effort=limits.best_effort or ns.best_effort,
        defaulted=tuple(n for n in limits.defaulted if n not in given),
    )


def _network_from_args(network: NetworkPolicy, ns: argparse.Namespace) -> NetworkPolicy:
    """``network`` as --network and --allow-host change it: --network none
    (or loopback) replaces it with no network; --allow-host adds endpoints
    to what a spec file lists, or replaces a network without any (none, or
    the host's) with the proxy's, reaching those alone."""
    if ns.network is not None:
        return NetworkPolicy.hermetic()
    if not ns.allow_host:
        return network
    if network.uses_proxy:
        hosts = (*network.allowed_hosts, *ns.allow_host)
        return dataclasses.replace(network, allowed_hosts=hosts)
    return NetworkPolicy.allow_hosts(ns.allow_host)


def _passed_env(env: EnvSet, names: Sequence[str]) -> EnvSet:
    """``env`` with --env-pass's variables, as this process has them.

    A name not set here is skipped with a warning, as nsjail's ``--env
    NAME`` does (and Docker's ``-e NAME`` silently): passing a variable
    means the sandbox sees what the caller sees, and a build script that
    passes an optional one (``CC``, ``MAKEFLAGS``) must not fail where it
    is unset.  The warning names the variable, never a value."""
    for name in names:
        value = os.environ.get(name)
        if value is None:
            print(
                _one_line(f"hermetic: --env-pass {name}: not set here, so not set in the sandbox"),
                file=sys.stderr,
            )
            continue
        try:
            env = env.with_var(name, value)
        except SpecError as err:
            raise SpecError(f"--env-pass {name!r}: {err}", field="env", value=name) from None
    return env


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


def _spec_from_args(ns: argparse.Namespace) -> SandboxSpec:
    if ns.spec is not None:
        data = _read_spec(ns.spec)
        try:
            spec = SandboxSpec.from_json(data)
        except SpecError as err:
            raise SpecError(
                f"spec file {ns.spec!r}: {err}", field=err.field, value=err.value
            ) from None
    else:
        spec = _default_spec(not ns.no_toolchain)
    env = _passed_env(spec.environment, ns.env_pass)
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--env wants KEY=VALUE, got {key!r}", field="env", value=key)
        env = env.with_var(key, value)
    workdir = spec.workdir
    if ns.workdir is not None:
        workdir = canonical(_absolute(ns.workdir, "--workdir"), field="workdir")
    spec = dataclasses.replace(
        spec,
        inputs=_paths(spec.inputs, ns.input, "--input"),
        outputs=_paths(spec.outputs, ns.output, "--output"),
        temps=_paths(spec.temps, ns.temp, "--temp"),
        environment=env,
        workdir=workdir,
        resources=_limits_from_args(spec.resources, ns),
        network=_network_from_args(spec.network, ns),
    )
    if ns.workdir is not None:
        _check_workdir(spec, ns.workdir)
    if spec.workdir is None:
        # Like bubblewrap: keep the current directory when the sandbox shows
        # it (and when there is one: it may have been removed).
        try:
            here = canonical(os.getcwd())
        except (OSError, SpecError):
            return spec
        if any(is_within(here, p) for p in (*spec.inputs, *spec.outputs, *spec.temps)):
            spec = dataclasses.replace(spec, workdir=here)
    return spec


def _check_workdir(spec: SandboxSpec, given: str) -> None:
    """``--workdir`` must be a directory the action will see: an existing
    one within a declared path, an ancestor of one (the sandbox makes
    those), or the private /tmp.  Anywhere else the sandbox would make an
    empty directory there and the action would run in it, finding none of
    its files."""
    where = spec.workdir
    assert where is not None
    declared = (*spec.inputs, *spec.outputs, *spec.temps)
    if where == "/tmp" or any(is_within(p, where) for p in declared):
        return  # the private /tmp, a declared path, or an ancestor of one
    if any(is_within(where, p) for p in declared):
        if os.path.isdir(where):
            return
        raise SpecError(f"--workdir {given!r}: no such directory", field="workdir", value=given)
    raise SpecError(
        f"--workdir {given!r} is not within a declared input, output or temp, so the "
        "action would not see it (declare it, e.g. --input or --output)",
        field="workdir",
        value=given,
    )


def _stdin(ns: argparse.Namespace) -> bytes | None:
    """--stdin: this process's standard input, bounded; else None."""
    if not ns.stdin:
        return None
    stream = sys.stdin
    if stream is None:
        raise SpecError("--stdin: this process has no standard input", field="stdin")
    data: bytes = stream.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise SpecError(
            f"--stdin: standard input is larger than {size_text(MAX_STDIN_BYTES)}", field="stdin"
        )
    return data


def _audit_log(path: str | None) -> str | None:
    """--audit-log, checked before the action runs: violations are appended
    after it, when a FIFO nothing reads would block and a directory would
    fail.  A regular file (or one to create), a character device (a
    terminal, /dev/null) or a FIFO being read are accepted."""
    if path is None:
        return None
    option = "--audit-log"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(_absolute(path, option))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise SpecError(
                f"{option} {path!r}: cannot create it (no writable directory {parent!r})",
                field=option,
                value=path,
            ) from None
        return path
    except OSError as e:
        raise SpecError(f"{option} {path!r}: {e.strerror}", field=option, value=path) from None
    except ValueError as e:  # a NUL byte, or text no file name can hold
        raise SpecError(f"{option} {path!r}: {e}", field=option, value=path) from None
    if stat.S_ISFIFO(st.st_mode):
        # A FIFO works while something reads it; without a reader the
        # append's open would block for ever (here: ENXIO at once).
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as e:
            reason = "a FIFO nothing reads" if e.errno == errno.ENXIO else e.strerror
            raise SpecError(
                f"{option} {path!r} is not a regular file ({reason})", field=option, value=path
            ) from None
    elif not stat.S_ISCHR(st.st_mode):  # a terminal or /dev/null is fine
        check_regular(st, path, option, sys.maxsize)
    if not os.access(path, os.W_OK):
        raise SpecError(f"{option} {path!r} is not writable", field=option, value=path)
    return path


def _command(ns: argparse.Namespace) -> list[str]:
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


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


def _write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


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


def _cmd_run(ns: argparse.Namespace) -> int:
    command = _command(ns)
    spec: SandboxSpec | None = None
    try:
        if not command:
            raise SpecError("run: no command given (hermetic run [options] -- CMD ARGS...)")
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


def _cmd_verify(ns: argparse.Namespace) -> int:
    command = _command(ns)
    if not command:
        return _fail("verify: no command given (hermetic verify [options] -- CMD)", EXIT_SPEC)
    spec: SandboxSpec | None = None
    try:
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
        return _setup_failure(e, ns, command)
    return 0


def _cmd_audit(ns: argparse.Namespace) -> int:
    from hermetic.security.audit import parse, summarize_records

    try:
        fd = open_regular(ns.file, "audit log", MAX_AUDIT_BYTES)
        try:
            summary = summarize_records(parse(_audit_lines(fd, ns.file), ns.file))
        finally:
            os.close(fd)
    except SpecError as e:
        return _fail(str(e), EXIT_SPEC)
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
            _say(f"  {title} {name:12} {count}")
    return 0


#: The cgroup controllers resource limits use, per version.
_V1_USED = ("memory", "pids", "cpuacct", "cpu")
_V2_USED = ("memory", "pids", "cpu")
#: Keys of doctor's data printed in their own form (or not at all) as text.
_DOCTOR_OWN_LINES = ("notes", "default_spec", "normal_user", "cgroup_v2", "cgroup_v2_controllers")
#: The account ``hermetic doctor`` run by root tries the default spec as.
_NORMAL_USER = "nobody"


def _controllers(names: Sequence[str], used: Sequence[str], mounted: bool = True) -> str:
    """The controllers of one cgroup version, and whether limits can use any."""
    if not mounted:
        return "not mounted"
    if not any(c in names for c in used):
        return f"{', '.join(names) or 'no controllers'} (none of {', '.join(used)}: unused)"
    return ", ".join(names)


def _default_spec_check() -> dict[str, Any]:
    """Whether the default spec (the toolchain read-only, ResourceLimits.hermetic()
    as SandboxSpec and the builders give it) runs ``true`` for this user,
    and how each of its limits is enforced here."""
    spec = dataclasses.replace(_default_spec(True), resources=ResourceLimits.hermetic())
    report: dict[str, Any] = {"uid": os.geteuid(), "runs": False, "error": None, "limits": {}}
    try:
        executor = HermeticExecutor.create(spec).unwrap()
        try:
            result = executor.execute(["true"], timeout=60).unwrap()
        finally:
            executor.close()
    except HermeticError as e:
        report["error"] = str(e)
        return report
    if result.exit_code != 0:
        report["error"] = f"'true' ended with status {result.shell_status()}"
        return report
    report["runs"] = True
    weak = {w.partition(":")[0]: w.partition(": ")[2] for w in result.unenforced_limits}
    for name in spec.resources.defaulted:
        value = getattr(spec.resources, name)
        report["limits"][name] = {"value": value, "weakened": weak.get(name)}
    return report


def _normal_user_check() -> dict[str, Any] | None:
    """Root's doctor: the default spec's check run as a normal user (None
    when there is no such account to run as)."""
    import pwd
    import subprocess

    try:
        user = pwd.getpwnam(_NORMAL_USER)
    except KeyError:
        return None
    argv = [sys.executable, "-m", "hermetic", "doctor", "--json"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    try:
        p = subprocess.run(
            argv,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            env=env,
            cwd="/",
            timeout=300,
            check=False,
        )
        found: dict[str, Any] = json.loads(p.stdout)["default_spec"]
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as e:
        why = getattr(e, "strerror", None) or str(e)
        return {"user": _NORMAL_USER, "checked": False, "error": f"could not check: {why}"}
    return {"user": _NORMAL_USER, "checked": True, **found}


def _say_check(title: str, check: dict[str, Any]) -> None:
    if not check.get("runs"):
        _say(f"{title:24} CANNOT RUN: {check.get('error')}")
        return
    _say(f"{title:24} runs (uid {check['uid']})")
    for name, limit in check["limits"].items():
        how = "enforced" if limit["weakened"] is None else f"weakened: {limit['weakened']}"
        _say(f"  {name:22} {limit['value']:>12}  {how}")


def _launcher_note() -> str | None:
    """Why hermetic-launch cannot work here, if it cannot: Yama's ptrace
    scope 2 or 3 refuses the write that proves a caller to its daemon."""
    from hermetic.serve.peer import yama_scope

    scope = yama_scope()
    if scope is None or scope < 2:
        return None
    return (
        f"kernel.yama.ptrace_scope is {scope}: no caller can prove itself to the daemon, "
        "so every launch fails with 125 (docs/launch-protocol.md)"
    )


def _cmd_doctor(ns: argparse.Namespace) -> int:
    from hermetic.platforms import current

    caps = current().capabilities()
    data: dict[str, Any] = caps.to_dict()
    mine = _default_spec_check()
    data["default_spec"] = mine
    other = _normal_user_check() if os.geteuid() == 0 else None
    data["normal_user"] = other
    if ns.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if key in _DOCTOR_OWN_LINES:
                continue
            if key == "cgroup_v1_controllers":
                key, value = "cgroup_v1", _controllers(value, _V1_USED, bool(value))
            elif isinstance(value, (list, tuple)):
                value = ", ".join(value) or "-"
            _say(f"{key:24} {value}")
            if key == "cgroup_v1":
                v2 = _controllers(caps.cgroup_v2_controllers, _V2_USED, caps.cgroup_v2)
                _say(f"{'cgroup_v2':24} {v2}")
        for key, note in caps.notes:
            _say(f"note: {key}: {note}")
        launcher = _launcher_note()
        if launcher is not None:
            _say(f"note: hermetic-launch: {launcher}")
        _say_check("default spec", mine)
        if other is not None and not other["checked"]:
            _say(f"{'as ' + other['user']:24} {other['error']}")
        elif other is not None:
            _say_check(f"as {other['user']}", other)
    # A normal user's failure counts only when it could be checked at all.
    normal_fails = other is not None and other["checked"] and not other["runs"]
    return 0 if caps.can_sandbox() and mine["runs"] and not normal_fails else EXIT_SETUP


def _cmd_spec(ns: argparse.Namespace) -> int:
    try:
        spec = SandboxSpec.from_json(_read_spec(ns.file))
        spec.validate()
    except OSError as e:
        return _fail(f"cannot read spec file {ns.file!r}: {e.strerror}", EXIT_SPEC)
    except SpecError as e:
        if e.field == "spec file":  # the message names the file already
            return _fail(f"invalid spec: {e}", EXIT_SPEC)
        return _fail(f"invalid spec {ns.file!r}: {e}", EXIT_SPEC)
    print(spec.to_json())
    print(f"digest: {spec.digest()}", file=sys.stderr)
    return 0


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


class _Parser(argparse.ArgumentParser):
    """Exits with EXIT_SPEC (123) on a bad command line, as documented,
    instead of argparse's 2, and says so on one line (an error is one line;
    the usage is a --help away)."""

    def error(self, message: str) -> NoReturn:
        text = _one_line(f"{message} (see '{self.prog} --help')")
        self.exit(EXIT_SPEC, f"{self.prog}: error: {text}\n")


#: The exit statuses every action subcommand shares, as the module's
#: docstring lists them (one text, so the two cannot drift apart).
_EXIT_CODES = tuple(line for line in __doc__.splitlines() if line.startswith("  12"))


def _describe(*paragraphs: str, status: str | None = None, codes: str = "") -> str:
    """A --help description: paragraphs wrapped to a terminal's width, then
    the exit statuses (those of ``codes``, else all), kept in their columns."""
    import textwrap

    text = "\n\n".join(textwrap.fill(p, 76) for p in paragraphs)
    if status is not None:
        listed = [line for line in _EXIT_CODES if not codes or line.split()[0] in codes.split()]
        text += "\n\n" + textwrap.fill(status, 76) + "\n\n" + "\n".join(listed)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hermetic",
        description="Run a command hermetically: declared inputs read-only, declared outputs "
        "writable, nothing else of the host visible, no network, exactly the declared "
        "environment. 'hermetic COMMAND --help' describes each command.",
    )
    from hermetic import __version__

    parser.add_argument("--version", action="version", version=f"hermetic {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
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
    doctor = sub.add_parser(
        "doctor",
        help="show what this host can enforce, and whether the default spec runs here "
        "(as root: for a normal user too); exit 125 when it cannot",
        description=_describe(
            "Show what this host can enforce (namespaces, seccomp, Landlock, cgroups), "
            "whether the default spec runs here, and which of its limits are weakened. Run "
            f"by root, it checks a normal user ({_NORMAL_USER}) too. Exit status 125 when "
            "the default spec cannot run."
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=_cmd_doctor, cmd_parser=doctor)
    audit = sub.add_parser(
        "audit",
        help="summarise an audit log (JSON Lines)",
        description=_describe(
            "Summarise an audit log, as --audit-log writes it: how many violations, in how "
            "many executions, by kind and by decision."
        ),
    )
    audit.add_argument("file", metavar="FILE", help="the audit log (JSON Lines)")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON")
    audit.set_defaults(func=_cmd_audit, cmd_parser=audit)
    serve = sub.add_parser(
        "serve",
        help="the per-user daemon behind hermetic-launch (started by it when needed)",
        description="Keep warm executors for hermetic-launch.  The first launcher starts "
        "it (hermetic serve --detach); it exits after an idle time (600 s, or "
        "HERMETIC_SERVE_IDLE seconds).  See docs/launch-protocol.md.",
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

    spec = sub.add_parser(
        "spec",
        help="validate a spec file and print it with its digest",
        description=_describe(
            "Validate a spec file and print it in full, every default written out, as JSON "
            "on stdout; its digest goes to stderr. Exit status 123 when it is invalid."
        ),
    )
    spec.add_argument("file", metavar="FILE", help="the spec file (JSON)")
    spec.set_defaults(func=_cmd_spec, cmd_parser=spec)

    runner = sub.add_parser(
        "runner",
        help="serve Buildbarn's runner protocol, so bb_worker runs its actions in the sandbox",
        description=_describe(
            "Serve buildbarn.runner.Runner on a Unix socket until SIGTERM, for bb_worker. "
            "Each Run: the input root read-only, its empty directories (the outputs' parents) "
            "writable, the temporary directory a temp, exactly the request's environment. "
            "Needs grpcio and protobuf. See docs/remote-runner.md."
        ),
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
    runner.set_defaults(func=_cmd_runner, cmd_parser=runner)
    _add_worker(sub)
    return parser


def _cmd_runner(ns: argparse.Namespace) -> int:
    try:
        from hermetic.remote import runner
    except ImportError as e:
        return _fail(f"hermetic runner needs grpcio and protobuf: {e}", EXIT_SETUP)
    try:
        base = SandboxSpec.from_json(_read_spec(ns.spec)) if ns.spec else _default_spec(True)
        return runner.serve(ns.listen, ns.build_directory, base, concurrency=ns.concurrency)
    except SpecError as e:
        return _fail(str(e), EXIT_SPEC)


def _add_worker(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="a Remote Workers API bot for a REAPI build farm (BuildGrid); needs the "
        "'remote' extra",
        description=_describe(
            "Take leases from a build farm's Bots service and run each action hermetically; "
            "SIGTERM signs off and exits 0. See docs/remote.md."
        ),
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
    worker.set_defaults(func=_cmd_worker, cmd_parser=worker)


def _cmd_worker(ns: argparse.Namespace) -> int:
    try:
        from hermetic.remote import worker
    except ImportError as e:
        return _fail(str(e), EXIT_SPEC)
    try:
        return worker.main(ns)
    except ValueError as e:
        return _fail(str(e), EXIT_SPEC)


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


_JSON_CHUNK = 3 << 16  # a multiple of 3: base64 chunks join without padding


def _write_json_result(result: Any, *, spec_digest: str) -> None:
    """``result.to_dict()`` as indented JSON on stdout, with stdout and
    stderr (and their base64 forms) encoded a chunk at a time.

    A stream holds up to the output cap, and its JSON form is up to six
    times larger (``\\u0000`` per zero byte): built whole, it made the
    command line hold gigabytes for a 100 MiB cap.  Here the caller holds
    the result and one chunk."""
    import base64
    import codecs
    import secrets

    token = secrets.token_hex(16)
    shallow = dataclasses.replace(result, stdout=b"", stderr=b"")
    data = shallow.to_dict()
    data["spec_digest"] = spec_digest
    data["error"] = None
    writers: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        raw: bytes = getattr(result, name)
        data[name] = f"{token}:{name}"
        writers[f"{token}:{name}"] = (_json_text_chunks, raw)
        try:
            codecs.decode(raw, "utf-8")
        except UnicodeDecodeError:
            data[f"{name}_base64"] = f"{token}:{name}_base64"
            writers[f"{token}:{name}_base64"] = (_base64_chunks, raw)
    text = json.dumps(data, indent=2)
    out = sys.stdout
    rest = text
    while True:
        cut = rest.find(f'"{token}:')
        if cut < 0:
            break
        end = rest.index('"', cut + 1)
        out.write(rest[:cut])
        encode, raw = writers[rest[cut + 1 : end]]
        out.write('"')
        for piece in encode(raw, base64):
            out.write(piece)
        out.write('"')
        rest = rest[end + 1 :]
    out.write(rest + "\n")
    out.flush()


def _json_text_chunks(raw: bytes, _b64: Any) -> Iterator[str]:
    """The JSON string body of ``raw`` decoded as UTF-8 (bad bytes
    replaced, as ``to_dict`` does), a chunk at a time."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for start in range(0, len(raw), _JSON_CHUNK):
        piece = decoder.decode(raw[start : start + _JSON_CHUNK])
        if piece:
            yield json.dumps(piece)[1:-1]
    tail = decoder.decode(b"", final=True)
    if tail:
        yield json.dumps(tail)[1:-1]


def _base64_chunks(raw: bytes, b64: Any) -> Iterator[str]:
    for start in range(0, len(raw), _JSON_CHUNK):
        yield b64.b64encode(raw[start : start + _JSON_CHUNK]).decode("ascii")


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


if __name__ == "__main__":
    sys.exit(main())
