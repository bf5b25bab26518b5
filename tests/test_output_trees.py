"""The host side's walks over what an action left: output manifests, action
digests and the fresh copies of a reproducibility check.

Every tree here is made by a real action in the sandbox.  A walk must never
follow a link the action planted, must survive any depth the filesystem
allows (deeper than PATH_MAX, deeper than Python's recursion limit), and
the fresh copies must go even when the action made them hard to remove, or
when the caller was killed before it could remove them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import _as_user_cmd, _user_env
from test_linux_isolation import spec_for

from hermetic import HermeticExecutor
from hermetic.core import tree

pytestmark = pytest.mark.linux

#: Makes ``levels`` nested directories called ``name`` below ``root``, with a
#: file at the bottom; relative steps, so no path the action uses is long.
DEEP = """
import os, sys
root, levels, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.chdir(root)
for _ in range(levels):
    os.mkdir(name)
    os.chdir(name)
with open("leaf", "w") as f:
    f.write("bottom")
"""

#: 1,500 levels of 10 bytes each: deeper than the recursion limit, and the
#: deepest paths (15,000 bytes) longer than PATH_MAX.
LEVELS, NAME = 1500, "level-dir"


def _deep(root: str, levels: int = LEVELS, name: str = NAME) -> list[str]:
    return ["python3", "-c", DEEP, root, str(levels), name]


def _cli(user, args, *, tmpdir: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``hermetic ARGS`` as ``user`` (None: as this process's user)."""
    env = _user_env()
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    cmd = [sys.executable, "-m", "hermetic", *args]
    return subprocess.run(
        _as_user_cmd(user, cmd) if user is not None else cmd,
        capture_output=True,
        env=env,
        cwd="/",
        timeout=300,
    )


@pytest.fixture(
    params=[pytest.param(m, marks=getattr(pytest.mark, m)) for m in ("root", "unprivileged")]
)
def caller(request: pytest.FixtureRequest, scratch: str):
    """None for root (the API in this process), or the test user (the CLI)."""
    if os.geteuid() != 0:
        pytest.skip("these tests switch between root and the test user")
    user = None if request.param == "root" else request.getfixturevalue("test_user")
    return user


def _own(user, *paths: str) -> None:
    for p in paths:
        if user is not None:
            os.chown(p, user.pw_uid, user.pw_gid)


@pytest.fixture
def area(scratch: str):
    """out/ and a private temp directory; removed without recursion afterwards."""
    out, tmp = os.path.join(scratch, "out"), os.path.join(scratch, "tmp")
    os.mkdir(out)
    os.mkdir(tmp, 0o755)
    try:
        yield out, tmp
    finally:
        for p in (out, tmp):
            if os.path.lexists(p):
                tree.remove_tree(p)


def _leaf_sha() -> str:
    return hashlib.sha256(b"bottom").hexdigest()


# --- Deep trees -----------------------------------------------------------------


def test_a_deep_output_tree_gets_a_manifest(caller, area):
    out, _ = area
    _own(caller, out)
    if caller is None:
        ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
        r = ex.execute(_deep(out), collect_outputs=True).unwrap()
        ex.close()
        assert r.exit_code == 0, r.stderr
        entries = [e.to_dict() for e in r.outputs]
    else:
        p = _cli(caller, ["run", "-o", out, "--collect-outputs", "--json", "--", *_deep(out)])
        assert p.returncode == 0, p.stderr
        entries = json.loads(p.stdout)["outputs"]
    assert len(entries) == 1 + LEVELS + 1
    leaf = entries[-1]
    assert leaf["path"] == out + f"/{NAME}" * LEVELS + "/leaf"
    assert leaf["sha256"] == _leaf_sha() and leaf["kind"] == "file"


def test_a_deep_input_tree_gets_an_action_digest(caller, area):
    out, _ = area
    _own(caller, out)
    if caller is None:
        ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
        assert ex.execute(_deep(out)).unwrap().exit_code == 0
        ex.close()
    else:
        made = _cli(caller, ["run", "-o", out, "--", *_deep(out)])
        assert made.returncode == 0, made.stderr
    if caller is None:
        digests = []
        for _ in range(2):  # cold, then through the cache
            spec_ex = HermeticExecutor.create(spec_for(inputs=[out])).unwrap()
            digests.append(spec_ex.action_digest(["true"]).unwrap())
            spec_ex.close()
    else:
        digests = []
        for _ in range(2):
            p = _cli(caller, ["digest", "-i", out, "--", "true"])
            assert p.returncode == 0, p.stderr
            digests.append(p.stdout.decode().strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    # The leaf counts: another content at the bottom, another digest.
    fd = tree.open_long(out + f"/{NAME}" * LEVELS, os.O_RDONLY | os.O_DIRECTORY)
    try:
        leaf = os.open("leaf", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        os.write(leaf, b"changed")
        os.close(leaf)
    finally:
        os.close(fd)
    again = HermeticExecutor.create(spec_for(inputs=[out])).unwrap()
    assert again.action_digest(["true"]).unwrap() != digests[0]
    again.close()


def test_a_deep_tree_is_verified_and_its_fresh_copies_removed(caller, area):
    out, tmp = area
    _own(caller, out, tmp)
    if caller is None:
        tempfile_dir = tempfile.tempdir
        tempfile.tempdir = tmp
        try:
            ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
            report = ex.verify_reproducible(_deep(out)).unwrap()
            ex.close()
        finally:
            tempfile.tempdir = tempfile_dir
        assert report.reproducible, report.differences
        assert len(report.outputs) == 1 + LEVELS + 1
    else:
        p = _cli(caller, ["verify", "-o", out, "--json", "--", *_deep(out)], tmpdir=tmp)
        assert p.returncode == 0, p.stderr
        assert len(json.loads(p.stdout)["outputs"]) == 1 + LEVELS + 1
    assert os.listdir(tmp) == []
    assert os.listdir(out) == []  # the declared output was left alone


@pytest.mark.root
def test_ten_thousand_levels_are_walked_and_removed(area):
    out, _ = area
    ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
    assert ex.execute(_deep(out, 10_000, "d")).unwrap().exit_code == 0
    ex.close()
    depths = [depth for depth, _name, _fd, _st in tree.walk(out)]
    assert len(depths) == 1 + 10_000 + 1 and max(depths) == 10_001
    tree.remove_tree(os.path.join(out, "d"))
    assert os.listdir(out) == []


# --- Links the action planted ------------------------------------------------------

#: Links out of the output to a caller's file and directory, in a directory
#: the caller cannot write (0500) and in one it cannot even read (0).
PLANT = """
set -e
cd {out}
mkdir ro zero zero/sub
ln -s {outside}/file ro/lf
ln -s {outside}/dir ro/ld
ln -s {outside}/file zero/l
ln -s {outside}/dir zero/sub/ld
echo data > zero/sub/f
chmod 0 zero/sub zero
chmod 500 ro
"""


def test_removing_fresh_copies_never_follows_a_planted_link(caller, area, scratch):
    out, tmp = area
    outside = os.path.join(scratch, "outside")
    os.mkdir(outside, 0o755)
    with open(os.path.join(outside, "file"), "w") as f:
        f.write("the caller's\n")
    os.chmod(os.path.join(outside, "file"), 0o644)
    os.mkdir(os.path.join(outside, "dir"), 0o755)
    _own(caller, out, tmp, outside, os.path.join(outside, "file"), os.path.join(outside, "dir"))
    script = PLANT.format(out=out, outside=outside)
    if caller is None:
        tempfile_dir = tempfile.tempdir
        tempfile.tempdir = tmp
        try:
            ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
            report = ex.verify_reproducible(["sh", "-c", script]).unwrap()
            ex.close()
        finally:
            tempfile.tempdir = tempfile_dir
        assert report.reproducible, report.differences
    else:
        p = _cli(caller, ["verify", "-o", out, "--", "sh", "-c", script], tmpdir=tmp)
    assert stat.S_IMODE(os.stat(os.path.join(outside, "file")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(outside, "dir")).st_mode) == 0o755
    with open(os.path.join(outside, "file")) as f:
        assert f.read() == "the caller's\n"
    assert os.listdir(tmp) == []
    assert os.listdir(out) == []
    if caller is not None:
        # The test user cannot read the directory the action made mode 0:
        # the check says so rather than comparing less than it should.
        assert p.returncode == 125, p.stderr
        assert f"{out}/zero".encode() in p.stderr and b"Traceback" not in p.stderr


# --- Fresh copies of callers that died --------------------------------------------

#: A caller that verifies an action which marks its fresh output and waits.
WAITING_CALLER = """
import sys, tempfile
sys.path.insert(0, {tests!r})
from test_linux_isolation import spec_for
from hermetic import HermeticExecutor
tempfile.tempdir = {tmp!r}
ex = HermeticExecutor.create(spec_for(outputs=[{out!r}])).unwrap()
ex.verify_reproducible(["sh", "-c", "echo {mark} > {out}/started; exec sleep 600"])
"""


def _start_waiting_caller(out: str, tmp: str, mark: str) -> tuple[subprocess.Popen[bytes], str]:
    code = WAITING_CALLER.format(tests=os.path.dirname(__file__), tmp=tmp, out=out, mark=mark)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd="/", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # a bound that proves progress, not a timing
    while time.monotonic() < deadline:
        for marker in glob.glob(os.path.join(tmp, "hermetic-verify-*", "started")):
            with open(marker) as f:
                if f.read().strip() == mark:
                    return proc, os.path.dirname(marker)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("the waiting caller never started its action")


def _verify_here(out: str, tmp: str) -> None:
    tempfile_dir = tempfile.tempdir
    tempfile.tempdir = tmp
    try:
        ex = HermeticExecutor.create(spec_for(outputs=[out])).unwrap()
        assert ex.verify_reproducible(["true"]).unwrap().reproducible
        ex.close()
    finally:
        tempfile.tempdir = tempfile_dir


@pytest.mark.root
def test_the_fresh_copies_of_a_killed_caller_go_with_the_next_verify(area, test_user):
    out, tmp = area
    killed, killed_dir = _start_waiting_caller(out, tmp, "killed")
    live, live_dir = _start_waiting_caller(out, tmp, "live")
    try:
        killed.kill()  # SIGKILL: no finally runs in the caller
        killed.wait()
        assert os.path.isdir(killed_dir)
        # The same dead caller's name on another user's directory: not ours.
        foreign = killed_dir + "-foreign"
        os.mkdir(foreign)
        _own(test_user, foreign)
        _verify_here(out, tmp)
        assert not os.path.lexists(killed_dir)
        assert os.path.isdir(foreign) == (test_user is not None)
        if test_user is not None:
            os.rmdir(foreign)
        assert os.path.isdir(live_dir)  # a live caller's copies are never touched
        with open(os.path.join(live_dir, "started")) as f:
            assert f.read().strip() == "live"
        live.send_signal(signal.SIGTERM)  # the default action: no cleanup either
        live.wait()
        assert os.path.isdir(live_dir)
        _verify_here(out, tmp)
        assert os.listdir(tmp) == []
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.unprivileged
def test_an_output_the_caller_cannot_read_back_is_named(area, test_user):
    """collect_outputs as the test user, after the action made a directory
    mode 0: a clear error naming it, not a traceback."""
    out, _ = area
    _own(test_user, out)
    script = f"mkdir {out}/locked && echo x > {out}/locked/f && chmod 0 {out}/locked"
    p = _cli(test_user, ["run", "-o", out, "--collect-outputs", "--json", "--", "sh", "-c", script])
    assert p.returncode == 125, p.stderr
    assert f"{out}/locked".encode() in p.stderr and b"Traceback" not in p.stderr
