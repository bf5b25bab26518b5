"""Landlock: an extra layer under namespaces, the only one where they are forbidden."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import FORBID_USERNS
from test_linux_isolation import ERRNO, probe, spec_for

from hermetic import HermeticExecutor, NetworkPolicy, UnsupportedError
from hermetic.platforms import linux
from hermetic.platforms.capabilities import Capabilities
from hermetic.platforms.linux import memory as linux_memory
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux import prepared as linux_prepared
from hermetic.platforms.linux import probe as linux_probe

pytestmark = pytest.mark.linux


@pytest.mark.root
def test_landlock_holds_where_the_mount_layer_does_not(monkeypatch):
    """A mount-layer mistake (inputs bound read-write) is caught by Landlock.

    The input is outside /tmp: the private /tmp is writable as a whole, and
    Landlock cannot take rights away from a subtree (see linux/landlock.py).
    """
    if os.geteuid() != 0:
        pytest.skip("the fault is injected in-process, which needs the suite to run as root")
    if not (linux.capabilities().landlock_abi or 0):
        pytest.fail("Landlock is available on this machine and must be tested")
    src = tempfile.mkdtemp(prefix="hermetic-test-", dir="/var/tmp")
    try:
        monkeypatch.setattr(linux_plan, "BIND_RDONLY", 0)
        ex = HermeticExecutor.create(spec_for(inputs=[src])).unwrap()
        code = ERRNO + f"print(attempt(lambda: open({src + '/planted'!r}, 'w')))"
        r = ex.execute(["python3", "-c", code]).unwrap()
        assert r.stdout.split() == [b"EACCES"], r.stderr
        assert not os.path.exists(os.path.join(src, "planted"))
    finally:
        shutil.rmtree(src)


@pytest.mark.parametrize("fs_runner", ["landlock"], indirect=True)
def test_without_namespaces_seccomp_and_landlock_contain_processes(fs_runner, scratch):
    out_dir = os.path.join(scratch, "out")
    os.mkdir(out_dir)
    fs_runner.own(out_dir)
    out = probe(
        fs_runner,
        spec_for(outputs=[out_dir]),
        ERRNO
        + f"""
import signal, socket, subprocess
print(attempt(socket.socket))
print(attempt(os.setsid))
print(attempt(os.kill, os.getppid(), 0))  # pid 1, outside the Landlock domain
print(attempt(os.kill, 1, 0))  # the host's init
child = subprocess.Popen(["sleep", "300"])
open({out_dir + "/pid"!r}, "w").write(str(child.pid))
""",
    )
    assert out.text.split() == ["EPERM", "EPERM", "EPERM", "EPERM"]
    with open(os.path.join(out_dir, "pid")) as f:
        pid = int(f.read())
    # The background child was ended with the action's process group.
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}")
    kinds = {v["kind"] for v in out.raw["violations"]}
    assert "syscall" in kinds  # socket() and setsid() recorded


@pytest.mark.parametrize("fs_runner", ["landlock"], indirect=True)
def test_without_namespaces_allow_hosts_fails_closed(fs_runner, scratch):
    spec = spec_for(network=NetworkPolicy.allow_hosts(["127.0.0.1:1"]))
    out = fs_runner.run(spec, ["true"])
    assert out.error is not None
    assert "network" in out.error and "Landlock-only" in out.error


def _caps(**kw) -> Capabilities:
    base = {
        "platform": "linux",
        "backend": "linux-namespaces",
        "user_namespaces": False,
        "seccomp": True,
        "landlock_abi": 7,
        "notes": (("user_namespaces", "forbidden here"),),
    }
    base.update(kw)
    return Capabilities(**base)


def test_isolation_mode_fails_closed_without_both_layers():
    assert linux_prepared.isolation_mode(_caps(user_namespaces=True)) == "namespaces"
    assert linux_prepared.isolation_mode(_caps()) == "landlock"
    with pytest.raises(UnsupportedError, match="forbidden here.*ABI 5 is below 6"):
        linux_prepared.isolation_mode(_caps(landlock_abi=5))
    with pytest.raises(UnsupportedError, match="Landlock unavailable"):
        linux_prepared.isolation_mode(
            _caps(landlock_abi=None, notes=(("landlock", "Landlock unavailable: ENOSYS"),))
        )
    with pytest.raises(UnsupportedError, match="seccomp is unavailable"):
        linux_prepared.isolation_mode(_caps(seccomp=False))


@pytest.mark.parametrize("fs_runner", ["landlock"], indirect=True)
def test_without_namespaces_a_timeout_ends_the_whole_group(fs_runner):
    start = time.monotonic()
    out = fs_runner.run(spec_for(), ["sh", "-c", "sleep 60 & sleep 60; echo never"], timeout=0.5)
    assert out.error is None, out.error
    assert out.timed_out
    assert time.monotonic() - start < 30
    assert "never" not in out.text


def test_without_namespaces_verify_fails_closed(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    cmd = [*FORBID_USERNS, sys.executable, "-m", "hermetic", "verify", "-o", out, "--", "true"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    assert p.returncode == 125, p.stderr
    assert "fresh outputs" in p.stderr and "Landlock-only" in p.stderr


@pytest.mark.parametrize("fs_runner", ["landlock"], indirect=True)
def test_without_namespaces_host_ipc_is_refused(fs_runner):
    out = probe(
        fs_runner,
        spec_for(),
        ERRNO
        + """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def sys_(nr, *args):
    r = libc.syscall(nr, *args)
    return "ok" if r != -1 else errno.errorcode[ctypes.get_errno()]
x86 = os.uname().machine == "x86_64"
print(sys_(29 if x86 else 194, 0, 4096, 0o1600))  # shmget(IPC_PRIVATE)
print(sys_(68 if x86 else 186, 0, 0o1600))  # msgget(IPC_PRIVATE)
print(sys_(425, 8, 0))  # io_uring_setup: its ops would bypass the filter
""",
    )
    assert out.text.split() == ["EPERM", "EPERM", "EPERM"]


def test_a_planted_symlink_does_not_redirect_a_rule(scratch):
    """One executor (its spec canonical from the start) runs two actions;
    the first replaces an output inside a temp with a symlink."""
    ws = os.path.join(scratch, "ws")
    out = os.path.join(ws, "out")
    secret = os.path.join(scratch, "secret")
    for d in (ws, out, secret):
        os.mkdir(d)
    program = f"""
import json
from hermetic import HermeticExecutor, PathSet, ResourceLimits, SandboxSpec, HermeticSpecBuilder
spec = SandboxSpec(inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
                   outputs=PathSet(({out!r},)), temps=PathSet(({ws!r},)),
                   resources=ResourceLimits.defaults())
ex = HermeticExecutor.create(spec).unwrap()
first = ex.execute(["sh", "-c", "rmdir {out} && ln -s {secret} {out}"]).unwrap()
second = ex.execute(["sh", "-c", "echo pwned > {out}/pwned"])
outcome = str(second.unwrap_err()) if second.is_err() else second.unwrap().stderr.decode()
print(json.dumps([first.isolation, first.exit_code, outcome]))
"""
    p = subprocess.run(
        [*FORBID_USERNS, sys.executable, "-c", program], capture_output=True, text=True, cwd="/"
    )
    assert p.returncode == 0, p.stderr
    isolation, code, outcome = json.loads(p.stdout)
    assert (isolation, code) == ("landlock", 0)
    # Refused either way: a rule on the output itself fails setup (ELOOP);
    # an output covered by its temp's rule has none, and the write through
    # the symlink lands outside every rule (EACCES).
    assert ("landlock" in outcome and "symbolic links" in outcome) or (
        "Permission denied" in outcome
    )
    assert os.listdir(secret) == []


def _rights(rules, path):
    return {r.path: r.access for r in rules}.get(path)


@pytest.mark.parametrize("abi", range(1, 10))
def test_rules_per_abi(abi):
    """The rules and the layer's ABI as a pure function of the ABI.

    This machine's kernel has one ABI (7), so ABI 1 (Linux 5.13-5.18: no
    REFER, every cross-directory rename and link EXDEV) and ABI 9 (Linux
    7.1: RESOLVE_UNIX) cannot run here: the plan built for them is checked.
    """
    from hermetic.platforms.linux import landlock as ll

    src, out = "/ws/src", "/ws/out"  # as the action sees them; not looked at
    spec = spec_for(inputs=[src], outputs=[out])
    dirs = {src: True, out: True}
    # Under namespaces ABI 1 is left out: the mounts already keep inputs
    # read-only, and the layer would break renames inside the outputs.
    assert ll.layer_abi(abi, namespaces=True) == (0 if abi == 1 else abi)
    assert ll.layer_abi(abi, namespaces=False) == abi
    if abi == 1:
        plan, rules = linux_prepared._landlock_plan(
            spec, _caps(landlock_abi=1), True, linux_memory.CMemory()
        )
        assert (plan, rules) == ({"landlock_abi": 0}, ())
        return
    handled = ll.handled_fs(abi)
    assert bool(handled & ll.REFER) == (abi >= 2)
    assert bool(handled & ll.TRUNCATE) == (abi >= 3)
    assert bool(handled & ll.RESOLVE_UNIX) == (abi >= 9)
    for namespaces in (True, False):
        rules = ll.rules(spec, abi=abi, namespaces=namespaces, private_tmp=namespaces, dirs=dirs)
        assert all(r.access & ~handled == 0 for r in rules)
        # Inputs: never writing (a FIFO included), never a socket's lookup.
        assert _rights(rules, src) == ll.READ_ONLY
        assert _rights(rules, out) == ll.READ_WRITE & handled
        assert _rights(rules, out) & ll.REFER
        if namespaces:
            assert _rights(rules, "/tmp") == ll.PRIVATE_TMP & handled
            assert not _rights(rules, "/tmp") & ll.RESOLVE_UNIX
    plan, _ = linux_prepared._landlock_plan(
        spec, _caps(landlock_abi=abi), True, linux_memory.CMemory()
    )
    assert (plan["landlock_abi"], plan["landlock_fs"]) == (abi, handled)


def test_abi_1_says_the_layer_is_left_out(monkeypatch):
    """Pure (this kernel has ABI 7): capabilities() notes it on an ABI 1 host."""
    from hermetic.platforms.linux import landlock as ll

    def notes(abi: int) -> dict[str, str]:
        monkeypatch.setattr(
            linux_probe, "probe", lambda: _caps(user_namespaces=True, landlock_abi=abi)
        )
        linux.capabilities.cache_clear()
        return dict(linux.capabilities().notes)

    try:
        assert notes(1)["landlock_layer"] == ll.ABI1_NOTE
        assert "landlock_layer" not in notes(2)
    finally:
        monkeypatch.undo()
        linux.capabilities.cache_clear()  # the next caller probes this host again
