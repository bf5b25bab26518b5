"""A write under /tmp beside the declared paths fails instead of vanishing.

The sandbox's /tmp is a private tmpfs.  Declared paths below it need
directories there to hold them (``/tmp/ws`` for ``/tmp/ws/in``): the
sandbox makes them, and a write into one would land on the private tmpfs
and be gone with the sandbox, while the action exits 0.  Those directories
are read-only (plan.py, ``_seal_tmp_holders``): such a write fails with
EROFS, as it does anywhere else outside the outputs and temps.  The private
/tmp itself, and the declared outputs and temps below it, stay writable.
Without namespaces (Landlock-only) there is no private /tmp: the host's
directories are there, and Landlock refuses the write (EACCES).

The scratch directories these tests make are under the host's /tmp
(``tempfile``), so every layout here is one a newcomer gets from
``mkdir -p /tmp/ws/in``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from hermetic import HermeticExecutor, SandboxSpec
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux.template import split_ops

pytestmark = pytest.mark.linux

PY = "/usr/bin/python3"

#: Prints, per path given, "ok" or the errno name of a write there, one a
#: line; then the working directory.
WRITES = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        if path.endswith("/"):
            os.mkdir(path.rstrip("/"))
        else:
            with open(path, "w") as f:
                f.write("x")
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
print(os.getcwd())
"""


def _spec(inputs=(), outputs=(), temps=(), workdir=None) -> SandboxSpec:
    from test_linux_isolation import spec_for

    return spec_for(inputs=inputs, outputs=outputs, temps=temps, workdir=workdir)


def _writes(runner, spec, paths):
    out = runner.run(spec, [PY, "-c", WRITES, *paths])
    assert out.error is None, out.error
    assert out.exit_code == 0, out.stderr
    lines = out.text.split("\n")
    return lines[: len(paths)], lines[len(paths)]


def _tree(root):
    """Every path below ``root`` on the host, relative."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(top, name), root))
    return sorted(found)


def _layout(scratch, own):
    """A workspace under /tmp: an input and an output side by side, a file
    input, a temp three levels down, each in directories the sandbox makes.
    The host's directories are writable by anyone, so that only the sandbox
    can be what refuses a write (the Landlock-only mode sees them)."""
    ws = os.path.join(scratch, "ws")
    paths = {
        "in": os.path.join(ws, "in"),
        "out": os.path.join(ws, "out"),
        "temp": os.path.join(ws, "deep", "a", "b", "temp"),
        "file": os.path.join(ws, "config.txt"),
    }
    for key in ("in", "out", "temp"):
        os.makedirs(paths[key])
    with open(paths["file"], "w") as f:
        f.write("setting\n")
    for d in (scratch, ws, *(os.path.join(ws, p) for p in ("deep", "deep/a", "deep/a/b"))):
        os.chmod(d, 0o777)
    own(paths["out"])
    own(paths["temp"])
    spec = _spec(
        inputs=[paths["in"], paths["file"]],
        outputs=[paths["out"]],
        temps=[paths["temp"]],
        workdir=ws,
    )
    return ws, paths, spec


def test_a_write_beside_declared_paths_under_tmp_fails_and_leaves_nothing(fs_runner, scratch):
    runner = fs_runner
    ws, paths, spec = _layout(scratch, runner.own)
    before = _tree(scratch)
    stray = [
        os.path.join(scratch, "stray"),  # the top-most directory made
        os.path.join(ws, "stray"),  # -C's directory, beside an input and an output
        os.path.join(ws, "deep", "stray"),
        os.path.join(ws, "deep", "a", "b", "stray"),  # beside the temp, at depth
        os.path.join(ws, "newdir") + "/",
        "relative-stray",  # in the working directory, a made one
    ]
    results, cwd = _writes(runner, spec, stray)
    assert results == [runner.refused] * len(stray)
    # The action could enter the read-only directory as its working one.
    assert cwd == ws
    assert _tree(scratch) == before


def test_declared_outputs_and_temps_under_tmp_stay_writable(fs_runner, scratch):
    runner = fs_runner
    ws, paths, spec = _layout(scratch, runner.own)
    results, _ = _writes(
        runner,
        spec,
        [
            os.path.join(paths["out"], "made"),
            os.path.join(paths["out"], "sub") + "/",
            os.path.join(paths["temp"], "made"),
            os.path.join(paths["in"], "refused"),
            paths["file"],
        ],
    )
    assert results == ["ok", "ok", "ok", runner.refused, runner.refused]
    assert sorted(os.listdir(paths["out"])) == ["made", "sub"]
    assert os.listdir(paths["in"]) == []
    with open(paths["file"]) as f:
        assert f.read() == "setting\n"


def test_a_declared_path_at_tmp_x_and_nested_declarations_keep_their_rights(fs_runner, scratch):
    # scratch is /tmp/x itself: declared, it is its own mount (nothing is
    # made to hold it), with a temp nested in it; a sibling directory the
    # sandbox makes holds an output in a temp.
    runner = fs_runner
    nested = os.path.join(scratch, "t")
    os.mkdir(nested)
    holder = scratch + "-holder"
    temp = os.path.join(holder, "temp")
    inner = os.path.join(temp, "out")
    os.makedirs(inner)
    try:
        os.chmod(holder, 0o777)
        for d in (scratch, nested, temp, inner):
            runner.own(d)
        spec = _spec(outputs=[scratch, inner], temps=[nested, temp])
        results, _ = _writes(
            runner,
            spec,
            [
                os.path.join(scratch, "made"),
                os.path.join(nested, "made"),
                os.path.join(temp, "made"),
                os.path.join(inner, "made"),
                os.path.join(holder, "stray"),
            ],
        )
        assert results == ["ok", "ok", "ok", "ok", runner.refused]
        assert _tree(scratch) == ["made", "t", "t/made"]
        assert _tree(holder) == ["temp", "temp/made", "temp/out", "temp/out/made"]
    finally:
        shutil.rmtree(holder)


def test_the_private_tmp_stays_scratch_space(runner, scratch):
    # With nothing declared under /tmp, and beside declared paths there
    # (the private /tmp itself is not a directory the sandbox makes to hold
    # them).  A working directory made alone holds nothing declared: it is
    # scratch space like the rest.  (Landlock-only has no private /tmp.)
    ws = os.path.join(scratch, "ws")
    out = os.path.join(ws, "out")
    os.makedirs(out)
    runner.own(out)
    writes = ["/tmp/scratch", "/tmp/a/", "/tmp/a/b", "/tmp/tmp.XXXX/"]
    work = scratch + "-work"  # made in the sandbox only
    for spec in (_spec(), _spec(workdir=work), _spec(outputs=[out])):
        paths = [*writes, "relative"] if spec.workdir else writes
        results, where = _writes(runner, spec, paths)
        assert results == ["ok"] * len(paths), (spec.outputs, spec.workdir)
        assert where == (spec.workdir or "/")
    assert _tree(scratch) == ["ws", "ws/out"]
    assert not os.path.exists(work)


def _holder_binds(ops):
    return [
        op
        for op in ops
        if op.kind == linux_plan.OP_BIND and op.src == op.dst and op.dst.startswith("/tmp/")
    ]


def test_each_holder_is_sealed_after_its_mount_points_and_before_its_mounts(scratch):
    ws, paths, spec = _layout(scratch, lambda p: p)
    other = os.path.join(scratch + "-other", "in")
    os.makedirs(other)
    try:
        spec = _spec(
            inputs=[paths["in"], paths["file"], other],
            outputs=[paths["out"]],
            temps=[paths["temp"]],
        )
        ops = linux_plan.build_ops(spec, os.path.join(ws, "work"))
    finally:
        os.rmdir(other)
        os.rmdir(os.path.dirname(other))
    seals = _holder_binds(ops)
    # One per top-most directory made on /tmp, read-only, from inside.
    assert [op.dst for op in seals] == [scratch, os.path.dirname(other)]
    assert all(op.flags == linux_plan.BIND_RDONLY | linux_plan.BIND_SYSTEM for op in seals)
    for seal in seals:
        at = ops.index(seal)
        within = [(i, op) for i, op in enumerate(ops) if op.dst.startswith(seal.dst + "/")]
        assert within
        for i, op in within:
            if op.kind in (linux_plan.OP_MKDIR, linux_plan.OP_MKFILE):
                assert i < at, op  # made while it is writable
            else:
                assert i > at, op  # mounted once it is read-only
        assert (linux_plan.OP_MKDIR, seal.dst) in [(op.kind, op.dst) for op in ops[:at]]


def test_no_holder_is_sealed_where_nothing_is_made_to_hold_a_declared_path(scratch):
    inside = os.path.join(scratch, "in")
    os.mkdir(inside)
    # Nothing declared under /tmp; a working directory alone; the declared
    # path is /tmp/x itself; /tmp declared (the host's, bound).
    for spec, workdir in (
        (_spec(), None),
        (_spec(), os.path.join(scratch, "work")),
        (_spec(outputs=[scratch]), None),
        (_spec(inputs=[inside], temps=["/tmp"]), None),
    ):
        assert _holder_binds(linux_plan.build_ops(spec, workdir)) == []


def test_a_prepared_namespaces_copy_brings_each_holder_as_one_tree(scratch):
    # A root caller's actions copy a prepared namespace and get a fresh
    # /tmp.  The prepared namespace seals the holder after its mount points
    # and before its binds; each action copies the sealed tree, binds
    # included, and attaches it at the one mount point it makes.
    ws, paths, spec = _layout(scratch, lambda p: p)
    split = split_ops(linux_plan.build_ops(spec, ws, make_nodes=True))
    assert split is not None
    prepared, action = split
    kinds = [(op.kind, op.dst) for op in prepared]
    seal = kinds.index((linux_plan.OP_BIND, scratch))
    assert kinds.index((linux_plan.OP_MKDIR, paths["in"])) < seal
    assert kinds.index((linux_plan.OP_MKFILE, paths["file"])) < seal
    for key in ("in", "out", "file", "temp"):
        assert seal < kinds.index((linux_plan.OP_BIND, paths[key]))
    below = [op for op in action if op.dst.startswith(scratch + "/")]
    assert below == []
    kinds = [(op.kind, op.dst) for op in action]
    assert (
        kinds.index((linux_plan.OP_GRAB, scratch))
        < kinds.index((linux_plan.OP_TMPFS, "/tmp"))
        < kinds.index((linux_plan.OP_MKDIR, scratch))
        < kinds.index((linux_plan.OP_PLACE, scratch))
    )


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the variants below are a root caller's")
@pytest.mark.parametrize(("template", "standby"), [(True, True), (True, False), (False, False)])
def test_every_way_a_root_callers_sandbox_is_made_seals_the_holders(
    scratch, monkeypatch, template, standby
):
    # Copied from the prepared mount namespace (the default), with and
    # without a standby sandbox set up ahead, or built per action.
    from hermetic.platforms.linux import prepared
    from hermetic.platforms.linux.standby import KEEPER

    monkeypatch.setattr(prepared, "MOUNT_TEMPLATE", template)
    monkeypatch.setattr(prepared, "STANDBY", standby)
    ws = os.path.join(scratch, "ws")
    out = os.path.join(ws, "out")
    os.makedirs(out)
    spec = _spec(outputs=[out], workdir=ws)
    with HermeticExecutor.create(spec).unwrap() as ex:
        assert (ex._prepared.mount_template is not None) == template
        for i in range(4):
            r = ex.execute(
                [PY, "-c", WRITES, os.path.join(ws, "stray"), os.path.join(out, f"f{i}")]
            ).unwrap()
            assert r.stdout.decode().split() == ["EROFS", "ok", ws], r.stderr
            KEEPER.flush()
        if standby:
            assert ex._prepared.standby.taken >= 1
    assert _tree(scratch) == ["ws", "ws/out", *(f"ws/out/f{i}" for i in range(4))]
