"""The default seccomp filter, tested from inside, as root and as a normal user."""

from __future__ import annotations

import json

import pytest
from test_linux_isolation import ERRNO, probe, spec_for

pytestmark = pytest.mark.linux


def denied_table() -> dict[str, int]:
    from hermetic._native import ffi, lib

    n = lib.hm_seccomp_denied(ffi.NULL, ffi.NULL, 0)
    names = ffi.new("const char *[]", n)
    nrs = ffi.new("int[]", n)
    lib.hm_seccomp_denied(names, nrs, n)
    return {ffi.string(names[i]).decode(): nrs[i] for i in range(n)}


def test_every_denied_call_gets_eperm(runner):
    table = denied_table()
    assert {
        "mount",
        "unshare",
        "setns",
        "keyctl",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "reboot",
        "syslog",
        "open_by_handle_at",
    } <= set(table)
    out = probe(
        runner,
        spec_for(),
        f"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
seen = {{}}
for name, nr in {json.dumps(table)}.items():
    r = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
    seen[name] = errno.errorcode.get(ctypes.get_errno(), "?") if r == -1 else "returned"
print(json.dumps(seen))
""",
    )
    seen = json.loads(out.text)
    assert {name: e for name, e in seen.items() if e != "EPERM"} == {}


def test_calls_that_would_succeed_are_refused(runner):
    out = probe(
        runner,
        spec_for(),
        ERRNO
        + """
import ctypes, fcntl, termios
libc = ctypes.CDLL(None, use_errno=True)
def sys(*args):
    r = libc.syscall(*args)
    return "ok" if r != -1 else errno.errorcode[ctypes.get_errno()]
# A nested user namespace is allowed by the kernel here: the filter says no.
print(sys(272 if os.uname().machine == "x86_64" else 97, 0x10000000))
# The thread keyring's id (KEYCTL_GET_KEYRING_ID), normally answered.
print(sys(250 if os.uname().machine == "x86_64" else 219, 0, -1, 0))
open("/tmp/f", "w").close()
print(attempt(os.chmod, "/tmp/f", 0o755))
print(attempt(os.chmod, "/tmp/f", 0o4755))
print(attempt(os.chmod, "/tmp/f", 0o2755))
# TIOCSTI on a non-terminal is ENOTTY without the filter.
print(attempt(fcntl.ioctl, 1, termios.TIOCSTI, b"x"))
print(open("/proc/self/status").read().count("Seccomp:\\t2"))
""",
    )
    assert out.text.split() == ["EPERM", "EPERM", "ok", "EPERM", "EPERM", "EPERM", "1"]


def test_threads_and_processes_still_work(runner):
    # clone without namespace flags (fork, threads) is allowed; clone3 gives
    # ENOSYS and libc falls back to clone.
    out = probe(
        runner,
        spec_for(),
        """
import os, subprocess, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
print(subprocess.run(["sh", "-c", "echo child"], capture_output=True).stdout.decode().strip())
pid = os.fork()
if pid == 0:
    os._exit(7)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""",
    )
    assert out.text.split() == ["child", "7"]
