"""allow_exec=False is enforced by Landlock's EXECUTE right, not by the
seccomp filter's pointer comparison alone.

The filter lets through the execve whose path pointer is the plan's.  After
its own exec the action can map that address, write another path there and
call execve with it: the filter sees the allowed pointer.  Landlock grants
EXECUTE only on the action's own executable and its interpreters, so that
exec still fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import FORBID_USERNS, _as_user_cmd, _user_env
from test_linux_isolation import spec_for

from hermetic import ProcessPolicy, UnsupportedError
from hermetic.platforms import linux
from hermetic.platforms.linux import landlock as linux_landlock
from hermetic.platforms.linux import prepared as linux_prepared

pytestmark = pytest.mark.linux

#: Run by the action: put another program's path at the address the filter
#: allows, then execve it through a raw system call.
POINTER_TRICK = r"""
import ctypes, errno, os, sys
addr = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
page = addr & ~4095
MAP_PRIVATE_ANON, MAP_FIXED_NOREPLACE = 0x22, 0x100000
got = libc.mmap(page, 8192, 3, MAP_PRIVATE_ANON | MAP_FIXED_NOREPLACE, -1, 0)
if got != page:
    print("busy", errno.errorcode.get(ctypes.get_errno()))
    sys.exit(0)
target = b"/usr/bin/uname\0"
ctypes.memmove(addr, target, len(target))
argv = (ctypes.c_char_p * 2)(b"uname", None)
envp = (ctypes.c_char_p * 1)(None)
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
libc.syscall(59 if os.uname().machine == "x86_64" else 221, addr, argv, envp)
print(errno.errorcode.get(ctypes.get_errno()))
"""

#: Run by the caller (as root, as the test user, or with user namespaces
#: forbidden): the address of the plan's execve path, then the action.
CALLER = """
import json, sys
from hermetic import HermeticExecutor
from hermetic.core.spec import SandboxSpec
spec = SandboxSpec.from_json(sys.stdin.read())
ex = HermeticExecutor.create(spec).unwrap()
prepared = ex._prepared
value, _keep = prepared._cached("exec+filter", "/usr/bin/python3")
addr = int(prepared._mem.ffi.cast("uintptr_t", value[0][0]))
r = ex.execute(["/usr/bin/python3", "-c", {code!r}, str(addr)]).unwrap()
print(json.dumps([r.isolation, r.exit_code, r.stdout.decode(), r.stderr.decode()]))
"""


@pytest.mark.parametrize(
    "mode",
    [pytest.param(m, marks=getattr(pytest.mark, m)) for m in ("root", "unprivileged", "landlock")],
)
def test_an_exec_at_the_allowed_address_is_refused(mode, test_user):
    if test_user is None and mode == "root":
        pytest.skip("the root mode needs the suite to run as root")
    spec = spec_for(process=ProcessPolicy(allow_exec=False))
    cmd = [sys.executable, "-c", CALLER.format(code=textwrap.dedent(POINTER_TRICK))]
    if mode == "landlock":
        cmd = [*FORBID_USERNS, *cmd]
    if mode != "root" and test_user is not None:
        cmd = _as_user_cmd(test_user, cmd)
    p = subprocess.run(
        cmd, input=spec.to_json(), capture_output=True, text=True, env=_user_env(), cwd="/"
    )
    assert p.returncode == 0, p.stderr
    isolation, code, stdout, stderr = json.loads(p.stdout)
    assert isolation == ("landlock" if mode == "landlock" else "namespaces")
    assert (code, stdout.split()) == (0, ["EACCES"]), stderr


@pytest.mark.root
def test_the_loader_still_runs_another_readable_program():
    """The documented limit (docs/known-limits.md): the ELF loader of a
    dynamic executable must keep EXECUTE (the kernel opens it to start the
    program), and given another program's path it maps and runs it, as the
    action could itself.  allow_exec=False limits which files the kernel
    executes, not which code the action runs."""
    trick = POINTER_TRICK.replace(
        'target = b"/usr/bin/uname\\0"', 'target = b"/lib64/ld-linux-x86-64.so.2\\0"'
    ).replace(
        '(ctypes.c_char_p * 2)(b"uname", None)',
        '(ctypes.c_char_p * 3)(b"ld.so", b"/usr/bin/uname", None)',
    )
    assert trick != POINTER_TRICK
    if not os.path.exists("/lib64/ld-linux-x86-64.so.2"):
        pytest.skip("the loader path of x86_64 glibc is spelled out here")
    spec = spec_for(process=ProcessPolicy(allow_exec=False))
    cmd = [sys.executable, "-c", CALLER.format(code=textwrap.dedent(trick))]
    p = subprocess.run(
        cmd, input=spec.to_json(), capture_output=True, text=True, env=_user_env(), cwd="/"
    )
    assert p.returncode == 0, p.stderr
    _, code, stdout, stderr = json.loads(p.stdout)
    assert (code, stdout.split()) == (0, ["Linux"]), stderr


def test_allow_exec_false_still_runs_the_action_and_its_interpreters(runner, scratch):
    """The action's own executable, found along PATH, runs (a script: its
    interpreter too, and the ELF loader of each), and exec inside it fails."""
    script = os.path.join(scratch, "tool")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho started\nexec /usr/bin/true\n")
    os.chmod(script, 0o755)
    spec = spec_for(inputs=[scratch], process=ProcessPolicy(allow_exec=False))
    out = runner.run(spec, [script])
    assert out.error is None, out.error
    assert out.text.split() == ["started"]
    assert out.exit_code != 0
    out = runner.run(spec, ["python3", "-c", "print('ok')"])  # found along PATH
    assert (out.error, out.text.split()) == (None, ["ok"]), out.stderr
    out = runner.run(spec, ["./tool"], cwd=scratch)  # relative: from the working directory
    assert (out.error, out.text.split()) == (None, ["started"]), out.stderr


def test_allow_exec_false_fails_closed_without_landlock():
    caps = linux.capabilities()
    spec = spec_for(process=ProcessPolicy(allow_exec=False))
    for abi in (None, 1):
        fake = type(caps)(**{**caps.__dict__, "landlock_abi": abi})
        with pytest.raises(UnsupportedError, match="allow_exec=False.*Landlock"):
            linux_prepared.require_exec_layer(spec, fake)
    assert linux_landlock.MIN_ABI_LAYER == 2


def test_exec_rules_strip_execute_elsewhere():
    """Pure: with exec files named, only they (and no directory) get EXECUTE."""
    spec = spec_for(inputs=["/ws/src"], outputs=["/ws/out"])
    rules = linux_landlock.rules(
        spec,
        abi=7,
        namespaces=True,
        private_tmp=True,
        dirs={"/ws/src": True, "/ws/out": True, "/usr/bin/python3.11": False},
        exec_files=("/usr/bin/python3.11",),
    )
    with_exec = [r.path for r in rules if r.access & linux_landlock.EXECUTE]
    assert with_exec == ["/usr/bin/python3.11"]
