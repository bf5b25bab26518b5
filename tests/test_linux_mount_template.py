"""The prepared mount namespace a root caller's actions copy
(hermetic/platforms/linux/template.py): each action still gets its own /proc
and /tmp, and a bound host path that changes is bound again."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import threading

import pytest

from hermetic import EnvSet, HermeticExecutor, HermeticSpecBuilder, PathSet, SandboxSpec
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux.standby import KEEPER
from hermetic.platforms.linux.template import host_path, split_ops

pytestmark = [
    pytest.mark.linux,
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="only a caller that is root on the host copies a prepared mount namespace",
    ),
]

ENV = EnvSet.minimal().with_var("PATH", "/usr/bin:/bin")


def _executor(inputs=(), outputs=(), temps=()):
    spec = SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *inputs)),
        outputs=PathSet(tuple(outputs)),
        temps=PathSet(tuple(temps)),
        environment=ENV,
    )
    ex = HermeticExecutor.create(spec).unwrap()
    assert ex._prepared.mount_template is not None  # the path under test
    return ex


def _sh(ex, script):
    r = ex.execute(["sh", "-c", script]).unwrap()
    return r.exit_code, r.stdout.decode(), r.stderr.decode()


def _namespaces_held():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("mnt:[")
        except OSError:
            pass
    return n


def test_the_split_keeps_proc_and_tmp_per_action(scratch):
    # scratch is below /tmp: its output is bound in the prepared namespace,
    # then copied into each action's fresh /tmp with scratch, the read-only
    # directory made to hold it (tests/test_linux_tmp_skeleton.py).
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()), outputs=PathSet((out,))
    )
    ops = linux_plan.build_ops(spec, make_nodes=True)
    prepared, action = split_ops(ops)
    kinds = [(op.kind, op.dst) for op in action]
    assert (linux_plan.OP_PROC, "/proc") in kinds
    assert (linux_plan.OP_TMPFS, "/tmp") in kinds
    grab = kinds.index((linux_plan.OP_GRAB, scratch))
    assert (
        grab
        < kinds.index((linux_plan.OP_TMPFS, "/tmp"))
        < kinds.index((linux_plan.OP_PLACE, scratch))
    )
    # Nothing of /proc is built once, except its mount point; every host
    # bind is made in the prepared namespace.
    assert [op.kind for op in prepared if op.dst.startswith("/proc")] == [linux_plan.OP_MKDIR]
    host_binds = [
        op.dst
        for op in ops
        if op.kind == linux_plan.OP_BIND and op.src.startswith(linux_plan.OLDROOT)
    ]
    assert host_binds and all(
        any(p.kind == linux_plan.OP_BIND and p.dst == d for p in prepared) for d in host_binds
    )
    assert not any(
        op.kind == linux_plan.OP_BIND and op.src.startswith(linux_plan.OLDROOT) for op in action
    )


def test_each_action_gets_its_own_tmp_and_proc(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    ex = _executor(outputs=[out])
    code, text, _ = _sh(ex, f"echo one > /tmp/left-behind; echo x > {out}/f; ls /proc")
    # pid 1, sh, ls: nothing of the host's processes
    assert code == 0 and max(int(n) for n in text.split() if n.isdigit()) <= 3
    code, text, _ = _sh(ex, "ls -A /tmp")
    assert code == 0
    # The output's mount point, and nothing the first action wrote.
    assert text.split() == [os.path.basename(scratch)]
    with open(os.path.join(out, "f")) as f:
        assert f.read() == "x\n"


def test_binds_below_tmp_keep_their_flags_in_the_copy(scratch):
    # Both are copied from the prepared namespace into each action's /tmp:
    # the output stays writable, the input read-only.
    out = os.path.join(scratch, "out")
    nested = os.path.join(scratch, "src")
    os.makedirs(nested)
    os.mkdir(out)
    with open(os.path.join(nested, "in.txt"), "w") as f:
        f.write("input\n")
    ex = _executor(inputs=[nested], outputs=[out])
    for _ in range(2):
        code, text, err = _sh(
            ex,
            f"echo made > {out}/made; cat {nested}/in.txt; "
            f"echo no > {nested}/planted || echo refused",
        )
        assert code == 0, err
        assert text == "input\nrefused\n"
        assert "Read-only file system" in err
    assert not os.path.exists(os.path.join(nested, "planted"))
    with open(os.path.join(out, "made")) as f:
        assert f.read() == "made\n"


def test_a_replaced_input_is_bound_again(scratch):
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    one = os.path.join(scratch, "one.conf")
    for path, text in ((os.path.join(src, "a"), "first\n"), (one, "old\n")):
        with open(path, "w") as f:
            f.write(text)
    ex = _executor(inputs=[src, one])
    assert _sh(ex, f"cat {src}/a {one}")[1] == "first\nold\n"
    # A directory removed and made again, a file replaced by rename (as
    # ldconfig replaces /etc/ld.so.cache).
    shutil.rmtree(src)
    os.mkdir(src)
    with open(os.path.join(src, "a"), "w") as f:
        f.write("second\n")
    with open(one + ".new", "w") as f:
        f.write("new\n")
    os.rename(one + ".new", one)
    assert _sh(ex, f"cat {src}/a {one}")[1] == "second\nnew\n"
    # In place changes need no rebuild: the bind shows the same inode.
    with open(os.path.join(src, "a"), "w") as f:
        f.write("third\n")
    assert _sh(ex, f"cat {src}/a")[1] == "third\n"


def test_a_replaced_output_receives_the_outputs(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    ex = _executor(outputs=[out])
    assert _sh(ex, f"echo 1 > {out}/f")[0] == 0
    shutil.rmtree(out)
    os.mkdir(out)
    assert _sh(ex, f"echo 2 > {out}/f")[0] == 0
    with open(os.path.join(out, "f")) as f:
        assert f.read() == "2\n"


def test_a_vanished_input_fails_naming_it(scratch):
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    ex = _executor(inputs=[src])
    assert _sh(ex, "true")[0] == 0
    os.rmdir(src)
    err = ex.execute(["true"]).unwrap_err()
    assert src in str(err)
    os.mkdir(src)
    assert _sh(ex, f"ls -d {src}")[1] == src + "\n"


def test_concurrent_actions_share_one_namespace_and_close_releases_it(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    # Executors of earlier tests that only the collector frees, and their
    # standby sandboxes (dropped by the standby thread).
    gc.collect()
    KEEPER.flush()
    before = _namespaces_held()
    ex = _executor(outputs=[out])
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(10):
            code, text, err = _sh(
                ex, f"echo {n}-{i} > /tmp/mine; cat /tmp/mine; echo > {out}/{n}-{i}"
            )
            if code != 0 or text != f"{n}-{i}\n":
                errors.append(f"{n}-{i}: {code} {text!r} {err!r}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(os.listdir(out)) == 40
    assert _namespaces_held() == before + 1
    ex.close()
    assert _namespaces_held() == before
    # A later execute prepares a new one.
    assert _sh(ex, "true")[0] == 0
    assert _namespaces_held() == before + 1
    ex.close()
    assert _namespaces_held() == before


def test_host_path_follows_the_deepest_mount():
    B, T, old = linux_plan.OP_BIND, linux_plan.OP_TMPFS, linux_plan.OLDROOT
    ops = (
        linux_plan.Op(T, "/tmp"),
        linux_plan.Op(B, "/work", f"{old}/srv/work"),
        linux_plan.Op(B, "/work/out", f"{old}/data/out"),
        linux_plan.Op(T, "/work/scratch"),  # the sandbox's own, below a bind
        linux_plan.Op(linux_plan.OP_MKDIR, "/work/made"),  # not a mount
        linux_plan.Op(B, "/tmp/in", f"{old}/data/in"),
    )
    assert host_path(ops, "/work/src/a") == "/srv/work/src/a"
    assert host_path(ops, "/work/out") == "/data/out"
    assert host_path(ops, "/work/out/x/y") == "/data/out/x/y"
    assert host_path(ops, "/work/outside") == "/srv/work/outside"  # whole components
    assert host_path(ops, "/work/out/../src") == "/srv/work/src"  # normalized first
    assert host_path(ops, "/work/made") == "/srv/work/made"
    assert host_path(ops, "/work/scratch/x") is None
    assert host_path(ops, "/tmp/x") is None
    assert host_path(ops, "/tmp/in/x") == "/data/in/x"
    assert host_path(ops, "/") is None
    # A host directory bound at the sandbox's root.
    assert host_path((linux_plan.Op(B, "/", f"{old}/srv/root"),), "/a/b") == "/srv/root/a/b"


def test_an_unchecked_lease_returns_the_identity_it_was_built_with(scratch):
    # A standby's lease skips looking at the host paths: the identity it
    # gets back is the one the namespace was built with, so take() sees a
    # path replaced since, and the next checked lease builds again.
    from hermetic.platforms.linux.template import MountTemplate, identity

    src = os.path.join(scratch, "src")
    os.mkdir(src)
    built = []

    def build():
        built.append(identity((src,)))
        return os.open("/", os.O_RDONLY | os.O_CLOEXEC)  # any descriptor

    template = MountTemplate((src,), build)
    with template.lease() as (_, first):
        assert first == identity((src,))
    os.rename(src, src + ".old")
    os.mkdir(src)
    with template.lease(check=False) as (_, unchecked):
        assert unchecked == first != identity((src,))
    assert len(built) == 1
    with template.lease() as (_, rebuilt):
        assert rebuilt == identity((src,))
    assert len(built) == 2
    template.close()


def test_the_namespace_is_built_as_the_executor_is_created(scratch):
    # The standby thread builds it in the background; the first action
    # leases that one instead of building its own.
    KEEPER.flush()
    ex = _executor()
    KEEPER.flush()
    template = ex._prepared.mount_template
    assert template.descriptors() == 1
    built = template._current
    assert _sh(ex, "true")[0] == 0
    assert template._current is built
    ex.close()
    assert template.descriptors() == 0


def test_prime_builds_once_and_never_after_close_or_beside_a_lease(scratch):
    from hermetic.platforms.linux.template import MountTemplate

    builds = []

    def build():
        builds.append(1)
        return os.open("/", os.O_RDONLY | os.O_CLOEXEC)  # any descriptor

    template = MountTemplate((scratch,), build)
    template.prime()
    template.prime()
    assert len(builds) == 1
    with template.lease():
        pass
    assert len(builds) == 1  # the lease took the primed one
    template.close()
    template.prime()
    assert len(builds) == 1 and template.descriptors() == 0
    with template.lease():  # a lease after close builds again...
        pass
    assert len(builds) == 2
    template.close()
    with template._lock:  # ...and prime defers to whoever holds the lock
        template.prime()
    assert len(builds) == 2


def test_a_failed_prime_leaves_the_error_to_the_lease(scratch):
    from hermetic.platforms.linux.template import MountTemplate

    def build():
        raise OSError(2, "the build failed", scratch)

    template = MountTemplate((scratch,), build)
    template.prime()  # swallowed: no one to tell yet
    with pytest.raises(OSError, match="the build failed"):
        with template.lease():
            pass


def test_a_background_build_keeps_the_plan_alive_after_the_executor_is_gone(scratch):
    # The build's plan points into C memory the executor made; an executor
    # dropped while its build waits on the standby thread must not free it.
    import weakref

    KEEPER.flush()
    hold, held = threading.Event(), threading.Event()
    KEEPER.submit(lambda: (held.set(), hold.wait(30)))
    try:
        assert held.wait(30)
        ex = _executor()
        memory = weakref.ref(ex._prepared._mem)
        template = weakref.ref(ex._prepared.mount_template)
        del ex
        gc.collect()
        junk = [bytearray(256) for _ in range(10000)]  # reuse freed memory, if any
        assert memory() is not None and template() is not None  # the queued build's
    finally:
        hold.set()
    assert KEEPER.flush()
    del junk
    gc.collect()
    assert memory() is None and template() is None  # and nothing kept after it


def test_a_fork_during_a_build_leaves_the_child_a_working_template(scratch):
    # A build holds the template's lock; a child forked meanwhile would
    # otherwise inherit it locked, and its first lease would hang.
    from hermetic.platforms.linux.template import MountTemplate

    building, finish = threading.Event(), threading.Event()

    def build():
        if threading.current_thread() is not threading.main_thread():
            building.set()
            finish.wait(30)
        return os.open("/", os.O_RDONLY | os.O_CLOEXEC)

    template = MountTemplate((scratch,), build)
    builder = threading.Thread(target=template.prime)
    builder.start()
    try:
        assert building.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: a lease builds its own, or hangs until the alarm
            signal.alarm(10)
            try:
                with template.lease() as (fd, _):
                    os._exit(0 if fd >= 0 else 1)
            except BaseException:
                os._exit(2)
    finally:
        finish.set()
        builder.join(30)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    template.close()


def test_a_descriptor_leaves_the_list_before_it_is_closed(scratch, monkeypatch):
    # os.close lets other threads run, and one may fork: the child must
    # never list a number that is already free (its finalizer would close
    # whatever file took it), so every close comes after the removal.
    from hermetic.platforms.linux import template as linux_template
    from hermetic.platforms.linux.template import MountTemplate

    built = []

    def build():
        built.append(os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
        return built[-1]

    templates = [MountTemplate((scratch,), build) for _ in range(2)]
    closed = []
    real_close = os.close

    def close(fd):
        closed.append(fd)
        assert all(ns.fd != fd for t in templates for ns in t._open), "closed while listed"
        real_close(fd)

    monkeypatch.setattr(linux_template.os, "close", close)
    templates[0].prime()
    with templates[0].lease():
        templates[0].close()  # retired once the lease ends
    templates[1].prime()
    templates[1]._finalizer()  # the finalizer's path
    # (Other threads may close files meanwhile: only these count.)
    assert sorted(fd for fd in closed if fd in built) == sorted(built) and len(built) == 2
    assert templates[0].descriptors() == templates[1].descriptors() == 0


def test_a_recorded_identity_sees_every_change_identity_sees(scratch):
    # A standby's paths are checked before each use by one C call
    # (Recorded.unchanged, csrc/linux/identity.c); it must agree with
    # comparing identity() again: a path replaced, removed, turned into a
    # link or another kind of file is a change, a path left alone is not.
    from hermetic.platforms.linux.template import Recorded, identity

    d = os.path.join(scratch, "d")
    f = os.path.join(scratch, "f")
    os.mkdir(d)
    with open(f, "w"):
        pass
    paths = (d, f, "/usr")
    ident = identity(paths)
    assert ident is not None
    recorded = Recorded(ident)
    assert recorded.identity == ident
    assert recorded.unchanged()
    assert Recorded(()).unchanged()

    def agree() -> bool:
        now = recorded.unchanged()
        assert now == (identity(paths) == ident)
        return now

    os.utime(f)  # a change of content or times is not one of identity
    assert agree()
    os.rename(f, f + ".old")
    with open(f, "w"):  # another inode under the same name
        pass
    assert not agree()
    os.unlink(f)
    os.rename(f + ".old", f)
    assert agree()
    os.rename(f, f + ".old")
    os.symlink(f + ".old", f)  # a link to the same inode: not followed
    assert not agree()
    os.unlink(f)
    assert not agree()  # missing
    os.rename(f + ".old", f)
    assert agree()
    os.rename(d, d + ".old")  # (kept: a freed inode number may come back)
    os.mkdir(d)
    assert not agree()
