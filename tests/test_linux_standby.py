"""Standby sandboxes (hermetic/platforms/linux/standby.py): a reused executor
sets up the next sandbox while the current action runs, and the next
execute only hands it its stdio and argv."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from conftest import python_as

from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    NetworkPolicy,
    PathSet,
    ProcessPolicy,
    ReproducibilityPolicy,
    ResourceLimits,
    SandboxError,
    SandboxSpec,
)
from hermetic.platforms.linux.standby import KEEPER, KEEPER_THREAD, Standby
from hermetic.platforms.linux.workers import POOL

pytestmark = [pytest.mark.linux, pytest.mark.cgroup]

ENV = EnvSet.minimal().with_var("PATH", "/usr/bin:/bin")


def _spec(inputs=(), outputs=(), **kw):
    return SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *inputs)),
        outputs=PathSet(tuple(outputs)),
        environment=ENV,
        resources=ResourceLimits.defaults(),
        **kw,
    )


def _warm(ex):
    """Two executions (the spec is reused), then wait for the standby."""
    for _ in range(2):
        ex.execute(["true"]).unwrap()
    KEEPER.flush()
    assert ex._prepared.standby.ready()


def _inits():
    """This process's sandboxes: children running as hermetic-init."""
    return [p for p in psutil.Process().children() if p.name() == "hermetic-init"]


@pytest.mark.root
def test_each_execution_gets_its_own_stdio_and_argv(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    ex = HermeticExecutor.create(_spec(outputs=[out])).unwrap()
    _warm(ex)
    for i in range(6):
        taken = ex._prepared.standby.taken
        script = f'read x; echo "$x $(pwd) $# $1"; echo e{i} >&2; echo {i} > {out}/{i}; exit {i}'
        r = ex.execute(["sh", "-c", script, "a", f"b{i}"], stdin=f"in{i}\n".encode()).unwrap()
        assert (r.exit_code, r.stdout, r.stderr) == (
            i,
            f"in{i} / 1 b{i}\n".encode(),
            f"e{i}\n".encode(),
        )
        # The sandbox was set up ahead (the previous execution asked for it).
        assert ex._prepared.standby.taken == taken + 1
        KEEPER.flush()
    assert sorted(os.listdir(out)) == [str(i) for i in range(6)]
    ex.close()


@pytest.mark.root
def test_a_standby_is_as_fresh_as_any_sandbox(scratch):
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    for _ in range(4):
        r = ex.execute(
            ["sh", "-c", "ls -A /tmp; echo x > /tmp/mine; ls /proc | grep -c '^[0-9]'"]
        ).unwrap()
        # Nothing of the previous action; only this sandbox's processes.
        lines = r.stdout.decode().split()
        assert lines[0].isdigit() and int(lines[0]) <= 4, r.stdout
        KEEPER.flush()
    assert ex._prepared.standby.taken >= 4
    ex.close()


def _caps(text):
    """{"CapBnd": int, ...} from /proc/.../status text."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if line.startswith("Cap"))
    return {k: int(v, 16) for k, v in fields.items()}


@pytest.mark.root
def test_no_capabilities_through_a_standby_and_the_caller_keeps_its_own():
    # The keeper thread that clones standbys holds an empty bounding set,
    # so the action finds nothing left to drop; the caller's thread keeps
    # its own (capabilities belong to a thread).
    with open("/proc/thread-self/status") as f:
        mine = _caps(f.read())
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    taken = ex._prepared.standby.taken
    r = ex.execute(["cat", "/proc/self/status"]).unwrap()
    assert ex._prepared.standby.taken == taken + 1
    assert set(_caps(r.stdout.decode()).values()) == {0}, r.stdout
    ex.close()
    with open("/proc/thread-self/status") as f:
        assert _caps(f.read()) == mine
    if os.geteuid() == 0:
        assert mine["CapBnd"] != 0
        (keeper,) = [t for t in threading.enumerate() if t.name == KEEPER_THREAD]
        # And the cgroup v1 workers, which clone pid 1 for limited specs.
        for tid in [keeper.native_id, *(w.native.tid for w in POOL._all)]:
            with open(f"/proc/self/task/{tid}/status") as f:
                theirs = _caps(f.read())
            assert theirs["CapBnd"] == 0 and theirs["CapEff"] == mine["CapEff"], tid
            # Back in the process's network namespace after cloning into a
            # pooled one.
            assert os.readlink(f"/proc/self/task/{tid}/ns/net") == os.readlink(
                "/proc/thread-self/ns/net"
            ), tid


@pytest.mark.root
def test_a_replaced_input_is_seen_through_a_standby(scratch):
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    with open(os.path.join(src, "a"), "w") as f:
        f.write("first\n")
    ex = HermeticExecutor.create(_spec(inputs=[src])).unwrap()
    _warm(ex)
    # Set up before the directory is replaced: it binds the old one, so it
    # is dropped, and this execution sees the new directory.
    shutil.rmtree(src)
    os.mkdir(src)
    with open(os.path.join(src, "a"), "w") as f:
        f.write("second\n")
    assert ex.execute(["cat", f"{src}/a"]).unwrap().stdout == b"second\n"
    ex.close()


@pytest.mark.root
def test_errors_and_timeouts_through_a_standby(scratch):
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    err = ex.execute(["no-such-command"]).unwrap_err()
    assert isinstance(err, SandboxError) and "no-such-command" in str(err)
    KEEPER.flush()
    assert ex._prepared.standby.ready() or ex.execute(["true"]).unwrap().success
    KEEPER.flush()
    taken = ex._prepared.standby.taken
    r = ex.execute(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.2).unwrap()
    assert r.timed_out and ex._prepared.standby.taken == taken + 1
    ex.close()


@pytest.mark.root
def test_close_and_collection_leave_no_sandbox_behind():
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    assert len(_inits()) == 1
    ex.close()
    assert _inits() == []
    _warm(ex)  # reused again after close: a standby again
    assert len(_inits()) == 1
    del ex  # collected: dropped by the standby thread
    KEEPER.flush()
    assert _inits() == []


@pytest.mark.root
def test_a_drop_inside_a_drop_leaves_the_work_to_the_outer_one(monkeypatch):
    # As when a signal handler drops the standby (close()) while the same
    # thread is reaping it: the inner drop must not release what the outer
    # one is still using (its pid 1's descriptor).
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    sb = ex._prepared.standby.take("/")
    assert sb is not None
    from hermetic.platforms.linux import standby as linux_standby

    reap, seen = linux_standby.reap, []

    def nested(*args):
        if not seen:  # once
            seen.append(None)
            sb.drop()
            seen.append(sb.proc.pidfd)  # still open: the outer drop holds it
        return reap(*args)

    monkeypatch.setattr(linux_standby, "reap", nested)
    sb.drop()
    assert seen[1] >= 0
    assert sb.proc.pidfd == -1  # released once, by the outer drop
    assert _inits() == []
    ex.close()


@pytest.mark.parametrize(
    "spec",
    [
        _spec(process=ProcessPolicy(allow_exec=False)),
        _spec(reproducibility=ReproducibilityPolicy(fresh_clocks=True)),
        _spec(network=NetworkPolicy.allow_hosts(["127.0.0.1:9"])),
    ],
    ids=["exec-denied", "fresh-clocks", "proxy"],
)
def test_specs_that_never_stand_by(spec):
    ex = HermeticExecutor.create(spec).unwrap()
    assert ex._prepared.standby is None


@pytest.mark.unprivileged
def test_standby_as_an_unprivileged_caller(test_user, scratch):
    # No prepared mount namespace there: the standby builds its root itself.
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    # Switched to the test user by a root suite; a suite run by a normal
    # user runs it as itself.
    uid = test_user.pw_uid if test_user is not None else os.getuid()
    if test_user is not None:
        shutil.chown(out, test_user.pw_uid, test_user.pw_gid)
    code = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = {sys.path!r}
        from hermetic import *
        from hermetic.platforms.linux.standby import KEEPER, Standby
        spec = SandboxSpec(inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
                           outputs=PathSet(({out!r},)),
                           environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
                           # No cgroup here: only the rlimits.
                           resources=ResourceLimits(max_memory_bytes=0, max_cpu_time_ms=0))
        ex = HermeticExecutor.create(spec).unwrap()
        seen = []
        for i in range(5):
            r = ex.execute(["sh", "-c", f"id -u; echo {{i}} > {out}/{{i}}; ls -A /tmp; "
                                        "grep -c '^Cap...:.0000000000000000$' /proc/self/status"]
                           ).unwrap()
            seen.append(r.stdout.decode())
            KEEPER.flush()
        print(json.dumps({{"seen": seen, "taken": ex._prepared.standby.taken,
                          "template": ex._prepared.mount_template is not None}}))
        ex.close()
    """)
    if test_user is not None:
        p = python_as(test_user, code)
    else:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120
        )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["taken"] >= 3 and not data["template"]
    # Every capability set empty (5): a new user namespace starts with a
    # full bounding set, which the action drops itself.
    assert all(s == f"{uid}\n{os.path.basename(scratch)}\n5\n" for s in data["seen"]), data["seen"]
    assert sorted(os.listdir(out)) == [str(i) for i in range(5)]


@pytest.mark.root
def test_few_open_files_still_get_their_stdio():
    # The action's RLIMIT_NOFILE is set before it waits for its stdio.
    spec = _spec()
    spec = spec.__class__(**{**spec.__dict__, "resources": ResourceLimits(max_open_files=10)})
    ex = HermeticExecutor.create(spec).unwrap()
    _warm(ex)
    taken = ex._prepared.standby.taken
    # (No redirection in the command: dash saves descriptors above 10.)
    r = ex.execute(["sh", "-c", "cat; ls /none"], stdin=b"in\n").unwrap()
    assert (r.exit_code, r.stdout) == (2, b"in\n") and b"/none" in r.stderr
    assert ex._prepared.standby.taken == taken + 1
    ex.close()


@pytest.mark.root
def test_a_standby_serves_the_working_directory_it_was_made_for(scratch):
    # A standby entered its working directory while it still had its
    # capabilities, as every sandbox does: it serves only that one.  The
    # next is made for the directory of the executions that asked for it,
    # once two in a row used it.
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    ex = HermeticExecutor.create(_spec(inputs=[src])).unwrap()
    slot = ex._prepared.standby
    _warm(ex)
    taken = slot.taken
    assert ex.execute(["pwd"], cwd=src).unwrap().stdout == f"{src}\n".encode()
    assert slot.taken == taken  # the standby was made for /
    KEEPER.flush()
    assert not slot.ready() and _inits() == []  # dropped, none made yet
    assert ex.execute(["pwd"], cwd=src).unwrap().stdout == f"{src}\n".encode()
    KEEPER.flush()
    assert slot.ready()
    assert ex.execute(["pwd"], cwd=src).unwrap().stdout == f"{src}\n".encode()
    assert slot.taken == taken + 1
    KEEPER.flush()
    # The background thread held up: the standby this execution drops (made
    # for src) waits in its queue, and close() must drop it itself.
    gate = threading.Event()
    KEEPER.submit(gate.wait)
    try:
        assert ex.execute(["pwd"]).unwrap().stdout == b"/\n"
        assert slot.taken == taken + 1
        assert len(_inits()) == 1
        ex.close()
        assert _inits() == []
    finally:
        gate.set()
    KEEPER.flush()


@pytest.mark.root
def test_a_working_directory_replaced_on_the_host_is_seen(scratch):
    # A standby is in its working directory; one replaced on the host since
    # is not the directory the next action must run in.
    out = os.path.join(scratch, "out")
    sub = os.path.join(out, "sub")
    os.makedirs(sub)
    ex = HermeticExecutor.create(_spec(outputs=[out])).unwrap()
    for _ in range(3):
        ex.execute(["true"], cwd=sub).unwrap()
    KEEPER.flush()
    assert ex._prepared.standby.ready()
    taken = ex._prepared.standby.taken
    shutil.rmtree(sub)
    os.mkdir(sub)
    r = ex.execute(["sh", "-c", "echo x > f && pwd"], cwd=sub).unwrap()
    assert (r.exit_code, r.stdout) == (0, f"{sub}\n".encode()), r
    assert ex._prepared.standby.taken == taken
    with open(os.path.join(sub, "f")) as f:
        assert f.read() == "x\n"
    ex.close()


@pytest.mark.parametrize("noticed", [True, False], ids=["before", "at-activation"])
@pytest.mark.root
def test_a_standby_that_died_is_not_used(monkeypatch, noticed):
    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    slot = ex._prepared.standby
    sb = slot._standby
    os.kill(sb.proc.pid, 9)  # as the OOM killer or a stray kill would
    select.select([sb.proc.pidfd], [], [], 10)  # pid 1 has exited
    if not noticed:
        # As if it died just after the check: the go finds nobody, and the
        # execution starts afresh instead of failing.
        monkeypatch.setattr(Standby, "alive", lambda self: True)
    assert ex.execute(["echo", "fresh"]).unwrap().stdout == b"fresh\n"
    monkeypatch.undo()
    ex.close()
    assert _inits() == []


@pytest.mark.root
def test_a_missing_path_does_not_turn_standbys_off(monkeypatch):
    # Three failed setups in a row stop the standbys of an executor; a path
    # missing when one is made (a working directory removed meanwhile) is
    # not a failed setup, and standbys come back once it is there.
    ex = HermeticExecutor.create(_spec()).unwrap()
    prepared = ex._prepared
    with monkeypatch.context() as m:
        m.setattr(prepared, "host_path", lambda path: "/nonexistent/hermetic-test")
        for _ in range(6):
            ex.execute(["true"]).unwrap()
            KEEPER.flush()
            assert not prepared.standby.ready()
    taken = prepared.standby.taken
    for _ in range(3):
        ex.execute(["true"]).unwrap()
        KEEPER.flush()
    assert prepared.standby.taken > taken
    ex.close()


@pytest.mark.root
def test_a_request_interrupted_before_the_standby_thread_has_it_does_not_hang_close():
    # A signal handler raising as want() releases its lock, after it marked
    # a standby as pending and before the keeper had the task: close()
    # waited forever for a fill that never came.
    ex = HermeticExecutor.create(_spec()).unwrap()
    ex.execute(["true"]).unwrap()
    slot = ex._prepared.standby

    class RaisingOnRelease:
        """The slot's lock, raising once as it is released with a standby
        pending (the moment a signal handler may run)."""

        def __init__(self, lock):
            self.lock = lock
            self.armed = True

        def __enter__(self):
            return self.lock.__enter__()

        def __exit__(self, *exc):
            self.lock.__exit__(*exc)
            if self.armed and slot._pending:
                self.armed = False
                raise KeyboardInterrupt

    real = slot._lock
    slot._lock = RaisingOnRelease(real)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.execute(["true"]).unwrap()
    finally:
        slot._lock = real
    closed = threading.Thread(target=ex.close, daemon=True)
    closed.start()
    closed.join(10)
    assert not closed.is_alive()
    # And the executor makes standbys again.
    _warm(ex)
    ex.close()


@pytest.mark.root
def test_a_standby_taken_as_a_signal_handler_raises_is_not_lost(monkeypatch):
    from hermetic.platforms.linux import standby as linux_standby

    ex = HermeticExecutor.create(_spec()).unwrap()
    _warm(ex)
    assert len(_inits()) == 1
    slot = ex._prepared.standby
    real = type(slot).take

    def take_then_interrupt(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt  # a handler run as take() returns

    monkeypatch.setattr(type(slot), "take", take_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ex.execute(["true"])
    monkeypatch.setattr(type(slot), "take", real)
    # Dropped by the execute it was taken for, not left to the exit.
    assert _inits() == []
    assert not [sb for sb in linux_standby._LIVE if not sb.used]
    ex.close()


#: One executor, executions with and without read-only paths of their own,
#: all in one working directory inside them; prints what each saw and how
#: many started in a standby.  argv: the exec root.
LATE = textwrap.dedent(
    """
    import json, os, sys
    from hermetic import *
    from hermetic.platforms.linux.standby import KEEPER

    root = sys.argv[1]
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet([root]),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    probe = (
        "for f in lib.h ../top.h sub/deep.h ../made; do "
        "( : >> $f ) 2>/dev/null && echo ok || echo no; done; rm -f ../made; pwd; "
        "grep -c '^Cap...:.0000000000000000$' /proc/self/status; "
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '[:space:]'; echo"
    )
    rounds = [["in"], ["in"], ["in", "top.h"], [], ["in/sub"], ["in"], ["nope"], ["in"]]
    seen = []
    with HermeticExecutor.create(spec).unwrap() as ex:
        for ro in rounds:
            r = ex.execute(
                ["sh", "-c", probe],
                cwd=os.path.join(root, "in"),
                read_only=[os.path.join(root, p) for p in ro],
            )
            seen.append(
                r.unwrap().stdout.decode().split()
                if r.is_ok()
                else f"{type(r.error).__name__}: {r.error}"
            )
            KEEPER.flush()
        taken = ex._prepared.standby.taken
    print(json.dumps({"seen": seen, "taken": taken}))
    """
)


@pytest.mark.parametrize("who", ["root", "user"])
def test_executions_with_read_only_paths_use_late_standbys(who, test_user, scratch):
    # A late standby waits before its working directory, with its
    # capabilities: each execution's own read-only paths are mounted at its
    # go, then the working directory (inside one of them) is entered and
    # every privilege dropped as in any sandbox.
    if who == "user" and test_user is None:
        pytest.skip("needs root to run as the unprivileged user")
    root = os.path.join(scratch, "root")
    os.makedirs(os.path.join(root, "in", "sub"))
    for rel in ("in/lib.h", "in/sub/deep.h", "top.h"):
        with open(os.path.join(root, rel), "w") as f:
            f.write("x\n")
    if who == "user":
        for d, dirs, files in os.walk(root):
            for name in [d, *(os.path.join(d, n) for n in dirs + files)]:
                os.lchown(name, test_user.pw_uid, test_user.pw_gid)
        code = f"import sys; sys.path[:0] = {sys.path!r}; sys.argv[1:] = [{root!r}]\n" + LATE
        p = python_as(test_user, code)
    else:
        p = subprocess.run(
            [sys.executable, "-c", LATE, root],
            capture_output=True,
            text=True,
            cwd="/",  # not a source tree: the installed package is imported
            timeout=120,
        )
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(p.stdout)
    seen = data["seen"]
    tail = [os.path.join(root, "in"), "5", "NoNewPrivs:1Seccomp:2"]
    # lib.h, ../top.h, sub/deep.h, ../made
    assert seen[0] == seen[1] == seen[5] == seen[7] == ["no", "ok", "no", "ok", *tail], seen
    assert seen[2] == ["no", "no", "no", "ok", *tail], seen
    assert seen[3] == ["ok", "ok", "ok", "ok", *tail], seen
    assert seen[4] == ["ok", "ok", "no", "ok", *tail], seen
    # A missing path fails the setup, naming it, in a standby as afresh.
    assert "SandboxError" in seen[6] and os.path.join(root, "nope") in seen[6], seen[6]
    # From the third on, each started in a standby, bar the one after an
    # execution without read-only paths (its standby was set up past them).
    assert data["taken"] >= 5, data
    for rel in ("in/lib.h", "in/sub/deep.h", "top.h"):
        with open(os.path.join(root, rel)) as f:
            assert f.read() == "x\n"
    assert sorted(os.listdir(root)) == ["in", "top.h"]
