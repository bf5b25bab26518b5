"""The executor's contract on Linux: results, errors, threads, timeouts."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import subprocess
import threading
import time

import pytest

import hermetic
from hermetic import (
    ActionFailedError,
    EnvSet,
    ExecutionTimeout,
    HermeticExecutor,
    HermeticSpecBuilder,
    NetworkPolicy,
    PathSet,
    ResourceLimits,
    SandboxError,
    SandboxSpec,
    SpecError,
    UnsupportedError,
)
from hermetic.platforms.linux.limits import cgroup_mechanism

pytestmark = [pytest.mark.linux, pytest.mark.root]


def base(inputs=(), **kw) -> SandboxSpec:
    return SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *inputs)),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
        **kw,
    )


@pytest.fixture(scope="module")
def ex() -> HermeticExecutor:
    return HermeticExecutor.create(base()).unwrap()


@pytest.mark.cgroup
def test_result_fields(ex):
    r = ex.execute(["sh", "-c", "printf out; printf err >&2; exit 4"]).unwrap()
    assert (r.exit_code, r.signal, r.stdout, r.stderr) == (4, None, b"out", b"err")
    assert not r.success and not r.timed_out and r.hermetic
    assert r.violations == ()
    assert r.duration > 0
    assert r.usage.wall_time == r.duration
    assert r.usage.cpu_time is not None and r.usage.source("cpu_time") == "rusage"
    # As root, the default limits run in a cgroup slot, which measures memory.
    expected = f"cgroup-v{cgroup_mechanism()[0]}" if os.geteuid() == 0 else None
    assert r.usage.source("peak_memory") == expected
    assert (r.usage.peak_memory is None) == (r.usage.source("peak_memory") is None)


def test_binary_output_is_exact(ex):
    data = bytes(range(256)) * 1000
    r = ex.execute(["cat"], stdin=data).unwrap()
    assert r.stdout == data


def test_usage_counts_reaped_children(ex):
    # A grandchild burns CPU and is reaped by its parent: the accounting of
    # pid 1 includes it.
    busy = "sh -c 'i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done'"
    r = ex.execute(["sh", "-c", busy]).unwrap()
    assert r.success
    assert r.usage.cpu_time is not None and r.usage.cpu_time > 0.01


def test_timeout_as_timedelta_records_a_violation(ex):
    r = ex.execute_with_timeout(["sleep", "10"], datetime.timedelta(milliseconds=200)).unwrap()
    assert r.timed_out and not r.success
    assert [v.kind.value for v in r.violations] == ["timeout"]
    assert r.violations[0].decision == "killed"
    assert r.duration < 5


def test_term_is_forwarded_before_kill(ex):
    # The action traps TERM and exits cleanly within the grace period.
    r = ex.execute(
        ["sh", "-c", "trap 'echo got-term; exit 0' TERM; sleep 10 & wait"], timeout=0.3
    ).unwrap()
    assert r.timed_out
    assert b"got-term" in r.stdout


def test_run_raises_timeout_and_check(ex):
    with pytest.raises(ExecutionTimeout) as info:
        hermetic.run(["sh", "-c", "echo partial; sleep 10"], base(), timeout=0.3)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.output == b"partial\n"
    assert info.value.result.timed_out
    with pytest.raises(ActionFailedError) as failed:
        hermetic.run(["false"], base(), check=True)
    assert isinstance(failed.value, subprocess.CalledProcessError)
    assert failed.value.returncode == 1
    assert hermetic.run(["true"], base(), check=True).success


def _mount_namespaces_held():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("mnt:[")
    return n


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root caller prepares a mount namespace")
def test_run_releases_its_sandbox_even_while_its_error_is_kept():
    # The error's traceback keeps run()'s frame, and so its executor, alive:
    # run() closes the executor itself.
    before = _mount_namespaces_held()
    with pytest.raises(ActionFailedError) as failed:
        hermetic.run(["false"], base(), check=True)
    kept = failed.value
    assert kept.__traceback__ is not None
    assert _mount_namespaces_held() == before


def test_bad_arguments_are_errors_naming_the_culprit(ex):
    for argv in ([], "true", ["echo", "a\0b"], [b"true"]):
        err = ex.execute(argv).unwrap_err()
        assert isinstance(err, SpecError), argv
    err = ex.execute(["true"], cwd="relative").unwrap_err()
    assert "relative" in str(err)
    err = ex.execute(["true"], timeout=-1).unwrap_err()
    assert isinstance(err, SpecError)


def test_exec_failures_are_sandbox_errors(ex, scratch):
    err = ex.execute(["no-such-tool"]).unwrap_err()
    assert isinstance(err, SandboxError) and isinstance(err, OSError)
    assert err.stage == "exec" and err.errno == 2
    assert "no-such-tool" in str(err) and "/usr/bin/no-such-tool" in str(err)
    plain = os.path.join(scratch, "notexec")
    with open(plain, "w") as f:
        f.write("#!/bin/sh\n")
    ex2 = HermeticExecutor.create(base(inputs=[scratch])).unwrap()
    err = ex2.execute([plain]).unwrap_err()
    assert err.stage == "exec" and err.errno == 13 and err.path == plain


def test_input_removed_after_prepare_names_the_bind(scratch):
    victim = os.path.join(scratch, "victim")
    os.mkdir(victim)
    ex = HermeticExecutor.create(base(inputs=[victim])).unwrap()
    os.rmdir(victim)
    err = ex.execute(["true"]).unwrap_err()
    assert isinstance(err, SandboxError)
    assert err.stage == "bind" and err.path == victim and err.errno == 2
    assert victim in str(err) and "input" in str(err)


def test_create_fails_closed(scratch):
    missing = os.path.join(scratch, "missing-out")
    err = HermeticExecutor.create(base(outputs=PathSet((missing,)))).unwrap_err()
    assert isinstance(err, SpecError) and missing in str(err)
    # Nothing counts the bytes of the host's network.
    host_net = dataclasses.replace(
        base(), network=NetworkPolicy.host(), resources=ResourceLimits(max_network_io=1 << 20)
    )
    err = HermeticExecutor.create(host_net).unwrap_err()
    assert isinstance(err, UnsupportedError) and "max_network_io" in str(err)
    err = HermeticExecutor.create(base(inputs=["/proc/cpuinfo"])).unwrap_err()
    assert isinstance(err, SpecError) and "/proc" in str(err)


def test_hermetic_limits_are_all_enforced_here(ex):
    preset = HermeticExecutor.create(
        dataclasses.replace(base(), resources=ResourceLimits.hermetic())
    ).unwrap()
    r = preset.execute(["true"]).unwrap()
    explicit = dataclasses.replace(ResourceLimits.hermetic(), defaulted=())
    made = HermeticExecutor.create(dataclasses.replace(base(), resources=explicit))
    if cgroup_mechanism()[1] is None:
        # Root here (or a caller with a delegated cgroup): every limit, whoever set it.
        assert r.success and r.unenforced_limits == ()
        assert made.unwrap().execute(["true"]).unwrap().unenforced_limits == ()
    else:
        # A normal user without a delegated cgroup: the preset's defaults
        # run weakened and listed; the same values set by the caller fail closed.
        weak = {s.partition(":")[0] for s in r.unenforced_limits}
        assert r.success and weak == {"max_cpu_time_ms", "max_memory_bytes"}
        err = made.unwrap_err()
        assert isinstance(err, UnsupportedError) and "max_memory_bytes" in str(err)


def test_limits_without_a_cgroup_fail_closed_unless_best_effort(monkeypatch):
    from hermetic.platforms.linux import prepared as backend

    monkeypatch.setattr(backend, "cgroup_mechanism", lambda: (None, "no delegated cgroup (test)"))
    limited = dataclasses.replace(base(), resources=ResourceLimits(max_memory_bytes=64 << 20))
    err = HermeticExecutor.create(limited).unwrap_err()
    assert isinstance(err, UnsupportedError)
    assert "max_memory_bytes" in str(err) and "best_effort" in str(err)
    relaxed = dataclasses.replace(
        base(), resources=ResourceLimits(max_memory_bytes=64 << 20, best_effort=True)
    )
    ex = HermeticExecutor.create(relaxed).unwrap()
    r = ex.execute(["true"]).unwrap()
    assert r.success
    assert any(s.startswith("max_memory_bytes: sampled") for s in r.unenforced_limits)
    # Sampled, the limit still ends an action that keeps growing.
    grow = "import time\nb = []\nwhile True:\n    b.append(bytearray(8 << 20)); time.sleep(0.01)"
    r = ex.execute(["/usr/bin/python3", "-c", grow], timeout=30).unwrap()
    assert not r.success and not r.timed_out
    assert [v.kind.value for v in r.violations] == ["resource"]
    assert "max_memory_bytes" in r.violations[0].limit


def test_output_limit(ex):
    spec = dataclasses.replace(base(), resources=ResourceLimits(max_output_bytes=1 << 20))
    limited = HermeticExecutor.create(spec).unwrap()
    # Usually done before the first check (then the output is cut to the
    # limit), on a slow host stopped by it: either way no more than the limit.
    r = limited.execute(["sh", "-c", "head -c 5000000 /dev/zero"]).unwrap()
    assert len(r.stdout) <= 1 << 20
    [v] = r.violations
    assert (v.kind.value, v.decision) in (("resource", "truncated"), ("resource", "killed"))
    # Slow and endless: stopped.
    r = limited.execute(
        ["sh", "-c", "while true; do head -c 65536 /dev/zero; sleep 0.01; done"], timeout=30
    ).unwrap()
    assert not r.timed_out and r.signal == 9
    assert [(v.kind.value, v.decision) for v in r.violations] == [("resource", "killed")]


def test_a_sparse_gigabyte_of_output_costs_the_caller_no_more_than_the_cap():
    import json
    import subprocess
    import sys
    import textwrap

    # In a process of its own: ru_maxrss is the peak of the process's life.
    code = textwrap.dedent(f"""
        import json, resource, sys
        sys.path[:0] = {sys.path!r}
        from hermetic import *
        spec = SandboxSpec(inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
                           environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
                           resources=ResourceLimits(max_output_bytes=1024))
        ex = HermeticExecutor.create(spec).unwrap()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Free for the action (a hole), before the first check of the caller.
        r = ex.execute(["sh", "-c", "truncate -s 1G /dev/stdout; truncate -s 1G /dev/stderr"])
        r = r.unwrap()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps([len(r.stdout), len(r.stderr), [v.to_dict() for v in r.violations],
                          grown]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out, err, violations, grown = json.loads(p.stdout)
    assert (out, err) == (1024, 0)
    [v] = violations
    assert (v["kind"], v["decision"]) in (("resource", "truncated"), ("resource", "killed"))
    assert str(2 << 30) in v["observed"]
    # ru_maxrss is in KiB: the caller did not read the gigabytes.
    assert grown < 256 << 10


def test_file_size_limit(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    spec = base(outputs=PathSet((out,)))
    spec = dataclasses.replace(spec, resources=ResourceLimits(max_file_size=4096))
    r = hermetic.run(["sh", "-c", f"head -c 10000 /dev/zero > {out}/big"], spec)
    assert not r.success
    assert os.path.getsize(os.path.join(out, "big")) == 4096
    # With exec, head is the main process: its SIGXFSZ is the action's end.
    r = hermetic.run(["sh", "-c", f"exec head -c 10000 /dev/zero > {out}/big2"], spec)
    assert r.signal == signal.SIGXFSZ
    [v] = r.violations
    assert (v.kind.value, v.decision) == ("resource", "killed") and "max_file_size" in v.limit


def test_many_threads_share_one_executor(ex):
    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        for i in range(10):
            r = ex.execute(["sh", "-c", f"echo {n}-{i}"])
            if r.is_err():
                errors.append(r.unwrap_err())
            else:
                results.append(r.unwrap().stdout)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == sorted(f"{n}-{i}\n".encode() for n in range(8) for i in range(10))


def test_capabilities_report_this_host():
    caps = hermetic.capabilities()
    assert caps.user_namespaces and caps.mount_setattr and caps.can_sandbox()
    assert set(caps.namespaces) >= {"user", "mount", "pid", "network", "ipc", "uts"}
    assert caps.pidfd
    d = caps.to_dict()
    assert set(d) >= {"cgroup_v1_controllers", "cgroup_v2", "seccomp", "landlock_abi", "clone3"}
    assert caps.limits in ("cgroup-v1", "cgroup-v2", "rlimits")
    assert (caps.limits == "rlimits") == ("limits" in dict(caps.notes))


LISTEN_THEN_WAIT = """
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 47123))
s.listen(1)
open(sys.argv[1], "w").close()
# Listening until the test has connected (the deadline is only a bound).
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.01)
"""

CONNECT = """
import errno, socket
c = socket.socket()
try:
    c.connect(("127.0.0.1", 47123))
    print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@pytest.mark.parametrize("fresh", [False, True])
def test_concurrent_actions_never_share_a_loopback(scratch, fresh):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    net = NetworkPolicy(fresh_namespace=fresh)
    ex = HermeticExecutor.create(base(outputs=PathSet((out,)), network=net)).unwrap()
    ready, done = os.path.join(out, "ready"), os.path.join(out, "done")
    listener = threading.Thread(
        target=lambda: ex.execute(
            ["/usr/bin/python3", "-c", LISTEN_THEN_WAIT, ready, done]
        ).unwrap()
    )
    listener.start()
    try:
        for _ in range(500):
            if os.path.exists(ready):
                break
            threading.Event().wait(0.01)
        assert os.path.exists(ready)
        r = ex.execute(["/usr/bin/python3", "-c", CONNECT]).unwrap()
        assert r.stdout == b"ECONNREFUSED\n"
    finally:
        open(done, "w").close()
        listener.join()
    # Sequential reuse: the port is free again for the next action (which
    # finds ``done`` there and ends at once).
    r = ex.execute(["/usr/bin/python3", "-c", LISTEN_THEN_WAIT, ready, done])
    assert r.unwrap().success


def test_pooled_namespaces_are_reused(monkeypatch):
    from hermetic.platforms.linux.netns import POOL

    made = []
    create = POOL._create
    monkeypatch.setattr(POOL, "_create", lambda: made.append(1) or create())
    ex = HermeticExecutor.create(base()).unwrap()
    for _ in range(20):
        ex.execute(["true"]).unwrap()
    ex.close()
    if os.geteuid() != 0:
        # Joining one needs CAP_SYS_ADMIN here: an unprivileged caller's
        # actions each get a fresh namespace, and the pool is never used.
        assert made == []
        return
    # At most one held by an action and one by the standby sandbox at once.
    assert len(made) <= 2
    assert POOL.size() >= 1


def test_interrupted_wait_kills_and_reaps_the_sandbox(ex, monkeypatch):
    from hermetic.platforms.linux import run as backend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    marker = f"321.{os.getpid()}"
    monkeypatch.setattr(backend, "wait_or_kill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.execute(["sleep", marker])
    monkeypatch.undo()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read() != f"sleep\0{marker}\0".encode()


def test_caller_ignoring_sigchld_still_gets_the_status(ex):
    import signal

    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        r = ex.execute(["sh", "-c", "exit 9"]).unwrap()
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert r.exit_code == 9
    # pid 1 records the sandbox's rusage itself: nothing is lost.
    assert r.usage.wall_time is not None and r.usage.cpu_time is not None


def _marked(marker: str) -> list[int]:
    want = f"sleep\0{marker}\0".encode()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == want:
                    found.append(int(pid))
    return found


@pytest.mark.cgroup
def test_exception_at_any_point_ends_the_sandbox(ex):
    import signal

    class Alarm(Exception):
        pass

    def ring(signum, frame):
        raise Alarm

    marker = f"654.{os.getpid()}"
    old = signal.signal(signal.SIGALRM, ring)
    try:
        for i in range(60):
            # Armed and disarmed inside the suppression: on a slow host the
            # alarm may land anywhere, the harness included.
            with contextlib.suppress(Alarm):
                try:
                    signal.setitimer(signal.ITIMER_REAL, 0.0002 * (i % 20 + 1))
                    ex.execute(["sleep", marker])
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _marked(marker) == []
    with open("/proc/self/status") as f:
        assert "hermetic-init" not in f.read()
    # Nor a cgroup: cleanup finishes even when the alarm lands inside it.
    from hermetic.monitoring.cgroup_v2 import PARENT

    if cgroup_mechanism()[0] == 2:
        assert [e.name for e in os.scandir(PARENT.path()) if e.is_dir()] == []
    # Nor a lease of the prepared mount namespace (only a standby holds one).
    from hermetic.platforms.linux.standby import KEEPER

    KEEPER.flush()
    template, standby = ex._prepared.mount_template, ex._prepared.standby
    if template is not None:
        held = sum(len(ns.holders) for ns in template._open)
        assert held == (1 if standby is not None and standby.ready() else 0)
    assert ex.execute(["true"]).unwrap().success


def test_high_descriptor_numbers_work(ex):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(1100)]
    try:
        r = ex.execute(["sleep", "10"], timeout=0.2).unwrap()
        assert r.timed_out
        assert ex.execute(["true"]).unwrap().success
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_forks_in_other_threads_do_not_stall_spawning(ex):
    # A process forked while a spawn is in flight inherits the report pipe.
    stop = threading.Event()
    children: list[int] = []

    def forker() -> None:
        while not stop.is_set():
            pid = os.fork()
            if pid == 0:
                import time

                time.sleep(5)
                os._exit(0)
            children.append(pid)
            stop.wait(0.002)

    t = threading.Thread(target=forker)
    t.start()
    try:
        for _ in range(100):
            r = ex.execute(["true"]).unwrap()
            assert r.success
            # Generous bound proving the spawn did not wait for a forked child.
            assert r.duration < 2.5
    finally:
        stop.set()
        t.join()
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_the_sandbox_cannot_end_itself_through_pid1(ex):
    # HM_SIG_END (64) is taken only from outside the namespace.
    r = ex.execute(["sh", "-c", "kill -64 1; sleep 0.2; echo alive"]).unwrap()
    assert r.success and r.stdout == b"alive\n"


def test_a_path_swapped_for_a_symlink_after_planning_is_refused(scratch):
    # An earlier action (or anyone) replaces a declared directory with a
    # symlink between planning and running: the mount must not follow it.
    dep = os.path.join(scratch, "dep")
    os.mkdir(dep)
    ex = HermeticExecutor.create(base(inputs=[dep])).unwrap()
    assert ex.execute(["true"]).unwrap().success
    os.rmdir(dep)
    os.symlink("/.hermetic-oldroot/etc", dep)
    err = ex.execute(["ls", dep]).unwrap_err()
    assert isinstance(err, SandboxError)
    assert err.stage == "bind" and err.path == dep and err.errno == 40  # ELOOP


def test_a_signal_another_thread_received_still_interrupts_the_wait(ex):
    # The kernel may hand a process-directed signal to any thread that does
    # not block it; the interpreter runs the handler in the main thread,
    # whose wait must therefore return now and then to let it.
    class Alarm(Exception):
        pass

    def ring(signum, frame):
        raise Alarm

    bystander_ready = threading.Event()
    stop = threading.Event()

    def bystander():
        bystander_ready.set()
        stop.wait()

    t = threading.Thread(target=bystander)
    t.start()
    bystander_ready.wait()
    old = signal.signal(signal.SIGALRM, ring)
    marker = f"987.{os.getpid()}"
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(t.ident, signal.SIGALRM))
    try:
        timer.start()
        start = time.monotonic()
        with pytest.raises(Alarm):
            ex.execute(["sleep", marker])
        # Well before the 987 s sleep would end.
        assert time.monotonic() - start < 30
    finally:
        timer.cancel()
        stop.set()
        t.join()
        signal.signal(signal.SIGALRM, old)
    assert _marked(marker) == []


def test_the_cgroup_mechanism_is_looked_up_at_most_once_a_second(monkeypatch):
    # Two parses of the mount table per executor created, saved for a
    # build that creates one per action; looked up again after the TTL.
    from hermetic.platforms.linux import limits as linux

    calls: list[str] = []
    monkeypatch.setattr(linux.V2, "available", lambda: calls.append("v2") or "no v2 (test)")
    monkeypatch.setattr(linux.WORKERS, "available", lambda: calls.append("v1") or None)
    monkeypatch.setattr(linux, "_mechanism", None)
    assert linux.cgroup_mechanism() == (1, None)
    assert linux.cgroup_mechanism() == (1, None)
    assert calls == ["v2", "v1"]
    monkeypatch.setattr(linux, "MECHANISM_TTL", 0.0)
    assert linux.cgroup_mechanism() == (1, None)
    assert calls == ["v2", "v1", "v2", "v1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="starts as the host's root, then drops it")
def test_the_host_root_check_follows_a_change_of_user_namespace():
    # Whether the caller is the host's root is kept per user namespace: a
    # process that gives up root and becomes root of a namespace of its own
    # (mapped to another uid) is not the host's root any more.
    import ctypes

    from hermetic.platforms.linux.limits import _global_root

    pid = os.fork()
    if pid == 0:  # single-threaded: it may unshare a user namespace
        code = 2
        try:
            first = _global_root()
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self is its own again
            if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
                with open("/proc/self/uid_map", "w") as f:
                    f.write("0 65534 1")
                code = 0 if first and os.geteuid() == 0 and not _global_root() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_capture_descriptors_are_closed_in_one_call():
    from hermetic._native import ffi, lib

    fds = [os.memfd_create("t", os.MFD_CLOEXEC) for _ in range(3)]
    held = ffi.new("int[4]", [fds[0], -1, fds[1], fds[2]])
    lib.hm_close_fds(held, 4)
    assert list(held) == [-1, -1, -1, -1]
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_stdio_made_before_an_interrupt_is_closed(ex, monkeypatch):
    # The cleanup path; the window it guards most (a handler raising as a
    # descriptor-making call returns) is closed by making them in C.
    from hermetic.platforms.linux import run as linux

    def memfds():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return sorted(p for p in out if p.startswith("/memfd:hermetic"))

    before = memfds()

    def interrupted(fd, data):
        raise KeyboardInterrupt  # a handler run while stdin is written

    monkeypatch.setattr(linux, "_fill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.execute(["cat"], stdin=b"data")
    assert memfds() == before


def test_too_few_open_files_for_the_setup_names_the_limit():
    spec = dataclasses.replace(base(), resources=ResourceLimits(max_open_files=3))
    err = HermeticExecutor.create(spec).unwrap().execute(["true"]).unwrap_err()
    assert "max_open_files=3" in str(err), err


@pytest.mark.unprivileged
def test_a_limit_above_the_callers_hard_limit_is_refused_at_create(test_user):
    import json
    import sys
    import textwrap

    from conftest import python_as

    if test_user is None:
        pytest.skip("runs as the unprivileged user, from a root suite")
    code = textwrap.dedent(f"""
        import json, resource, sys
        sys.path[:0] = {sys.path!r}
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        from hermetic import *
        spec = SandboxSpec(inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
                           resources=ResourceLimits(max_open_files=100))
        err = HermeticExecutor.create(spec).unwrap_err()
        print(json.dumps([type(err).__name__, str(err)]))
    """)
    p = python_as(test_user, code, timeout=60)
    assert p.returncode == 0, p.stderr
    kind, message = json.loads(p.stdout)
    assert kind == "UnsupportedError"
    assert "max_open_files" in message and "100" in message and "64" in message
