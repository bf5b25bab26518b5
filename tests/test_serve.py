"""``hermetic serve``: the daemon behind hermetic-launch, over its protocol.

These tests speak docs/launch-protocol.md from Python (``_launch`` below)
so that each point of the daemon's side is checked on its own; the native
client is tested end to end in test_launch.py.  Every test has a private
runtime directory, and every daemon it starts is stopped and checked gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import _as_user_cmd, _user_env, process_gone, socket_reader, wait_for

from hermetic.core.errors import SpecError
from hermetic.serve import daemon, peer, protocol

pytestmark = pytest.mark.linux

SPEC = {
    "inputs": ["/usr", "/bin", "/lib", "/lib64"],
    "environment": {"vars": {"PATH": "/usr/bin:/bin"}},
}


def _cli(rt: str, *args: str, user: Any = None, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, "-m", "hermetic", *args]
    full = {**(_user_env() if user is not None else os.environ), "HERMETIC_RUNTIME_DIR": rt}
    full.update(env or {})
    return subprocess.run(
        _as_user_cmd(user, argv) if user is not None else argv,
        capture_output=True,
        env=full,
        cwd="/",
        timeout=120,
    )


def _pid(rt: str) -> int:
    with open(os.path.join(rt, "serve.lock")) as f:
        return int(f.read().strip())


@pytest.fixture
def rt() -> Iterator[str]:
    """A private runtime directory; its daemon, if any, stopped afterwards."""
    path = tempfile.mkdtemp(prefix="hermetic-test-rt-")
    try:
        yield path
    finally:
        _stop(path)
        _remove(path)


def _stop(path: str) -> None:
    if os.path.exists(os.path.join(path, "serve.sock")):
        pid = _pid(path)
        _cli(path, "serve", "--stop")
        assert process_gone(pid), f"daemon {pid} still running"


def _remove(path: str) -> None:
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


@pytest.fixture
def spec_file() -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="hermetic-test-spec-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(SPEC, f)
    os.chmod(path, 0o644)
    yield path
    os.unlink(path)


def _connect(rt: str) -> socket.socket:
    """A connection that has passed the daemon's proof step."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.path.join(rt, "serve.sock"))
    assert peer.prove(sock) is None
    return sock


def _request(spec: str, argv: Sequence[str], cwd: str = "/", env: Sequence[str] = ()) -> bytes:
    records = [b"S" + spec.encode(), b"C" + cwd.encode()]
    records += [b"A" + a.encode() for a in argv] + [b"E" + e.encode() for e in env]
    payload = b"".join(r + b"\0" for r in records)
    return protocol.HEADER.pack(protocol.RUN, len(payload)) + payload


#: A client's proof step, in a client run as another process: a refusal
#: is printed on its stderr and is its exit status.
_PROVE_OR_EXIT = (
    "from hermetic.serve.peer import prove\n"
    "refused = prove(s)\n"
    "if refused: sys.stderr.buffer.write(refused[1]); sys.exit(refused[0])\n"
)


def _reply(sock: socket.socket) -> int | None:
    data = b""
    while len(data) < 8:
        chunk = sock.recv(8 - len(data))
        if not chunk:
            return None
        data += chunk
    magic, status = struct.unpack("<4si", data)
    assert magic == protocol.REPLY
    return int(status)


def _launch(
    rt: str,
    spec: str,
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    cwd: str = "/",
    env: Sequence[str] = (),
) -> tuple[int | None, bytes, bytes]:
    """One action through the daemon: (status, stdout, stderr), the streams
    being pipes this process reads."""
    in_r, in_w = os.pipe()
    os.write(in_w, stdin)
    os.close(in_w)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with _connect(rt) as sock:
            socket.send_fds(
                sock, [_request(spec, argv, cwd, env)], [in_r, out.fileno(), err.fileno()]
            )
            os.close(in_r)
            status = _reply(sock)
        out.seek(0)
        err.seek(0)
        return status, out.read(), err.read()


def _start(rt: str, **env: str) -> int:
    p = _cli(rt, "serve", "--detach", env=env)
    assert p.returncode == 0, p.stderr
    return _pid(rt)


def test_an_action_runs_with_the_callers_streams(rt: str, spec_file: str) -> None:
    _start(rt)
    status, out, err = _launch(
        rt, spec_file, ["sh", "-c", "cat; echo out; echo err >&2; exit 3"], stdin=b"in\n"
    )
    assert (status, out, err) == (3, b"in\nout\n", b"err\n")
    status, _, _ = _launch(rt, spec_file, ["sh", "-c", "kill -TERM $$"])
    assert status == 128 + signal.SIGTERM


def test_passed_variables_and_the_working_directory(rt: str, spec_file: str) -> None:
    _start(rt)
    status, out, _ = _launch(
        rt,
        spec_file,
        ["sh", "-c", 'pwd; echo "$SOURCE_DATE_EPOCH"'],
        cwd="/usr",
        env=["SOURCE_DATE_EPOCH=42"],
    )
    assert (status, out) == (0, b"/usr\n42\n")


def test_hermetics_own_failures_say_why_on_stderr(rt: str, spec_file: str) -> None:
    _start(rt)
    fifo = os.path.join(rt, "spec.fifo")
    os.mkfifo(fifo)
    cases = [
        (["no-such-tool-here"], spec_file, "/", 127, b"no-such-tool-here"),
        (["true"], spec_file, "/etc", 123, b"/etc"),  # not visible in the sandbox
        (["true"], "/nonexistent-hm.json", "/", 123, b"nonexistent-hm.json"),
        (["true"], "/dev/null", "/", 123, b"not a regular file"),
        (["true"], fifo, "/", 123, b"(a FIFO)"),  # refused before it is opened
    ]
    for argv, spec, cwd, want, needle in cases:
        status, out, err = _launch(rt, spec, argv, cwd=cwd)
        assert status == want, (argv, spec, status, err)
        assert err.startswith(b"hermetic: ") and err.count(b"\n") == 1 and needle in err, err


def _raw(rt: str, data: bytes) -> tuple[int | None, bytes]:
    """``data`` sent as a request by a proven client, a pipe as its three
    streams: the status, and what the daemon said on the pipe."""
    r, w = os.pipe()
    try:
        with _connect(rt) as sock:
            socket.send_fds(sock, [data], [r, w, w])
            status = _reply(sock)
        os.set_blocking(r, False)
        with contextlib.suppress(BlockingIOError):
            return status, os.read(r, 1000)
        return status, b""
    finally:
        os.close(r)
        os.close(w)


def test_a_malformed_request_is_refused(rt: str, spec_file: str) -> None:
    _start(rt)
    status, said = _raw(rt, protocol.HEADER.pack(protocol.RUN, 5) + b"Xabc\0")
    assert status == 123 and b"malformed" in said, said


@contextlib.contextmanager
def _serving(rt: str, *, connect: bool = True) -> Iterator[daemon.Daemon]:
    """A daemon serving ``rt`` from a thread of this process (with the
    module's constants as the test set them), stopped afterwards.  Waited
    for until it listens: with ``connect``, until a connection is accepted
    (never proven, the daemon closes it after its handshake's timeout),
    else until its socket exists."""
    served = daemon.Daemon(rt, idle=600)
    thread = threading.Thread(target=served.run, name="test-daemon")
    thread.start()
    sock = os.path.join(rt, "serve.sock")
    try:
        assert wait_for(lambda: _listening(sock) if connect else os.path.exists(sock))
        yield served
    finally:
        served.stopping.set()
        thread.join(60)
        assert not thread.is_alive()


@pytest.fixture
def in_process(rt: str) -> Iterator[daemon.Daemon]:
    """A daemon serving ``rt`` from a thread of this process, so that a
    test can put a fault where it wants."""
    with _serving(rt) as served:
        yield served


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class _FailingExecutor:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (OSError(errno.EMFILE, "Too many open files"), b"Too many open files"),
        (ValueError("a bug"), b"ValueError('a bug')"),
    ],
)
def test_an_unexpected_error_is_logged_and_answered_125(
    rt: str,
    spec_file: str,
    in_process: daemon.Daemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    says: bytes,
) -> None:
    """Not the launcher gone: the daemon's own failure.  The launcher gets
    125 and one line naming it and the log, not a connection closed as if
    the daemon had died; the log gets the traceback; the daemon serves on."""
    monkeypatch.setattr(in_process, "_take", lambda path: ("k", _FailingExecutor(error)))
    status, out, err = _launch(rt, spec_file, ["true"])
    assert status == 125, err
    assert err.startswith(b"hermetic: the daemon could not run the action: "), err
    assert err.count(b"\n") == 1 and says in err, err
    assert os.path.join(rt, "serve.log").encode() in err
    logged = capsys.readouterr().err
    assert "hermetic serve: unexpected error serving a launcher" in logged
    assert "Traceback" in logged and type(error).__name__ in logged
    monkeypatch.undo()
    assert _launch(rt, spec_file, ["sh", "-c", "echo again"])[:2] == (0, b"again\n")


def test_an_unexpected_error_of_the_connections_is_answered_125(
    rt: str,
    spec_file: str,
    in_process: daemon.Daemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An error reading the request that does not say the launcher went
    away (here ENOMEM): answered, since the connection still works."""

    def failing(conn: socket.socket, n: int) -> bytes:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(daemon, "_recv_exactly", failing)
    # A payload in a second write, so that the daemon reads it apart.
    payload = _request(spec_file, ["true"])
    r, w = os.pipe()
    try:
        with _connect(rt) as sock:
            socket.send_fds(sock, [payload[:8]], [r, w, w])
            assert _reply(sock) == 125
        assert b"Cannot allocate memory" in os.read(r, 1000)
    finally:
        os.close(r)
        os.close(w)
    assert "Cannot allocate memory" in capsys.readouterr().err


@pytest.mark.parametrize("error", [EOFError("closed"), ConnectionResetError(errno.ECONNRESET, "")])
def test_a_launcher_gone_mid_request_is_not_answered_nor_logged(
    rt: str,
    spec_file: str,
    in_process: daemon.Daemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
) -> None:
    def gone(conn: socket.socket, n: int) -> bytes:
        conn.shutdown(socket.SHUT_RDWR)  # as the launcher's end closing would
        raise error

    monkeypatch.setattr(daemon, "_recv_exactly", gone)
    payload = _request(spec_file, ["true"])
    r, w = os.pipe()
    try:
        with _connect(rt) as sock:
            socket.send_fds(sock, [payload[:8]], [r, w, w])
            assert _reply(sock) is None  # closed without a word
    finally:
        os.close(r)
        os.close(w)
    assert wait_for(lambda: in_process.running == 0)
    assert "unexpected" not in capsys.readouterr().err


def _write_spec(path: str, which: str) -> None:
    spec = json.loads(json.dumps(SPEC))
    spec["environment"]["vars"]["WHICH"] = which
    with open(path, "w") as f:
        json.dump(spec, f)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The spec files the in-process daemon opens, in order."""
    opened: list[str] = []
    real_open = daemon.open_regular

    def counted(path: str, what: str, limit: int) -> int:
        opened.append(path)
        return real_open(path, what, limit)

    monkeypatch.setattr(daemon, "open_regular", counted)
    return opened


def test_a_spec_file_is_read_again_whenever_it_may_have_changed(
    rt: str,
    in_process: daemon.Daemon,
    monkeypatch: pytest.MonkeyPatch,
    reads: list[str],
) -> None:
    """The daemon remembers a settled spec file's digest by the file's
    inode, size, mtime and ctime, and reads it again when any differs:
    rewritten in place with the same size and its mtime put back, or
    replaced by another file."""
    monkeypatch.setattr(daemon, "SPEC_SETTLED_NS", 0)  # every file settled at once
    path = os.path.join(rt, "spec.json")
    _write_spec(path, "first")
    echo = ["sh", "-c", 'echo "$WHICH"']
    assert _launch(rt, path, echo)[:2] == (0, b"first\n")
    assert _launch(rt, path, echo)[:2] == (0, b"first\n")
    assert len(reads) == 1  # the second request found it unchanged

    before = os.stat(path)
    _write_spec(path, "secnd")  # the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    assert _launch(rt, path, echo)[:2] == (0, b"secnd\n")
    assert len(reads) == 2

    other = os.path.join(rt, "other.json")
    _write_spec(other, "third")
    os.replace(other, path)
    assert _launch(rt, path, echo)[:2] == (0, b"third\n")
    assert len(reads) == 3


def test_a_spec_file_just_written_is_read_on_every_request(
    rt: str,
    in_process: daemon.Daemon,
    monkeypatch: pytest.MonkeyPatch,
    reads: list[str],
) -> None:
    """Not settled (its ctime within SPEC_SETTLED_NS of the read): a change
    in the same tick of the file system's clock could keep its ctime, so
    its digest is not remembered."""
    monkeypatch.setattr(daemon, "SPEC_SETTLED_NS", 3600 * 10**9)
    path = os.path.join(rt, "spec.json")
    _write_spec(path, "first")
    for _ in range(3):
        assert _launch(rt, path, ["true"])[0] == 0
    assert len(reads) == 3


def _client(rt: str, spec_file: str) -> str:
    """A client that proves itself and asks the daemon in ``rt`` to run
    ``true``; it exits with the daemon's status, and prints the line of a
    refusal that comes after the challenge (the connection may be closed
    by then: the refusal is read all the same)."""
    return (
        "import socket, sys, struct\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({os.path.join(rt, 'serve.sock')!r})\n"
        + _PROVE_OR_EXIT
        + "try:\n"
        f"    socket.send_fds(s, [{_request(spec_file, ['true'])!r}], [0, 1, 2])\n"
        "except OSError:\n"
        "    pass\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "sys.stderr.buffer.write(data[8:])\n"
        "sys.exit(struct.unpack('<4si', data[:8])[1])\n"
    )


def test_a_confined_caller_is_refused(rt: str, spec_file: str) -> None:
    """A caller under no_new_privs (as inside a sandbox) would gain the
    daemon's freedom: refused, with the reason on its stderr."""
    _start(rt)
    p = subprocess.run(
        ["setpriv", "--no-new-privs", sys.executable, "-c", _client(rt, spec_file)],
        cwd="/",  # not the checkout: its hermetic/ has no compiled core
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 125 and b"NoNewPrivs" in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("unshare", "differs"),
    [(["--net"], b"(net)"), (["--user", "--map-current-user"], b"(user)")],
)
def test_a_caller_in_other_namespaces_is_refused(
    rt: str, spec_file: str, unshare: list[str], differs: bytes
) -> None:
    """Each namespace is compared on every connection: a caller that
    unshared one is refused, the namespaces that differ named."""
    if unshare[0] == "--net" and os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root (a user's would unshare both)")
    _start(rt)
    p = subprocess.run(
        ["unshare", *unshare, sys.executable, "-c", _client(rt, spec_file)],
        cwd="/",  # not the checkout: its hermetic/ has no compiled core
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 125, p.stderr
    assert b"confined differently" in p.stderr and differs in p.stderr, p.stderr


def test_another_user_is_refused_even_through_an_open_socket(
    rt: str, spec_file: str, test_user: Any
) -> None:
    if test_user is None:
        pytest.skip("needs root to run a client as another user")
    _start(rt)
    # A runtime directory opened up after the start: SO_PEERCRED still refuses.
    os.chmod(rt, 0o711)
    os.chmod(os.path.join(rt, "serve.sock"), 0o666)
    p = subprocess.run(
        _as_user_cmd(test_user, [sys.executable, "-c", _client(rt, spec_file)]),
        capture_output=True,
        env=_user_env(),
        cwd="/",
        timeout=60,
    )
    os.chmod(rt, 0o700)
    assert p.returncode == 125 and b"serves uid 0 only" in p.stderr, p.stderr


def _marker_running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        return True
            except OSError:
                continue
    return False


def test_a_launcher_that_goes_away_ends_its_action(rt: str, spec_file: str) -> None:
    _start(rt)
    marker = "1234.5678"  # sleep's argument: names the action's process
    sock = _connect(rt)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        socket.send_fds(sock, [_request(spec_file, ["sleep", marker])], [null, null, null])
        assert wait_for(lambda: _marker_running(marker)), "the action never started"
    finally:
        os.close(null)
        sock.close()  # as a launcher killed by Ctrl-C
    assert wait_for(lambda: not _marker_running(marker)), "the action outlived its launcher"


def test_a_daemon_that_dies_leaves_no_action_and_the_caller_sees_it(
    rt: str, spec_file: str
) -> None:
    pid = _start(rt)
    marker = "2345.6789"
    got: list[int | None] = []
    null = os.open(os.devnull, os.O_RDWR)

    def client() -> None:
        with _connect(rt) as sock:
            socket.send_fds(sock, [_request(spec_file, ["sleep", marker])], [null, null, null])
            got.append(_reply(sock))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert wait_for(lambda: _marker_running(marker)), "the action never started"
        os.kill(pid, signal.SIGKILL)
        thread.join(60)
    finally:
        os.close(null)
    assert got == [None]  # the connection closed without a status
    assert process_gone(pid)
    assert wait_for(lambda: not _marker_running(marker)), "the action outlived the daemon"
    os.unlink(os.path.join(rt, "serve.sock"))  # a killed daemon cannot remove it


def test_concurrent_starts_make_one_daemon(rt: str) -> None:
    argv = [sys.executable, "-m", "hermetic", "serve", "--detach"]
    env = {**os.environ, "HERMETIC_RUNTIME_DIR": rt}
    procs = [subprocess.Popen(argv, env=env, cwd="/") for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    status = json.loads(_cli(rt, "serve", "--status").stdout)
    assert status["pid"] == _pid(rt)
    daemons = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _cmdline(pid).endswith(b"serve\0--detach\0") and _env_has(pid, rt)
    ]
    assert daemons == [str(status["pid"])], daemons


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _env_has(pid: str, rt: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"HERMETIC_RUNTIME_DIR={rt}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_an_idle_daemon_exits(rt: str, spec_file: str) -> None:
    pid = _start(rt, HERMETIC_SERVE_IDLE="0.5")
    assert _launch(rt, spec_file, ["true"])[0] == 0
    assert process_gone(pid), "the idle daemon did not exit"
    assert not os.path.exists(os.path.join(rt, "serve.sock"))


def test_status_and_stop(rt: str, spec_file: str) -> None:
    assert _cli(rt, "serve", "--status").returncode == 1  # none yet
    pid = _start(rt)
    _launch(rt, spec_file, ["true"])
    status = json.loads(_cli(rt, "serve", "--status").stdout)
    assert status["pid"] == pid and status["served"] == 1 and status["running"] == 0
    assert [s["path"] for s in status["specs"]] == [spec_file]
    assert _cli(rt, "serve", "--stop").returncode == 0
    assert process_gone(pid, within=5)
    assert not os.path.exists(os.path.join(rt, "serve.sock"))


def test_an_unsafe_runtime_directory_is_refused(rt: str) -> None:
    os.chmod(rt, 0o755)
    p = _cli(rt, "serve", "--detach")
    assert p.returncode == 123 and rt.encode() in p.stderr and b"700" in p.stderr, p.stderr
    os.chmod(rt, 0o700)
    link = rt + "-link"
    os.symlink(rt, link)
    try:
        p = _cli(link, "serve", "--detach")
        assert p.returncode == 123 and b"symbolic link" in p.stderr, p.stderr
    finally:
        os.unlink(link)


def test_the_test_user_has_a_daemon_of_its_own(spec_file: str, test_user: Any) -> None:
    if test_user is None:
        pytest.skip("the suite runs as a normal user: the other tests are that user's")
    rt = tempfile.mkdtemp(prefix="hermetic-test-rt-")
    os.chown(rt, test_user.pw_uid, test_user.pw_gid)
    client = (
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import json\n"
        "from test_serve import _launch\n"
        f"status, out, err = _launch({rt!r}, {spec_file!r}, ['id', '-u'])\n"
        "print(json.dumps([status, out.decode(), err.decode()]))\n"
    )
    try:
        assert _cli(rt, "serve", "--detach", user=test_user).returncode == 0
        pid = _pid(rt)
        p = subprocess.run(
            _as_user_cmd(test_user, [sys.executable, "-c", client]),
            capture_output=True,
            text=True,
            env={**_user_env(), "HERMETIC_RUNTIME_DIR": rt},
            cwd="/",
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        status, out, err = json.loads(p.stdout)
        assert status == 0 and out.strip().isdigit(), err
        assert _cli(rt, "serve", "--stop", user=test_user).returncode == 0
        assert process_gone(pid)
    finally:
        _remove(rt)


# -- the handshake's and the threads' details -------------------------------------


def test_a_header_in_pieces_is_waited_for(
    rt: str, spec_file: str, in_process: daemon.Daemon
) -> None:
    """A header that arrives in two writes: the leader reads what has come
    without waiting for the rest (others are served meanwhile), and
    watches the connection again (it is watched one event at a time)."""
    payload = _request(spec_file, ["sh", "-c", "echo pieces"])
    with tempfile.TemporaryFile() as out:
        r, w = os.pipe()
        try:
            with _connect(rt) as sock:
                socket.send_fds(sock, [payload[:3]], [r, out.fileno(), w])
                # The first piece is read before the rest is sent, and the
                # leader does not wait for the rest: another action runs.
                assert wait_for(lambda: _head_read(in_process, 3))
                assert _launch(rt, spec_file, ["true"])[0] == 0
                sock.sendall(payload[3:])
                assert _reply(sock) == 0
        finally:
            os.close(r)
            os.close(w)
        out.seek(0)
        assert out.read() == b"pieces\n"


def _head_read(served: daemon.Daemon, n: int) -> bool:
    hs = served._handshakes
    try:
        return hs is not None and any(len(w.head) == n for w in list(hs.pending.values()))
    except RuntimeError:  # changed while read: ask again
        return False


class _Gate:
    """A pipe whose read end, an action's stdin, keeps ``cat`` running
    until ``open()`` closes the write end."""

    def __init__(self) -> None:
        self.r, self._w = os.pipe()

    def open(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def __enter__(self) -> _Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()
        os.close(self.r)


def test_a_request_is_queued_while_every_thread_runs_an_action(
    rt: str, spec_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one serving thread (and so two threads: one leads, one runs),
    a second request while the first runs still gets its challenge at once
    and runs when the first ends: the leader queues it and goes on
    leading."""
    monkeypatch.setattr(daemon, "SERVING_THREADS", 1)
    with _Gate() as gate, _serving(rt) as served, tempfile.TemporaryFile() as err:
        streams = [gate.r, err.fileno(), err.fileno()]
        first = _connect(rt)
        # The first action reads its stdin until it closes: it runs until
        # this test lets it end.
        socket.send_fds(first, [_request(spec_file, ["cat"])], streams)
        assert wait_for(lambda: served.running == 1)
        second = _connect(rt)  # its challenge came while the first runs
        socket.send_fds(second, [_request(spec_file, ["true"])], streams)
        assert wait_for(lambda: served.running == 2 and len(served._queued) == 1)
        third = _connect(rt)  # and still another connection is taken in
        third.close()
        gate.open()
        assert _reply(first) == 0
        assert _reply(second) == 0
        first.close()
        second.close()


def test_no_connection_is_taken_in_while_the_queue_is_full(
    rt: str, spec_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One serving thread and room for one waiting request: while a
    request runs and another waits, a third connection is left in the
    listen backlog (no challenge, nothing held by the daemon), and is taken
    in, proven and run once the queue has room again."""
    monkeypatch.setattr(daemon, "SERVING_THREADS", 1)
    monkeypatch.setattr(daemon, "MAX_QUEUED", 1)
    with _Gate() as gate, _serving(rt) as served, tempfile.TemporaryFile() as err:
        streams = [gate.r, err.fileno(), err.fileno()]
        first = _connect(rt)
        socket.send_fds(first, [_request(spec_file, ["cat"])], streams)
        assert wait_for(lambda: served.running == 1)
        second = _connect(rt)
        socket.send_fds(second, [_request(spec_file, ["cat"])], streams)
        assert wait_for(lambda: len(served._queued) == 1)
        third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        third.connect(os.path.join(rt, "serve.sock"))
        assert select.select([third], [], [], 0.5)[0] == []  # no challenge
        assert served._handshakes is not None and not served._handshakes.pending
        gate.open()  # both cats end
        assert _reply(first) == 0 and _reply(second) == 0
        assert peer.prove(third) is None  # its challenge came
        socket.send_fds(third, [_request(spec_file, ["true"])], streams)
        assert _reply(third) == 0
        for sock in (first, second, third):
            sock.close()


def test_an_accept_without_descriptors_pauses_the_listener(
    rt: str, spec_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accept() failing for want of descriptors leaves the connection in
    the backlog, and the listener readable: the leader pauses instead of
    asking again at once (a spin of one core), and serves it afterwards."""
    calls: list[float] = []
    failing = threading.Event()
    failing.set()

    class Listener:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def fileno(self) -> int:
            return self.sock.fileno()

        def shutdown(self, how: int) -> None:
            self.sock.shutdown(how)

        def accept(self) -> Any:
            calls.append(time.monotonic())
            if failing.is_set():
                raise OSError(errno.EMFILE, "Too many open files")
            return self.sock.accept()

    real = daemon._Handshakes
    monkeypatch.setattr(daemon, "_Handshakes", lambda sock: real(Listener(sock)))
    try:
        with _serving(rt, connect=False), tempfile.TemporaryFile() as err:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(os.path.join(rt, "serve.sock"))
            time.sleep(0.5)
            failing.clear()
            # At most one try per pause (and a few around it), not thousands.
            assert 0 < len(calls) <= 0.5 / daemon.PAUSE + 10, len(calls)
            assert peer.prove(sock) is None
            socket.send_fds(sock, [_request(spec_file, ["true"])], [err.fileno()] * 3)
            assert _reply(sock) == 0
            sock.close()
    finally:
        failing.clear()


def test_a_caller_refused_from_proc_gets_its_challenge_then_the_reason(
    rt: str, spec_file: str
) -> None:
    """The uid is checked before the challenge; the rest is compared from
    /proc while the caller answers it, and a caller that differs gets the
    refusal's word and the reason after its challenge, nothing being read
    from it (this one sends nothing)."""
    _start(rt)
    client = socket_reader(os.path.join(rt, "serve.sock"))
    p = subprocess.run(
        ["setpriv", "--no-new-privs", sys.executable, "-c", client],
        cwd="/",
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    challenge, rest = p.stdout[: protocol.CHALLENGE.size], p.stdout[protocol.CHALLENGE.size :]
    assert challenge.startswith(protocol.PROVE), p.stdout
    assert rest.startswith(protocol.refusal(125)) and b"NoNewPrivs" in rest, p.stdout


def test_challenges_reuse_their_buffers_least_recently_freed_first() -> None:
    """The challenges' buffers are one allocation for the daemon's life: a
    caller writing late never writes into memory used for anything else."""
    pool = peer.Challenges(2)
    a, b = pool.take(), pool.take()
    assert a is not None and b is not None and pool.take() is None
    addresses = [protocol.CHALLENGE.unpack(c.message())[1] for c in (a, b)]
    assert addresses[1] - addresses[0] == protocol.NONCE_BYTES
    assert a.nonce != b.nonce
    a.end()
    b.end()
    c = pool.take()
    assert c is not None
    assert protocol.CHALLENGE.unpack(c.message())[1] == addresses[0]  # freed first
    assert not c.proven()  # cleared, and never the old nonce
    assert not a.proven()  # ended: nothing proves it any more


def test_the_peer_check_compares_namespaces_and_status_lines() -> None:
    links, lines = peer._identity(os.getpid())
    assert [link.split(":")[0] for link in links] == ["user", "mnt", "net", "pid"]
    assert {name for name, _ in lines} == {
        b"NoNewPrivs",
        b"Seccomp",
        b"Seccomp_filters",
        b"Uid",
        b"Gid",
        b"Groups",
    }
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer.check_peer(a) == os.getpid()


def test_a_run_payload_is_parsed_record_by_record() -> None:
    """Records split at their NULs: any bytes but NUL in a string (decoded
    as file names are), an offset in the error for a bad record, and a
    payload that does not end in a NUL refused."""
    payload = b"S/s.json\0C/w\0Acc\0A-c\0A\xffx.c\0ESOURCE_DATE_EPOCH=1\0EA==b\0"
    r = protocol.parse_run(payload)
    assert (r.spec_path, r.cwd) == ("/s.json", "/w")
    assert r.argv == ("cc", "-c", os.fsdecode(b"\xffx.c"))
    assert r.env == {"SOURCE_DATE_EPOCH": "1", "A": "=b"}
    for bad, at in ((b"S/s\0Xy\0", 4), (b"S/s\0C/\0Atrue", 7), (b"S/s\0\0", 4)):
        with pytest.raises(SpecError, match=f"malformed request record at byte {at}$"):
            protocol.parse_run(bad)
    with pytest.raises(SpecError, match="one spec path"):
        protocol.parse_run(b"")
    with pytest.raises(SpecError, match="no command"):
        protocol.parse_run(b"S/s\0C/\0")
    with pytest.raises(SpecError, match="NAME=VALUE"):
        protocol.parse_run(b"S/s\0C/\0Atrue\0Enovalue\0")
    with pytest.raises(SpecError, match="must be absolute"):
        protocol.parse_run(b"Srel\0C/\0Atrue\0")


def test_stop_ends_a_daemon_of_protocol_2(rt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade can leave a daemon of version 2 running: ``hermetic serve
    --stop`` proves itself to its challenge and sends it version 2's stop.
    The daemon here is a stand-in in this process, speaking version 2."""
    import ctypes

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(rt, "serve.sock"))
    listener.listen(1)
    buffer = ctypes.create_string_buffer(16)
    nonce = os.urandom(16)
    got: list[bytes] = []

    def old_daemon() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(protocol.CHALLENGE.pack(b"HMP2", ctypes.addressof(buffer), nonce))
            header = b""
            while len(header) < protocol.HEADER.size:
                header += conn.recv(protocol.HEADER.size - len(header))
            got.append(header)
            got.append(buffer.raw)
            conn.sendall(protocol.reply(0))

    thread = threading.Thread(target=old_daemon)
    thread.start()
    monkeypatch.setenv("HERMETIC_RUNTIME_DIR", rt)
    try:
        assert daemon.control(protocol.STOP) == (0, b"")
    finally:
        thread.join(30)
        listener.close()
        os.unlink(os.path.join(rt, "serve.sock"))
    assert got == [protocol.HEADER.pack(b"HMQ2", 0), nonce]


def test_a_refusal_never_waits_on_the_callers_stderr(rt: str, spec_file: str) -> None:
    """A caller whose stderr is a pipe it filled (and whose reading end it
    passed as stdin, so the daemon holds the only reader) gets its status;
    the line that does not fit is dropped.  Before, a daemon thread waited
    in that write for good, and enough such callers left no thread."""
    _start(rt)
    r, w = os.pipe()
    os.set_blocking(w, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(w, b"x" * 65536)
    os.set_blocking(w, True)
    try:
        for _ in range(daemon.SERVING_THREADS + 2):
            with _connect(rt) as sock:
                sock.settimeout(30)  # a bound proving the answer came, not a timing
                socket.send_fds(sock, [_request("/nonexistent-hm.json", ["true"])], [r, w, w])
                assert _reply(sock) == 123
        # The daemon still serves, and stops when asked.
        status, _, _ = _launch(rt, spec_file, ["true"])
        assert status == 0
    finally:
        os.close(r)
        os.close(w)
    assert _cli(rt, "serve", "--stop").returncode == 0


def test_bytes_past_the_declared_length_are_refused(rt: str, spec_file: str) -> None:
    _start(rt)
    good = _request(spec_file, ["/bin/sh", "-c", "echo ran"])
    status, said = _raw(rt, good + b"Aextra\0")
    assert status == 123, said
    assert b"past its declared length" in said and b"ran" not in said, said


def test_a_request_that_stalls_is_refused_after_the_handshake_bound(
    rt: str, spec_file: str
) -> None:
    """A header and then nothing holds a thread for HANDSHAKE_TIMEOUT, not
    for good: the caller gets 123, and the daemon goes on serving."""
    _start(rt)
    status, said = _raw(rt, _request(spec_file, ["true"])[: protocol.HEADER.size + 3])
    assert status == 123 and b"did not arrive" in said, said
    status, _, _ = _launch(rt, spec_file, ["true"])
    assert status == 0


def _cgroup_dirs_of(pid: int) -> list[str]:
    """The cgroup directories hermetic made for process ``pid`` below this
    process's own groups (hermetic-PID in each hierarchy)."""
    found = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            names = [c for c in controllers.split(",") if c and not c.startswith("name=")]
            base = "/sys/fs/cgroup/unified" if not controllers else None
            for name in names or ([] if base is None else [""]):
                top = base or os.path.join("/sys/fs/cgroup", name)
                where = os.path.join(top, path.lstrip("/"), f"hermetic-{pid}")
                if os.path.exists(where):
                    found.append(where)
    return found


def test_a_stopped_daemon_leaves_no_cgroup(rt: str, spec_file: str) -> None:
    """The daemon ends with os._exit (it is a detached child): the exit
    handlers that remove its sandboxes' cgroup slots run first."""
    pid = _start(rt)
    assert _launch(rt, spec_file, ["true"])[0] == 0
    _stop(rt)
    assert _cgroup_dirs_of(pid) == []
