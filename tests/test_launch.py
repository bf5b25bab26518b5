"""``hermetic-launch``, the native client of docs/launch-protocol.md, end to end.

The launcher installed beside this interpreter runs against the real daemon
(``hermetic serve``, which it starts itself), as root and as the
unprivileged test user.  Every test has a private runtime directory
(HERMETIC_RUNTIME_DIR, mode 0700), so no test reaches a user's own daemon,
and every daemon a test started is stopped with ``hermetic serve --stop``
and checked gone.

- The command line: usage errors exit 123 with one line; the spec comes
  from ``--spec``, else HERMETIC_SPEC, and a relative path is taken from
  the working directory.
- The runtime directory: created 0700 when missing; refused, with one line
  naming it, when owned by another user, open to group or others, a
  symbolic link, or relative.
- Variables: ``--env-pass`` and HERMETIC_ENV_PASS name what is passed; a
  name not set is not passed; nothing else is.
- The streams: the caller's own, a closed one as /dev/null; the status is
  the action's (128+N for a signal).
- A daemon that cannot be started, that never answers, or that dies before
  replying: exit 125 with one line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
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
    unavailable,
    wait_for,
)

pytestmark = pytest.mark.linux

#: The launcher of the environment under test: pip installs it beside the
#: interpreter, as it does the ``hermetic`` command.

#: Seconds a daemon started here waits idle before it exits by itself: a
#: net under the explicit stop of every test.
IDLE = "120"

SPEC: dict[str, Any] = {
    "inputs": ["/usr", "/bin", "/lib", "/lib64"],
    "environment": {"vars": {"PATH": "/usr/bin:/bin", "WHICH": "first"}},
}


class Caller:
    """Runs the launcher as root (``user`` None: this process's own user)
    or as the test user, with a private runtime directory."""

    def __init__(self, user: Any) -> None:
        self.user = user

    def own(self, path: str) -> str:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def env(self, rt: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**_user_env(), "HERMETIC_SERVE_IDLE": IDLE}
        if rt:
            env["HERMETIC_RUNTIME_DIR"] = rt
        env.update(extra or {})
        return env

    def cmd(self, argv: Sequence[str]) -> list[str]:
        if self.user is None:
            return list(argv)
        cmd = _as_user_cmd(self.user, argv)
        # By its path: a test may run the launcher with a PATH of its own.
        cmd[0] = shutil.which(cmd[0]) or cmd[0]
        return cmd

    def launch(
        self,
        rt: str,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        stdin: bytes = b"",
        launcher: str = LAUNCHER,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.cmd([launcher, *args]),
            input=stdin,
            capture_output=True,
            env=self.env(rt, env),
            cwd=cwd,
            timeout=120,
        )

    def hermetic(self, rt: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.cmd([sys.executable, "-m", "hermetic", *args]),
            capture_output=True,
            env=self.env(rt),
            cwd="/",
            timeout=120,
        )


@pytest.fixture(params=LAUNCHER_MODES)
def caller(request: pytest.FixtureRequest) -> Caller:
    return Caller(launcher_user(request))


def _daemon_pid(rt: str) -> int | None:
    try:
        with open(os.path.join(rt, "serve.lock")) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _stop_daemon(caller: Caller, rt: str) -> None:
    """Stops the daemon of ``rt``, if one ever ran there, and checks it gone."""
    pid = _daemon_pid(rt)
    if pid is None or not os.path.isdir(rt) or os.path.islink(rt):
        return
    if process_alive(pid):
        stopped = caller.hermetic(rt, "serve", "--stop")
        assert stopped.returncode == 0, stopped.stderr
    assert wait_for(lambda: not process_alive(pid)), f"daemon {pid} still running"


@pytest.fixture
def rt(caller: Caller) -> Iterator[str]:
    """A private runtime directory (0700, the caller's); its daemon, if
    any, stopped afterwards."""
    path = caller.own(tempfile.mkdtemp(prefix="hermetic-test-rt-"))
    try:
        yield path
    finally:
        _stop_daemon(caller, path)
        shutil.rmtree(path, ignore_errors=True)


def _spec_file(directory: str, name: str, which: str) -> str:
    spec = json.loads(json.dumps(SPEC))
    spec["environment"]["vars"]["WHICH"] = which
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(spec, f)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def specs() -> Iterator[str]:
    """A world-readable directory with two specs, ``first.json`` (WHICH=first)
    and ``second.json`` (WHICH=second)."""
    path = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-specs-"))
    os.chmod(path, 0o755)
    _spec_file(path, "first.json", "first")
    _spec_file(path, "second.json", "second")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _one_line(stderr: bytes) -> str:
    """The launcher's own message: exactly one line, its prefix first."""
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith("hermetic-launch: "), text
    return text


# -- the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ([], {}, "no command given"),
        (["--spec"], {}, "--spec needs a value"),
        (["--spec", "/x.json"], {}, "no command given"),
        (["--spec", "/x.json", "--"], {}, "no command given"),
        (["--bogus", "true"], {}, "unknown option --bogus"),
        (["true"], {}, "no spec"),
        (["true"], {"HERMETIC_SPEC": ""}, "no spec"),
        (["--spec=", "true"], {}, "no spec"),
        (["--spec", "/x.json", "--env-pass", "A=B", "true"], {}, "'A=B' is not a variable"),
        (["--spec", "/x.json", "true"], {"HERMETIC_ENV_PASS": "OK:A=B"}, "'A=B' is not a"),
    ],
)
def test_usage_errors_exit_123_with_one_line(
    caller: Caller, rt: str, args: list[str], env: dict[str, str], says: str
) -> None:
    p = caller.launch(rt, args, env=env)
    assert p.returncode == 123, p.stderr
    assert says in _one_line(p.stderr)
    assert p.stdout == b""
    assert _daemon_pid(rt) is None  # refused before any daemon is started


def test_version_and_help(caller: Caller, rt: str) -> None:
    p = caller.launch(rt, ["--version"])
    version = importlib.metadata.version("hermetic")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"hermetic-launch {version}\n".encode(), b"")
    p = caller.launch(rt, ["--help"])
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    assert p.stdout.startswith(b"usage: hermetic-launch [--spec FILE] [--env-pass NAME]...")
    assert b"HERMETIC_SPEC" in p.stdout and b"HERMETIC_ENV_PASS" in p.stdout
    assert _daemon_pid(rt) is None


def _elf_program_headers(path: str) -> tuple[int, list[int]]:
    """An ELF64 little-endian file's type (e_type) and its program headers' types."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit LSB ELF"
    e_type = int.from_bytes(data[16:18], "little")
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    types = [
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]
    return e_type, types


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or sys.byteorder != "little" or sys.maxsize < 2**32,
    reason="reads a 64-bit little-endian ELF file",
)
def test_the_launcher_is_a_static_pie_where_the_toolchain_allows() -> None:
    """No dynamic loader at each start (it was 0.17 ms of 0.6 ms), and still
    position-independent, so ASLR places it.  setup.py falls back to a
    dynamic link where the C library has no static archive."""
    if not os.access(LAUNCHER, os.X_OK):
        unavailable(f"{LAUNCHER} is missing: the package was installed without its launcher")
    cc = shutil.which("cc") or shutil.which("gcc")
    archive = ""
    if cc is not None:
        archive = subprocess.run(
            [cc, "-print-file-name=libc.a"], capture_output=True, text=True
        ).stdout.strip()
    if not os.path.isabs(archive) or not os.path.exists(archive):
        pytest.skip("the C library has no static archive here: the launcher is linked dynamically")
    e_type, types = _elf_program_headers(LAUNCHER)
    pt_interp, et_dyn = 3, 3
    assert pt_interp not in types, "the launcher asks for a dynamic loader"
    assert e_type == et_dyn, f"the launcher is not position-independent (e_type {e_type})"


def test_the_spec_from_the_option_else_the_environment(caller: Caller, rt: str, specs: str) -> None:
    first, second = (os.path.join(specs, n) for n in ("first.json", "second.json"))
    echo = ["sh", "-c", 'echo "$WHICH"']
    by_option = caller.launch(rt, ["--spec", first, *echo], env={"HERMETIC_SPEC": second})
    assert (by_option.returncode, by_option.stdout) == (0, b"first\n"), by_option.stderr
    by_equals = caller.launch(rt, [f"--spec={second}", "--", *echo])
    assert (by_equals.returncode, by_equals.stdout) == (0, b"second\n"), by_equals.stderr
    by_env = caller.launch(rt, echo, env={"HERMETIC_SPEC": second})
    assert (by_env.returncode, by_env.stdout) == (0, b"second\n"), by_env.stderr


def test_a_relative_spec_path_is_taken_from_the_working_directory(
    caller: Caller, rt: str, specs: str
) -> None:
    # /usr: a working directory the sandbox shows (the spec's input).
    relative = os.path.relpath(os.path.join(specs, "second.json"), "/usr")
    assert not relative.startswith("/")
    argv = ["sh", "-c", 'echo "$WHICH"; pwd']
    for args, env in ((["--spec", relative, *argv], {}), (argv, {"HERMETIC_SPEC": relative})):
        p = caller.launch(rt, args, env=env, cwd="/usr")
        assert (p.returncode, p.stdout) == (0, b"second\n/usr\n"), p.stderr


def test_a_missing_spec_file_is_the_daemons_123(caller: Caller, rt: str, specs: str) -> None:
    missing = os.path.join(specs, "missing.json")
    p = caller.launch(rt, ["--spec", missing, "true"])
    assert p.returncode == 123, p.stderr
    assert p.stderr.startswith(b"hermetic: ") and missing.encode() in p.stderr, p.stderr


# -- the runtime directory -------------------------------------------------------


def test_a_missing_runtime_directory_is_created_0700_under_xdg_runtime_dir(
    caller: Caller, rt: str, specs: str
) -> None:
    """Without HERMETIC_RUNTIME_DIR, DIR is $XDG_RUNTIME_DIR/hermetic."""
    # The private directory stands for XDG_RUNTIME_DIR; the daemon's is below.
    own = os.path.join(rt, "hermetic")
    env = {"XDG_RUNTIME_DIR": rt, "HERMETIC_SPEC": os.path.join(specs, "first.json")}
    try:
        p = caller.launch("", ["true"], env=env)
        assert p.returncode == 0, p.stderr
        st = os.lstat(own)
        assert (st.st_mode & 0o7777, st.st_uid) == (0o700, os.lstat(rt).st_uid)
        assert os.path.exists(os.path.join(own, "serve.sock"))
    finally:
        _stop_daemon(caller, own)


@pytest.mark.parametrize("problem", ["another-owner", "group-bits", "other-bits", "symlink"])
def test_an_unsafe_runtime_directory_is_refused_naming_it(
    caller: Caller, rt: str, problem: str
) -> None:
    target = rt
    if problem == "another-owner":
        if os.geteuid() != 0:
            target = "/"  # root's: a normal user cannot give a directory away
        elif caller.user is None:  # root, the test user's directory
            user = _test_user_or_skip()
            os.chown(rt, user.pw_uid, user.pw_gid)
        else:  # the test user, root's directory
            os.chown(rt, 0, 0)
        says = "owned by another user"
    elif problem == "group-bits":
        os.chmod(rt, 0o750)
        says = "accessible to group or others"
    elif problem == "other-bits":
        os.chmod(rt, 0o701)
        says = "accessible to group or others"
    else:
        target = rt + "-link"
        os.symlink(rt, target)
        says = "symbolic link"
    try:
        p = caller.launch(target, ["--spec", "/x.json", "true"])
    finally:
        if target == rt + "-link":
            os.unlink(target)
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert f"runtime directory {target}:" in line and says in line, line
    assert _daemon_pid(rt) is None


def _test_user_or_skip() -> Any:
    import pwd

    from conftest import TEST_USER

    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        unavailable(f"user {TEST_USER!r} is missing")
    raise AssertionError("unreachable")


def test_a_relative_runtime_directory_is_refused(caller: Caller, rt: str) -> None:
    p = caller.launch("relative/dir", ["--spec", "/x.json", "true"], cwd=rt)
    assert p.returncode == 125, p.stderr
    assert "runtime directory relative/dir:" in _one_line(p.stderr)
    assert not os.path.exists(os.path.join(rt, "relative"))


def test_a_runtime_directory_too_long_for_a_socket_is_refused(caller: Caller, rt: str) -> None:
    """A Unix socket's path holds about 108 bytes."""
    long = os.path.join(rt, "d" * 120)
    p = caller.launch(long, ["--spec", "/x.json", "true"])
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert "too long for a Unix socket" in line and long in line, line
    assert not os.path.exists(long)


# -- variables -------------------------------------------------------------------


def _env_of(out: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.decode().splitlines())


def test_named_variables_are_passed_and_only_those(caller: Caller, rt: str, specs: str) -> None:
    env = {
        "HERMETIC_SPEC": os.path.join(specs, "first.json"),
        "BY_OPTION": "one",
        "BY_ENV": "two words",
        "ALSO_BY_ENV": "",  # set, though empty: passed
        "NOT_NAMED": "secret",
        # A leading, doubled and trailing ':' name nothing; UNSET_NAME is not
        # set here, so it is not passed (as `env -i` and nsjail's -E do).
        "HERMETIC_ENV_PASS": ":BY_ENV::ALSO_BY_ENV:UNSET_NAME:BY_OPTION:",
    }
    args = ["--env-pass", "BY_OPTION", "--env-pass=UNSET_TOO", "env"]
    p = caller.launch(rt, args, env=env)
    assert p.returncode == 0, p.stderr
    got = _env_of(p.stdout)
    assert got["BY_OPTION"] == "one" and got["BY_ENV"] == "two words"
    assert got["ALSO_BY_ENV"] == ""
    for name in ("UNSET_NAME", "UNSET_TOO", "NOT_NAMED", "HERMETIC_ENV_PASS", "HERMETIC_SPEC"):
        assert name not in got, got
    # The spec's own environment is there too.
    assert got["WHICH"] == "first" and got["PATH"] == "/usr/bin:/bin"


def test_a_named_variable_overrides_the_specs(caller: Caller, rt: str, specs: str) -> None:
    env = {"HERMETIC_SPEC": os.path.join(specs, "first.json"), "WHICH": "mine"}
    p = caller.launch(rt, ["--env-pass", "WHICH", "sh", "-c", 'echo "$WHICH"'], env=env)
    assert (p.returncode, p.stdout) == (0, b"mine\n"), p.stderr


# -- the streams and the status ---------------------------------------------------------


def test_the_callers_streams_and_the_actions_status(caller: Caller, rt: str, specs: str) -> None:
    env = {"HERMETIC_SPEC": os.path.join(specs, "first.json")}
    script = "cat; echo out; echo err >&2; exit 7"
    p = caller.launch(rt, ["sh", "-c", script], env=env, stdin=b"in\n")
    assert (p.returncode, p.stdout, p.stderr) == (7, b"in\nout\n", b"err\n")
    p = caller.launch(rt, ["sh", "-c", "kill -KILL $$"], env=env)
    assert (p.returncode, p.stderr) == (128 + signal.SIGKILL, b"")
    p = caller.launch(rt, ["no-such-tool-here"], env=env)
    assert p.returncode == 127 and p.stderr.startswith(b"hermetic: "), p.stderr
    # The action's own 125 is a reply like any other: no refusal's line.
    p = caller.launch(rt, ["sh", "-c", "exit 125"], env=env)
    assert (p.returncode, p.stderr) == (125, b"")


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_closed_stream_reaches_the_action_as_dev_null(
    caller: Caller, rt: str, specs: str, closed: int
) -> None:
    env = {"HERMETIC_SPEC": os.path.join(specs, "first.json")}
    # The action checks that its descriptor is /dev/null (major:minor 1:3,
    # in hex), read through its shell's /proc entry from a command
    # substitution (a redirection would change the shell's own), then
    # writes to it (to stdout for a closed stdin).
    report = 1 if closed == 2 else 2
    script = (
        f"d=$(stat -L -c %t:%T /proc/$$/fd/{closed}); "
        f'test "$d" = 1:3 || {{ echo "fd {closed} is $d" >&{report}; exit 9; }}; '
        f"echo written >&{closed or 1}"
    )
    # sh closes the stream, then runs the launcher without it.
    wrapped = ["sh", "-c", f'exec "$@" {closed}>&-', "sh", LAUNCHER, "sh", "-c", script]
    p = subprocess.run(
        caller.cmd(wrapped),
        stdin=subprocess.PIPE,
        capture_output=True,
        env=caller.env(rt, env),
        cwd="/",
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert (p.stdout, p.stderr) == (b"written\n" if closed == 0 else b"", b"")


# -- an unreachable or dying daemon ---------------------------------------------------


@pytest.fixture
def lone_launcher(caller: Caller) -> Iterator[str]:
    """A copy of the launcher in a directory of its own, with no ``hermetic``
    beside it (a test may put a stand-in there)."""
    path = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-launcher-"))
    os.chmod(path, 0o755)
    shutil.copy(LAUNCHER, os.path.join(path, "hermetic-launch"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stand_in(directory: str, script: str) -> None:
    path = os.path.join(directory, "hermetic")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + script + "\n")
    os.chmod(path, 0o755)


def test_no_hermetic_to_start_a_daemon_with_is_125(
    caller: Caller, rt: str, lone_launcher: str
) -> None:
    empty = os.path.join(lone_launcher, "empty")
    os.mkdir(empty)
    p = caller.launch(
        rt,
        ["--spec", "/x.json", "true"],
        env={"PATH": empty},
        launcher=os.path.join(lone_launcher, "hermetic-launch"),
    )
    assert p.returncode == 125, p.stderr
    assert "hermetic serve --detach" in _one_line(p.stderr)


def test_a_daemon_that_fails_to_start_is_125_with_its_reason(
    caller: Caller, rt: str, lone_launcher: str
) -> None:
    _stand_in(lone_launcher, 'echo "starting"; echo "hermetic: no room at the inn" >&2; exit 3')
    p = caller.launch(
        rt, ["--spec", "/x.json", "true"], launcher=os.path.join(lone_launcher, "hermetic-launch")
    )
    assert p.returncode == 125, p.stderr
    line = _one_line(p.stderr)
    assert "(status 3): no room at the inn" in line, line


@pytest.mark.slow
def test_a_daemon_that_never_listens_is_125_after_10_s(
    caller: Caller, rt: str, lone_launcher: str
) -> None:
    # Says it started, starts nothing: the launcher retries for 10 s, and
    # only then says that no daemon answers.
    _stand_in(lone_launcher, "exit 0")
    p = caller.launch(
        rt, ["--spec", "/x.json", "true"], launcher=os.path.join(lone_launcher, "hermetic-launch")
    )
    assert p.returncode == 125, p.stderr
    assert (
        "no daemon answers" in _one_line(p.stderr)
        and "10 s after starting one" in p.stderr.decode()
    )


def test_a_stale_socket_starts_a_daemon(caller: Caller, rt: str, specs: str) -> None:
    """A socket nobody listens on (a daemon killed outright): ECONNREFUSED,
    and the launcher starts a daemon, which replaces it."""
    stale = os.path.join(rt, "serve.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    caller.own(stale)
    p = caller.launch(rt, ["--spec", os.path.join(specs, "first.json"), "true"])
    assert p.returncode == 0, p.stderr
    assert _daemon_pid(rt) is not None


def _running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == b"sleep\0" + marker.encode() + b"\0":
                        return True
            except OSError:
                continue
    return False


def _launch_sleep(caller: Caller, rt: str, specs: str, marker: str) -> subprocess.Popen[bytes]:
    """A launcher running ``sleep MARKER``, once the action runs."""
    env = {"HERMETIC_SPEC": os.path.join(specs, "first.json")}
    proc = subprocess.Popen(
        caller.cmd([LAUNCHER, "sleep", marker]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=caller.env(rt, env),
        cwd="/",
    )
    if not wait_for(lambda: _running(marker), 60):
        proc.kill()
        proc.wait()
        raise AssertionError(f"the action never started: {proc.stderr.read()!r}")  # type: ignore[union-attr]
    return proc


def test_a_daemon_that_dies_before_replying_is_125(caller: Caller, rt: str, specs: str) -> None:
    marker = "3456.0125"  # sleep's argument: names the action's process
    proc = _launch_sleep(caller, rt, specs, marker)
    pid = _daemon_pid(rt)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the daemon this test's launcher started
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 125, err
    assert "closed the connection before it replied" in _one_line(err)
    assert wait_for(lambda: not process_alive(pid))
    assert wait_for(lambda: not _running(marker)), "the action outlived the daemon"


def test_a_launcher_ended_by_a_signal_ends_its_action(caller: Caller, rt: str, specs: str) -> None:
    """The launcher keeps the default dispositions: make's SIGTERM (or a
    Ctrl-C) ends it, and with its connection the action."""
    marker = "3456.0015"
    proc = _launch_sleep(caller, rt, specs, marker)
    proc.send_signal(signal.SIGTERM)  # the launcher (or setpriv, which execs it)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert wait_for(lambda: not _running(marker)), "the action outlived its launcher"
    pid = _daemon_pid(rt)
    assert pid is not None and process_alive(pid)  # the daemon itself goes on
