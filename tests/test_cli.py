"""The command line: exit codes, JSON output, doctor, spec, errors on one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import _as_user_cmd, _user_env, without_notice

from hermetic import HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec

pytestmark = [pytest.mark.linux, pytest.mark.root]


def hermetic_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command line's outcome, without the notice a normal user's run
    prints first (see conftest.without_notice)."""
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", *args],
        input=stdin,
        capture_output=True,
        cwd="/",
        timeout=60,
    )
    p.stderr = without_notice(p.stderr)
    return p


def test_run_passes_output_and_status() -> None:
    p = hermetic_cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (p.returncode, p.stdout, p.stderr) == (5, b"out\n", b"err\n")


def test_run_signal_is_128_plus_n() -> None:
    p = hermetic_cli("run", "--", "sh", "-c", "kill -KILL $$")
    assert p.returncode == 128 + 9


def test_run_json(scratch: str) -> None:
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    p = hermetic_cli(
        "run",
        "--output",
        out,
        "--env",
        "GREETING=hi",
        "--json",
        "--",
        "sh",
        "-c",
        f"echo $GREETING > {out}/g; echo $GREETING",
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["exit_code"] == 0 and data["stdout"] == "hi\n" and data["success"]
    assert data["hermetic"] is True
    with open(os.path.join(out, "g")) as f:
        assert f.read() == "hi\n"
    assert "stdout_base64" not in data  # UTF-8: the text is the output


def test_run_json_keeps_output_that_is_not_utf8() -> None:
    import base64

    p = hermetic_cli("run", "--json", "--", "sh", "-c", r"printf '\377\376ok'; printf '\200' >&2")
    data = json.loads(p.stdout)
    assert base64.b64decode(data["stdout_base64"]) == b"\xff\xfeok"
    assert base64.b64decode(data["stderr_base64"]) == b"\x80"
    assert data["stdout"] == "\ufffd\ufffdok"


def test_a_bad_command_line_exits_123() -> None:
    for argv in (("run", "--timeout", "abc", "--", "true"), ("run", "--no-such-option")):
        p = hermetic_cli(*argv)
        assert p.returncode == 123, (argv, p.returncode, p.stderr)
        # One line: the error and where to find the usage.
        assert p.stderr.count(b"\n") == 1 and b"--help'" in p.stderr, p.stderr


def test_run_stdin_and_workdir(scratch: str) -> None:
    p = hermetic_cli(
        "run",
        "--input",
        scratch,
        "--workdir",
        scratch,
        "--",
        "sh",
        "-c",
        "pwd; cat",
        stdin=b"fed\n",
    )
    assert p.stdout == f"{scratch}\nfed\n".encode()


def test_exit_codes_for_errors(scratch: str) -> None:
    p = hermetic_cli("run", "--", "no-such-tool-here")
    assert p.returncode == 127 and b"no-such-tool-here" in p.stderr
    assert p.stderr.count(b"\n") == 1 and b"Traceback" not in p.stderr
    p = hermetic_cli("run", "--input", "relative/path", "--", "true")
    assert p.returncode == 123, p.stderr
    p = hermetic_cli("run", "--input", os.path.join(scratch, "missing"), "--", "true")
    assert p.returncode == 123 and b"missing" in p.stderr
    p = hermetic_cli("run", "--timeout", "0.2", "--", "sh", "-c", "echo partial; sleep 10")
    assert p.returncode == 124 and p.stdout == b"partial\n"
    assert b"timed out" in p.stderr
    p = hermetic_cli("run", "--input", scratch, "--", scratch)
    assert p.returncode == 126
    p = hermetic_cli("run")
    assert p.returncode == 123
    for p in (hermetic_cli("run", "--", "no-such-tool-here"), hermetic_cli("spec", "/nope")):
        assert b"Traceback" not in p.stderr
    # An endless spec file is refused, not read until memory runs out.
    for p in (
        hermetic_cli("run", "--spec", "/dev/zero", "--", "true"),
        hermetic_cli("spec", "/dev/zero"),
    ):
        assert p.returncode == 123 and b"/dev/zero" in p.stderr
        assert b"not a regular file (a character device)" in p.stderr
    p = hermetic_cli("run", "--input", "/", "--", "true")
    assert p.returncode == 123 and b"input '/'" in p.stderr and b"whole root" in p.stderr
    p = hermetic_cli("run", "--", "")
    assert p.returncode == 123 and b"argv[0]" in p.stderr


def test_spec_validates_and_prints(scratch: str) -> None:
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()), resources=ResourceLimits.defaults()
    )
    good = os.path.join(scratch, "good.json")
    with open(good, "w") as f:
        f.write(spec.to_json())
    p = hermetic_cli("spec", good)
    assert p.returncode == 0
    assert SandboxSpec.from_json(p.stdout) == spec
    assert spec.digest().encode() in p.stderr
    bad = os.path.join(scratch, "bad.json")
    with open(bad, "w") as f:
        f.write('{"inputs": ["/usr"], "resources": {"max_processes": -1}}')
    p = hermetic_cli("spec", bad)
    assert p.returncode == 123 and b"max_processes" in p.stderr


def test_run_with_spec_file(scratch: str) -> None:
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()), resources=ResourceLimits.defaults()
    )
    path = os.path.join(scratch, "spec.json")
    with open(path, "w") as f:
        f.write(spec.to_json())
    # The spec's environment has no PATH: argv[0] is searched along /bin:/usr/bin.
    p = hermetic_cli("run", "--spec", path, "--", "sh", "-c", "echo ok; env | sort")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split(b"\n")[0] == b"ok"
    assert b"PATH=" not in p.stdout


def test_doctor() -> None:
    p = hermetic_cli("doctor", "--json")
    assert p.returncode == 0
    data = json.loads(p.stdout)
    assert data["user_namespaces"] is True and "network" in data["namespaces"]
    p = hermetic_cli("doctor")
    assert p.returncode == 0 and b"user_namespaces" in p.stdout


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "hermetic")
    assert os.access(script, os.X_OK)
    p = subprocess.run([script, "run", "--", "echo", "via script"], capture_output=True, cwd="/")
    assert p.stdout == b"via script\n"


def test_a_command_line_run_imports_only_what_it_uses() -> None:
    # A build that runs `hermetic run` per action pays the imports every
    # time: asyncio (execute_async), concurrent.futures (the pools), uuid,
    # the verify helpers' modules, hashing (OpenSSL) and the egress proxy's
    # sockets are imported where they are used.
    unused = (
        "asyncio",
        "concurrent.futures",
        "uuid",
        "tempfile",
        "datetime",
        "hashlib",
        "socket",
        "hermetic.core.digest",
        "hermetic.security.proxy",
    )
    probe = (
        "import sys, hermetic.cli, hermetic.platforms.linux; "
        f"print(sorted(m for m in {unused!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    assert out.strip() == "[]"


# -- bad input: one line on stderr, exit 123, whatever the input ---------------


def _bounded() -> None:
    # A command line that reads without bound hits this (MemoryError), not
    # the machine's memory; hermetic itself needs a fraction of it.
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def bounded_cli(
    *args: str, stdin: bytes | int = b"", cwd: str = "/"
) -> subprocess.CompletedProcess[bytes]:
    """``hermetic_cli`` with a memory bound; the timeout proves termination
    (a FIFO without a writer would block an unguarded open forever)."""
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", *args],
        input=stdin if isinstance(stdin, bytes) else None,
        stdin=stdin if isinstance(stdin, int) else None,
        capture_output=True,
        cwd=cwd,
        timeout=60,
        preexec_fn=_bounded,
    )
    p.stderr = without_notice(p.stderr)
    return p


def assert_one_line_error(p: subprocess.CompletedProcess[bytes], *needles: bytes) -> None:
    assert p.returncode == 123, (p.returncode, p.stderr[-2000:])
    assert b"Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.count(b"\n") == 1 and p.stderr.startswith(b"hermetic"), p.stderr[-2000:]
    for needle in needles:
        assert needle in p.stderr, (needle, p.stderr)


@pytest.fixture
def bad_files(scratch: str) -> dict[str, str]:
    """Files that are no spec and no audit log, each of a different kind."""
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo)
    huge = os.path.join(scratch, "huge")
    with open(huge, "wb") as f:
        f.truncate(2 << 30)  # sparse: larger than any limit, no disk used
    deep = os.path.join(scratch, "deep")
    with open(deep, "w") as f:
        f.write("[" * 200_000 + "]" * 200_000 + "\n")
    latin1 = os.path.join(scratch, "latin1")
    with open(latin1, "wb") as f:
        f.write(b'{"kind": "caf\xe9"}\n')
    long_line = os.path.join(scratch, "long-line")
    with open(long_line, "wb") as f:
        f.write(b'{"kind": "' + b"x" * (12 << 20) + b'"}')
    surrogate = os.path.join(scratch, "surrogate")
    with open(surrogate, "w") as f:
        f.write('{"inputs": ["/tmp/\\ud800"]}\n')
    surrogate_kind = os.path.join(scratch, "surrogate-kind")
    with open(surrogate_kind, "w") as f:
        f.write('{"kind": "\\ud800"}\n')
    return {
        "fifo": fifo,
        "char-device": "/dev/zero",
        "directory": scratch,
        "huge": huge,
        "deep": deep,
        "latin1": latin1,
        "missing": os.path.join(scratch, "missing"),
        "long-line": long_line,
        "surrogate": surrogate,
        "surrogate-kind": surrogate_kind,
        # Regular, size 0, and a read at offset 0 fails (EIO).
        "proc-mem": "/proc/self/mem",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "fifo",
        "char-device",
        "directory",
        "huge",
        "deep",
        "latin1",
        "missing",
        "surrogate",
        "proc-mem",
    ],
)
@pytest.mark.parametrize("how", ["spec", "run --spec", "verify --spec", "digest --spec"])
def test_a_bad_spec_file_is_one_line_exit_123(
    bad_files: dict[str, str], kind: str, how: str
) -> None:
    path = bad_files[kind]
    if how == "spec":
        p = bounded_cli("spec", path)
    else:
        p = bounded_cli(how.split()[0], "--spec", path, "--", "true")
    assert_one_line_error(p, path.encode())
    expected = {
        "fifo": b"not a regular file",
        "char-device": b"not a regular file",
        "directory": b"not a regular file",
        "huge": b"larger than",
        "deep": b"nested too deeply",
        "latin1": b"malformed",
        "missing": b"No such file",
        "surrogate": b"encode",
        "proc-mem": b"Input/output error",
    }[kind]
    assert expected in p.stderr, p.stderr


@pytest.mark.parametrize(
    "kind",
    [
        "fifo",
        "char-device",
        "directory",
        "huge",
        "deep",
        "latin1",
        "missing",
        "long-line",
        "proc-mem",
    ],
)
def test_a_bad_audit_log_is_one_line_exit_123(bad_files: dict[str, str], kind: str) -> None:
    path = bad_files[kind]
    for extra in ((), ("--json",)):
        p = bounded_cli("audit", path, *extra)
        assert_one_line_error(p, path.encode())
        expected = {
            "fifo": b"not a regular file",
            "char-device": b"not a regular file",
            "directory": b"not a regular file",
            "huge": b"larger than",
            "deep": b"nested too deeply",
            "latin1": b"UTF-8",
            "missing": b"No such file",
            "long-line": b"longer than",
            "proc-mem": b"Input/output error",
        }[kind]
        assert expected in p.stderr, p.stderr


def test_audit_output_with_unencodable_text_is_printed(bad_files: dict[str, str]) -> None:
    """A record naming a kind JSON can hold but UTF-8 cannot ("\\ud800")
    is summarised, shown escaped."""
    for extra in ((), ("--json",)):
        p = bounded_cli("audit", bad_files["surrogate-kind"], *extra)
        assert p.returncode == 0 and p.stderr == b"", p.stderr
        p.stdout.decode("utf-8")
        assert b"1 violation" in p.stdout or json.loads(p.stdout)["records"] == 1
        assert b"ud800" in p.stdout


def test_spec_prints_escaped_file_names_as_utf8_json(scratch: str) -> None:
    """A declared path whose name is not UTF-8 comes out as valid UTF-8 JSON
    that reads back as the same spec."""
    spec = SandboxSpec(outputs=PathSet.of(scratch + "/out-" + os.fsdecode(b"\xff")))
    path = os.path.join(scratch, "spec.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(spec.to_json())
    p = bounded_cli("spec", path)
    assert p.returncode == 0, p.stderr
    assert SandboxSpec.from_json(p.stdout.decode("utf-8")) == spec


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("run", "--timeout", "nan", "--", "true"), b"timeout"),
        (("run", "--timeout", "-1", "--", "true"), b"timeout"),
        (("run", "--timeout", "0", "--", "true"), b"timeout"),
        (("verify", "--runs", "0", "--", "true"), b"runs"),
        (("verify", "--runs", "9" * 5000, "--", "true"), b"--runs"),
        (("run", "--no-such-option"), b"--no-such-option"),
        (("run", "--env", "NOVALUE", "--", "true"), b"--env"),
        (("run", "--env", "=v", "--", "true"), b"environment"),
        (("run", "--input", "/" + "x" * 100_000, "--", "true"), b"input"),
        (("run", "--input", "/new\nline", "--", "true"), b"new\\nline"),
        (("run", "--spec", "", "--", "true"), b"spec file"),
        (("run", "--workdir", "", "--", "true"), b"--workdir"),
        (("nosuchcommand",), b"nosuchcommand"),
    ],
)
def test_a_bad_argument_is_one_line_exit_123(args: tuple[str, ...], needle: bytes) -> None:
    assert_one_line_error(bounded_cli(*args), needle)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_audit_log_that_is_no_regular_file_is_refused_before_the_run(
    bad_files: dict[str, str], kind: str
) -> None:
    p = bounded_cli("run", "--audit-log", bad_files[kind], "--", "true")
    assert_one_line_error(p, b"--audit-log", b"not a regular file")
    assert (b"FIFO nothing reads" if kind == "fifo" else b"a directory") in p.stderr


def test_an_audit_log_that_is_not_a_regular_file_is_refused(bad_files: dict[str, str]) -> None:
    """The log is opened once and kept: a device or a FIFO, even one being
    read, is refused in one line before the action runs."""
    for log in ("/dev/null", bad_files["fifo"]):
        reader = os.open(bad_files["fifo"], os.O_RDONLY | os.O_NONBLOCK)
        try:
            p = bounded_cli("run", "--audit-log", log, "--", "true")
        finally:
            os.close(reader)
        assert_one_line_error(p, b"audit_log", b"not a regular file")


def test_stdin_is_bounded() -> None:
    with open("/dev/zero", "rb") as zero:
        p = bounded_cli("verify", "--stdin", "--", "true", stdin=zero.fileno())
    assert_one_line_error(p, b"stdin", b"larger than")


def test_a_deleted_working_directory_is_no_traceback(scratch: str) -> None:
    gone = os.path.join(scratch, "gone")
    os.mkdir(gone)
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    base = ["sh", "-c", script, "sh", gone, sys.executable, "-m", "hermetic", "run"]
    p = subprocess.run([*base, "--", "true"], capture_output=True, timeout=60)
    assert (p.returncode, without_notice(p.stderr)) == (0, b"")
    os.mkdir(gone)
    p = subprocess.run([*base, "--input", "rel", "--", "true"], capture_output=True, timeout=60)
    assert_one_line_error(p, b"working directory")


def test_undecodable_arguments_reach_the_action(scratch: str) -> None:
    """Arguments are bytes on Linux: one that is not UTF-8 is passed on as is."""
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "run", "--", "printf", "%s", b"\xff\xfe"],
        capture_output=True,
        cwd="/",
        timeout=60,
    )
    assert (p.returncode, p.stdout, without_notice(p.stderr)) == (0, b"\xff\xfe", b"")


def test_a_spec_with_very_many_paths_is_checked_in_bounded_time(scratch: str) -> None:
    """Within the size limit a spec can list hundreds of thousands of paths;
    checking inputs against outputs pair by pair took hours (the bound
    here only proves termination)."""
    n = 60_000
    doc = {
        "inputs": [f"/nonexistent-hm/in/{i}" for i in range(n)],
        "outputs": [f"/nonexistent-hm/out/{i}" for i in range(n)],
    }
    path = os.path.join(scratch, "many.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    p = bounded_cli("spec", path)
    assert_one_line_error(p, b"input path does not exist")


def test_audit_reads_a_log_larger_than_one_read(scratch: str) -> None:
    """Records are counted across read boundaries, the last line without
    its newline too."""
    log = os.path.join(scratch, "big.jsonl")
    n = 12_000
    with open(log, "w") as f:
        for i in range(n):
            kind = "filesystem" if i % 3 else "network"
            f.write(json.dumps({"kind": kind, "execution_id": str(i % 7), "pad": "x" * 200}))
            f.write("\n" if i < n - 1 else "")
    assert os.path.getsize(log) > 2 << 20
    p = bounded_cli("audit", log, "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["records"] == n and summary["executions"] == 7
    assert summary["by_kind"] == {"filesystem": n - n // 3, "network": n // 3}


def test_bad_files_as_root_and_as_the_test_user(runner: Any, bad_files: dict[str, str]) -> None:
    """The same refusals whoever runs the command line (the files are
    world-readable; the test user reads them through the same checks)."""
    prefix: list[str] = []
    if runner.user is not None:
        prefix = ["setpriv", f"--reuid={runner.user.pw_uid}", f"--regid={runner.user.pw_gid}"]
        prefix += ["--clear-groups", "--"]
    for kind in ("fifo", "char-device", "directory", "huge", "deep", "proc-mem"):
        for args in (
            ("run", "--spec", bad_files[kind], "--", "true"),
            ("audit", bad_files[kind]),
        ):
            p = subprocess.run(
                [*prefix, sys.executable, "-m", "hermetic", *args],
                capture_output=True,
                cwd="/",
                timeout=60,
                preexec_fn=_bounded,
            )
            assert_one_line_error(p, bad_files[kind].encode())


@pytest.mark.parametrize(
    "out, err",
    [
        (b"", b""),
        (b"hello\n", "caf\u00e9 \u2603\n".encode()),
        (b"\xff\xfe bad \x00 bytes" * 70000, b"\xe2\x98"),  # split characters, zeros
        (b'"quoted" \\ and a "token" of our own', b"\x00" * 200001),
    ],
)
def test_json_result_is_written_a_chunk_at_a_time_and_equals_to_dict(out, err, capsys):
    from hermetic.cli.json_output import _write_json_result
    from hermetic.core.outcome import ExecutionResult

    result = ExecutionResult(("sh", "-c", "x"), 0, None, out, err, 0.5)
    _write_json_result(result, spec_digest="d" * 64)
    expected = {**result.to_dict(), "spec_digest": "d" * 64, "error": None}
    assert json.loads(capsys.readouterr().out) == expected


#: The command line's own peak memory for a run whose stdout is 64 MiB of
#: zero bytes (each written as six characters of JSON).
JSON_PEAK = """
import resource, subprocess, sys
p = subprocess.run(
    [sys.executable, "-m", "hermetic", "run", "--json", "--", "head", "-c", "64M", "/dev/zero"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
)
assert p.returncode == 0, p.stderr
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_json_output_does_not_multiply_the_callers_memory():
    p = subprocess.run(
        [sys.executable, "-c", JSON_PEAK], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert p.returncode == 0, p.stderr[-2000:]
    peak_kib = int(p.stdout)
    # The 64 MiB result plus the interpreter; built whole, its JSON form
    # (384 MiB) and that text's encoding came on top.
    assert peak_kib < 256 * 1024, peak_kib


def test_names_an_action_chose_cannot_drive_the_terminal(scratch: str) -> None:
    """verify prints output names the action chose: control characters in
    them (a title escape, clear screen, a forged line, a bidi override) are
    shown escaped, never written to the caller's terminal."""
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    code = (
        "import os, sys\n"
        "name = b'\\x1b]0;owned\\x07\\x1b[2J' + os.urandom(2).hex().encode()"
        " + b'\\nhermetic: reproducible\\xe2\\x80\\xae'\n"
        "open(os.path.join(os.fsencode(sys.argv[1]), name), 'w').write('x')\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "verify", "-o", out, "--", "python3", "-c", code, out],
        capture_output=True,
        timeout=120,
        cwd="/",
    )
    assert p.returncode == 1, p.stderr
    assert b"NOT reproducible" in p.stdout
    shown = p.stdout + p.stderr
    for raw in (b"\x1b", b"\x07", "\u202e".encode()):
        assert raw not in shown, shown
    assert b"\\x1b]0;owned\\x07\\x1b[2J" in p.stdout
    # Every difference is one line: the forged line stays inside its own.
    assert not [line for line in p.stdout.splitlines() if line.startswith(b"hermetic:")]


def test_version_and_a_bare_command_line() -> None:
    from hermetic import __version__

    p = hermetic_cli("--version")
    assert (p.returncode, p.stdout) == (0, f"hermetic {__version__}\n".encode()), p.stderr
    bare = hermetic_cli()  # the usage, as --help gives it
    assert (bare.returncode, bare.stdout, bare.stderr) == (0, hermetic_cli("--help").stdout, b"")
    assert bare.stdout.startswith(b"usage: hermetic") and b"run" in bare.stdout


def test_a_reader_that_goes_away_is_no_traceback() -> None:
    # `hermetic run --json -- seq 1 100000 | head -1`
    p = subprocess.run(
        f"{sys.executable} -m hermetic run --json -- seq 1 100000 | head -c 1 >/dev/null;"
        " echo ${PIPESTATUS[0]} >&2",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        cwd="/",
        timeout=120,
    )
    assert b"Traceback" not in p.stderr and b"Broken pipe" not in p.stderr, p.stderr
    assert without_notice(p.stderr).strip() == b"141", p.stderr


def test_a_workdir_the_action_would_not_see_is_an_error(scratch: str) -> None:
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    # Undeclared: the sandbox would make it empty and run the action there.
    p = hermetic_cli("run", "-C", "/nonexistent", "--", "pwd")
    assert_one_line_error(p, b"--workdir '/nonexistent'", b"not within a declared")
    assert p.stdout == b""
    # Declared, but missing.
    p = hermetic_cli("run", "-i", src, "-C", f"{src}/missing", "--", "pwd")
    assert_one_line_error(p, b"no such directory", f"{src}/missing".encode())
    # Within a declared path, an ancestor of one (made by the sandbox), /tmp.
    for workdir, extra in ((src, ()), (scratch, ()), ("/tmp", ())):
        p = hermetic_cli("run", "-i", src, *extra, "-C", workdir, "--", "pwd")
        assert (p.returncode, p.stdout) == (0, f"{workdir}\n".encode()), p.stderr


def test_stdin_passes_through() -> None:
    """As with bwrap or a shell: `echo hi | hermetic run -- cat` prints hi."""
    p = subprocess.run(
        f"echo hi | {sys.executable} -m hermetic run -- cat",
        shell=True,
        capture_output=True,
        cwd="/",
        timeout=60,
    )
    assert (p.returncode, p.stdout, without_notice(p.stderr)) == (0, b"hi\n", b"")


def _read_line(fd: int, deadline: float = 60) -> bytes:
    """One line from ``fd`` (a pipe), waiting at most ``deadline`` seconds in all."""
    import select

    got = b""
    while not got.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], deadline)
        assert ready, f"no line within {deadline} s (so far {got!r})"
        piece = os.read(fd, 1)
        assert piece, f"end of stream before a whole line ({got!r})"
        got += piece
    return got


def _streaming_argv(user: Any) -> list[str]:
    argv = [sys.executable, "-m", "hermetic", "run", "--"]
    argv += ["sh", "-c", 'echo first; read answer; echo "got $answer"; echo err >&2']
    return _as_user_cmd(user, argv) if user is not None else argv


@pytest.mark.parametrize("as_user", [False, True], ids=["caller", "test-user"])
def test_output_streams_while_the_action_runs(as_user: bool, request: Any) -> None:
    """stdout appears as it is written: the action waits for an answer that
    is only sent once its first line has arrived, so output held until the
    action ends would never let it finish (the timeouts bound that)."""
    user = request.getfixturevalue("test_user") if as_user else None
    proc = subprocess.Popen(
        _streaming_argv(user),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_user_env() if user is not None else None,
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert _read_line(proc.stdout.fileno()) == b"first\n"
        out, err = proc.communicate(b"go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A normal user's stderr may start with the line naming weakened limits.
    said = [line for line in err.splitlines() if b"weakened" not in line]
    assert (proc.returncode, out, said) == (0, b"got go\n", [b"err"]), err


def test_stdout_and_stderr_keep_their_order() -> None:
    """Written to one pipe, the two streams interleave as the action wrote
    them (captured, stdout came whole before stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "run", "--"]
        + ["sh", "-c", "echo one; echo two >&2; echo three"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        input=b"",
        cwd="/",
        timeout=60,
    )
    assert (p.returncode, without_notice(p.stdout)) == (0, b"one\ntwo\nthree\n")


def test_a_spec_capping_output_still_caps_it(scratch: str) -> None:
    """max_output_bytes bounds captured output: with it the command line
    captures (and cuts) rather than stream unbounded."""
    spec = os.path.join(scratch, "spec.json")
    with open(spec, "w") as f:
        json.dump({"resources": {"max_output_bytes": 1000}}, f)
    p = hermetic_cli("run", "--spec", spec, "--", "sh", "-c", "yes | head -c 100000")
    assert len(p.stdout) <= 1000, len(p.stdout)


def _json_of(p: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(p.stdout)
    assert data["schema_version"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", data["execution_id"]), data
    return data


def test_json_for_every_outcome(scratch: str) -> None:
    """--json prints an object whatever happened, with its exit status and
    error; the action's own result and a refusal share the same keys."""
    ok = hermetic_cli("run", "--json", "--", "true")
    data = _json_of(ok)
    assert ok.returncode == 0 and data["error"] is None and data["success"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", data["spec_digest"]), data

    missing = hermetic_cli("run", "--json", "--", "no-such-tool-here")
    data = _json_of(missing)
    assert missing.returncode == 127 and data["success"] is False and data["exit_code"] is None
    assert data["error"]["kind"] == "not-found" and data["error"]["exit_status"] == 127
    assert "no-such-tool-here" in data["error"]["message"] and data["spec_digest"]
    assert data["argv"] == ["no-such-tool-here"]
    assert missing.stderr.count(b"\n") == 1  # and still the one line on stderr

    bad = hermetic_cli("run", "--json", "--input", "relative/path", "--", "true")
    data = _json_of(bad)
    assert bad.returncode == 123 and data["error"]["kind"] == "spec", data
    assert "relative/path" in data["error"]["message"]
    no_spec = hermetic_cli("run", "--json", "--spec", "/nonexistent-hm.json", "--", "true")
    data = _json_of(no_spec)
    assert no_spec.returncode == 123 and data["spec_digest"] is None, data

    noexec = hermetic_cli("run", "--json", "--input", scratch, "--", scratch)
    data = _json_of(noexec)
    assert noexec.returncode == 126 and data["error"]["kind"] == "not-executable", data

    nothing = hermetic_cli("run", "--json")
    assert nothing.returncode == 123 and _json_of(nothing)["error"]["kind"] == "spec"


def test_json_ids_match_the_audit_log(scratch: str) -> None:
    log = os.path.join(scratch, "audit.jsonl")
    p = hermetic_cli(
        "run",
        "--json",
        "--audit-log",
        log,
        "--",
        "python3",
        "-c",
        "import socket\ntry:\n socket.sethostname('x')\nexcept OSError:\n pass",
    )
    data = _json_of(p)
    assert data["violations"], data
    with open(log) as f:
        records = [json.loads(line) for line in f]
    assert records and {r["execution_id"] for r in records} == {data["execution_id"]}
    assert {r["spec_digest"] for r in records} == {data["spec_digest"]}


@pytest.mark.parametrize("as_user", [False, True], ids=["caller", "test-user"])
def test_the_default_spec_is_the_librarys(as_user: bool, request: Any) -> None:
    """Without --spec the command line applies ResourceLimits.hermetic(), as
    SandboxSpec() does; what this host weakens is said once on stderr, the
    same limits the result lists."""
    user = request.getfixturevalue("test_user") if as_user else None

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "hermetic", "run", *args]
        return subprocess.run(
            _as_user_cmd(user, argv) if user is not None else argv,
            input=b"",
            capture_output=True,
            env=_user_env() if user is not None else None,
            cwd="/",
            timeout=60,
        )

    plain = cli("--", "sh", "-c", "ulimit -t; ulimit -n")
    assert (plain.returncode, plain.stdout) == (0, b"3600\n512\n"), plain.stderr
    said = [line for line in plain.stderr.decode().splitlines() if "weakened" in line]
    listed = json.loads(cli("--json", "--", "true").stdout)["unenforced_limits"]
    names = sorted(limit.split(":", 1)[0] for limit in listed)
    if names:
        assert len(said) == 1 and all(name in said[0] for name in names), said
    else:
        assert said == []
    if user is not None and os.path.exists("/sys/fs/cgroup/memory"):
        # Here (cgroup v1, nothing delegated) a normal user gets memory
        # and CPU time weakened rather than a refusal.
        assert {"max_memory_bytes", "max_cpu_time_ms"} <= set(names), names
