"""Per-action inputs on one executor through a staging directory.

``stage_inputs`` itself on the file system, then the sandbox: each action of
one reused executor sees exactly what was staged for it, read-only, as root
(the prepared mount namespace is not built again) and as an unprivileged
caller (whose root is built per action).
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import os
import shutil
import stat
import sys
import textwrap

import pytest
from conftest import python_as

from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    PathSet,
    ResourceLimits,
    SandboxSpec,
    SpecError,
    stage_inputs,
)
from hermetic.core import staging
from hermetic.platforms.linux.standby import KEEPER

ENV = EnvSet.minimal().with_var("PATH", "/usr/bin:/bin")


def _tree(root: str) -> dict[str, str]:
    """relative path -> content, for every file below root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path) as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture
def sources(scratch):
    src = os.path.join(scratch, "src")
    _write(os.path.join(src, "a.c"), "a\n")
    _write(os.path.join(src, "b.c"), "b\n")
    _write(os.path.join(src, "inc", "x.h"), "x\n")
    _write(os.path.join(src, "inc", "sub", "y.h"), "y\n")
    stage = os.path.join(scratch, "stage")
    os.mkdir(stage)
    return src, stage


# -- stage_inputs on the file system -------------------------------------------


def test_staging_leaves_exactly_the_inputs_in_the_same_directory(sources):
    src, stage = sources
    # Held open: an inode in use cannot be reused, so the same number
    # below means the same directory (not one removed and made again).
    held = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write(os.path.join(stage, "old", "left.txt"), "from an earlier action\n")
        stage_inputs(stage, {"main.c": f"{src}/a.c", "include": f"{src}/inc"})
        assert _tree(stage) == {"main.c": "a\n", "include/x.h": "x\n", "include/sub/y.h": "y\n"}
        assert os.stat(stage).st_ino == os.fstat(held).st_ino
        # A hard link: no data copied.
        assert os.stat(f"{stage}/main.c").st_ino == os.stat(f"{src}/a.c").st_ino
        stage_inputs(stage, {"deep/er/b.c": f"{src}/b.c"})
        assert _tree(stage) == {"deep/er/b.c": "b\n"}
        stage_inputs(stage, {})
        assert os.listdir(stage) == []
        assert os.stat(stage).st_ino == os.fstat(held).st_ino
    finally:
        os.close(held)


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EPERM, None])
def test_a_copy_has_the_data_bits_and_time_but_never_setuid(sources, monkeypatch, refusal):
    src, stage = sources
    tool = f"{src}/tool"
    shutil.copy(f"{src}/a.c", tool)
    os.chmod(tool, 0o6751)
    os.utime(tool, ns=(1_000_000_000, 2_000_000_000))
    if refusal is not None:

        def refused(*args, **kwargs):
            raise OSError(refusal, os.strerror(refusal))

        monkeypatch.setattr(staging.os, "link", refused)
    # A link refused (another file system, fs.protected_hardlinks), or
    # copies asked for.
    stage_inputs(stage, {"tool": tool, "a.c": f"{src}/a.c"}, link=refusal is not None)
    st = os.stat(f"{stage}/tool")
    assert st.st_ino != os.stat(tool).st_ino  # a copy
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime_ns == 2_000_000_000
    assert _tree(stage) == {"tool": "a\n", "a.c": "a\n"}


def test_symlinks_the_caller_names_are_followed_those_below_are_staged_as_symlinks(
    sources, scratch
):
    src, stage = sources
    secret = _write(os.path.join(scratch, "secret", "key"), "TOPSECRET\n")
    os.symlink(f"{src}/a.c", f"{src}/link.c")
    os.symlink(f"{src}/inc", f"{src}/inc-link")
    # Below a directory input, a symlink out of it (an earlier action could
    # have left one in its outputs) must not bring the host's file in.
    os.symlink(os.path.dirname(secret), f"{src}/inc/out")
    os.symlink("../../secret/key", f"{src}/inc/rel.h")
    os.symlink(".", f"{src}/inc/current")
    stage_inputs(stage, {"l.c": f"{src}/link.c", "i": f"{src}/inc-link"})
    assert not os.path.islink(f"{stage}/l.c")
    assert os.stat(f"{stage}/l.c").st_ino == os.stat(f"{src}/a.c").st_ino
    assert not os.path.islink(f"{stage}/i")
    assert os.readlink(f"{stage}/i/out") == os.path.dirname(secret)
    assert os.readlink(f"{stage}/i/rel.h") == "../../secret/key"
    assert os.readlink(f"{stage}/i/current") == "."
    # Nothing of the secret's was linked or copied into the stage.
    found = [os.lstat(os.path.join(d, f)).st_ino for d, _, fs in os.walk(stage) for f in fs]
    assert os.stat(secret).st_ino not in found


def test_what_is_not_a_file_directory_or_symlink_is_refused(sources):
    src, stage = sources
    os.mkfifo(f"{src}/inc/pipe")
    os.symlink(f"{src}/inc/pipe", f"{src}/pipe-link")
    for inputs in ({"p": f"{src}/inc/pipe"}, {"i": f"{src}/inc"}, {"p": f"{src}/pipe-link"}):
        with pytest.raises(SpecError) as e:
            stage_inputs(stage, inputs)
        assert f"{src}/inc/pipe" in str(e.value) or f"{src}/pipe-link" in str(e.value)
        assert "neither a regular file, a directory nor a symlink" in str(e.value)


def test_a_file_replaced_by_a_fifo_after_the_check_is_refused(sources, monkeypatch):
    src, stage = sources
    real = staging._clear

    def swap_then_clear(dfd):
        # Between the look at every source and the staging: the moment a
        # racing writer would pick.
        os.unlink(f"{src}/b.c")
        os.mkfifo(f"{src}/b.c")
        real(dfd)

    monkeypatch.setattr(staging, "_clear", swap_then_clear)
    with pytest.raises(SpecError) as e:
        stage_inputs(stage, {"a.c": f"{src}/a.c", "b.c": f"{src}/b.c"})
    assert f"{src}/b.c" in str(e.value)
    monkeypatch.setattr(staging, "_clear", real)
    assert os.listdir(stage) == []  # left empty, not half filled


def test_a_directory_swapped_for_a_symlink_meanwhile_stages_nothing_from_it(
    sources, scratch, monkeypatch
):
    src, stage = sources
    secret = _write(os.path.join(scratch, "secret", "x.h"), "TOPSECRET\n")
    real = staging._clear

    def swap_then_clear(dfd):
        # Between the look at every source and the staging: a writer of the
        # source tree puts a symlink to a host directory where one was.
        if not os.path.islink(f"{src}/inc/sub"):
            shutil.rmtree(f"{src}/inc/sub")
            os.symlink(os.path.dirname(secret), f"{src}/inc/sub")
        real(dfd)

    monkeypatch.setattr(staging, "_clear", swap_then_clear)
    with pytest.raises(SpecError) as e:
        stage_inputs(stage, {"inc": f"{src}/inc"})
    assert f"{src}/inc/sub" in str(e.value)
    monkeypatch.setattr(staging, "_clear", real)
    assert os.listdir(stage) == []


def test_trees_deeper_than_the_bound_are_refused_and_deep_ones_emptied(sources, scratch):
    src, stage = sources
    deep = os.path.join(scratch, "deep")
    path = deep
    for _ in range(staging.MAX_DEPTH - 2):
        path = os.path.join(path, "d")
    _write(os.path.join(path, "leaf"), "leaf\n")
    stage_inputs(stage, {"t": deep})  # MAX_DEPTH - 1 levels below the stage
    stage_inputs(stage, {"a.c": f"{src}/a.c"})  # emptied without recursion
    assert _tree(stage) == {"a.c": "a\n"}
    os.mkdir(os.path.join(path, "d"))
    os.mkdir(os.path.join(path, "d", "d"))
    with pytest.raises(SpecError) as e:
        stage_inputs(stage, {"t": deep})
    assert f"deeper than {staging.MAX_DEPTH} levels" in str(e.value)
    assert _tree(stage) == {"a.c": "a\n"}  # refused before anything was touched


def test_a_failure_after_the_directory_was_touched_leaves_it_empty(sources):
    src, stage = sources
    stage_inputs(stage, {"kept.c": f"{src}/a.c"})
    locked = _write(f"{src}/inc/locked.h", "l\n")
    os.chmod(locked, 0)
    if os.geteuid() == 0:
        # Root reads any file: a vanished source is the failure instead.
        os.unlink(locked)
        os.symlink("nowhere", locked)
    inputs = {"a.c": f"{src}/a.c", "inc": f"{src}/inc", "z.c": f"{src}/b.c"}
    if os.geteuid() == 0:
        stage_inputs(stage, inputs)  # a dangling symlink below is staged as one
        assert os.readlink(f"{stage}/inc/locked.h") == "nowhere"
    else:
        with pytest.raises(SpecError) as e:
            stage_inputs(stage, inputs)
        assert locked in str(e.value)
        assert os.listdir(stage) == []


@pytest.mark.parametrize(
    ("inputs", "culprit"),
    [
        ({"/abs.c": "SRC/a.c"}, "/abs.c"),
        ({"../up.c": "SRC/a.c"}, "../up.c"),
        ({"a/../../up.c": "SRC/a.c"}, "a/../../up.c"),
        ({".": "SRC/a.c"}, "'.'"),
        ({"": "SRC/a.c"}, "''"),
        ({"nul\0.c": "SRC/a.c"}, "nul"),
        ({"a.c": "SRC/missing.c"}, "SRC/missing.c"),
        ({"a.c": "SRC/a\0.c"}, "a.c"),
        ({"d": "SRC/inc", "d/x.h": "SRC/b.c"}, "d/x.h"),
        ({"d/x.h": "SRC/b.c", "d": "SRC/inc"}, "'d'"),
        ({"x" * 256: "SRC/a.c"}, "x" * 256),
        ({"bad\ud800": "SRC/a.c"}, "bad"),
        ({"all": "STAGE/.."}, "STAGE/.."),
        ({"self": "STAGE"}, "STAGE"),
        ({"kept": "STAGE/kept.c"}, "STAGE/kept.c"),
    ],
)
def test_bad_inputs_are_refused_naming_them_before_anything_is_touched(sources, inputs, culprit):
    src, stage = sources
    stage_inputs(stage, {"kept.c": f"{src}/a.c"})

    def fill(text: str) -> str:
        return text.replace("SRC", src).replace("STAGE", stage)

    inputs = {k: fill(v) for k, v in inputs.items()}
    with pytest.raises(SpecError) as e:
        stage_inputs(stage, inputs)
    assert fill(culprit) in str(e.value)
    assert _tree(stage) == {"kept.c": "a\n"}


def test_inputs_must_be_a_mapping(sources):
    src, stage = sources
    for bad in (None, [("a.c", f"{src}/a.c")]):
        with pytest.raises(SpecError) as e:
            stage_inputs(stage, bad)  # type: ignore[arg-type]
        assert "inputs must map" in str(e.value)


def test_the_staging_directory_must_exist_and_not_be_a_symlink(sources, scratch):
    src, stage = sources
    os.symlink(stage, f"{scratch}/stage-link")
    for bad in (f"{scratch}/nowhere", f"{scratch}/stage-link", f"{src}/a.c"):
        with pytest.raises(SpecError) as e:
            stage_inputs(bad, {})
        assert bad in str(e.value)


def test_directories_keep_their_bits_and_are_emptied_again(sources):
    src, stage = sources
    os.chmod(f"{src}/inc/sub", 0o550)
    try:
        stage_inputs(stage, {"inc": f"{src}/inc"})
        # The source's bits, and the owner's (the caller's) to empty it.
        assert stat.S_IMODE(os.stat(f"{stage}/inc/sub").st_mode) == 0o750
        assert _tree(stage) == {"inc/x.h": "x\n", "inc/sub/y.h": "y\n"}
        stage_inputs(stage, {"a.c": f"{src}/a.c"})
        assert _tree(stage) == {"a.c": "a\n"}
    finally:
        os.chmod(f"{src}/inc/sub", 0o755)


# -- in the sandbox ------------------------------------------------------------

#: Each action: what was staged for it, and what it must see.
ACTIONS = [
    {"main.c": "a.c", "include": "inc"},
    {"main.c": "b.c"},
    {"other.c": "a.c", "include": "inc"},
]
#: What the action prints: the staged tree, its files, whether it could
#: write into them, and whether it sees the host's source directory.
SCRIPT = (
    "find . -type f | sort; cat $(find . -type f | sort); "
    "echo x >> $(find . -type f | head -n 1) 2>/dev/null && echo WROTE; "
    "ls {src} >/dev/null 2>&1 && echo SEES-SOURCES; "
    "cat $(find . -type f | sort) > {out}/seen-{n}"
)


def _expected(i: int, src: str) -> str:
    files = []
    for name, what in ACTIONS[i].items():
        if what == "inc":
            files += [(f"./{name}/sub/y.h", "y\n"), (f"./{name}/x.h", "x\n")]
        else:
            files.append((f"./{name}", "a\n" if what == "a.c" else "b\n"))
    files.sort()
    return "".join(f"{p}\n" for p, _ in files) + "".join(t for _, t in files)


def _spec(stage: str, out: str, **resources: int) -> SandboxSpec:
    return SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), stage)),
        outputs=PathSet((out,)),
        environment=ENV,
        workdir=stage,
        resources=dataclasses.replace(ResourceLimits(), **resources),
    )


@pytest.mark.root
def test_each_action_of_one_executor_sees_only_what_was_staged_for_it(sources, scratch):
    if os.geteuid() != 0:
        pytest.skip("the root half: the prepared mount namespace (the unprivileged one is below)")
    src, stage = sources
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    gc.collect()
    KEEPER.flush()
    ex = HermeticExecutor.create(_spec(stage, out)).unwrap()
    template = ex._prepared.mount_template
    assert template is not None
    assert ex.execute(["true"]).unwrap().exit_code == 0
    # The same prepared namespace throughout: the directory is emptied and
    # filled, never made again, so nothing is built after the first.
    builds: list[int] = []
    build = template._build
    template._build = lambda: builds.append(1) or build()
    for n in range(9):
        i = n % len(ACTIONS)
        stage_inputs(stage, {k: f"{src}/{v}" for k, v in ACTIONS[i].items()})
        r = ex.execute(["sh", "-c", SCRIPT.format(src=src, out=out, n=n)]).unwrap()
        assert r.exit_code == 0, r.stderr
        assert r.stdout.decode() == _expected(i, src)
        KEEPER.flush()
    assert builds == []
    assert ex._prepared.standby is not None and ex._prepared.standby.taken >= 5
    assert _tree(src) == {"a.c": "a\n", "b.c": "b\n", "inc/x.h": "x\n", "inc/sub/y.h": "y\n"}
    assert len(os.listdir(out)) == 9
    ex.close()


@pytest.mark.unprivileged
def test_staged_inputs_as_an_unprivileged_caller(sources, scratch, test_user):
    if test_user is None:
        pytest.skip("the suite runs unprivileged: the test above covers this caller")
    src, stage = sources
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    for path in (stage, out):
        shutil.chown(path, test_user.pw_uid, test_user.pw_gid)
    code = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = {sys.path!r}
        from hermetic import *
        from test_linux_staging import ACTIONS, SCRIPT, _spec
        # No cgroup for this user: only the rlimits.
        spec = _spec({stage!r}, {out!r}, max_memory_bytes=0, max_cpu_time_ms=0)
        ex = HermeticExecutor.create(spec).unwrap()
        seen = []
        for n in range(6):
            i = n % len(ACTIONS)
            stage_inputs({stage!r}, {{k: f"{src}/{{v}}" for k, v in ACTIONS[i].items()}})
            r = ex.execute(["sh", "-c", SCRIPT.format(src={src!r}, out={out!r}, n=n)]).unwrap()
            seen.append([r.exit_code, r.stdout.decode(), r.stderr.decode()])
        print(json.dumps({{"seen": seen, "template": ex._prepared.mount_template is not None}}))
        ex.close()
    """)
    p = python_as(test_user, code, cwd=os.path.dirname(__file__))
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert not data["template"]
    for n, (code_, stdout, stderr) in enumerate(data["seen"]):
        assert code_ == 0, stderr
        assert stdout == _expected(n % len(ACTIONS), src)
    assert len(os.listdir(out)) == 6


@pytest.mark.root
def test_a_symlink_out_of_a_staged_directory_leads_nowhere_in_the_sandbox(sources, scratch):
    if os.geteuid() != 0:
        pytest.skip("root half; stage_inputs itself is tested above for every caller")
    src, stage = sources
    secret = _write(os.path.join(scratch, "secret", "key"), "TOPSECRET\n")
    # An earlier action may leave such a link in its outputs, which a build
    # then stages as the next action's inputs.
    os.symlink(os.path.dirname(secret), f"{src}/inc/out")
    os.symlink("../../secret/key", f"{src}/inc/rel.h")
    stage_inputs(stage, {"include": f"{src}/inc"})
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    ex = HermeticExecutor.create(_spec(stage, out)).unwrap()
    try:
        r = ex.execute(["sh", "-c", "cat include/x.h; cat include/out/key include/rel.h"]).unwrap()
    finally:
        ex.close()
    assert r.stdout == b"x\n"
    assert r.exit_code != 0 and b"No such file or directory" in r.stderr


def test_a_change_between_the_walks_names_the_input_it_was_in(sources, monkeypatch):
    src, stage = sources
    real = staging._clear

    def remove_then_clear(dfd):
        if os.path.exists(f"{src}/inc/x.h"):
            os.unlink(f"{src}/inc/x.h")  # in the first input, after it was looked at
        real(dfd)

    monkeypatch.setattr(staging, "_clear", remove_then_clear)
    with pytest.raises(SpecError) as e:
        stage_inputs(stage, {"inc": f"{src}/inc", "b.c": f"{src}/b.c"})
    assert f"{src}/inc" in str(e.value) and f"{src}/b.c" not in str(e.value)
    monkeypatch.setattr(staging, "_clear", real)
    assert os.listdir(stage) == []
