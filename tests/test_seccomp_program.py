"""The seccomp program, run in a small BPF interpreter for every syscall
number: the binary search must decide exactly what the rule table says."""

from __future__ import annotations

import struct
import sys

import pytest

pytestmark = pytest.mark.linux

if sys.platform != "linux":  # pragma: no cover - collected on Linux only
    pytest.skip("the C core is built for Linux here", allow_module_level=True)

from hermetic._native import ffi, lib  # noqa: E402
from test_linux_seccomp import denied_table  # noqa: E402

RET_ALLOW = 0x7FFF0000
RET_NOTIFY = 0x7FC00000
RET_ERRNO = 0x00050000
EPERM, ENOSYS = 1, 38
ARCH_X86_64 = 0xC000003E
NR_CLONE3, NR_CLONE, NR_EXECVE, NR_SOCKET = 435, 56, 59, 41
#: x86_64 calls that write a path whatever their flags (creat, mkdir, mknod,
#: unlink, rmdir, rename, link, symlink, truncate, the *at forms, renameat2,
#: openat2).
PATH_WRITES = {85, 83, 133, 87, 84, 82, 86, 88, 76, 258, 259, 263, 264, 265, 266, 316, 437}


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


def run(prog, nr, args=(0,) * 6, arch=ARCH_X86_64) -> int:
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


@pytest.mark.skipif(
    __import__("os").uname().machine != "x86_64", reason="the numbers below are x86_64's"
)
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
            elif nr == NR_CLONE3:
                assert got == RET_ERRNO | ENOSYS
            elif notify and nr in PATH_WRITES:
                assert got == RET_NOTIFY, nr
            else:  # zero arguments: no namespace flag, no write flag, no setuid bit
                assert got == RET_ALLOW, nr
        assert run(prog, NR_CLONE, (0x10000000,) + (0,) * 5) == deny  # CLONE_NEWUSER
        assert run(prog, NR_CLONE, (0x11,) + (0,) * 5) == RET_ALLOW  # fork-like clone
        assert run(prog, 257, (0, 0, 0o1) + (0,) * 3) == (RET_NOTIFY if notify else RET_ALLOW)
        assert run(prog, 257, (0, 0, 0o0) + (0,) * 3) == RET_ALLOW  # O_RDONLY
        assert run(prog, 90, (0, 0o4755) + (0,) * 4) == deny  # chmod u+s
        assert run(prog, 268, (0, 0, 0o2755) + (0,) * 3) == deny  # fchmodat g+s
        assert run(prog, 91, (0, 0o755) + (0,) * 4) == RET_ALLOW  # fchmod
        assert run(prog, 16, (0, 0x5412) + (0,) * 4) == deny  # ioctl TIOCSTI
        assert run(prog, 16, (0, 0x5413) + (0,) * 4) == RET_ALLOW  # TIOCGWINSZ
        assert run(prog, 0x40000000 | 1) == RET_ERRNO | EPERM  # x32
        assert run(prog, 1, arch=0x40000003) == RET_ERRNO | EPERM  # i386


def test_policy_options_and_a_long_exec_list():
    ptrs = [0x7F0000001000 + 16 * i for i in range(80)]
    prog = build(notify=1, deny_fork=1, deny_exec=1, exec_ptrs=ptrs, deny_sockets=1)
    assert run(prog, NR_CLONE, (0x11,) + (0,) * 5) == RET_NOTIFY  # a process: refused
    assert run(prog, NR_CLONE, (0x10000,) + (0,) * 5) == RET_ALLOW  # a thread
    for ptr in (ptrs[0], ptrs[-1]):
        assert run(prog, NR_EXECVE, (ptr,) + (0,) * 5) == RET_ALLOW
    assert run(prog, NR_EXECVE, (ptrs[0] + 8,) + (0,) * 5) == RET_NOTIFY
    assert run(prog, NR_EXECVE, (ptrs[0] + (1 << 32),) + (0,) * 5) == RET_NOTIFY
    assert run(prog, NR_SOCKET) == RET_NOTIFY


def test_the_program_is_short():
    # Installing a filter costs about half a microsecond per instruction
    # here (translation, JIT, the kernel's per-number emulation): neighbours
    # with the same return share one run of the search, and the search
    # leaves share their returns.
    assert len(build()) < 100
    assert len(build(notify=1, audit_writes=1)) < 128
