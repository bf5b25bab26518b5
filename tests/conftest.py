"""Shared fixtures: a sandbox runner for root and for an unprivileged user.

Isolation tests run twice, once per ``mode``:

- ``root``: the test process itself (root) calls the Python API.
- ``unprivileged``: the ``hermetic`` CLI runs as the ``hermetic-test`` user
  (created here when missing) through setpriv, with the spec in a JSON file,
  and its ``--json`` result is parsed.  When the suite itself runs as a
  normal user, that mode calls the API in-process instead.

Each run is marked with its mode as the tests are collected, so that
``pytest -m landlock`` or ``-m "not root"`` selects by it.

Nothing here skips silently: a mode this host cannot run is skipped with the
reason, and under CI (CI=true) it is a failure instead.
"""

from __future__ import annotations

import http.server
import json
import os

try:
    import pwd
except ImportError:  # Windows: the user-switching modes exist on Linux only
    pwd = None  # type: ignore[assignment]
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_linux_*.py", "test_cli.py"]


#: The fixtures whose parameter is the mode a test runs the sandbox in.
RUNNER_FIXTURES = ("runner", "fs_runner")
RUNNER_MODES = ("root", "unprivileged", "landlock")
CGROUP_VERSIONS = ("cgroup_v1", "cgroup_v2")


def runner_mode(item: pytest.Item) -> str | None:
    """The mode a runner fixture's parameter gives ``item``, if any."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in RUNNER_FIXTURES:
        mode = callspec.params.get(name)
        if mode in RUNNER_MODES:
            return str(mode)
    return None


def closest_mode(item: pytest.Item) -> str | None:
    """The mode ``item`` is marked with, the closest mark first (the test's
    own before its module's)."""
    return next((m.name for m in item.iter_markers() if m.name in RUNNER_MODES), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The marks ``-m`` selects by, then the skip of Linux tests elsewhere.

    Marks are added here, before ``-m`` deselects (tryfirst): one added as a
    fixture runs comes too late to select by.

    - A test parametrized by a runner fixture is marked with its mode.
    - ``cgroup`` (the host's controllers, whichever version it has) implies
      ``cgroup_v1`` and ``cgroup_v2``, unless the test names the one it
      needs.  Only a run as root has a cgroup here: of a test with runner
      modes, only the root run gets them.
    - Tests marked ``linux`` need the Linux backend: skipped elsewhere, with
      the reason.
    """
    for item in items:
        mode = runner_mode(item)
        if mode is not None:
            item.add_marker(mode)
        if item.get_closest_marker("cgroup") is not None and closest_mode(item) == "root":
            named = [v for v in CGROUP_VERSIONS if item.get_closest_marker(v) is not None]
            for version in named or CGROUP_VERSIONS:
                item.add_marker(version)
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason=f"needs the Linux backend (this is {sys.platform})")
    for item in items:
        if item.get_closest_marker("linux") is not None:
            item.add_marker(skip)


TEST_USER = "hermetic-test"

#: The notice a normal user's `hermetic run` prints first, naming the
#: default limits this host only weakens (memory sampled, CPU time per
#: process): not an error, and tests of stderr's exact text leave it out.
WEAKENED_NOTICE = b"hermetic: limits weakened here "


def without_notice(stderr: bytes) -> bytes:
    """``stderr`` without the weakened-limits notice line, if it has one."""
    if not stderr.startswith(WEAKENED_NOTICE):
        return stderr
    return stderr.partition(b"\n")[2]


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail under CI where everything must run."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@dataclass
class Outcome:
    """What a sandboxed run produced, the same for both modes."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    error: str | None = None  # setup or spec error message, when the action did not run
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    if os.geteuid() != 0:
        unavailable(f"user {TEST_USER!r} is missing and only root can create it")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
        check=True,
    )
    return pwd.getpwnam(TEST_USER)


def _user_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _as_user_cmd(user: pwd.struct_passwd, argv: Sequence[str]) -> list[str]:
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
        *argv,
    ]


def python_as(user: pwd.struct_passwd, code: str, *, cwd: str = "/", timeout: float = 120) -> Any:
    """``code`` run by this interpreter as ``user``: the CompletedProcess,
    its output as text."""
    return subprocess.run(
        _as_user_cmd(user, [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        env=_user_env(),
        cwd=cwd,
        timeout=timeout,
    )


#: Runs a command with user namespaces forbidden, as on a host that disables
#: them: a user namespace of its own whose limit on nested ones is 0.  Every
#: clone(CLONE_NEWUSER) below then fails (ENOSPC), and hermetic must fall
#: back to Landlock-only isolation or refuse.
FORBID_USERNS = [
    "unshare",
    "--user",
    "--map-root-user",
    "--",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
    "forbid-userns",
]


class Runner:
    """Runs an action in the sandbox in one mode; see the module docstring.

    ``landlock``: through the CLI with user namespaces forbidden, so that
    Landlock (and seccomp) do the enforcement.  Refusals differ in errno
    there: ``refused`` is what a write outside the outputs gets, ``hidden``
    what opening an undeclared path gets.
    """

    def __init__(self, mode: str, user: pwd.struct_passwd | None) -> None:
        self.mode = mode
        self.user = user
        self.landlock = mode == "landlock"
        self.refused = "EACCES" if self.landlock else "EROFS"
        self.hidden = "EACCES" if self.landlock else "ENOENT"

    @property
    def via_cli(self) -> bool:
        return self.user is not None or self.landlock

    def own(self, path: str) -> str:
        """Give ``path`` to the user the sandbox runs as (so outputs are writable)."""
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def run(
        self,
        spec: Any,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Outcome:
        if not self.via_cli:
            return self._run_api(spec, argv, timeout=timeout, stdin=stdin, cwd=cwd)
        return self._run_cli(spec, argv, timeout=timeout, stdin=stdin, cwd=cwd, pass_fds=pass_fds)

    def _run_api(self, spec: Any, argv: Sequence[str], **kw: Any) -> Outcome:
        from hermetic import HermeticError, HermeticExecutor

        try:
            ex = HermeticExecutor.create(spec).unwrap()
            r = ex.execute(argv, cwd=kw["cwd"], stdin=kw["stdin"], timeout=kw["timeout"]).unwrap()
        except HermeticError as e:
            return Outcome(None, None, b"", b"", False, error=str(e))
        return Outcome(r.exit_code, r.signal, r.stdout, r.stderr, r.timed_out, raw=r.to_dict())

    def _run_cli(
        self,
        spec: Any,
        argv: Sequence[str],
        *,
        timeout: float | None,
        stdin: bytes | None,
        cwd: str | None,
        pass_fds: Sequence[int],
    ) -> Outcome:
        if cwd is not None:
            import dataclasses

            spec = dataclasses.replace(spec, workdir=cwd)
        fd, spec_file = tempfile.mkstemp(prefix="hermetic-spec-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(spec.to_json())
            os.chmod(spec_file, 0o644)
            cmd = [sys.executable, "-m", "hermetic", "run", "--spec", spec_file, "--json"]
            if timeout is not None:
                cmd += ["--timeout", str(timeout)]
            # stdin (``input`` below) reaches the action: run passes its own through.
            cmd += ["--", *argv]
            if self.landlock:
                cmd = [*FORBID_USERNS, *cmd]
            p = subprocess.run(
                _as_user_cmd(self.user, cmd) if self.user is not None else cmd,
                input=stdin or b"",
                capture_output=True,
                env=_user_env(),
                pass_fds=pass_fds,
                cwd="/",
                timeout=120,
            )
        finally:
            os.unlink(spec_file)
        data = json.loads(p.stdout)
        if data["error"] is not None:  # the action did not run: said on stderr too
            assert p.returncode == data["error"]["exit_status"], (p.returncode, data)
            return Outcome(None, None, b"", p.stderr, False, error=p.stderr.decode().strip())
        # Landlock must be what enforced, not a namespace left available.
        assert data["isolation"] == ("landlock" if self.landlock else "namespaces"), data
        return Outcome(
            data["exit_code"],
            data["signal"],
            data["stdout"].encode(),
            data["stderr"].encode(),
            data["timed_out"],
            raw=data,
        )


@pytest.fixture(scope="session")
def test_user() -> pwd.struct_passwd | None:
    """The unprivileged account, when the suite runs as root."""
    if os.geteuid() != 0:
        return None
    user = _ensure_user()
    probe = subprocess.run(
        _as_user_cmd(user, [sys.executable, "-c", "import hermetic._native"]),
        capture_output=True,
        env=_user_env(),
        cwd="/",
    )
    if probe.returncode != 0:
        unavailable(
            f"{sys.executable} and the installed hermetic package must be readable by "
            f"{TEST_USER!r} to run the unprivileged tests (install into a world-readable "
            f"virtual environment, as .ci/run does): {probe.stderr.decode().strip()[-300:]}"
        )
    return user


@pytest.fixture(params=["root", "unprivileged"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return _runner_for(request.param, request)


def _runner_for(mode: str, request: pytest.FixtureRequest) -> Runner:
    if mode == "root":
        if os.geteuid() != 0:
            pytest.skip("the root mode needs the suite to run as root")
        return Runner("root", None)
    if os.geteuid() != 0:
        return Runner("unprivileged", None)
    return Runner("unprivileged", request.getfixturevalue("test_user"))


#: hermetic-launch, as the package installs it beside this interpreter.
LAUNCHER = os.path.join(os.path.dirname(sys.executable), "hermetic-launch")
#: The launcher tests' modes, marked so that ``-m root`` or ``-m
#: unprivileged`` picks them (a ``caller`` fixture's params).
LAUNCHER_MODES = [
    pytest.param("root", marks=pytest.mark.root),
    pytest.param("unprivileged", marks=pytest.mark.unprivileged),
]


def launcher_user(request: pytest.FixtureRequest) -> pwd.struct_passwd | None:
    """Who a launcher test of mode ``request.param`` runs as (None: this
    process's user); unavailable without the launcher."""
    if not os.access(LAUNCHER, os.X_OK):
        unavailable(f"{LAUNCHER} is missing: the package was installed without its launcher")
    return _runner_for(request.param, request).user


@pytest.fixture(params=["root", "unprivileged", "landlock"])
def fs_runner(request: pytest.FixtureRequest) -> Runner:
    """The runner modes plus Landlock-only, for the filesystem isolation tests."""
    mode = request.param
    if mode != "landlock":
        return _runner_for(mode, request)
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is needed to forbid user namespaces")
    user = request.getfixturevalue("test_user") if os.geteuid() == 0 else None
    return Runner("landlock", user)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def wait_for(predicate: Any, within: float = 30) -> bool:
    """Polls ``predicate`` until it holds; the bound only proves that it ends."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def socket_reader(path: str) -> str:
    """A program that connects to the Unix socket ``path``, sends nothing,
    and prints all it receives until the other end closes (30 s at most)."""
    return (
        "import socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({path!r})\n"
        "s.settimeout(30)\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )


def process_gone(pid: int, within: float = 30) -> bool:
    """Waits until ``pid`` has ended, at most ``within`` seconds."""
    return wait_for(lambda: not process_alive(pid), within)


class _Hello(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``hello from PORT PATH``."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = f"hello from {self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on the host's loopback: (listed, unlisted) ports."""
    started = []
    for _ in range(2):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        started.append(srv)
    yield started[0].server_address[1], started[1].server_address[1]
    for srv in started:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def scratch() -> Iterator[str]:
    """A world-traversable temporary directory (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="hermetic-test-")
    os.chmod(path, 0o755)
    try:
        yield os.path.realpath(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
