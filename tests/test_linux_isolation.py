"""Isolation, tested from inside the sandbox, as root and as an unprivileged user.

Each test runs a small probe (mostly Debian's /usr/bin/python3, visible
through the read-only /usr input) that tries an operation and prints the
errno it got; the test asserts on that.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import threading

import pytest

from hermetic import (
    EnvSet,
    HermeticSpecBuilder,
    PathSet,
    ProcessPolicy,
    ResourceLimits,
    SandboxSpec,
)

pytestmark = pytest.mark.linux

PY = "/usr/bin/python3"


def spec_for(inputs=(), outputs=(), temps=(), **kw) -> SandboxSpec:
    env = EnvSet.minimal().with_var("PATH", "/usr/bin:/bin")
    return SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *inputs)),
        outputs=PathSet(tuple(outputs)),
        temps=PathSet(tuple(temps)),
        environment=kw.pop("environment", env),
        resources=kw.pop("resources", ResourceLimits.defaults()),
        **kw,
    )


def probe(runner, spec, code, **kw):
    out = runner.run(spec, [PY, "-c", textwrap.dedent(code)], **kw)
    assert out.error is None, out.error
    return out


ERRNO = """
import errno, os, sys
def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"""


def test_write_to_input_is_refused_and_host_unchanged(fs_runner, scratch):
    runner = fs_runner
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    victim = os.path.join(src, "a.txt")
    with open(victim, "w") as f:
        f.write("original")
    out = probe(
        runner,
        spec_for(inputs=[src]),
        ERRNO
        + f"""
print(attempt(lambda: open({victim!r}, "w").write("changed")))
print(attempt(os.mkdir, {src + "/new"!r}))
print(attempt(os.unlink, {victim!r}))
print(open({victim!r}).read())
""",
    )
    assert out.text.split() == [runner.refused] * 3 + ["original"]
    with open(victim) as f:
        assert f.read() == "original"
    assert sorted(os.listdir(src)) == ["a.txt"]


def test_outputs_appear_on_host(fs_runner, scratch):
    runner = fs_runner
    out_dir = os.path.join(scratch, "out")
    os.mkdir(out_dir)
    runner.own(out_dir)
    probe(
        runner,
        spec_for(outputs=[out_dir]),
        f"""
open({out_dir + "/result.txt"!r}, "w").write("made inside")
""",
    )
    with open(os.path.join(out_dir, "result.txt")) as f:
        assert f.read() == "made inside"


def test_root_and_system_dirs_are_not_writable(fs_runner, scratch):
    runner = fs_runner
    out = probe(
        runner,
        spec_for(),
        ERRNO
        + """
print(attempt(os.mkdir, "/newdir"))
print(attempt(lambda: open("/usr/evil", "w")))
print(attempt(lambda: open("/tmp/scratch", "w").write("x")))
""",
    )
    # / and the inputs are read-only; the private /tmp is writable scratch
    # (without namespaces there is none: /tmp is the host's, not declared).
    private_tmp = "EACCES" if runner.landlock else "ok"
    assert out.text.split() == [runner.refused, runner.refused, private_tmp]


def test_undeclared_file_is_invisible_even_through_symlink(fs_runner, scratch):
    runner = fs_runner
    secret_dir = os.path.join(scratch, "secret")
    os.mkdir(secret_dir)
    secret = os.path.join(secret_dir, "key")
    with open(secret, "w") as f:
        f.write("s3cr3t")
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    os.symlink(secret, os.path.join(src, "abs-link"))
    os.symlink("../secret/key", os.path.join(src, "rel-link"))
    out = probe(
        runner,
        spec_for(inputs=[src]),
        ERRNO
        + f"""
print(attempt(lambda: open({secret!r}).read()))
print(attempt(lambda: open({src + "/abs-link"!r}).read()))
print(attempt(lambda: open({src + "/rel-link"!r}).read()))
print(attempt(lambda: open("/etc/passwd").read()))
print(attempt(os.listdir, {scratch!r}))
try:
    print(sorted(os.listdir({scratch!r})))
except OSError as e:
    print(errno.errorcode[e.errno])
""",
    )
    lines = out.text.splitlines()
    assert lines[:4] == [runner.hidden] * 4
    if runner.landlock:
        # Landlock hides contents, not names: the undeclared parent cannot
        # be listed.
        assert lines[4:] == ["EACCES", "EACCES"]
    else:
        # Only the declared path's ancestors exist, created empty in the tmpfs root.
        assert lines[4:] == ["ok", "['src']"]
    assert "s3cr3t" not in out.text


def test_environment_is_exactly_the_spec(runner, scratch, monkeypatch):
    monkeypatch.setenv("HERMETIC_CANARY", "leaked")
    env = EnvSet.minimal().with_var("PATH", "/usr/bin:/bin").with_var("ONLY_THIS", "yes")
    out = probe(
        runner,
        spec_for(environment=env),
        """
import os, json
print(json.dumps(dict(os.environ), sort_keys=True))
""",
    )
    import json

    seen = json.loads(out.text)
    assert seen == {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ONLY_THIS": "yes",
        "PATH": "/usr/bin:/bin",
        "TZ": "UTC",
        "USER": "builder",
    }


def test_proc_shows_only_the_sandbox_and_host_pids_cannot_be_signalled(runner):
    host = subprocess.Popen(["sleep", "60"])
    try:
        out = probe(
            runner,
            spec_for(),
            ERRNO
            + f"""
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(pids)
print(attempt(os.kill, {host.pid}, 9))
print(os.getpid())
""",
        )
    finally:
        alive = host.poll() is None
        host.kill()
        host.wait()
    lines = out.text.splitlines()
    # pid 1 is the sandbox's init, pid 2 the probe itself.
    assert lines[0] == "[1, 2]"
    assert lines[1] == "ESRCH"
    assert lines[2] == "2"
    assert alive


def test_host_loopback_server_is_unreachable(runner):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    # The test's own connection, made once the probe has ended, stops the
    # accepting thread: whatever reached the server before it, it accepted.
    last = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    last.bind(("127.0.0.1", 0))

    def accept():
        server.settimeout(120)  # a bound: the last connection comes first
        try:
            while True:
                conn, peer = server.accept()
                if peer == last.getsockname():
                    conn.close()
                    return
                accepted.append((conn, peer))
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    try:
        out = probe(
            runner,
            spec_for(),
            ERRNO
            + f"""
import socket
s = socket.socket()
s.settimeout(2)
print(attempt(s.connect, ("127.0.0.1", {port})))
ifs = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.socket(); c.connect(l.getsockname()); print("loopback", "ok")
""",
        )
    finally:
        last.connect(("127.0.0.1", port))
        t.join()
        last.close()
        server.close()
    lines = out.text.splitlines()
    assert lines[0] == "ECONNREFUSED"
    # loopback itself works inside: it is the sandbox's own.
    assert lines[1] == "loopback ok"
    assert accepted == []


def test_inheritable_descriptors_are_closed(runner, scratch):
    path = os.path.join(scratch, "leak")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.set_inheritable(fd, True)
    try:
        out = probe(
            runner,
            spec_for(),
            """
import os
print(sorted(int(x) for x in os.listdir("/proc/self/fd")))
""",
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    fds = eval(out.text)
    # 0, 1, 2 and the descriptor listdir itself had open.
    assert fds[:3] == [0, 1, 2]
    assert len(fds) == 4


def test_no_capabilities_and_no_new_privs(runner):
    out = probe(
        runner,
        spec_for(),
        """
fields = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
    print(k, fields[k].strip())
""",
    )
    lines = dict(line.split() for line in out.text.splitlines())
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(lines[k], 16) == 0, k
    assert lines["NoNewPrivs"] == "1"


def test_mount_is_refused(runner):
    out = probe(
        runner,
        spec_for(),
        """
import ctypes, ctypes.util, errno, os
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
r = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
print(r, errno.errorcode[ctypes.get_errno()])
r = libc.umount2(b"/proc", 2)
print(r, errno.errorcode[ctypes.get_errno()])
""",
    )
    assert out.text.split() == ["-1", "EPERM", "-1", "EPERM"]


def test_hostname_is_fixed_and_identity_mapped(runner):
    out = probe(
        runner,
        spec_for(),
        """
import os, socket
print(socket.gethostname(), os.getuid(), os.getgid())
""",
    )
    name, uid, gid = out.text.split()
    assert name == "localhost"
    expected = (
        (0, 0)
        if runner.mode == "root"
        else (runner.user.pw_uid, runner.user.pw_gid)
        if runner.user
        else (os.getuid(), os.getgid())
    )
    assert (int(uid), int(gid)) == expected


def test_ten_megabytes_of_stdout_arrive_whole(runner):
    out = runner.run(spec_for(), ["sh", "-c", "yes | head -c 10485760; echo done >&2"])
    assert out.error is None
    assert len(out.stdout) == 10 * 1024 * 1024
    assert out.stdout[:4] == b"y\ny\n"
    assert out.stderr == b"done\n"
    assert out.exit_code == 0


def test_stdin_is_passed(runner):
    out = runner.run(spec_for(), ["tr", "a-z", "A-Z"], stdin=b"hello sandbox\n")
    assert out.stdout == b"HELLO SANDBOX\n"


def _processes_with(marker: str) -> list[int]:
    """Pids whose argv is exactly ``marker`` split on spaces."""
    want = b"\0".join(w.encode() for w in marker.split()) + b"\0"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == want:
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_timeout_kills_background_children_and_keeps_output(runner):
    marker = f"1000.{os.getpid()}"
    out = runner.run(
        spec_for(),
        ["sh", "-c", f"sleep {marker} & sleep {marker} & echo started; wait"],
        timeout=1.0,
    )
    assert out.error is None
    assert out.timed_out
    assert out.stdout == b"started\n"
    assert _processes_with(f"sleep {marker}") == []
    if runner.mode == "root":
        assert out.raw["violations"][0]["kind"] == "timeout"


@pytest.mark.slow
def test_sigkill_of_the_caller_leaves_no_sandbox_process(fs_runner, scratch):
    import sys
    import time

    marker = f"987.{os.getpid()}"
    spec = spec_for()
    spec_file = os.path.join(scratch, "spec.json")
    with open(spec_file, "w") as f:
        f.write(spec.to_json())
    cmd = [
        sys.executable,
        "-m",
        "hermetic",
        "run",
        "--spec",
        spec_file,
        "--",
        "sh",
        "-c",
        f"sleep {marker} & sleep {marker}",
    ]
    runner = fs_runner
    if runner.landlock:
        # No pid namespace: pid 1 must end the action's group itself.
        from conftest import FORBID_USERNS

        cmd = [*FORBID_USERNS, *cmd]
    if runner.user is not None:
        from conftest import _as_user_cmd, _user_env

        cmd = _as_user_cmd(runner.user, cmd)
        env = _user_env()
    else:
        env = dict(os.environ)
    caller = subprocess.Popen(cmd, env=env, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while len(_processes_with(f"sleep {marker}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_processes_with(f"sleep {marker}")) == 2
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        deadline = time.monotonic() + 5
        while _processes_with(f"sleep {marker}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _processes_with(f"sleep {marker}") == []
        # The killed caller could not remove its cgroup slots: the next
        # process that sets up slots removes them.
        from hermetic.monitoring import cgroups

        for own in set(cgroups.v1_dirs().values()):
            cgroups.remove_stale(own)
            assert not os.path.exists(os.path.join(own, f"{cgroups.PREFIX}{caller.pid}"))
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()


def test_exit_codes_and_signals_propagate(runner):
    out = runner.run(spec_for(), ["sh", "-c", "exit 7"])
    assert (out.exit_code, out.signal) == (7, None)
    out = runner.run(spec_for(), ["sh", "-c", "kill -TERM $$"])
    assert (out.exit_code, out.signal) == (None, signal.SIGTERM)
    out = runner.run(spec_for(), ["sh", "-c", "kill -SEGV $$"])
    assert (out.exit_code, out.signal) == (None, signal.SIGSEGV)


def test_pid1_reaps_orphans(runner):
    # The orphaned grandchild exits before the main process: a zombie would
    # show in /proc if pid 1 did not reap it.  The main process waits until
    # the orphan's /proc entry is gone (a zombie keeps it), 10 s at most.
    out = runner.run(
        spec_for(),
        [
            "sh",
            "-c",
            "(sh -c 'exit 0' & echo $! > /tmp/orphan); i=0; "
            'while [ -e "/proc/$(cat /tmp/orphan)" ] && [ $i -lt 1000 ]; '
            "do sleep 0.01; i=$((i + 1)); done; "
            "grep -l Z /proc/[0-9]*/stat 2>/dev/null | wc -l",
        ],
    )
    assert out.text.strip() == "0"


def test_what_the_main_process_leaves_running_ends_with_it(runner):
    # As the main process exits, pid 1 kills and reaps whatever it left: a
    # background sleep, and an orphaned one (adopted by pid 1), do not hold
    # the run.  (When nothing is left, as after most actions, pid 1 skips
    # the kill.)  The timeout only bounds the test: it must not fire.
    marker = f"1000.{os.getpid()}2"
    out = runner.run(
        spec_for(),
        ["sh", "-c", f"sleep {marker} & (sleep {marker} &); echo started"],
        timeout=60,
    )
    assert out.error is None and not out.timed_out and out.exit_code == 0, out
    assert out.stdout == b"started\n"
    assert _processes_with(f"sleep {marker}") == []


def test_gcc_compiles_and_links_into_output(fs_runner, scratch):
    runner = fs_runner
    if not os.path.exists("/usr/bin/gcc"):
        pytest.fail("gcc is required (installed by .ci/run)")
    ws = os.path.join(scratch, "ws")
    for d in ("src", "out", "tmp"):
        os.makedirs(os.path.join(ws, d))
    runner.own(os.path.join(ws, "out"))
    runner.own(os.path.join(ws, "tmp"))
    with open(os.path.join(ws, "src", "hello.c"), "w") as f:
        f.write('#include <stdio.h>\nint main(void){puts("hello from the sandbox");return 0;}\n')
    with open(os.path.join(ws, "undeclared.h"), "w") as f:
        f.write("#error must not be visible\n")
    spec = HermeticSpecBuilder.for_build(
        workspace_root=ws, sources=["src"], output_dir="out", temp_dir="tmp"
    ).unwrap()
    import dataclasses

    spec = dataclasses.replace(spec, resources=ResourceLimits.defaults())
    out = runner.run(spec, ["cc", "-O2", "src/hello.c", "-o", "out/hello"])
    assert out.error is None, out.error
    assert out.exit_code == 0, out.stderr
    done = subprocess.run([os.path.join(ws, "out", "hello")], capture_output=True, check=True)
    assert done.stdout == b"hello from the sandbox\n"
    if runner.landlock:
        # The name shows (Landlock does not hide names), the contents do not.
        out = runner.run(spec, ["sh", "-c", "cat undeclared.h 2>/dev/null || echo unreadable"])
        assert out.text.split() == ["unreadable"]
    else:
        out = runner.run(
            spec, ["sh", "-c", "ls; test -e undeclared.h && echo visible || echo hidden"]
        )
        assert out.text.split() == ["out", "src", "tmp", "hidden"]


def test_setup_error_names_the_path(fs_runner, scratch):
    runner = fs_runner
    gone = os.path.join(scratch, "gone")
    out = runner.run(spec_for(inputs=[scratch]), ["true"], cwd=gone)
    assert out.error is not None
    assert gone in out.error
    out = runner.run(spec_for(), ["no-such-tool-xyz"])
    assert out.error is not None
    assert "no-such-tool-xyz" in out.error


FORK_20 = """
import errno, os, time
kids, refused = [], None
for i in range(20):
    try:
        pid = os.fork()
    except OSError as e:
        refused = errno.errorcode[e.errno]
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
print(len(kids), refused, len([p for p in os.listdir("/proc") if p.isdigit()]))
"""


@pytest.mark.parametrize(
    "bound",
    [
        {"resources": ResourceLimits(max_processes=8)},
        # max_children counts besides the action: the same bound.
        {"process": ProcessPolicy(max_children=7)},
        {"resources": ResourceLimits(max_processes=50), "process": ProcessPolicy(max_children=7)},
        {"resources": ResourceLimits(max_processes=8), "process": ProcessPolicy(max_children=30)},
    ],
    ids=["max_processes", "max_children", "children-smaller", "processes-smaller"],
)
@pytest.mark.cgroup
def test_process_limit_bounds_the_whole_sandbox(runner, bound):
    out = probe(runner, spec_for(**bound), FORK_20)
    kids, refused, total = out.text.split()
    # pid 1 + the probe + 7 children = 8 + 1; the ninth fork is refused.  As
    # root the pids cgroup enforces it (RLIMIT_NPROC exempts root), otherwise
    # RLIMIT_NPROC in the sandbox's own user namespace.
    assert (int(kids), refused, int(total)) == (7, "EAGAIN", 9)
    assert not any(s.startswith("max_processes") for s in out.raw["unenforced_limits"])
    if runner.mode == "root":
        kinds = [v["kind"] for v in out.raw["violations"]]
        assert kinds == ["process"]
        # Named after the field the bound came from.
        children = bound.get("process", ProcessPolicy()).max_children
        named = "process.max_children=7" if children == 7 else "max_processes=8"
        assert named in out.raw["violations"][0]["limit"]


def test_a_sandbox_that_should_outlive_its_caller_is_refused():
    from hermetic import HermeticExecutor, UnsupportedError

    err = HermeticExecutor.create(
        spec_for(process=ProcessPolicy(kill_on_parent_exit=False))
    ).unwrap_err()
    assert isinstance(err, UnsupportedError)
    assert "process policy" in str(err) and "kill_on_parent_exit=False" in str(err)


def test_kernel_knobs_and_devices_cannot_be_changed(runner):
    out = probe(
        runner,
        spec_for(),
        ERRNO
        + """
print(attempt(lambda: open("/proc/sys/kernel/core_pattern", "w")))
print(attempt(lambda: open("/proc/sys/net/ipv4/ip_forward", "w")))
print(attempt(os.chmod, "/dev/null", 0o666))
print(attempt(lambda: open("/dev/new", "w")))
print(attempt(lambda: open("/dev/null", "w").write("x")))
print(attempt(lambda: open("/proc/1/cmdline")))
""",
    )
    # Read-only however the sandbox's uid maps (root's sandbox is host uid 0):
    # no core_pattern, no sysctl of a pooled network namespace, no device
    # mode changes, no new files in /dev; writing to a device still works,
    # and pid 1's files (the caller's memory, shared) are hidden.
    assert out.text.split() == ["EROFS", "EROFS", "EROFS", "EROFS", "ok", "ENOENT"]


@pytest.mark.cgroup
def test_limits_fail_closed_without_cgroups_unless_best_effort(runner):
    strict = spec_for(resources=ResourceLimits(max_memory_bytes=256 << 20))
    out = runner.run(strict, ["true"])
    if runner.mode == "root":
        # Root has cgroup v1 slots here: the limit is enforced.
        assert out.error is None and out.raw["unenforced_limits"] == []
    else:
        # A normal user without a delegated cgroup: refused, naming the limit
        # and the way out (the command line's is --best-effort).
        assert out.error is not None
        advice = "--best-effort" if runner.via_cli else "best_effort=True"
        assert "max_memory_bytes" in out.error and advice in out.error
        relaxed = spec_for(resources=ResourceLimits(max_memory_bytes=256 << 20, best_effort=True))
        out = runner.run(relaxed, ["true"])
        assert out.error is None and out.exit_code == 0
        assert any(s.startswith("max_memory_bytes") for s in out.raw["unenforced_limits"])
