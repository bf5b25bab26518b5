"""The seccomp program, run in a small BPF interpreter for every syscall
number: the binary search must decide exactly what the rule table says."""

from __future__ import annotations

import os
import stat
import struct
import sys

import pytest

pytestmark = pytest.mark.linux

if sys.platform != "linux":  # pragma: no cover - collected on Linux only
    pytest.skip("the C core is built for Linux here", allow_module_level=True)

from hermetic._native import ffi, lib  # noqa: E402
from test_linux_seccomp import denied_table, syscall_numbers  # noqa: E402

#: The architecture tags of seccomp_data.arch: this build's and the 32-bit
#: entry's (i386 on x86_64, arm on aarch64), whose calls are all refused.
ARCHES = {"x86_64": (0xC000003E, 0x40000003), "aarch64": (0xC00000B7, 0x40000028)}
MACHINE = os.uname().machine
if MACHINE not in ARCHES:  # pragma: no cover - the filter is built for these two only
    pytest.skip(
        f"the filter is built for x86_64 and aarch64, not {MACHINE}", allow_module_level=True
    )
ARCH, ARCH_32 = ARCHES[MACHINE]

RET_ALLOW = 0x7FFF0000
RET_NOTIFY = 0x7FC00000
RET_ERRNO = 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT, EOPNOTSUPP = 1, 38, 97, 95
#: This architecture's numbers, from the compiled module (hm_syscall_name).
NR = syscall_numbers()
#: Calls that write a path whatever their flags (x86_64 also has the legacy
#: forms creat, mkdir, mknod...; aarch64 only the *at ones).
PATH_WRITES = {
    NR[name]
    for name in (
        "creat",
        "mkdir",
        "mknod",
        "unlink",
        "rmdir",
        "rename",
        "link",
        "symlink",
        "truncate",
        "mkdirat",
        "mknodat",
        "unlinkat",
        "renameat",
        "linkat",
        "symlinkat",
        "renameat2",
    )
    if name in NR
}
SOCKET_CALLS = {NR["socket"], NR["socketpair"]}
SETXATTR_CALLS = {NR[n] for n in ("setxattr", "lsetxattr", "fsetxattr", "setxattrat")}
AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel's int
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 1, 2, 10, 16, 17, 40


def build(**opts) -> list[tuple[int, int, int, int]]:
    o = ffi.new("struct hm_filter_opts *")
    ptrs = opts.pop("exec_ptrs", [])
    keep = ffi.new("unsigned long long[]", ptrs or [0])
    o.exec_ptrs = keep
    o.n_exec_ptrs = len(ptrs)
    for k, v in opts.items():
        setattr(o, k, v)
    buf = ffi.new("unsigned char[]", 8 * 4096)
    n = lib.hm_seccomp_build(buf, 4096, o)
    assert n > 0
    raw = bytes(ffi.buffer(buf, 8 * n))
    return [struct.unpack_from("=HBBI", raw, 8 * i) for i in range(n)]


def args(*a: int) -> tuple[int, ...]:
    return a + (0,) * (6 - len(a))


def run(prog, nr, args=(0,) * 6, arch=ARCH) -> int:
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # ld w abs
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:  # ret k
            return k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset (k)
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x} at {pc}")
        pc += 1


def test_every_number_gets_what_the_rules_say():
    denied = set(denied_table().values())
    for notify in (0, 1):
        prog = build(notify=notify, audit_writes=notify)
        deny = RET_NOTIFY if notify else RET_ERRNO | EPERM
        # Past the last rule too: every boundary of the search is checked
        # from both sides.
        for nr in [*range(0, 1100), 0x3FFFFFFF]:
            got = run(prog, nr)
            if nr in denied:
                assert got == deny, nr
            elif nr in (NR["clone3"], NR["openat2"]):
                assert got == RET_ERRNO | ENOSYS, nr
            elif nr in SOCKET_CALLS:  # AF_UNSPEC: not a family the sandbox contains
                assert got == (RET_NOTIFY if notify else RET_ERRNO | EAFNOSUPPORT), nr
            elif nr in SETXATTR_CALLS:
                assert got == (RET_NOTIFY if notify else RET_ERRNO | EOPNOTSUPP), nr
            elif notify and nr in PATH_WRITES:
                assert got == RET_NOTIFY, nr
            else:  # zero arguments: no namespace flag, no write flag, no setuid bit
                assert got == RET_ALLOW, nr
        assert run(prog, NR["clone"], args(0x10000000)) == deny  # CLONE_NEWUSER
        assert run(prog, NR["clone"], args(0x11)) == RET_ALLOW  # fork-like clone
        assert run(prog, NR["openat"], args(0, 0, 0o1)) == (RET_NOTIFY if notify else RET_ALLOW)
        assert run(prog, NR["openat"], args(0, 0, 0o0)) == RET_ALLOW  # O_RDONLY
        assert run(prog, NR["fchmodat"], args(0, 0, 0o2755)) == deny  # g+s
        assert run(prog, NR["fchmodat2"], args(0, 0, 0o4755)) == deny  # u+s
        assert run(prog, NR["fchmod"], args(0, 0o4755)) == deny
        assert run(prog, NR["fchmod"], args(0, 0o755)) == RET_ALLOW
        if "chmod" in NR:
            assert run(prog, NR["chmod"], args(0, 0o4755)) == deny
        assert run(prog, NR["ioctl"], args(0, 0x5412)) == deny  # TIOCSTI
        assert run(prog, NR["ioctl"], args(0, 0x5413)) == RET_ALLOW  # TIOCGWINSZ
        assert run(prog, 1, arch=ARCH_32) == RET_ERRNO | EPERM  # the 32-bit entry
        if MACHINE == "x86_64":
            assert run(prog, 0x40000000 | 1) == RET_ERRNO | EPERM  # x32


@pytest.mark.parametrize("notify", [0, 1])
def test_creation_modes_are_checked_before_the_write_audit(notify):
    prog = build(notify=notify, audit_writes=notify)
    deny = RET_NOTIFY if notify else RET_ERRNO | EPERM
    write = RET_NOTIFY if notify else RET_ALLOW
    creat_w = os.O_CREAT | os.O_WRONLY
    tmpfile = os.O_TMPFILE | os.O_WRONLY
    openat, mknodat = NR["openat"], NR["mknodat"]
    for mode in (0o4755, 0o2755, 0o6700, 0o4000):
        assert run(prog, openat, args(AT_FDCWD, 0, creat_w, mode)) == deny, oct(mode)
        assert run(prog, openat, args(AT_FDCWD, 0, creat_w | os.O_EXCL, mode)) == deny
        assert run(prog, openat, args(AT_FDCWD, 0, tmpfile, mode)) == deny
        assert run(prog, mknodat, args(AT_FDCWD, 0, stat.S_IFREG | mode)) == deny
        assert run(prog, mknodat, args(AT_FDCWD, 0, mode)) == deny  # type 0: a regular file
        # Without a creating flag the kernel ignores the mode.
        assert run(prog, openat, args(AT_FDCWD, 0, os.O_RDONLY, mode)) == RET_ALLOW
        assert run(prog, openat, args(AT_FDCWD, 0, os.O_DIRECTORY, mode)) == RET_ALLOW
        assert run(prog, openat, args(AT_FDCWD, 0, os.O_WRONLY, mode)) == write
    # The kernel reads the mode as 32 bits: bits above say nothing.
    assert run(prog, openat, args(AT_FDCWD, 0, creat_w, (1 << 32) | 0o4755)) == deny
    assert run(prog, openat, args(AT_FDCWD, 0, creat_w, (0o4000 << 32) | 0o644)) == write
    for mode in (0o644, 0o755, 0o1777):
        assert run(prog, openat, args(AT_FDCWD, 0, creat_w, mode)) == write
        assert run(prog, openat, args(AT_FDCWD, 0, tmpfile, mode)) == write
        assert run(prog, mknodat, args(AT_FDCWD, 0, stat.S_IFREG | mode)) == write
    assert run(prog, NR["openat2"], args(AT_FDCWD, 0, 0, 24)) == RET_ERRNO | ENOSYS
    if "open" in NR:  # x86_64's legacy calls
        assert run(prog, NR["open"], args(0, creat_w, 0o4755)) == deny
        assert run(prog, NR["open"], args(0, creat_w, 0o644)) == write
        assert run(prog, NR["open"], args(0, os.O_RDONLY, 0o4755)) == RET_ALLOW
        assert run(prog, NR["creat"], args(0, 0o2755)) == deny
        assert run(prog, NR["creat"], args(0, 0o644)) == write
        assert run(prog, NR["mknod"], args(0, stat.S_IFREG | 0o4755)) == deny
        assert run(prog, NR["mkdir"], args(0, 0o6755)) == write  # the kernel drops both bits


@pytest.mark.parametrize("notify", [0, 1])
def test_socket_families_are_a_list(notify):
    prog = build(notify=notify)
    refuse = RET_NOTIFY if notify else RET_ERRNO | EAFNOSUPPORT
    NETLINK_ROUTE, NETLINK_AUDIT, NETLINK_KOBJECT_UEVENT = 0, 9, 15
    for nr in SOCKET_CALLS:
        for family in (AF_UNIX, AF_INET, AF_INET6):
            assert run(prog, nr, args(family, 1, 0)) == RET_ALLOW, (nr, family)
            # The kernel reads the family as an int: the high word is ignored.
            assert run(prog, nr, args((7 << 32) | family, 1, 0)) == RET_ALLOW
        assert run(prog, nr, args(AF_NETLINK, 3, NETLINK_ROUTE)) == RET_ALLOW
        assert run(prog, nr, args(AF_NETLINK, 3, (1 << 32) | NETLINK_ROUTE)) == RET_ALLOW
        for proto in (NETLINK_KOBJECT_UEVENT, NETLINK_AUDIT, 16):
            assert run(prog, nr, args(AF_NETLINK, 3, proto)) == refuse, proto
        for family in (0, AF_PACKET, AF_VSOCK, 31, 38, 44, 45, 46, 255, 0xFFFFFFFF):
            assert run(prog, nr, args(family, 1, 0)) == refuse, (nr, family)
        assert run(prog, nr, args((1 << 32) | AF_VSOCK, 1, 0)) == refuse
    # Without a network namespace, no socket() at all; socketpair() keeps its list.
    prog = build(notify=notify, deny_sockets=1)
    assert run(prog, NR["socket"], args(AF_INET, 1, 0)) == (
        RET_NOTIFY if notify else RET_ERRNO | EPERM
    )
    assert run(prog, NR["socketpair"], args(AF_UNIX, 1, 0)) == RET_ALLOW
    assert run(prog, NR["socketpair"], args(AF_VSOCK, 1, 0)) == refuse


def test_policy_options_and_a_long_exec_list():
    ptrs = [0x7F0000001000 + 16 * i for i in range(80)]
    prog = build(notify=1, deny_fork=1, deny_exec=1, exec_ptrs=ptrs, deny_sockets=1)
    assert run(prog, NR["clone"], args(0x11)) == RET_NOTIFY  # a process: refused
    assert run(prog, NR["clone"], args(0x10000)) == RET_ALLOW  # a thread
    for ptr in (ptrs[0], ptrs[-1]):
        assert run(prog, NR["execve"], args(ptr)) == RET_ALLOW
    assert run(prog, NR["execve"], args(ptrs[0] + 8)) == RET_NOTIFY
    assert run(prog, NR["execve"], args(ptrs[0] + (1 << 32))) == RET_NOTIFY
    assert run(prog, NR["socket"], args(AF_INET, 1, 0)) == RET_NOTIFY


def test_the_program_is_short():
    # Installing a filter costs about half a microsecond per instruction
    # here (translation, JIT, the kernel's per-number emulation): neighbours
    # with the same return share one run of the search, the search leaves
    # share their returns, and rules with the same argument checks (chmod,
    # fchmod, creat, mknod; socket and socketpair) share one block.
    assert len(build()) < 136
    assert len(build(notify=1, audit_writes=1)) < 160
