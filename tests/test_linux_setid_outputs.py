"""No set-id file (nor file capability) is left where an action wrote.

The scan (hermetic/security/outputs.py) is tested twice: on trees the test
makes as root (set-uid and set-gid files, file capabilities, symbolic and
hard links to host files, the walk's bounds), and end to end, from inside
the sandbox, in every mode: a set-id file in an output when the run ends
(one the caller put there, one the action makes) is stripped and reported.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from typing import Any

import pytest

from hermetic import EnvSet, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec
from hermetic.core import tree
from hermetic.security import outputs

pytestmark = [pytest.mark.linux]

#: struct vfs_cap_data, revision 2, effective: CAP_NET_RAW permitted.
_CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("making set-uid files owned by others needs root")


def _file(path: str, mode: int, data: bytes = b"#!/bin/sh\n") -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _found(violations: list[Any]) -> dict[str, str]:
    """Path -> decision, for the scan's records."""
    out = {}
    for v in violations:
        assert v.kind.value == "filesystem"
        assert "setid_output" in v.attempted
        out[v.attempted.split(": ")[0]] = v.decision
    return out


def test_scan_strips_set_id_bits_and_capabilities_and_follows_no_link(scratch: str) -> None:
    _needs_root()
    out = os.path.join(scratch, "out")
    host = os.path.join(scratch, "host")
    os.makedirs(os.path.join(out, "a", "b"))
    os.mkdir(host)
    suid = _file(os.path.join(out, "a", "suid"), 0o4755)
    sgid = _file(os.path.join(out, "a", "b", "sgid"), 0o2711)
    hidden = _file(os.path.join(out, "a", "b", "unreadable"), 0o4000)
    plain = _file(os.path.join(out, "plain"), 0o644)
    exe = _file(os.path.join(out, "exe"), 0o755)
    capped = _file(os.path.join(out, "capped"), 0o755)
    os.setxattr(capped, "security.capability", _CAP_NET_RAW)
    # Host files the output points at or shares an inode with: never changed.
    victim = _file(os.path.join(host, "victim"), 0o4755)
    os.symlink(victim, os.path.join(out, "link"))
    os.symlink(host, os.path.join(out, "linkdir"))
    shared = _file(os.path.join(host, "shared"), 0o4755)
    os.link(shared, os.path.join(out, "hardlink"))

    found = _found(outputs.scan([out]))

    assert found == {
        suid: "stripped",
        sgid: "stripped",
        hidden: "stripped",
        capped: "stripped",
        os.path.join(out, "hardlink"): "removed",
    }
    assert (_mode(suid), _mode(sgid), _mode(hidden)) == (0o755, 0o711, 0o000)
    with pytest.raises(OSError):
        os.getxattr(capped, "security.capability")
    assert (_mode(plain), _mode(exe), _mode(capped)) == (0o644, 0o755, 0o755)
    assert (_mode(victim), _mode(shared)) == (0o4755, 0o4755)
    assert not os.path.lexists(os.path.join(out, "hardlink"))
    assert os.path.islink(os.path.join(out, "link"))
    # A second scan finds nothing left.
    assert outputs.scan([out]) == []


def test_scan_of_a_file_output(scratch: str) -> None:
    _needs_root()
    tool = _file(os.path.join(scratch, "tool"), 0o6755)
    assert _found(outputs.scan([tool])) == {tool: "stripped"}
    assert _mode(tool) == 0o755


def test_scan_bounds(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_root()
    # Depth: no bound but the filesystem's; what is at the bottom of a tree
    # deeper than PATH_MAX and the recursion limit is found and stripped,
    # and no directory's mode is changed on the way.
    deep = os.path.join(scratch, "deep")
    os.mkdir(deep, 0o755)
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("level-dir", 0o755, dir_fd=fd)
            nxt = os.open("level-dir", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("suid", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.chmod(f"/proc/self/fd/{fd}/suid", 0o4755)
        [v] = outputs.scan([deep])
        assert v.decision == "stripped" and v.attempted.startswith(deep + "/level-dir/"), v
        assert v.attempted.count("/level-dir") == 1500, v.attempted[-200:]
        assert stat.S_IMODE(os.stat("suid", dir_fd=fd).st_mode) == 0o755
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o755
    finally:
        os.close(fd)
        tree.remove_tree(deep)  # (shutil.rmtree recurses)
    # Records: the first MAX_RECORDS, then one that counts the rest.
    monkeypatch.setattr(outputs, "MAX_RECORDS", 3)
    many = os.path.join(scratch, "many")
    os.mkdir(many)
    for i in range(5):
        _file(os.path.join(many, f"s{i}"), 0o4755)
    found = outputs.scan([many])
    assert [v.decision for v in found[:3]] == ["stripped"] * 3
    assert found[3].attempted.startswith("2 more") and len(found) == 4
    assert all(_mode(os.path.join(many, f"s{i}")) == 0o755 for i in range(5))
    # Entries: past the bound the rest is reported as not scanned.
    monkeypatch.setattr(outputs, "MAX_ENTRIES", 10)
    wide = os.path.join(scratch, "wide")
    os.mkdir(wide)
    for i in range(20):
        _file(os.path.join(wide, f"f{i}"), 0o644)
    [v] = outputs.scan([wide])
    assert v.decision == "left" and "more than 10 entries" in (v.observed or "")


def _plain(*roots: str, depth: int = 32, entries: int = 100_000) -> int:
    """hm_outputs_plain (csrc/linux/outputs.c) over ``roots``."""
    from hermetic._native import lib

    packed = b"".join(os.fsencode(r) + b"\0" for r in roots) + b"\0"
    return int(lib.hm_outputs_plain(packed, depth, entries))


def test_the_quick_look_says_plain_only_when_the_scan_would_find_nothing(scratch: str) -> None:
    # Before each scan the run asks hm_outputs_plain whether any regular
    # file under the roots has a set-id bit, or is executable with file
    # capabilities; only "no" (1) skips the scan, every other answer (0)
    # runs it.  An executable without capabilities (a build's linked
    # program) is plain.
    out = os.path.join(scratch, "out")
    os.makedirs(os.path.join(out, "a", "b"))
    _file(os.path.join(out, "a", "b", "obj.o"), 0o644)
    _file(os.path.join(out, "a", "data"), 0o600)
    os.mkfifo(os.path.join(out, "fifo"))
    host = os.path.join(scratch, "host")
    os.mkdir(host)
    tool = _file(os.path.join(host, "tool"), 0o755)
    # Links are never followed: to an executable file, to a directory of one.
    os.symlink(tool, os.path.join(out, "a", "link"))
    os.symlink(host, os.path.join(out, "linkdir"))
    empty = os.path.join(scratch, "empty")
    os.mkdir(empty)
    missing = os.path.join(scratch, "missing")
    assert _plain(out, empty, missing) == 1
    assert _plain(os.path.join(out, "a", "data")) == 1  # a file root
    assert _plain(os.path.join(out, "linkdir")) == 1  # a link root: not followed
    assert _plain(tool) == 1
    assert _plain(host) == 1
    assert _plain(out, host) == 1
    # A set-id bit, at any level it looks at, executable or not.
    for mode in (0o4644, 0o2644, 0o4755, 0o2711, 0o6000):
        f = _file(os.path.join(out, "a", "b", "x"), 0o644)
        os.chmod(f, mode)
        assert _plain(out) == 0, oct(mode)
        os.unlink(f)
    # Any execute bit alone: plain, each looked at for capabilities.
    for mode in (0o744, 0o654, 0o645, 0o100):
        f = _file(os.path.join(out, "a", "b", "x"), 0o644)
        os.chmod(f, mode)
        assert _plain(out) == 1, oct(mode)
        os.unlink(f)
    assert _plain(out) == 1
    # Its bounds leave the answer to the scan: deeper than it looks, more
    # entries than it counts.
    assert _plain(out, depth=1) == 0
    assert _plain(out, depth=2) == 1
    assert _plain(out, entries=3) == 0
    assert _plain(out, depth=-1) == 0


def test_the_quick_look_sends_an_executable_with_capabilities_to_the_scan(scratch: str) -> None:
    # Setting security.capability needs CAP_SETFCAP over the file.
    _needs_root()
    out = os.path.join(scratch, "out")
    os.makedirs(os.path.join(out, "bin"))
    _file(os.path.join(out, "bin", "plain-tool"), 0o755)
    capped = _file(os.path.join(out, "bin", "capped"), 0o755)
    os.setxattr(capped, "security.capability", _CAP_NET_RAW)
    assert _plain(out) == 0
    assert _plain(capped) == 0  # a file root, too
    # Not executable: capabilities act only at exec, and the scan leaves it.
    os.chmod(capped, 0o644)
    assert _plain(out) == 1
    assert outputs.scan([out]) == []
    os.chmod(capped, 0o755)
    [v] = outputs.scan([out])
    assert v.decision == "stripped" and "file capabilities" in (v.observed or "")
    assert _plain(out) == 1


def test_the_quick_look_cannot_vouch_for_what_it_cannot_read(scratch: str) -> None:
    # A directory it may not list: no answer.  Root lists any directory
    # (CAP_DAC_READ_SEARCH), so as root the look runs as another user.
    out = os.path.join(scratch, "out")
    os.makedirs(os.path.join(out, "closed"))
    os.chmod(os.path.join(out, "closed"), 0)
    code = (
        "import os, sys\n"
        "from hermetic._native import lib\n"
        "sys.exit(10 + lib.hm_outputs_plain(os.fsencode(sys.argv[1]) + b'\\0\\0', 32, 1000))\n"
    )
    argv = [sys.executable, "-c", code, out]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    try:
        r = subprocess.run(argv, cwd="/", capture_output=True)
        assert r.returncode == 10, r
    finally:
        os.chmod(os.path.join(out, "closed"), 0o755)
    assert _plain(out) == 1


def test_a_set_id_file_deeper_than_the_quick_look_is_stripped(fs_runner: Any, scratch: str) -> None:
    _needs_root()
    from hermetic.platforms.linux.run import QUICK_SCAN_DEPTH

    out = os.path.join(scratch, "out")
    os.mkdir(out)
    fs_runner.own(out)
    deep = os.path.join(out, *["d"] * (QUICK_SCAN_DEPTH + 2))
    os.makedirs(deep)
    seeded = _file(os.path.join(deep, "seeded"), 0o644)
    fs_runner.own(seeded)
    os.chmod(seeded, 0o4755)
    r = fs_runner.run(_spec(out), ["true"])
    assert r.error is None and r.exit_code == 0, r
    assert _mode(seeded) == 0o755
    [v] = _setid_records(r.raw).values()
    assert v["decision"] == "stripped" and v["attempted"].startswith(seeded + ": ")


def _spec(out: str) -> SandboxSpec:
    return SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet((out,)),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )


def _setid_records(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        v["attempted"].split(": ")[0]: v
        for v in raw["violations"]
        if "setid_output" in v["attempted"]
    }


def test_a_set_id_file_in_an_output_when_the_run_ends_is_stripped(
    fs_runner: Any, scratch: str
) -> None:
    _needs_root()
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    fs_runner.own(out)
    # Put there by the caller before the run, owned as the action's files are.
    seeded = _file(os.path.join(out, "seeded"), 0o644)
    fs_runner.own(seeded)
    os.chmod(seeded, 0o4755)
    r = fs_runner.run(_spec(out), ["true"])
    assert r.error is None and r.exit_code == 0, r
    assert _mode(seeded) == 0o755
    [v] = _setid_records(r.raw).values()
    assert v["kind"] == "filesystem" and v["decision"] == "stripped"
    assert v["attempted"].startswith(seeded + ": ")
    assert "set-uid" in v["observed"]


#: Every way an action might make a set-id file; prints what each made.
MAKE_SETID = """
import ctypes, json, os, stat, sys
out = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def creat(p):
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o6755))
def chmod(p):
    creat_plain(p)
    os.chmod(p, 0o4755)
def fchmod(p):
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o755)
    try:
        os.fchmod(fd, 0o2755)
    finally:
        os.close(fd)
def fchmodat2(p):
    creat_plain(p)
    if libc.syscall(452, -100, p.encode(), 0o4755, 0) < 0:  # fchmodat2, AT_FDCWD
        raise OSError(ctypes.get_errno(), "fchmodat2")
def mknod(p):
    os.mknod(p, stat.S_IFREG | 0o4755)
def creat_plain(p):
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o755))
os.mkdir(os.path.join(out, "sub"))
made = {}
for fn in (creat, chmod, fchmod, fchmodat2, mknod):
    p = os.path.join(out, "sub", fn.__name__)
    try:
        fn(p)
    except OSError:
        continue
    if os.lstat(p).st_mode & (stat.S_ISUID | stat.S_ISGID):
        made[p] = oct(stat.S_IMODE(os.lstat(p).st_mode))
print(json.dumps(made))
"""


def test_a_set_id_file_the_action_makes_is_not_left(fs_runner: Any, scratch: str) -> None:
    _needs_root()
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    fs_runner.own(out)
    r = fs_runner.run(_spec(out), ["python3", "-c", MAKE_SETID, out])
    assert r.error is None and r.exit_code == 0, r
    made = json.loads(r.text)
    # Refused in the sandbox, or made there and stripped once the run ended.
    for name in os.listdir(os.path.join(out, "sub")):
        path = os.path.join(out, "sub", name)
        assert not _mode(path) & (stat.S_ISUID | stat.S_ISGID), (path, oct(_mode(path)))
    records = _setid_records(r.raw)
    assert set(records) == set(made), (records, made)
    for v in records.values():
        assert v["decision"] == "stripped", v
