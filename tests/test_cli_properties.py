"""Properties of the command line over arbitrary arguments.

``hermetic.cli.main`` runs in this process with streams that encode as the
real ones do (stdout strict UTF-8, stderr with backslashreplace), so any
exception, a traceback in the real command, fails the test.  Whatever the
arguments (surrogates, NUL bytes, newlines, huge values, files of every
kind), the exit status is a documented one and an error is one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import without_notice
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermetic.cli import main

pytestmark = [pytest.mark.linux, pytest.mark.root]

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Exit statuses the command line documents (hermetic/cli/usage.py): the action's
#: own (the commands below never start one that exits on its own: they are
#: not found, or refused), verify's 1, and 123-127.
DOCUMENTED = {0, 1, 123, 124, 125, 126, 127}
#: Statuses that mean the action did not run: the reason is one line.
ERRORS = {123, 124, 125, 126, 127}


@contextlib.contextmanager
def _streams(stdin: bytes = b"data\n") -> Iterator[tuple[io.BytesIO, io.BytesIO]]:
    """stdout/stderr/stdin replaced by buffers with the real streams' encodings."""
    out, err = io.BytesIO(), io.BytesIO()
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout = io.TextIOWrapper(out, "utf-8", "strict", write_through=True)
    sys.stderr = io.TextIOWrapper(err, "utf-8", "backslashreplace", write_through=True)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), "utf-8")
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr, sys.stdin = saved


#: A generous bound that proves main() returns (an unguarded open of a FIFO
#: would block for ever); no call here needs more than a fraction of it.
RETURNS_WITHIN = 60


def _hung(signum: int, frame: object) -> None:
    raise TimeoutError(f"main() did not return within {RETURNS_WITHIN} s")


def run_main(argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(RETURNS_WITHIN)
    try:
        with _streams() as (out, err):
            try:
                code: Any = main(list(argv))
            except SystemExit as e:  # argparse: --help, or a bad command line
                code = e.code
            return int(code or 0), out.getvalue(), without_notice(err.getvalue())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(argv: Sequence[str]) -> tuple[int, bytes]:
    code, _out, err = run_main(argv)
    assert code in DOCUMENTED, (argv, code, err[-500:])
    assert b"Traceback" not in err, err[-2000:]
    if code in ERRORS:
        assert err.count(b"\n") == 1 and err.startswith(b"hermetic"), (argv, code, err[-2000:])
        assert len(err) < 5000, (argv, len(err))
    return code, err


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, str]]:
    """A working directory holding a file of each awkward kind."""
    top = tempfile.mkdtemp(prefix="hermetic-cli-prop-")
    os.chmod(top, 0o755)
    made = {
        "dir": top,
        "fifo": os.path.join(top, "fifo"),
        "huge": os.path.join(top, "huge"),
        "deep": os.path.join(top, "deep.json"),
        "good": os.path.join(top, "good.json"),
        "bytes": os.path.join(top, "bytes"),
        "lone": os.path.join(top, "lone.json"),
        "log": os.path.join(top, "audit.jsonl"),
    }
    os.mkfifo(made["fifo"])
    with open(made["huge"], "wb") as f:
        f.truncate(2 << 30)
    with open(made["deep"], "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with open(made["good"], "w") as f:
        f.write('{"inputs": ["/usr", "/bin", "/lib", "/lib64"]}')
    with open(made["bytes"], "wb") as f:
        f.write(b"\xff\xfe\x00{\n" * 10)
    with open(made["lone"], "w") as f:
        f.write('{"outputs": ["/tmp/\\ud800"], "kind": "\\udfff"}\n')
    with open(made["log"], "w") as f:
        f.write('{"kind": "\\ud800", "decision": "denied", "time": 1e400}\n{"kind": 1}\n\n')
    here = os.getcwd()
    os.chdir(top)
    try:
        yield made
    finally:
        os.chdir(here)
        shutil.rmtree(top, ignore_errors=True)


any_char = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from(["\ud800", "\udcff", "\0", "\n", "=", "-", "/", " "]),
)
any_text = st.text(any_char, max_size=20)
huge = st.sampled_from(["9" * 5000, "x" * 100_000, "/" + "a/" * 5000, "1e999", "-1e999", "nan"])
values = st.one_of(any_text, huge, st.sampled_from(["", "-", "--", "0", "-1", "/", ".", "2"]))


def _file_values(files: dict[str, str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([*files.values(), "/dev/zero", "/dev/null", "/proc/self/mem"]), values
    )


def _option(files: dict[str, str]) -> st.SearchStrategy[list[str]]:
    path = _file_values(files)
    with_value = st.tuples(
        st.sampled_from(
            ["--input", "-i", "--output", "-o", "--temp", "-t", "--workdir", "-C", "--spec"]
        ),
        path,
    )
    other = st.tuples(
        st.sampled_from(["--env", "-e", "--timeout", "--runs", "--audit-log"]),
        st.one_of(values, path, st.builds(lambda k, v: f"{k}={v}", any_text, values)),
    )
    flag = st.sampled_from(
        ["--json", "--stdin", "--no-toolchain", "--collect-outputs", "--no-such", "-h"]
    ).map(lambda f: (f,))
    return st.one_of(with_value, other, flag).map(list)


def _argvs(files: dict[str, str]) -> st.SearchStrategy[list[str]]:
    # The command is never one that runs: not found, or refused before exec.
    command = st.lists(values, max_size=3).flatmap(
        lambda rest: st.sampled_from(["/nonexistent-hm/cmd", "", "\ud800", "a\0b"]).map(
            lambda first: [first, *rest]
        )
    )
    action = st.tuples(
        st.sampled_from(["run", "verify", "digest"]),
        st.lists(_option(files), max_size=4),
        st.one_of(st.just([]), command.map(lambda c: ["--", *c]), command),
    ).map(lambda t: [t[0], *[x for opt in t[1] for x in opt], *t[2]])
    reader = st.tuples(
        st.sampled_from(["spec", "audit"]),
        st.lists(st.one_of(_file_values(files), st.just("--json")), max_size=3),
    ).map(lambda t: [t[0], *t[1]])
    anything = st.lists(values, max_size=5)
    return st.one_of(action, reader, anything, st.just(["doctor", "--json"]))


def test_arbitrary_command_lines(files: dict[str, str]) -> None:
    @PROPERTY
    @given(_argvs(files))
    def prop(argv: list[str]) -> None:
        check(argv)

    prop()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--env", "A=\ud800", "--", "true"],
        ["run", "--env", "\ud800=x", "--", "true"],
        ["run", "--input", "/tmp/\ud800", "--", "true"],
        ["run", "--input", "/tmp/a\0b", "--", "true"],
        ["run", "--workdir", "/tmp/\ud800", "--", "true"],
        ["run", "--spec", "/tmp/\ud800", "--", "true"],
        ["run", "--spec", "a\0b", "--", "true"],
        ["run", "--audit-log", "\ud800/x", "--", "true"],
        ["run", "--audit-log", "a\0b", "--", "true"],
        ["run", "--", "true", "\ud800"],
        ["run", "--", "true", "a\0b"],
        ["audit", "\ud800"],
        ["spec", "a\0b"],
    ],
)
def test_surrogates_and_nul_bytes_are_one_line_exit_123(argv: list[str]) -> None:
    # Not from a real command line (the kernel passes bytes, decoded with
    # surrogateescape, and no NUL), but main() is an API too.
    code, err = check(argv)
    assert code == 123, err


def test_the_files_read_leave_no_descriptor_open(files: dict[str, str]) -> None:
    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    argvs = [
        [cmd, *pre, path, *post]
        for path in (*files.values(), "/dev/zero", "/dev/null")
        for cmd, pre, post in (
            ("spec", [], []),
            ("audit", [], []),
            ("audit", [], ["--json"]),
            ("run", ["--spec"], ["--", "/nonexistent-hm/cmd"]),
        )
    ]
    for argv in argvs:  # once first: imports and caches open what they keep
        check(argv)
    before = fds()
    for argv in argvs:
        check(argv)
    assert fds() == before
