"""An execution's own read-only paths, from inside the sandbox.

``execute(read_only=...)`` makes paths inside the spec's outputs read-only
for one action: the inputs a build farm's worker stages into a writable exec
root, on one executor reused for every action.  Checked as root, as a normal
user and with Landlock alone (where it cannot be applied, so the action does
not run), and on one executor across executions with and without them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from conftest import FORBID_USERNS, _as_user_cmd, _user_env
from test_linux_isolation import ERRNO, PY, spec_for

from hermetic import HermeticExecutor, SandboxError, SpecError
from hermetic.core.spec import MAX_READ_ONLY_PATHS

pytestmark = pytest.mark.linux

#: What the action tries, one word each ("ok" or the errno's name).
ACTION = (
    ERRNO
    + """
root = sys.argv[1]
def append(rel):
    with open(os.path.join(root, rel), "a"):
        pass
def mkdir_rmdir(rel):
    os.mkdir(os.path.join(root, rel))
    os.rmdir(os.path.join(root, rel))
print(attempt(lambda: open(os.path.join(root, "out.txt"), "w").write("made")))
print(attempt(append, "in/lib.h"))
print(attempt(append, "top.h"))
print(attempt(append, "in/sub/deep.h"))
print(attempt(mkdir_rmdir, "in/made"))
print(attempt(os.chmod, os.path.join(root, "in/lib.h"), 0o644))
"""
)

#: One executor, several executions: run in this process or as another user.
CHECKS = textwrap.dedent(
    """
    import json, sys
    from hermetic import (
        EnvSet, HermeticExecutor, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec,
    )

    root, action, python = sys.argv[1], sys.argv[2], sys.argv[3]
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet([root]),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    rounds = [[], [root + "/in", root + "/top.h"], [], [root + "/in/sub"]]
    bad = {"missing": [root + "/nope"], "through a link": [root + "/link/lib.h"]}
    seen = {}
    with HermeticExecutor.create(spec).unwrap() as ex:
        for i, ro in enumerate(rounds):
            r = ex.execute([python, "-c", action, root], read_only=ro)
            if r.is_err():
                seen[str(i)] = {"error": f"{type(r.error).__name__}: {r.error}"}
                continue
            res = r.unwrap()
            seen[str(i)] = {
                "exit": res.exit_code,
                "out": res.stdout.decode().split(),
                "stderr": res.stderr.decode()[-500:],
                "violations": [v.attempted for v in res.violations],
            }
        for name, ro in bad.items():
            r = ex.execute(["/bin/true"], read_only=ro)
            seen[name] = f"{type(r.error).__name__}: {r.error}" if r.is_err() else "ran"
    print(json.dumps(seen))
    """
)

ALL_OK = ["ok"] * 6


def _tree(scratch: str, owner: int | None) -> str:
    root = os.path.join(scratch, "root")
    os.makedirs(os.path.join(root, "in", "sub"))
    for rel in ("in/lib.h", "in/sub/deep.h", "top.h"):
        with open(os.path.join(root, rel), "w") as f:
            f.write("#define X 1\n")
    os.symlink("in", os.path.join(root, "link"))
    if owner is not None:
        for d, dirs, files in os.walk(root):
            for name in [d, *(os.path.join(d, n) for n in dirs + files)]:
                os.lchown(name, owner, owner)
    return root


def _run_checks(runner, root: str) -> dict:
    argv = [sys.executable, "-c", CHECKS, root, ACTION, PY]
    if not runner.via_cli:
        p = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120)
    else:
        if runner.landlock:
            argv = [*FORBID_USERNS, *argv]
        if runner.user is not None:
            argv = _as_user_cmd(runner.user, argv)
        p = subprocess.run(
            argv, capture_output=True, text=True, env=_user_env(), cwd="/", timeout=120
        )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_read_only_paths_hold_for_their_execution_only(fs_runner, scratch):
    runner = fs_runner
    root = _tree(scratch, runner.user.pw_uid if runner.user is not None else None)
    seen = _run_checks(runner, root)
    for i in ("0", "2"):  # without read-only paths: everything is writable
        assert seen[i]["out"] == ALL_OK, seen[i]
    if runner.landlock:
        # No mount namespace: the paths cannot be made read-only, and the
        # action does not run at all.
        for i in ("1", "3"):
            error = seen[i]["error"]
            assert error.startswith("UnsupportedError") and "Landlock" in error, error
            assert "read-only paths" in error, error
        assert sorted(os.listdir(root)) == ["in", "link", "out.txt", "top.h"]
        return
    ro = runner.refused
    # in/ and top.h read-only, the rest of the root writable.
    assert seen["1"]["out"] == ["ok", ro, ro, ro, ro, ro], seen["1"]
    # Only in/sub read-only now.
    assert seen["3"]["out"] == ["ok", "ok", "ok", ro, "ok", "ok"], seen["3"]
    # Each refused write is recorded.
    for rel in ("in/lib.h", "top.h", "in/sub/deep.h"):
        assert any(rel in v for v in seen["1"]["violations"]), seen["1"]
    assert not any("lib.h" in v for v in seen["3"]["violations"]), seen["3"]
    # A missing path, or one reached through a symlink, fails the setup
    # naming it; the action does not run.
    missing = seen["missing"]
    assert missing.startswith("SandboxError") and f"{root}/nope" in missing, missing
    assert "ENOENT" in missing or "No such file" in missing, missing
    linked = seen["through a link"]
    assert linked.startswith("SandboxError") and f"{root}/link/lib.h" in linked, linked
    for rel in ("in/lib.h", "top.h", "in/sub/deep.h"):
        with open(os.path.join(root, rel)) as f:
            assert f.read() == "#define X 1\n"
    assert sorted(os.listdir(root)) == ["in", "link", "out.txt", "top.h"]


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ("relative/path", "sequence of paths"),
        (["relative/path"], "absolute"),
        (["/x\0y"], "absolute"),
        ([b"/bytes"], "absolute"),
        (["ROOT/a/../b"], "normalised"),
        (["ROOT/a/"], "normalised"),
        (["/etc"], "no output or temp"),
        (["ROOT-sibling"], "no output or temp"),
    ],
)
def test_bad_read_only_paths_are_refused_naming_them(scratch, given, match):
    root = os.path.join(scratch, "root")
    os.mkdir(root)
    if isinstance(given, list):
        given = [g.replace("ROOT", root) if isinstance(g, str) else g for g in given]
    with HermeticExecutor.create(spec_for(outputs=[root])).unwrap() as ex:
        r = ex.execute(["/bin/sh", "-c", f"echo ran > {root}/ran"], read_only=given)
    assert isinstance(r.error, SpecError) and r.error.field == "read_only", r
    assert match in str(r.error)
    assert os.listdir(root) == []


def test_too_many_read_only_paths_are_refused(scratch):
    root = os.path.join(scratch, "root")
    os.mkdir(root)
    many = [f"{root}/f{i}" for i in range(MAX_READ_ONLY_PATHS + 1)]
    with HermeticExecutor.create(spec_for(outputs=[root])).unwrap() as ex:
        r = ex.execute(["/bin/true"], read_only=many)
        assert isinstance(r.error, SpecError) and str(MAX_READ_ONLY_PATHS) in str(r.error)
        # Repeats count once, and the output itself may be given.
        ok = ex.execute(["/bin/true"], read_only=[root, root, f"{root}/"[:-1]]).unwrap()
    assert ok.exit_code == 0


@pytest.mark.parametrize("declared", ["read_only", "spec"])
def test_the_host_side_leaves_read_only_paths_alone(scratch, declared):
    """The set-id scan and the output manifest walk the outputs on the
    host: what an execution saw read-only (its own read-only path, or an
    input the spec nests in an output) is the caller's, neither changed nor
    listed as the action's."""
    if os.geteuid() != 0:
        pytest.skip("making a set-uid file needs root")
    root = os.path.join(scratch, "root")
    inp = os.path.join(root, "in")
    os.makedirs(inp)
    tool = os.path.join(inp, "tool")
    with open(tool, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    spec = spec_for(outputs=[root], inputs=[inp] if declared == "spec" else [])
    with HermeticExecutor.create(spec).unwrap() as ex:
        r = ex.execute(
            ["sh", "-c", f"echo made > {root}/made"],
            read_only=[inp] if declared == "read_only" else [],
            collect_outputs=True,
        ).unwrap()
    assert r.exit_code == 0, r.stderr
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o4755
    assert not [v for v in r.violations if "tool" in v.attempted], r.violations
    assert [e.path for e in r.outputs] == [root, os.path.join(root, "made")]


def test_read_only_paths_in_execute_async(scratch):
    import asyncio

    root = os.path.join(scratch, "root")
    os.makedirs(os.path.join(root, "in"))

    async def main() -> tuple[int | None, bytes]:
        with HermeticExecutor.create(spec_for(outputs=[root])).unwrap() as ex:
            r = await ex.execute_async(
                ["sh", "-c", f"touch {root}/in/x 2>&1; echo $?"], read_only=[f"{root}/in"]
            )
            res = r.unwrap()
            return res.exit_code, res.stdout

    code, out = asyncio.run(main())
    assert code == 0 and out.strip().endswith(b"1"), out
    assert os.listdir(os.path.join(root, "in")) == []


def test_an_error_names_the_read_only_path(scratch):
    root = os.path.join(scratch, "root")
    os.mkdir(root)
    with HermeticExecutor.create(spec_for(outputs=[root])).unwrap() as ex:
        err = ex.execute(["/bin/true"], read_only=[f"{root}/gone"]).error
    assert isinstance(err, SandboxError), err
    assert err.path == f"{root}/gone" and "read-only path" in (err.detail or ""), err


def _src_and_out(scratch: str, text: str) -> tuple[str, str]:
    """root/{src/a.h, out/} in ``scratch``: the root and the header."""
    root = os.path.join(scratch, "root")
    for d in ("src", "out"):
        os.makedirs(os.path.join(root, d))
    header = os.path.join(root, "src", "a.h")
    with open(header, "w") as f:
        f.write(text)
    return root, header


@pytest.mark.parametrize("declared", ["read_only", "spec"])
def test_a_read_only_path_swapped_by_the_action_is_still_scanned(scratch, declared):
    """The host-side scan leaves alone what was read-only, identified before
    the run: an action that renames the writable directory around a
    read-only file and puts a directory of its own at that path does not
    get that directory skipped (a set-uid file moved into it is found)."""
    if os.geteuid() != 0:
        pytest.skip("a set-uid file in the outputs before the run needs root")
    root, header = _src_and_out(scratch, "#define A 1\n")
    tool = os.path.join(root, "out", "tool")
    with open(tool, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(tool, 0o4755)  # left in the output before this run
    script = "mv src src.old && mkdir -p src/a.h && mv out/tool src/a.h/tool"
    spec = spec_for(outputs=[root], inputs=[header] if declared == "spec" else [])
    with HermeticExecutor.create(spec).unwrap() as ex:
        r = ex.execute(
            ["/bin/sh", "-c", script],
            cwd=root,
            read_only=[header] if declared == "read_only" else [],
            collect_outputs=True,
        ).unwrap()
    assert r.exit_code == 0, r.stderr
    moved = os.path.join(root, "src", "a.h", "tool")
    assert stat.S_IMODE(os.lstat(moved).st_mode) == 0o755
    assert [v.attempted for v in r.violations if "tool" in v.attempted], r.violations
    # The manifest lists it too: it is the action's, not a skipped input.
    assert moved in [e.path for e in r.outputs]


def test_another_link_to_a_read_only_file_is_walked_as_the_action_s(scratch):
    """The host side skips a read-only path at its place (its directory and
    name, and itself), not every hard link to its file: a caller that also
    put a link to it in a writable part of the output sees the action's
    write through that link in the manifest.  (read_only protects a path,
    not an inode: the write goes through.)"""
    root, header = _src_and_out(scratch, "int good;\n")
    os.link(header, os.path.join(root, "out", "copy.h"))
    with HermeticExecutor.create(spec_for(outputs=[root])).unwrap() as ex:
        r = ex.execute(
            ["/bin/sh", "-c", "echo 'int more;' >> out/copy.h"],
            cwd=root,
            read_only=[header],
            collect_outputs=True,
        ).unwrap()
    assert r.exit_code == 0, r.stderr
    listed = [e.path for e in r.outputs]
    assert os.path.join(root, "out", "copy.h") in listed, listed
    assert header not in listed, listed
