"""Classes of calls the seccomp filter checks by their arguments, tested
from inside the sandbox: set-id and file-capability files in the outputs,
and socket families that no namespace contains."""

from __future__ import annotations

import json
import os
import stat

import pytest
from test_linux_isolation import ERRNO, probe, spec_for
from test_linux_seccomp import syscall_numbers

pytestmark = pytest.mark.linux


def _syscall_violations(out) -> set[str]:
    return {
        v["attempted"].split("(")[0]
        for v in out.raw["violations"]
        if v["kind"] == "syscall" and v["decision"] == "denied"
    }


#: A version 2 security.capability value granting CAP_NET_RAW, effective.
_FILE_CAP = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)

SETID_PROBE = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads({numbers!r})
OUT = {out_dir!r}
AT_FDCWD = -100
def sys(name, *args):
    r = libc.syscall(NR[name], *args)
    return "ok" if r != -1 else errno.errorcode[ctypes.get_errno()]
def p(name):
    return (OUT + "/" + name).encode()
seen = {{}}
W = os.O_WRONLY | os.O_CREAT
seen["openat 4755"] = attempt(os.open, OUT + "/openat-suid", W, 0o4755)
seen["openat 2755"] = attempt(os.open, OUT + "/openat-sgid", W, 0o2755)
seen["openat 6755 excl"] = attempt(os.open, OUT + "/openat-excl", W | os.O_EXCL, 0o6755)
seen["tmpfile 4755"] = attempt(os.open, OUT, os.O_TMPFILE | os.O_WRONLY, 0o4755)
seen["mknodat 4755"] = attempt(os.mknod, OUT + "/mknod-suid", stat.S_IFREG | 0o4755)
seen["mknodat 2755 no type"] = attempt(os.mknod, OUT + "/mknod-sgid", 0o2755)
how = struct.pack("QQQ", W, 0o4755, 0)
seen["openat2"] = sys("openat2", AT_FDCWD, p("openat2"), how, len(how))
open(OUT + "/plain-chmod", "w").close()
seen["fchmodat2"] = sys("fchmodat2", AT_FDCWD, p("plain-chmod"), 0o4755, 0)
if "open" in NR:  # the legacy calls of x86_64
    seen["open 4755"] = sys("open", p("open-suid"), W, 0o4755)
    seen["creat 4755"] = sys("creat", p("creat-suid"), 0o4755)
    seen["mknod 4755"] = sys("mknod", p("mknod-legacy"), stat.S_IFREG | 0o4755, 0)
open(OUT + "/target", "w").close()
os.symlink("target", OUT + "/link")
fd = os.open(OUT + "/target", os.O_RDWR)
cap = {cap!r}
seen["setxattr cap"] = attempt(os.setxattr, OUT + "/target", "security.capability", cap)
seen["lsetxattr cap"] = attempt(
    lambda: os.setxattr(OUT + "/link", "security.capability", cap, follow_symlinks=False))
seen["fsetxattr cap"] = attempt(os.setxattr, fd, "security.capability", cap)
seen["setxattr user"] = attempt(os.setxattr, OUT + "/target", "user.note", b"x")
value = ctypes.create_string_buffer(b"x")
args = struct.pack("QII", ctypes.addressof(value), 1, 0)  # struct xattr_args
seen["setxattrat user"] = sys("setxattrat", AT_FDCWD, p("target"), 0, b"user.at", args, len(args))
# An existing set-id file linked or moved in (EXDEV across the sandbox's
# mounts; Landlock refuses it without its refer right).
for src in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount"):
    if os.path.exists(src):
        seen["link " + src] = attempt(os.link, src, OUT + "/linked")
        seen["rename " + src] = attempt(os.rename, src, OUT + "/moved")
# What builds do stays possible.
seen["plain create"] = attempt(os.open, OUT + "/plain", W, 0o644)
seen["plain exec"] = attempt(os.open, OUT + "/tool", W, 0o755)
seen["sticky dir"] = attempt(os.mkdir, OUT + "/dir", 0o1777)
seen["plain dir"] = attempt(os.mkdir, OUT + "/dir/sub", 0o6755)  # the kernel drops both bits
seen["rewrite"] = attempt(lambda: open(OUT + "/plain", "w").write("data"))
print(json.dumps(seen))
"""


def test_setid_and_capability_files_cannot_be_created(fs_runner, scratch):
    runner = fs_runner
    out_dir = os.path.join(scratch, "out")
    os.mkdir(out_dir)
    runner.own(out_dir)
    numbers = syscall_numbers()
    wanted = {k: numbers[k] for k in ("openat2", "open", "creat", "mknod") if k in numbers}
    # 452 on every architecture (calls added since Linux 5.1 share numbers).
    wanted["fchmodat2"] = numbers.get("fchmodat2", 452)
    wanted["setxattrat"] = numbers.get("setxattrat", 463)
    code = SETID_PROBE.format(numbers=json.dumps(wanted), out_dir=out_dir, cap=_FILE_CAP)
    out = probe(runner, spec_for(outputs=[out_dir]), ERRNO + "import json, stat\n" + code)
    seen = json.loads(out.text)
    moved_in = {k: v for k, v in seen.items() if k.startswith(("link ", "rename "))}
    assert moved_in and "ok" not in moved_in.values(), moved_in
    refused = {
        k: v
        for k, v in seen.items()
        if k not in moved_in and not k.startswith(("plain", "sticky", "rewrite"))
    }
    expected = {k: "EPERM" for k in refused}
    expected["openat2"] = "ENOSYS"  # libc falls back to openat, whose mode is checked
    for k in refused:
        if "xattr" in k:
            expected[k] = "ENOTSUP"  # what cp -a, tar and rsync take for no xattr support
    assert refused == expected, out.stderr
    assert {k: v for k, v in seen.items() if k not in refused and k not in moved_in} == {
        "plain create": "ok",
        "plain exec": "ok",
        "sticky dir": "ok",
        "plain dir": "ok",
        "rewrite": "ok",
    }
    # Nothing set-id, nothing with a capability, is left in the outputs.
    for root, dirs, files in os.walk(out_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (path, oct(st.st_mode))
            if not stat.S_ISLNK(st.st_mode):
                assert "security.capability" not in os.listxattr(path), path
    assert sorted(os.listdir(out_dir)) == ["dir", "link", "plain", "plain-chmod", "target", "tool"]
    # Each refusal is recorded with its call's name.
    recorded = _syscall_violations(out)
    assert {
        "openat",
        "mknodat",
        "fchmodat2",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "setxattrat",
    } <= recorded
    if "open" in numbers:
        assert {"open", "creat", "mknod"} <= recorded


SOCKET_PROBE = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
AF_VSOCK, NETLINK_KOBJECT_UEVENT = 40, 15
def sock(*args):
    try:
        socket.socket(*args).close()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def pair(family, kind):
    fds = (ctypes.c_int * 2)()
    if libc.socketpair(family, kind, 0, fds) == -1:
        return errno.errorcode[ctypes.get_errno()]
    os.close(fds[0]); os.close(fds[1])
    return "ok"
seen = {}
seen["vsock stream"] = sock(AF_VSOCK, socket.SOCK_STREAM)
seen["vsock dgram"] = sock(AF_VSOCK, socket.SOCK_DGRAM)
seen["vsock pair"] = pair(AF_VSOCK, socket.SOCK_STREAM)
seen["uevent"] = sock(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
seen["uevent raw cloexec"] = sock(
    socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
seen["netlink audit"] = sock(socket.AF_NETLINK, socket.SOCK_RAW, 9)
seen["packet"] = sock(17, socket.SOCK_RAW, 0)
seen["bluetooth"] = sock(31, socket.SOCK_STREAM, 0)
seen["alg"] = sock(38, socket.SOCK_SEQPACKET, 0)
# What builds and tests use stays open.
seen["unix"] = sock(socket.AF_UNIX, socket.SOCK_STREAM)
seen["unix pair"] = pair(socket.AF_UNIX, socket.SOCK_STREAM)
seen["inet"] = sock(socket.AF_INET, socket.SOCK_STREAM)
seen["inet udp"] = sock(socket.AF_INET, socket.SOCK_DGRAM)
seen["inet6"] = sock(socket.AF_INET6, socket.SOCK_STREAM)
seen["route"] = sock(socket.AF_NETLINK, socket.SOCK_RAW, 0)
try:
    seen["if_nameindex"] = "ok" if "lo" in dict(socket.if_nameindex()).values() else "no lo"
except OSError as e:
    seen["if_nameindex"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(seen))
"""

_ALLOWED_SOCKETS = ("unix", "inet", "route", "if_nameindex")


def test_only_the_contained_socket_families_open(runner):
    out = probe(runner, spec_for(), ERRNO + "import json\n" + SOCKET_PROBE)
    seen = json.loads(out.text)
    refused = {k: v for k, v in seen.items() if not k.startswith(_ALLOWED_SOCKETS)}
    allowed = {k: v for k, v in seen.items() if k.startswith(_ALLOWED_SOCKETS)}
    assert refused == {k: "EAFNOSUPPORT" for k in refused}, out.stderr
    assert allowed == {k: "ok" for k in allowed}, out.stderr
    # Recorded as denials of the call, with its arguments: the family first.
    attempted = [v["attempted"] for v in out.raw["violations"] if v["kind"] == "syscall"]
    assert {"socket", "socketpair"} <= _syscall_violations(out), attempted
    assert any(a.startswith("socket(0x28,") for a in attempted), attempted


@pytest.mark.parametrize("fs_runner", ["landlock"], indirect=True)
def test_without_a_network_namespace_sockets_stay_refused(fs_runner):
    # No network namespace: socket() is refused whatever the family (EPERM
    # for the contained ones, as before); socketpair(AF_UNIX) still works.
    out = probe(fs_runner, spec_for(), ERRNO + "import json\n" + SOCKET_PROBE)
    seen = json.loads(out.text)
    assert seen["unix pair"] == "ok"
    assert seen["vsock pair"] == "EAFNOSUPPORT"
    assert seen["vsock stream"] == seen["uevent"] == "EAFNOSUPPORT"
    assert seen["unix"] == seen["inet"] == seen["route"] == "EPERM"
