"""benchmarks/profile_syscalls.py's reading of an strace -f trace: who made
each call (docs/performance.md's per-stage figures come from it)."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

TRACE = """\
100 getpid() = 100
100 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD\
|CLONE_SYSVSEM|CLONE_SETTLS, parent_tid=[101], tls=0x7f) = 101
101 futex(0x1, FUTEX_WAIT_PRIVATE, 0, NULL) = 0
101 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_PIDFD|CLONE_NEWPID|SIGCHLD <unfinished ...>
102 rt_sigaction(SIGHUP, {sa_handler=SIG_DFL, sa_mask=[], sa_flags=0}, NULL, 8) = 0
101 <... clone resumed>, parent_tid=[5]) = 102
102 mount("none", "/", NULL, MS_REC|MS_PRIVATE, NULL) = 0
102 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_VFORK|SIGCHLD <unfinished ...>
103 prctl(PR_SET_PDEATHSIG, SIGKILL) = 0
103 execve("/bin/sh", ["/bin/sh"], 0x7f /* 5 vars */) = 0
102 <... clone resumed>) = 2 /* 103 in strace's PID NS */
103 vfork( <unfinished ...>
104 execve("/bin/true", ["/bin/true"], 0x7f /* 5 vars */) = 0
103 <... vfork resumed>) = 3 /* 104 in strace's PID NS */
104 brk(NULL) = 0x5
101 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_PIDFD|CLONE_NEWPID|SIGCHLD) = 105
105 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_VFORK|SIGCHLD <unfinished ...>
103 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD <unfinished ...>
106 prctl(PR_CAPBSET_READ, 0) = 1
103 <... clone resumed>, child_tidptr=0x7f) = 4 /* 107 in strace's PID NS */
107 exit_group(0) = ?
103 exit_group(0) = ?
100 wait4(102, NULL, 0, NULL) = 102
100 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_VFORK|CLONE_FILES|CLONE_NEWNS|SIGCHLD \
<unfinished ...>
108 openat(AT_FDCWD, "/proc/self/ns/mnt", O_RDONLY|O_CLOEXEC) = 3
100 <... clone resumed>) = 108
"""


def test_calls_are_counted_by_who_made_them(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "profile_syscalls", ROOT / "benchmarks" / "profile_syscalls.py"
    )
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    trace = tmp_path / "trace"
    trace.write_text(TRACE)
    calls = {role: dict(counts) for role, counts in tool.count(str(trace)).items()}
    # A clone in the sandbox returns the child's pid there, with strace's
    # own in a comment (--pidns-translation).  106 is the action of a
    # standby whose pid 1 (105) is killed before its vfork returns: its
    # parent is the one call pending when it appeared that made no other
    # process (103's clone made 107).
    assert calls == {
        "caller": {"getpid": 1, "clone": 4, "futex": 1, "wait4": 1},
        "helper": {"openat": 1},
        "pid 1": {"rt_sigaction": 1, "mount": 1, "clone": 2},
        "setup": {"prctl": 2, "execve": 1},
        "command": {"vfork": 1, "execve": 1, "brk": 1, "clone": 1, "exit_group": 2},
    }
