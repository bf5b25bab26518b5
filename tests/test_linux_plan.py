"""The filesystem plan, checked as data (no sandbox needed)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from hermetic import PathSet, ResourceLimits, SandboxSpec, SpecError
from hermetic.platforms.linux import plan as lp

pytestmark = pytest.mark.linux


def ops_for(**kw):
    return lp.build_ops(SandboxSpec(resources=ResourceLimits.defaults(), **kw), kw.get("workdir"))


def test_parents_before_children_and_readonly_inputs(scratch):
    a = os.path.join(scratch, "a")
    os.makedirs(os.path.join(a, "b"))
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    ops = ops_for(inputs=PathSet.of(a, os.path.join(a, "b")), outputs=PathSet.of(out))
    binds = [(o.dst, o.flags) for o in ops if o.kind == lp.OP_BIND and o.dst.startswith(scratch)]
    # The directory made on the private /tmp to hold them is read-only (its
    # own tests: test_linux_tmp_skeleton.py); a/b is covered by a and
    # collapsed; the output is writable.
    assert binds == [(scratch, lp.BIND_RDONLY | lp.BIND_SYSTEM), (a, lp.BIND_RDONLY), (out, 0)]
    dsts = [o.dst for o in ops]
    for i, o in enumerate(ops):
        if o.kind == lp.OP_BIND and not o.dst.startswith("/proc/"):  # /proc's own tree
            parent = os.path.dirname(o.dst)
            assert parent == "/" or parent in dsts[:i]
    # Binds take their source from the host (the old root), except the
    # read-only and masked /proc entries and the read-only holder, which
    # come from inside.
    for o in ops:
        if o.kind == lp.OP_BIND and not o.dst.startswith("/proc/") and o.dst != scratch:
            assert o.src.startswith(lp.OLDROOT + "/"), o


def test_system_mounts_and_private_tmp():
    ops = ops_for()
    kinds = {(o.kind, o.dst) for o in ops}
    assert (lp.OP_PROC, "/proc") in kinds
    assert (lp.OP_TMPFS, "/dev") in kinds
    assert (lp.OP_TMPFS, "/tmp") in kinds
    assert (lp.OP_BIND, "/dev/null") in kinds
    assert (lp.OP_SYMLINK, "/dev/fd") in kinds
    assert (lp.OP_BIND, "/proc/sys") in kinds
    # pid 1 (the caller's memory) hidden as a whole, not file by file.
    assert (lp.OP_TMPFS, "/proc/1") in kinds
    assert not any(dst.startswith("/proc/1/") for _, dst in kinds)
    # /dev is made read-only last, after every device and link is in place.
    assert (ops[-1].kind, ops[-1].dst) == (lp.OP_REMOUNT_RO, "/dev")


def test_declared_tmp_replaces_private_tmp():
    ops = ops_for(temps=PathSet.of("/tmp"))
    assert (lp.OP_TMPFS, "/tmp") not in {(o.kind, o.dst) for o in ops}
    assert (lp.OP_BIND, "/tmp") in {(o.kind, o.dst) for o in ops}


def test_paths_in_sandbox_owned_dirs_are_refused():
    with pytest.raises(SpecError, match="/proc"):
        ops_for(inputs=PathSet.of("/proc/self"))
    with pytest.raises(SpecError, match="/dev"):
        ops_for(inputs=PathSet.of("/dev/null"))


def test_missing_mount_point_inside_input_is_named(scratch):
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    with pytest.raises(SpecError, match="missing"):
        ops_for(inputs=PathSet.of(src), workdir=os.path.join(src, "missing"))


def test_root_symlinks_follow_visibility():
    if not os.path.islink("/bin"):
        pytest.skip("this host's /bin is not a symlink (not a merged-/usr system)")
    links = {o.dst: o.src for o in ops_for(inputs=PathSet.of("/usr")) if o.kind == lp.OP_SYMLINK}
    assert links["/bin"] == os.readlink("/bin")
    assert "/bin" not in {o.dst for o in ops_for() if o.kind == lp.OP_SYMLINK}


def test_devices_are_made_or_bound():
    spec = SandboxSpec()
    made = {op.dst: op for op in lp.build_ops(spec, make_nodes=True) if op.kind == lp.OP_MKNOD}
    null = os.stat("/dev/null")
    assert made["/dev/null"].mode == null.st_mode
    assert made["/dev/null"].flags == (os.minor(null.st_rdev) | os.major(null.st_rdev) << 8)
    dev = [op for op in lp.build_ops(spec, make_nodes=True) if op.dst == "/dev"]
    assert all(
        not op.flags & lp.MS_NODEV for op in dev if op.kind in (lp.OP_TMPFS, lp.OP_REMOUNT_RO)
    )
    bound = lp.build_ops(spec)  # a user's sandbox cannot mknod: binds, nodev tmpfs
    assert not any(op.kind == lp.OP_MKNOD for op in bound)
    assert any(op.kind == lp.OP_BIND and op.dst == "/dev/null" for op in bound)


def test_the_sandbox_devices_work_as_root_and_as_a_user(runner):
    from test_linux_isolation import probe, spec_for

    out = probe(
        runner,
        spec_for(),
        """
import os, stat
st = os.stat("/dev/null")
print(stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev), oct(st.st_mode & 0o777))
open("/dev/null", "w").write("x")
print(len(open("/dev/urandom", "rb").read(8)))
""",
    )
    assert out.text.split() == ["True", "1", "3", "0o666", "8"]


def test_root_symlinks_are_read_again_when_the_root_changes(scratch):
    # Kept per executor created, keyed on the directory's mtime: a link
    # added, retargeted (renamed over) or removed is seen by the next plan.
    os.mkdir(os.path.join(scratch, "usr"))
    os.symlink("usr/bin", os.path.join(scratch, "bin"))
    first = lp.host_root_links(scratch)
    assert first == (("/bin", os.path.join(scratch, "usr", "bin"), "usr/bin"),)
    assert lp.host_root_links(scratch) is first  # unchanged: not read again
    os.symlink("usr/lib", os.path.join(scratch, "lib"))
    assert [p for p, _, _ in lp.host_root_links(scratch)] == ["/bin", "/lib"]
    os.symlink("usr/sbin", os.path.join(scratch, "new"))
    os.rename(os.path.join(scratch, "new"), os.path.join(scratch, "bin"))
    assert dict((p, t) for p, _, t in lp.host_root_links(scratch))["/bin"] == "usr/sbin"
    os.unlink(os.path.join(scratch, "lib"))
    os.unlink(os.path.join(scratch, "bin"))
    assert lp.host_root_links(scratch) == ()


def test_system_entries_are_kept_until_dev_changes(monkeypatch):
    # Kept per executor created; equal to a fresh look, not shared with the
    # caller's list, and looked at again once /dev's mtime moves.
    monkeypatch.setattr(lp, "_SYSTEM", {})
    for make_nodes in (False, True):
        fresh = lp._system_entries(False, make_nodes)
        first = lp._system([], make_nodes)
        assert first == fresh
        first.append(None)
        assert lp._system([], make_nodes) == fresh
    calls = []
    monkeypatch.setattr(lp, "_system_entries", lambda *a: calls.append(a) or [])
    lp._system([], True)
    assert calls == []
    real = os.stat

    def moved(path, *a, **kw):
        st = real(path, *a, **kw)
        if path == "/dev":
            return SimpleNamespace(
                st_dev=st.st_dev, st_ino=st.st_ino, st_mtime_ns=st.st_mtime_ns + 1
            )
        return st

    monkeypatch.setattr(lp.os, "stat", moved)
    lp._system([], True)
    assert calls == [(False, True)]


def test_made_device_nodes_follow_a_change_of_the_host_node(monkeypatch):
    # A chmod of /dev/null changes its own ctime, not /dev's mtime: nodes
    # made with mknod take their mode from the host's, so they are made
    # again; bound nodes (make_nodes False) show the host's node itself.
    monkeypatch.setattr(lp, "_SYSTEM", {})
    lp._system([], True)
    lp._system([], False)
    calls = []
    monkeypatch.setattr(lp, "_system_entries", lambda *a: calls.append(a) or [])
    real = os.stat

    def chmodded(path, *a, **kw):
        st = real(path, *a, **kw)
        if path == "/dev/null":
            return SimpleNamespace(
                st_ino=st.st_ino,
                st_mode=st.st_mode & ~0o002,
                st_rdev=st.st_rdev,
                st_ctime_ns=st.st_ctime_ns + 1,
            )
        return st

    monkeypatch.setattr(lp.os, "stat", chmodded)
    lp._system([], False)
    assert calls == []
    lp._system([], True)
    assert calls == [(False, True)]
