"""``hermetic runner``: Buildbarn's runner protocol, driven as bb_worker drives it.

Buildbarn's own binaries are not installed here, so these tests are the
client: the stubs generated from runner.proto (hermetic/remote/proto/) over
the Unix socket of a ``hermetic runner`` started as a separate process, as
root, as the unprivileged test user, and with user namespaces forbidden
(Landlock and seccomp enforcing: a runner that could not fall back would
fail every Run).  Each test lays out a build
directory as bb_worker does (an input root with the outputs' parent
directories made empty, a temporary directory, stdout and stderr paths
beside them), checks what the action saw and left, and stops the runner
with SIGTERM: it exits 0, its socket is gone, no action's process is left.
"""

from __future__ import annotations

import concurrent.futures
import filecmp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import FORBID_USERNS, Runner, _as_user_cmd, _user_env, unavailable

pytestmark = pytest.mark.linux

try:
    import grpc

    from hermetic.remote.proto import resourceusage_pb2, runner_pb2, runner_pb2_grpc
except ImportError as e:  # grpcio and protobuf are in the [test] extra
    MISSING: str | None = f"grpcio and protobuf are needed ({e})"
else:
    MISSING = None

#: A generous bound that only proves termination (a runner that starts, an
#: action that ends after a cancel); no test asserts on how fast.
BOUND = 60.0


@dataclass
class Served:
    """A running ``hermetic runner`` and a client of it."""

    stub: Any
    build: str
    proc: subprocess.Popen[bytes]
    socket: str
    user: Any
    audit_log: str

    def give(self, path: str) -> None:
        """Make ``path`` (and what is below it) the runner's user's, as
        bb_worker leaves a build directory to its runner."""
        if self.user is None:
            return
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(top, name), self.user.pw_uid, self.user.pw_gid)

    def action(self, name: str, files: dict[str, str], empty: tuple[str, ...] = ()) -> str:
        """A staged action ``name``: ``root/`` with ``files`` and the ``empty``
        directories, and ``tmp/``, as bb_worker lays one out."""
        base = os.path.join(self.build, name)
        root = os.path.join(base, "root")
        os.makedirs(os.path.join(base, "tmp"))
        os.makedirs(root)
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        for rel in empty:
            os.makedirs(os.path.join(root, rel))
        self.give(base)
        return base

    def request(self, name: str, argv: list[str], **fields: Any) -> Any:
        values: dict[str, Any] = {
            "arguments": argv,
            "environment_variables": {"PATH": "/usr/bin:/bin"},
            "input_root_directory": f"{name}/root",
            "temporary_directory": f"{name}/tmp",
            "stdout_path": f"{name}/stdout",
            "stderr_path": f"{name}/stderr",
        }
        values.update(fields)
        return runner_pb2.RunRequest(**values)

    def run(self, name: str, argv: list[str], **fields: Any) -> Any:
        return self.stub.Run(self.request(name, argv, **fields), timeout=BOUND)

    def read(self, name: str, rel: str) -> str:
        with open(os.path.join(self.build, name, rel)) as f:
            return f.read()


def _processes_with(marker: str) -> list[int]:
    """The pids of processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {BOUND} s")
        time.sleep(0.02)


@pytest.fixture
def served(fs_runner: Runner, scratch: str) -> Iterator[Served]:
    """A runner serving ``scratch/build`` as ``fs_runner``'s user (with user
    namespaces forbidden in the landlock mode), stopped afterwards."""
    runner = fs_runner
    if MISSING is not None:
        unavailable(MISSING)
    build = os.path.join(scratch, "build")
    run_dir = os.path.join(scratch, "run")
    os.makedirs(build)
    os.makedirs(run_dir)
    sock = os.path.join(run_dir, "runner.sock")
    argv = [
        sys.executable,
        "-m",
        "hermetic",
        "runner",
        "--listen",
        f"unix:{sock}",
        "--build-directory",
        build,
        "--audit-log",
        os.path.join(run_dir, "audit.jsonl"),
    ]
    user = runner.user
    if user is not None:
        for path in (build, run_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
    if runner.landlock:
        argv = [*FORBID_USERNS, *argv]
    if user is not None:
        argv = _as_user_cmd(user, argv)
    env = _user_env() if user is not None else dict(os.environ)
    proc = subprocess.Popen(argv, env=env, cwd="/", stderr=subprocess.PIPE)
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=BOUND)
        except grpc.FutureTimeoutError:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the runner did not listen: {err.decode(errors='replace')[-2000:]}")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        yield Served(
            runner_pb2_grpc.RunnerStub(channel),
            build,
            proc,
            sock,
            user,
            os.path.join(run_dir, "audit.jsonl"),
        )
    finally:
        channel.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail("the runner did not stop on SIGTERM")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert not os.path.exists(sock)


def test_exit_code_output_files_and_resource_usage(served: Served) -> None:
    served.action("a", {"src/in.txt": "input\n"}, empty=("out",))
    response = served.run(
        "a", ["/bin/sh", "-c", "cat src/in.txt > out/copy.txt; echo made > out/new; exit 7"]
    )
    assert response.exit_code == 7
    assert served.read("a", "root/out/copy.txt") == "input\n"
    assert served.read("a", "root/out/new") == "made\n"
    (usage,) = response.resource_usage
    assert usage.Is(resourceusage_pb2.POSIXResourceUsage.DESCRIPTOR)
    posix = resourceusage_pb2.POSIXResourceUsage()
    usage.Unpack(posix)
    assert posix.HasField("user_time") and posix.HasField("system_time")
    assert posix.termination_signal == ""


def test_a_signal_is_reported_as_bb_runner_reports_it(served: Served) -> None:
    served.action("a", {"x": ""})
    response = served.run("a", ["/bin/sh", "-c", "kill -SEGV $$"])
    assert response.exit_code == -1
    posix = resourceusage_pb2.POSIXResourceUsage()
    response.resource_usage[0].Unpack(posix)
    assert posix.termination_signal == "SEGV"


def test_stdout_and_stderr_go_to_the_requested_files(served: Served) -> None:
    served.action("a", {"x": ""})
    response = served.run(
        "a", ["/bin/sh", "-c", "printf 'to out\\n'; printf 'to err\\n' >&2; printf 'more\\n'"]
    )
    assert response.exit_code == 0
    assert served.read("a", "stdout") == "to out\nmore\n"
    assert served.read("a", "stderr") == "to err\n"


def test_log_files_are_new_files_inside_the_build_directory(served: Served) -> None:
    base = served.action("a", {"x": ""})
    with open(os.path.join(base, "stdout"), "w") as f:
        f.write("kept")
    served.give(base)
    with pytest.raises(grpc.RpcError) as info:
        served.run("a", ["/bin/true"])
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert served.read("a", "stdout") == "kept"
    # A link in the way is not followed, whatever it points at.
    os.symlink("/etc", os.path.join(base, "link"))
    for bad in ("../escape", "/abs/stdout", "a/link/stdout", ""):
        with pytest.raises(grpc.RpcError) as info:
            served.run("a", ["/bin/true"], stdout_path=bad, stderr_path="a/err2")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert not os.path.exists(os.path.join(served.build, "..", "escape"))


def test_the_environment_is_exactly_the_requested_one(served: Served) -> None:
    served.action("a", {"x": ""})
    env = {"PATH": "/usr/bin:/bin", "ONE": "1", "SPACED": "a b  c", "EMPTY": ""}
    response = served.run("a", ["/usr/bin/env"], environment_variables=env)
    assert response.exit_code == 0
    lines = served.read("a", "stdout").splitlines()
    assert sorted(lines) == sorted(f"{k}={v}" for k, v in env.items())


def test_the_working_directory_is_inside_the_input_root(served: Served) -> None:
    base = served.action("a", {"pkg/sub/file": "here\n"})
    response = served.run("a", ["/bin/sh", "-c", "pwd; cat file"], working_directory="pkg/sub")
    assert response.exit_code == 0
    assert served.read("a", "stdout") == f"{base}/root/pkg/sub\nhere\n"
    os.symlink(served.build, os.path.join(base, "root", "out_link"))
    for bad in ("../..", "out_link", "/pkg"):
        with pytest.raises(grpc.RpcError) as info:
            served.run(
                "a", ["/bin/true"], working_directory=bad, stdout_path="a/o", stderr_path="a/e"
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        for log in ("o", "e"):
            if os.path.exists(os.path.join(base, log)):
                os.unlink(os.path.join(base, log))


PROBE = """
try() { if ( "$@" ) 2>/dev/null; then echo ok; else echo refused; fi; }
try sh -c 'echo changed > src/in.txt'
try sh -c 'echo new > src/new.txt'
try sh -c 'echo new > stray.txt'
try sh -c 'rm src/in.txt'
try sh -c 'echo new > /usr/outside.txt'
try sh -c 'echo new > out/made.txt'
try sh -c "echo new > $TMPDIR/scratch.txt"
try sh -c 'cat "$BUILD/a/stderr" > /dev/null'
"""


def test_only_the_outputs_parents_and_the_temporary_directory_are_writable(
    served: Served,
) -> None:
    base = served.action("a", {"src/in.txt": "input\n"}, empty=("out",))
    before = sorted(os.listdir(served.build))
    env = {"PATH": "/usr/bin:/bin", "BUILD": served.build, "TMPDIR": f"{base}/tmp"}
    response = served.run("a", ["/bin/sh", "-c", PROBE], environment_variables=env)
    assert response.exit_code == 0, served.read("a", "stderr")
    assert served.read("a", "stdout").split() == [
        "refused",
        "refused",
        "refused",
        "refused",
        "refused",
        "ok",
        "ok",
        "refused",
    ]
    assert served.read("a", "root/src/in.txt") == "input\n"
    assert sorted(os.listdir(os.path.join(base, "root"))) == ["out", "src"]
    assert os.listdir(os.path.join(base, "root", "src")) == ["in.txt"]
    assert sorted(os.listdir(served.build)) == before
    assert not os.path.exists("/usr/outside.txt")
    assert served.read("a", "root/out/made.txt") == "new\n"
    assert served.read("a", "tmp/scratch.txt") == "new\n"
    # The refused writes are in the runner's audit log (the protocol has no
    # field for them).
    with open(served.audit_log) as f:
        attempted = [json.loads(line)["attempted"] for line in f]
    assert any("src/in.txt" in a for a in attempted), attempted
    assert any("stray.txt" in a for a in attempted), attempted


def test_readiness(served: Served) -> None:
    assert served.stub.CheckReadiness(runner_pb2.CheckReadinessRequest(), timeout=BOUND) is not None
    served.action("a", {"x": ""})
    served.stub.CheckReadiness(runner_pb2.CheckReadinessRequest(path="a/root/x"), timeout=BOUND)
    for missing in ("a/nothing", "../x"):
        with pytest.raises(grpc.RpcError) as info:
            served.stub.CheckReadiness(
                runner_pb2.CheckReadinessRequest(path=missing), timeout=BOUND
            )
        assert info.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), missing


#: An action that says it started, then waits (a bounded number of polls)
#: for the test to put a file in its input root, seen through the bind mount.
GATED = """
touch out/started
n=0
while [ ! -e gate/open ]; do
    n=$((n + 1)); [ "$n" -lt 12000 ] || exit 99
    sleep 0.01
done
echo "$NAME"
"""


def test_concurrent_runs(served: Served) -> None:
    """Two actions that each wait for the test to open their gate: both
    have started before either gate opens, so the two Runs ran at once."""
    names = ("a", "b")
    bases = {name: served.action(name, {"gate/closed": ""}, empty=("out",)) for name in names}
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        calls = {
            name: pool.submit(
                served.run,
                name,
                ["/bin/sh", "-c", GATED],
                environment_variables={"PATH": "/usr/bin:/bin", "NAME": name},
            )
            for name in names
        }
        started = [os.path.join(bases[n], "root", "out", "started") for n in names]
        try:
            _wait(lambda: all(map(os.path.exists, started)), "both actions running at once")
            assert not any(call.done() for call in calls.values())
        finally:
            for name in names:
                with open(os.path.join(bases[name], "root", "gate", "open"), "w"):
                    pass
        for name, call in calls.items():
            assert call.result(timeout=BOUND).exit_code == 0, served.read(name, "stderr")
            assert served.read(name, "stdout") == f"{name}\n"


def test_a_cancelled_run_leaves_no_process(served: Served) -> None:
    served.action("a", {"x": ""}, empty=("out",))
    marker = f"98765.{uuid.uuid4().int % 10**9}"
    call = served.stub.Run.future(
        served.request("a", ["/bin/sh", "-c", f"touch out/started; exec sleep {marker}"])
    )
    started = os.path.join(served.build, "a", "root", "out", "started")
    _wait(lambda: os.path.exists(started), "the action starting")
    # touch runs before the exec: the sleep shows up a moment later.
    _wait(lambda: bool(_processes_with(marker)), "the action's sleep running")
    call.cancel()
    _wait(lambda: not _processes_with(marker), "the cancelled action ending")
    assert call.cancelled()
    # The runner goes on serving.
    served.action("b", {"x": ""})
    assert served.run("b", ["/bin/true"]).exit_code == 0


def _descriptors_and_children(pid: int) -> tuple[int, list[str]]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += f.read().split()
    return len(os.listdir(f"/proc/{pid}/fd")), children


def test_many_runs_leave_the_runner_as_it_was(served: Served) -> None:
    """Descriptors and child processes of the runner stay constant over
    many Runs, failed ones included."""

    def runs(prefix: str, count: int) -> None:
        for i in range(count):
            name = f"{prefix}{i}"
            served.action(name, {"in": "x"}, empty=("out",))
            assert served.run(name, ["/bin/sh", "-c", "cat in > out/copy"]).exit_code == 0
            with pytest.raises(grpc.RpcError) as info:
                served.run(
                    name, ["/no/such/program"], stdout_path=f"{name}/o2", stderr_path=f"{name}/e2"
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    runs("warm", 3)
    before = _descriptors_and_children(served.proc.pid)
    runs("run", 20)
    assert _descriptors_and_children(served.proc.pid) == before
    assert before[1] == []


def test_a_request_the_runner_cannot_run_is_an_error_status(served: Served) -> None:
    served.action("a", {"x": ""})
    cases = {
        "no arguments": ({"arguments": []}, grpc.StatusCode.INVALID_ARGUMENT),
        "missing root": ({"input_root_directory": "nope"}, grpc.StatusCode.NOT_FOUND),
        "bad env name": (
            {"environment_variables": {"A=B": "1"}},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "no program": ({"arguments": ["/no/such/program"]}, grpc.StatusCode.INVALID_ARGUMENT),
    }
    for what, (fields, code) in cases.items():
        fields = {"stdout_path": f"a/o-{len(what)}", "stderr_path": f"a/e-{len(what)}", **fields}
        argv = fields.pop("arguments", ["/bin/true"])
        with pytest.raises(grpc.RpcError) as info:
            served.run("a", argv, **fields)
        assert info.value.code() == code, (what, info.value.details())


def test_the_build_directory_itself_is_no_input_root_or_temporary_directory(
    served: Served,
) -> None:
    """Either would hand the Run every other action's files: as inputs to
    read, or (a temporary directory) writable."""
    base = served.action("a", {"x": "a's input\n"})
    served.action("b", {"in.txt": "b's input\n"})
    for fields in (
        {"input_root_directory": ""},
        {"input_root_directory": "."},
        {"temporary_directory": "."},
        {"temporary_directory": "./"},
    ):
        name = next(iter(fields.values())) or "empty"
        logs = {"stdout_path": "a/o", "stderr_path": "a/e"}
        argv = ["/bin/sh", "-c", "echo changed > b/root/in.txt"]
        with pytest.raises(grpc.RpcError) as info:
            served.run("a", argv, **logs, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, fields)
        assert "the build directory itself" in (info.value.details() or ""), fields
        for log in ("o", "e"):
            if os.path.exists(os.path.join(base, log)):
                os.unlink(os.path.join(base, log))
    assert served.read("b", "root/in.txt") == "b's input\n"


def test_an_input_root_or_temporary_directory_through_a_link_is_refused(
    served: Served,
) -> None:
    """A link an earlier action left in its outputs, to another action's
    directory inside the build directory: never followed."""
    base = served.action("a", {"x": ""}, empty=("out",))
    served.action("b", {"in.txt": "b's input\n"})
    os.symlink(os.path.join(served.build, "b"), os.path.join(base, "root", "out", "to_b"))
    os.symlink("../b", os.path.join(served.build, "link_b"))
    served.give(base)
    for fields in (
        {"input_root_directory": "a/root/out/to_b/root"},
        {"input_root_directory": "link_b/root"},
        {"temporary_directory": "a/root/out/to_b/root"},
        {"temporary_directory": "link_b"},
    ):
        with pytest.raises(grpc.RpcError) as info:
            served.run(
                "a",
                ["/bin/sh", "-c", "echo changed > in.txt"],
                stdout_path="a/o",
                stderr_path="a/e",
                **fields,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert "symbolic link" in (info.value.details() or ""), fields
        for log in ("o", "e"):
            if os.path.exists(os.path.join(base, log)):
                os.unlink(os.path.join(base, log))
    assert served.read("b", "root/in.txt") == "b's input\n"


def test_the_command_line_refuses_what_it_cannot_serve(scratch: str) -> None:
    """Exit 123 (a bad command line or spec) with the reason, nothing left."""
    taken = os.path.join(scratch, "taken")
    with open(taken, "w"):
        pass
    build = ["--build-directory", scratch]
    cases = {
        "unix:PATH": ["--listen", "tcp:127.0.0.1:1", *build],
        "not a socket": ["--listen", f"unix:{taken}", *build],
        "not a directory": ["--listen", f"unix:{scratch}/s", "--build-directory", taken],
        "at least 1": ["--listen", f"unix:{scratch}/s", "--concurrency", "0", *build],
    }
    for said, args in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "hermetic", "runner", *args],
            capture_output=True,
            text=True,
            timeout=BOUND,
            cwd="/",
        )
        assert done.returncode == 123, (said, done.stderr)
        assert said in done.stderr, (said, done.stderr)
    assert sorted(os.listdir(scratch)) == ["taken"]


def test_a_socket_left_by_a_runner_that_is_gone_is_replaced(scratch: str) -> None:
    if MISSING is not None:
        unavailable(MISSING)
    path = os.path.join(scratch, "runner.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # bound, never listened on: connecting is refused
    argv = [sys.executable, "-m", "hermetic", "runner", "--listen", f"unix:{path}"]
    proc = subprocess.Popen([*argv, "--build-directory", scratch], cwd="/", stderr=subprocess.PIPE)
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        grpc.channel_ready_future(channel).result(timeout=BOUND)
        stub = runner_pb2_grpc.RunnerStub(channel)
        stub.CheckReadiness(runner_pb2.CheckReadinessRequest(), timeout=BOUND)
        # A second runner on the same socket is refused while this one listens.
        second = subprocess.run(
            [*argv, "--build-directory", scratch],
            capture_output=True,
            text=True,
            timeout=BOUND,
            cwd="/",
        )
        assert second.returncode == 123 and "another server" in second.stderr, second.stderr
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert os.listdir(scratch) == []


@pytest.mark.parametrize("where", ["build/audit.jsonl", "build", "."])
def test_an_audit_log_actions_could_write_is_refused_at_the_start(scratch: str, where: str) -> None:
    if MISSING is not None:
        unavailable(MISSING)
    build = os.path.join(scratch, "build")
    os.makedirs(build)
    log = os.path.normpath(os.path.join(scratch, where))
    sock = os.path.join(scratch, "runner.sock")
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "runner", "--listen", f"unix:{sock}"]
        + ["--build-directory", build, "--audit-log", log],
        capture_output=True,
        text=True,
        timeout=BOUND,
        cwd="/",
    )
    assert p.returncode == 123 and "audit_log" in p.stderr, (p.returncode, p.stderr)
    assert not os.path.exists(sock)


def test_the_generated_modules_regenerate_alike(tmp_path: Any) -> None:
    try:
        import grpc_tools  # noqa: F401
        from grpc_tools import protoc  # noqa: F401
    except ImportError as e:
        unavailable(f"grpcio-tools is needed to regenerate the protocol modules ({e})")
    from importlib.metadata import version

    from hermetic.remote.proto import generate

    installed = version("grpcio-tools")
    if installed != generate.GRPCIO_TOOLS_VERSION:
        unavailable(
            f"the committed modules come from grpcio-tools {generate.GRPCIO_TOOLS_VERSION}, "
            f"{installed} is installed (the [test] extra pins it)"
        )
    generate.generate(str(tmp_path))
    made = sorted(
        os.path.relpath(os.path.join(top, name), tmp_path)
        for top, _, files in os.walk(tmp_path)
        for name in files
    )
    assert made == sorted(generate.GENERATED)
    for rel in generate.GENERATED:
        committed = os.path.join(generate.ROOT, rel)
        assert filecmp.cmp(committed, tmp_path / rel, shallow=False), f"{rel} differs"
