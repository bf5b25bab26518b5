"""The command line: exit codes, JSON output, doctor, spec, errors on one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hermetic import HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec

pytestmark = [pytest.mark.linux, pytest.mark.root]


def hermetic_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hermetic", *args],
        input=stdin,
        capture_output=True,
        cwd="/",
        timeout=60,
    )


def test_run_passes_output_and_status():
    p = hermetic_cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (p.returncode, p.stdout, p.stderr) == (5, b"out\n", b"err\n")


def test_run_signal_is_128_plus_n():
    p = hermetic_cli("run", "--", "sh", "-c", "kill -KILL $$")
    assert p.returncode == 128 + 9


def test_run_json(scratch):
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


def test_run_json_keeps_output_that_is_not_utf8():
    import base64

    p = hermetic_cli("run", "--json", "--", "sh", "-c", r"printf '\377\376ok'; printf '\200' >&2")
    data = json.loads(p.stdout)
    assert base64.b64decode(data["stdout_base64"]) == b"\xff\xfeok"
    assert base64.b64decode(data["stderr_base64"]) == b"\x80"
    assert data["stdout"] == "\ufffd\ufffdok"


def test_a_bad_command_line_exits_123():
    for argv in (("run", "--timeout", "abc", "--", "true"), ("run", "--no-such-option")):
        p = hermetic_cli(*argv)
        assert p.returncode == 123, (argv, p.returncode, p.stderr)
        assert b"usage:" in p.stderr


def test_run_stdin_and_workdir(scratch):
    p = hermetic_cli(
        "run",
        "--input",
        scratch,
        "--workdir",
        scratch,
        "--stdin",
        "--",
        "sh",
        "-c",
        "pwd; cat",
        stdin=b"fed\n",
    )
    assert p.stdout == f"{scratch}\nfed\n".encode()


def test_exit_codes_for_errors(scratch):
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
        assert p.returncode == 123 and b"/dev/zero" in p.stderr and b"16 MiB" in p.stderr
    p = hermetic_cli("run", "--input", "/", "--", "true")
    assert p.returncode == 123 and b"input '/'" in p.stderr and b"whole root" in p.stderr
    p = hermetic_cli("run", "--", "")
    assert p.returncode == 123 and b"argv[0]" in p.stderr


def test_spec_validates_and_prints(scratch):
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


def test_run_with_spec_file(scratch):
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


def test_doctor():
    p = hermetic_cli("doctor", "--json")
    assert p.returncode == 0
    data = json.loads(p.stdout)
    assert data["user_namespaces"] is True and "network" in data["namespaces"]
    p = hermetic_cli("doctor")
    assert p.returncode == 0 and b"user_namespaces" in p.stdout


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "hermetic")
    assert os.access(script, os.X_OK)
    p = subprocess.run([script, "run", "--", "echo", "via script"], capture_output=True, cwd="/")
    assert p.stdout == b"via script\n"


def test_a_command_line_run_imports_only_what_it_uses():
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
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
