"""Who the launcher's daemon serves, and whom the launcher trusts.

The daemon runs actions with its own rights, so it serves only a caller
that could already control it (docs/launch-protocol.md, "Who may use a
daemon"): a caller that passes the comparison from /proc and writes the
daemon's challenge into the daemon's memory.  Each test runs the installed
``hermetic-launch`` against a real daemon in a private runtime directory,
as root and as the unprivileged test user, and checks that a confined
caller gets one line and status 125 where it used to get the daemon's
rights:

- a caller in a Landlock domain (the proof: the kernel refuses the write);
- a caller without the daemon's capabilities (root only: a normal user has
  none to drop);
- a caller under one more seccomp filter, or with other supplementary
  groups (compared from /proc before anything is read);
- a client that skips the proof.

Idle connections cannot hold the daemon: 32 of them, and a launcher still
runs; each is closed after the handshake's timeout.  The launcher refuses a
listener of another uid; without XDG_RUNTIME_DIR the runtime directory is
below $HOME, where no other user can take its name first.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import (
    LAUNCHER,
    LAUNCHER_MODES,
    _as_user_cmd,
    _user_env,
    launcher_user,
    process_alive,
    socket_reader,
    wait_for,
)

from hermetic.serve import protocol

pytestmark = pytest.mark.linux

SPEC = (
    '{"inputs": ["/usr", "/bin", "/lib", "/lib64"], '
    '"environment": {"vars": {"PATH": "/usr/bin:/bin"}}}'
)

#: Runs ARGV... under no_new_privs in a Landlock domain that handles one
#: right (making regular files) and grants it nowhere: nothing the launcher
#: does is denied, but the domain is not the daemon's.
LANDLOCK = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
attr = ctypes.c_uint64(1 << 8)
fd = libc.syscall(444, ctypes.byref(attr), ctypes.sizeof(attr), 0)
assert fd >= 0, os.strerror(ctypes.get_errno())
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.syscall(446, fd, 0) == 0, os.strerror(ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""

#: Runs ARGV... under no_new_privs and one more seccomp filter (one that
#: allows everything: only the number of filters differs).
SECCOMP = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
insns = (Insn * 1)(Insn(0x06, 0, 0, 0x7FFF0000))
prog = Prog(1, insns)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, os.strerror(ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""

#: Connects N times to SOCKET and sends nothing; says "ready", waits for a
#: line on stdin, then prints how many of the connections the daemon
#: closed (end of stream after at most its challenge).
IDLE = """
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
print("ready", flush=True)
sys.stdin.readline()
closed = 0
for s in held:
    s.settimeout(30)
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            closed += 1
            break
        got += chunk
print(closed, flush=True)
"""

#: Connects to SOCKET, reads the challenge and, without writing it into
#: the daemon's memory, sends a request; prints the reply and the rest.
NO_PROOF = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
challenge = s.recv(28)
payload = b"S" + sys.argv[2].encode() + b"\\0C/\\0Atrue\\0"
socket.send_fds(s, [struct.pack("<4sI", b"HML3", len(payload)) + payload], [0, 1, 2])
reply = b""
while chunk := s.recv(4096):
    reply += chunk
sys.stdout.buffer.write(challenge[:4] + b" " + reply)
"""


class Caller:
    """Runs programs as root (``user`` None) or as the test user."""

    def __init__(self, user: pwd.struct_passwd | None) -> None:
        self.user = user

    def own(self, path: str) -> str:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.user is None else _as_user_cmd(self.user, argv)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**_user_env(), "HERMETIC_SERVE_IDLE": "120", **extra}

    def run(
        self, argv: Sequence[str], env: dict[str, str], **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.cmd(argv), capture_output=True, env=self.env(env), cwd="/", timeout=120, **kw
        )


@pytest.fixture(params=LAUNCHER_MODES)
def caller(request: pytest.FixtureRequest) -> Caller:
    return Caller(launcher_user(request))


@pytest.fixture
def root() -> Caller:
    """Root, for what only root can do (drop capabilities, change its
    groups, run as another uid)."""
    if os.geteuid() != 0:
        pytest.skip("needs the suite to run as root")
    return Caller(None)


@pytest.fixture
def work(caller: Caller) -> Iterator[str]:
    """A world-readable directory: the spec, the helper scripts, and the
    runtime directory ``rt`` (0700, the caller's)."""
    yield from _work(caller)


@pytest.fixture
def root_work(root: Caller) -> Iterator[str]:
    """``work`` for root."""
    yield from _work(root)


def _work(caller: Caller) -> Iterator[str]:
    path = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-peer-"))
    os.chmod(path, 0o755)
    for name, text in (
        ("spec.json", SPEC),
        ("landlock.py", LANDLOCK),
        ("seccomp.py", SECCOMP),
        ("idle.py", IDLE),
        ("no_proof.py", NO_PROOF),
        ("flood.py", FLOOD),
    ):
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(path, name), 0o644)
    rt = os.path.join(path, "rt")
    os.mkdir(rt, 0o700)
    caller.own(rt)
    try:
        yield path
    finally:
        try:
            _stop(caller, rt)
        finally:  # also when the daemon would not stop: nothing left in /tmp
            shutil.rmtree(path, ignore_errors=True)


def _daemon_pid(rt: str) -> int | None:
    try:
        with open(os.path.join(rt, "serve.lock")) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _stop(caller: Caller, rt: str, prefix: Sequence[str] = ()) -> None:
    """Stops the daemon of ``rt`` if one runs, and checks it gone."""
    pid = _daemon_pid(rt)
    if pid is None or not process_alive(pid):
        return
    p = caller.run(
        [*prefix, sys.executable, "-m", "hermetic", "serve", "--stop"],
        {"HERMETIC_RUNTIME_DIR": rt},
    )
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: not process_alive(pid)), f"daemon {pid} still running"


def _start(caller: Caller, rt: str, prefix: Sequence[str] = ()) -> int:
    """The daemon of ``rt``, started by ``prefix`` + hermetic serve."""
    p = caller.run(
        [*prefix, sys.executable, "-m", "hermetic", "serve", "--detach"],
        {"HERMETIC_RUNTIME_DIR": rt},
    )
    assert p.returncode == 0, p.stderr
    pid = _daemon_pid(rt)
    assert pid is not None and process_alive(pid)
    return pid


def _launch(
    caller: Caller, work: str, prefix: Sequence[str] = (), argv: Sequence[str] = ("true",)
) -> subprocess.CompletedProcess[bytes]:
    rt = os.path.join(work, "rt")
    return caller.run(
        [*prefix, LAUNCHER, "--spec", os.path.join(work, "spec.json"), *argv],
        {"HERMETIC_RUNTIME_DIR": rt},
    )


def _one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith("hermetic-launch: "), text
    return text


NNP = ("setpriv", "--no-new-privs", "--")


# -- D1: confinement the comparison cannot see ----------------------------------


def test_a_caller_in_a_landlock_domain_is_refused_by_the_kernel(caller: Caller, work: str) -> None:
    """Both under no_new_privs, so that only the Landlock domain differs:
    the kernel refuses the caller's write into the daemon's memory."""
    rt = os.path.join(work, "rt")
    _start(caller, rt, NNP)
    plain = _launch(caller, work, NNP, ["sh", "-c", "echo served"])
    assert (plain.returncode, plain.stdout) == (0, b"served\n"), plain.stderr
    confined = _launch(caller, work, (sys.executable, os.path.join(work, "landlock.py")))
    assert confined.returncode == 125, confined.stderr
    line = _one_line(confined.stderr)
    assert "may not write the daemon's memory" in line, line
    _stop(caller, rt, NNP)


@pytest.mark.root
def test_a_caller_without_the_daemons_capabilities_is_refused(root: Caller, root_work: str) -> None:
    """Root's daemon; the caller is root with an empty bounding set (a normal
    user has no capability to drop)."""
    caller, work = root, root_work
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    p = _launch(caller, work, ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"))
    assert p.returncode == 125, p.stderr
    assert "may not write the daemon's memory" in _one_line(p.stderr)
    assert _launch(caller, work).returncode == 0  # root itself is served


def test_a_caller_under_one_more_seccomp_filter_is_refused(caller: Caller, work: str) -> None:
    """Not the mode (2 for both) but the number of filters differs."""
    rt = os.path.join(work, "rt")
    _start(caller, rt, NNP)
    p = _launch(caller, work, (sys.executable, os.path.join(work, "seccomp.py")))
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert "confined differently" in line and "Seccomp_filters" in line, line
    _stop(caller, rt, NNP)


def test_a_caller_in_another_user_namespace_hears_the_daemons_reason(
    caller: Caller, work: str
) -> None:
    """The kernel refuses its write into the daemon's memory; meanwhile the
    daemon compared it from /proc and refused it after its challenge: the
    launcher, having half-closed the connection, reads that refusal and
    says what differs, rather than only that its write failed."""
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    p = _launch(caller, work, ("unshare", "--user", "--map-current-user", "--"))
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert "confined differently" in line and "(user)" in line, line


@pytest.mark.root
def test_a_caller_with_other_groups_is_refused(root: Caller, root_work: str) -> None:
    caller, work = root, root_work
    rt = os.path.join(work, "rt")
    groups = ("setpriv", "--groups=0,1", "--")
    _start(caller, rt, groups)
    p = _launch(caller, work, ("setpriv", "--groups=0", "--"))
    assert p.returncode == 125, p.stderr
    assert "Groups" in _one_line(p.stderr)
    _stop(caller, rt, groups)


def test_a_client_that_skips_the_proof_is_refused_before_its_request(
    caller: Caller, work: str
) -> None:
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    marker = os.path.join(work, "ran")
    p = caller.run(
        [sys.executable, os.path.join(work, "no_proof.py"), os.path.join(rt, "serve.sock"), marker],
        {},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(protocol.PROVE + b" " + protocol.refusal(125)), p.stdout
    assert b"did not prove" in p.stdout, p.stdout


# -- D2: idle connections --------------------------------------------------------


def test_idle_connections_do_not_hold_the_daemon(caller: Caller, work: str) -> None:
    """32 connections that send nothing (twice the serving threads of a
    small machine), then a launcher: it runs (the bound, far above the
    handshake's timeout, only proves it does not wait for ever), and the
    daemon closes every idle connection."""
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    idle = subprocess.Popen(
        caller.cmd(
            [sys.executable, os.path.join(work, "idle.py"), os.path.join(rt, "serve.sock"), "32"]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=caller.env({}),
        cwd="/",
    )
    try:
        assert idle.stdout is not None and idle.stdin is not None
        assert idle.stdout.readline() == b"ready\n"
        p = subprocess.run(
            caller.cmd([LAUNCHER, "--spec", os.path.join(work, "spec.json"), "echo", "served"]),
            capture_output=True,
            env=caller.env({"HERMETIC_RUNTIME_DIR": rt}),
            cwd="/",
            timeout=10,
        )
        assert (p.returncode, p.stdout) == (0, b"served\n"), p.stderr
        out, _ = idle.communicate(b"go\n", timeout=120)
        assert out == b"32\n"
    finally:
        if idle.poll() is None:
            idle.kill()
            idle.wait()


#: Connects to SOCKET in a loop and never proves itself, holding what the
#: daemon lets it hold, until stdin closes; prints how many it was refused.
FLOOD = """
import collections, socket, sys, threading
path = sys.argv[1]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
held, refused = collections.deque(), 0
def count(s):
    global refused
    s.setblocking(False)
    try:
        refused += s.recv(4096).startswith(b"HMR1")  # a reply, not a challenge
    except OSError:
        pass
    s.close()
print("ready", flush=True)
while not stop.is_set():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    held.append(s)
    while len(held) > 400:
        count(held.popleft())
while held:
    count(held.popleft())
print(refused, flush=True)
"""


def test_a_process_flooding_the_handshake_does_not_lock_launchers_out(
    caller: Caller, work: str
) -> None:
    """A process that connects in a loop and never proves itself (as a
    confined one that the proof refuses could) holds at most
    MAX_HANDSHAKES_PER_PEER handshakes: past that it is refused at once,
    and every launcher meanwhile still runs."""
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    flood = subprocess.Popen(
        caller.cmd(
            [sys.executable, os.path.join(work, "flood.py"), os.path.join(rt, "serve.sock")]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=caller.env({}),
        cwd="/",
    )
    try:
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline() == b"ready\n"
        for _ in range(5):
            p = subprocess.run(
                caller.cmd([LAUNCHER, "--spec", os.path.join(work, "spec.json"), "echo", "served"]),
                capture_output=True,
                env=caller.env({"HERMETIC_RUNTIME_DIR": rt}),
                cwd="/",
                timeout=60,
            )
            assert (p.returncode, p.stdout) == (0, b"served\n"), p.stderr
        out, _ = flood.communicate(b"", timeout=120)
        assert int(out) > 0, "the flood was never refused"
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()


@pytest.mark.root
def test_another_user_is_refused_before_it_sends_anything(
    root: Caller, root_work: str, test_user: pwd.struct_passwd
) -> None:
    """The peer is checked as its connection is accepted: the refusal
    arrives though the client has sent nothing."""
    caller, work, user = root, root_work, test_user
    rt = os.path.join(work, "rt")
    _start(caller, rt)
    os.chmod(rt, 0o711)  # opened up by mistake: SO_PEERCRED still refuses
    os.chmod(os.path.join(rt, "serve.sock"), 0o666)
    client = socket_reader(os.path.join(rt, "serve.sock"))
    p = subprocess.run(
        _as_user_cmd(user, [sys.executable, "-c", client]),
        capture_output=True,
        env=_user_env(),
        cwd="/",
        timeout=60,
    )
    os.chmod(rt, 0o700)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(protocol.reply(125)) and b"serves uid 0 only" in p.stdout, p.stdout


# -- D3: the launcher checks who listens -----------------------------------------


@pytest.mark.root
def test_the_launcher_refuses_a_listener_of_another_uid(
    root: Caller, root_work: str, test_user: pwd.struct_passwd
) -> None:
    """Root's launcher pointed at a socket on which a process of the test
    user listens: one line, 125, and nothing sent to that listener."""
    caller, work, user = root, root_work, test_user
    rt = os.path.join(work, "rt")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(rt, "serve.sock"))  # root binds; the test user listens
    fake = (
        "import socket, sys\n"
        "s = socket.socket(fileno=int(sys.argv[1])); s.listen(8)\n"
        "print('listening', flush=True)\n"
        "c, _ = s.accept(); c.settimeout(30)\n"
        "got = b''\n"
        "while chunk := c.recv(4096): got += chunk\n"
        "print(len(got), flush=True)\n"
    )
    server = subprocess.Popen(
        _as_user_cmd(user, [sys.executable, "-c", fake, str(sock.fileno())]),
        stdout=subprocess.PIPE,
        pass_fds=[sock.fileno()],
        env=_user_env(),
        cwd="/",
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"listening\n"
        p = _launch(caller, work)
        assert p.returncode == 125, p.stderr
        line = _one_line(p.stderr)
        assert "runs as another user" in line and rt in line, line
        out, _ = server.communicate(timeout=60)
        assert out == b"0\n"  # it got nothing: no request, no descriptors
    finally:
        sock.close()
        if server.poll() is None:
            server.kill()
            server.wait()


# -- D4: the runtime directory without XDG_RUNTIME_DIR ---------------------------


def test_without_xdg_runtime_dir_the_runtime_directory_is_below_home(
    caller: Caller, work: str
) -> None:
    """$HOME/.cache/hermetic/run, made 0700 with its parents; the daemon
    finds the same one (its --status answers); a /tmp/hermetic-UID taken
    by someone else does not matter any more."""
    home = os.path.join(work, "home")
    os.mkdir(home, 0o700)
    caller.own(home)
    uid = os.geteuid() if caller.user is None else caller.user.pw_uid
    squatted = f"/tmp/hermetic-{uid}"
    made = False
    if os.geteuid() == 0 and not os.path.lexists(squatted):
        os.mkdir(squatted, 0o700)  # another user's (root's, or the test user's)
        os.chown(squatted, 0 if caller.user is not None else 65534, 0)
        made = True
    rt = os.path.join(home, ".cache", "hermetic", "run")
    try:
        p = caller.run(
            [LAUNCHER, "--spec", os.path.join(work, "spec.json"), "echo", "served"],
            {"HOME": home},
        )
        assert (p.returncode, p.stdout) == (0, b"served\n"), p.stderr
        for path in (os.path.dirname(os.path.dirname(rt)), os.path.dirname(rt), rt):
            st = os.lstat(path)
            assert (st.st_mode & 0o7777, st.st_uid) == (0o700, uid), path
        status = caller.run([sys.executable, "-m", "hermetic", "serve", "--status"], {"HOME": home})
        assert status.returncode == 0 and rt.encode() in status.stdout, status
    finally:
        _stop(caller, rt)
        if made:
            os.rmdir(squatted)


@pytest.mark.unprivileged
def test_without_home_the_runtime_directory_is_below_the_passwd_home(
    test_user: pwd.struct_passwd | None,
) -> None:
    """HOME unset (a scrubbed environment): the home directory /etc/passwd
    gives, the same for the launcher and the daemon.  The test user's does
    not exist here, so the launcher cannot make the directory and says so,
    naming it."""
    caller = Caller(test_user)
    user = caller.user or pwd.getpwuid(os.geteuid())
    rt = os.path.join(user.pw_dir, ".cache", "hermetic", "run")
    if os.path.lexists(user.pw_dir):
        pytest.skip(f"{user.pw_name}'s home {user.pw_dir} exists: the test would write there")
    code = "from hermetic.serve import protocol; print(protocol.runtime_dir())"
    py = caller.run([sys.executable, "-c", code], {})
    assert py.returncode == 0 and py.stdout.decode().strip() == rt, py
    p = caller.run([LAUNCHER, "--spec", "/x.json", "true"], {})
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert f"cannot create the runtime directory {rt}:" in line, line


@pytest.mark.root
def test_without_home_nor_an_account_the_launcher_says_what_to_set(
    root: Caller, root_work: str
) -> None:
    """A uid /etc/passwd does not know, without HOME: one line naming the
    variables that give a runtime directory."""
    argv = ["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups", "--"]
    p = root.run([*argv, LAUNCHER, "--spec", os.path.join(root_work, "spec.json"), "true"], {})
    assert p.returncode == 125, p.stderr
    assert "set XDG_RUNTIME_DIR, HERMETIC_RUNTIME_DIR or HOME" in _one_line(p.stderr)


# -- Yama ---------------------------------------------------------------------------


def test_doctor_names_a_yama_scope_that_stops_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """This kernel has no Yama: the scope is stood in for.  Scope 2 and 3
    refuse every write into another process's memory; 0, 1 and no Yama
    leave the launcher usable (with 1 the daemon sets PR_SET_PTRACER_ANY)."""
    from hermetic.cli import doctor
    from hermetic.serve import peer

    for scope, says in ((None, False), (0, False), (1, False), (2, True), (3, True)):
        monkeypatch.setattr(peer, "yama_scope", lambda scope=scope: scope)
        note = doctor._launcher_note()
        assert (note is not None) == says, (scope, note)
        if note is not None:
            assert f"kernel.yama.ptrace_scope is {scope}" in note
