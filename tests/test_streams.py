"""execute(..., streams=...): the caller's own descriptors as the action's stdio.

Each check runs in this process (root, in a root suite) and again as the
unprivileged test user, through the same API in a child interpreter.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import textwrap

import pytest
from conftest import python_as

from hermetic import HermeticExecutor, PathSet, ResourceLimits, SandboxSpec, SpecError, Streams

pytestmark = pytest.mark.linux

TOOLS = PathSet(["/usr", "/bin", "/lib", "/lib64"])

#: The checks, as one program: run in this process or as another user.  It
#: prints a JSON object of what each check saw.
CHECKS = textwrap.dedent(
    """
    import json, os
    from hermetic import HermeticExecutor, PathSet, SandboxSpec, Streams

    spec = SandboxSpec(inputs=PathSet(["/usr", "/bin", "/lib", "/lib64"]))
    seen = {}
    with HermeticExecutor.create(spec).unwrap() as ex:
        # Three actions on one executor: the later ones start from a
        # standby sandbox, whose stdio arrive over its channel.
        for i in range(3):
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            os.write(in_w, b"line %d\\n" % i)
            os.close(in_w)
            r = ex.execute(
                ["sh", "-c", "read x; echo \\"out $x\\"; echo err >&2"],
                streams=Streams(stdin=in_r, stdout=out_w),
            ).unwrap()
            os.close(in_r)
            os.close(out_w)
            with os.fdopen(out_r, "rb") as f:
                passed = f.read()
            seen[f"run{i}"] = [r.exit_code, passed.decode(), r.stdout.decode(), r.stderr.decode()]
        # Past the output cap: a passed stream is the caller's, not capped.
        with open(os.devnull, "wb") as null:
            r = ex.execute(
                ["sh", "-c", "head -c 70000000 /dev/zero"], streams=Streams(stdout=null)
            ).unwrap()
        seen["uncapped"] = [r.exit_code, [v.to_dict() for v in r.violations]]
    print(json.dumps(seen))
    """
)


def _check(seen: dict) -> None:
    for i in range(3):
        code, passed, captured_out, captured_err = seen[f"run{i}"]
        assert code == 0 and passed == f"out line {i}\n", seen
        # stdout went to the pipe and is not in the result; stderr was captured.
        assert (captured_out, captured_err) == ("", "err\n"), seen
    assert seen["uncapped"] == [0, []], seen


def test_streams_in_this_process(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(CHECKS, "checks", "exec"), {})
    _check(json.loads(capsys.readouterr().out))


def test_streams_as_the_test_user(test_user) -> None:
    if test_user is None:
        pytest.skip("the suite runs as a normal user: the in-process test covers it")
    p = python_as(test_user, CHECKS)
    assert p.returncode == 0, p.stderr[-2000:]
    _check(json.loads(p.stdout))


def _never_open() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_stream_arguments_are_checked() -> None:
    ex = HermeticExecutor.create(SandboxSpec(inputs=TOOLS)).unwrap()
    r, w = os.pipe()
    os.close(w)
    try:
        cases = {
            "may not both": dict(stdin=b"x", streams=Streams(stdin=r)),
            "must be a Streams": dict(streams=(0, 1, 2)),
            "must be a file descriptor": dict(streams=Streams(stdout="out.txt")),
            # Not the pipe's closed end: another thread (a standby being
            # made) may be given that number again at any time.  A number
            # at the descriptor limit is never open.
            "is not open": dict(streams=Streams(stdout=_never_open())),
        }
        for needle, kw in cases.items():
            err = ex.execute(["true"], **kw).unwrap_err()
            assert isinstance(err, SpecError) and needle in str(err), (needle, err)
    finally:
        os.close(r)
        ex.close()


def test_a_spec_capping_output_refuses_a_passed_stdout() -> None:
    """max_output_bytes bounds captured output: a stdout it could not bound
    is refused, not run unbounded."""
    limits = ResourceLimits(max_output_bytes=1000)
    with HermeticExecutor.create(SandboxSpec(inputs=TOOLS, resources=limits)).unwrap() as ex:
        err = ex.execute(["true"], streams=Streams(stdout=sys.stderr)).unwrap_err()
        assert isinstance(err, SpecError) and "max_output_bytes" in str(err)
        # stdin alone is fine: output is still captured, and capped.
        r, w = os.pipe()
        os.close(w)
        try:
            res = ex.execute(["sh", "-c", "cat; echo ok"], streams=Streams(stdin=r)).unwrap()
        finally:
            os.close(r)
        assert (res.exit_code, res.stdout) == (0, b"ok\n")


def test_inherit_gives_the_open_stdio() -> None:
    streams = Streams.inherit()
    for fd, given in enumerate((streams.stdin, streams.stdout, streams.stderr)):
        try:
            os.fstat(fd)
        except OSError:
            assert given is None
        else:
            assert given == fd


def test_a_passed_terminal_cannot_be_typed_into() -> None:
    """A terminal given as stdin and stdout: the action cannot push input
    into it (TIOCSTI), which would run as the caller's shell's next command."""
    import errno
    import pty

    master, slave = pty.openpty()
    try:
        code = (
            "import fcntl, termios\n"
            "try:\n fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('typed')\n"
            "except OSError as e:\n print('refused', e.errno)\n"
        )
        spec = SandboxSpec(inputs=TOOLS)
        with HermeticExecutor.create(spec).unwrap() as ex:
            r = ex.execute(
                ["python3", "-c", code], streams=Streams(stdin=slave, stderr=slave)
            ).unwrap()
        assert r.exit_code == 0 and r.stdout.startswith(b"refused"), r
        os.set_blocking(slave, False)
        with pytest.raises(OSError) as nothing:
            os.read(slave, 100)
        assert nothing.value.errno == errno.EAGAIN
    finally:
        os.close(master)
        os.close(slave)
