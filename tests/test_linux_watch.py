"""The periodic check's schedule, and its reading of a process tree through kept files.

- ``check_interval``: 20 ms during an action's first 100 ms, then a fifth
  of its age, never more than 100 ms (the guarantee docs/limits.md gives).
- ``wait_or_kill`` asks the check on that schedule: a 1 s action is checked
  about 18 times, not 50.
- Output is checked against ``max_output_bytes`` only when it is captured:
  with the caller's own descriptors (a launcher's), the check reads nothing
  for it.
- The watch's process tree (``_Tree``) finds what proctree.processes finds
  (children of a thread other than the main one included), reads an exited
  process's pid as gone, and leaves no descriptor open once closed.

The limits themselves are shown tripping in test_linux_limits.py,
test_linux_tmp_limit.py and test_linux_output_bounds.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import wait_for

from hermetic.monitoring import proctree
from hermetic.platforms.linux import watch
from hermetic.security import timeout

pytestmark = pytest.mark.linux


def test_the_interval_grows_with_the_actions_age_to_100_ms() -> None:
    assert timeout.check_interval(0.0) == 0.02
    assert timeout.check_interval(0.099) == 0.02
    assert timeout.check_interval(0.1) == 0.02
    assert timeout.check_interval(0.25) == pytest.approx(0.05)
    assert timeout.check_interval(0.5) == pytest.approx(0.1)
    assert timeout.check_interval(3600.0) == 0.1
    ages = [i / 1000 for i in range(0, 5000)]
    intervals = [timeout.check_interval(a) for a in ages]
    assert intervals == sorted(intervals)  # never shorter as the action ages
    assert all(max(0.02, min(a / 5, 0.1)) == i for a, i in zip(ages, intervals, strict=True))


def test_the_wait_asks_the_check_on_that_schedule() -> None:
    proc = subprocess.Popen(["sleep", "1"])
    pidfd = os.pidfd_open(proc.pid)
    asked: list[int] = []

    def check() -> str | None:
        asked.append(1)
        return None

    start = time.monotonic()
    try:
        timed_out, breach = timeout.wait_or_kill(
            pidfd, None, lambda sig: signal.pidfd_send_signal(pidfd, sig), check=check
        )
    finally:
        waited = time.monotonic() - start
        os.close(pidfd)
        proc.wait()
    assert (timed_out, breach) == (False, None)
    # The most checks the schedule allows in the time it waited (each wait
    # lasts at least its interval; a busy host only stretches them): for
    # one second, 5 in the first 100 ms, 9 to 0.5 s, then one per 100 ms,
    # about 18, where 20 ms throughout asked 50.
    most, at = 0, 0.0
    while at < waited:
        at += timeout.check_interval(at)
        most += 1
    assert 1 <= len(asked) <= most, (len(asked), most, waited)
    assert most < waited / timeout.CHECK_INTERVAL / 2


def test_a_breach_ends_the_process_when_the_check_says_so() -> None:
    proc = subprocess.Popen(["sleep", "600"])
    pidfd = os.pidfd_open(proc.pid)
    asked: list[int] = []

    def check() -> str | None:
        asked.append(1)
        return "cpu" if len(asked) == 8 else None  # past the fast 100 ms

    try:
        timed_out, breach = timeout.wait_or_kill(
            pidfd, None, lambda sig: signal.pidfd_send_signal(pidfd, sig), check=check
        )
    finally:
        os.close(pidfd)
    assert (timed_out, breach) == (False, "cpu")
    assert proc.wait() == -signal.SIGKILL


#: A process with a second thread that forks (its child hangs off that
#: thread's children file), and a shell with two children.
TREE = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    kids = []
    t = threading.Thread(target=lambda: kids.append(subprocess.Popen(["sleep", "60"])))
    t.start(); t.join()
    sh = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _tree_pids(tree: watch._Tree) -> set[int]:
    return {pid for pid, _ in tree.walk()}


def test_the_tree_finds_what_proctree_finds_and_closes_its_files() -> None:
    before = _open_fds()
    top = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert top.stdout is not None and top.stdout.readline() == b"ready\n"
        # The shell's two sleeps are started once it runs them: wait for
        # the tree to settle (top, its sleep, sh, sh's two sleeps, each
        # sleep past its exec: a shell's child is a "sh" until then).
        assert wait_for(lambda: _settled(top.pid))
        tree = watch._Tree(top.pid, statm=True)
        found = _tree_pids(tree)
        assert found == set(proctree.processes(top.pid))
        # Kept: three files per process (stat, children, io) and statm.
        assert len(_open_fds() - before) == 4 * 5 + 1  # + the pipe

        # A process that exits and is reaped is gone, its files closed.
        sh = [p for p in found if p != top.pid and _comm(p) == b"sh"]
        assert len(sh) == 1, [_comm(p) for p in found]
        (sh_pid,) = sh
        sleeps = [int(c) for c in _children(sh_pid)]
        os.kill(sleeps[0], signal.SIGKILL)
        assert wait_for(lambda: sleeps[0] not in set(proctree.processes(top.pid)))
        assert wait_for(lambda: sleeps[0] not in _tree_pids(tree))
        assert _tree_pids(tree) == set(proctree.processes(top.pid))
        assert sleeps[0] not in tree.procs
        assert len(_open_fds() - before) == 4 * 4 + 1
        tree.close()
        assert tree.procs == {}
    finally:
        os.killpg(top.pid, signal.SIGKILL)
        top.wait()
        if top.stdout is not None:
            top.stdout.close()
    assert _open_fds() == before


def test_an_exited_process_reads_as_gone_not_as_its_last_figures() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    tree = watch._Tree(proc.pid, statm=False)
    try:
        assert _tree_pids(tree) == {proc.pid}
        proc.kill()
        proc.wait()  # reaped: the kept files name a process that is no more
        assert _tree_pids(tree) == set()
        assert tree.procs == {}
    finally:
        tree.close()


def _settled(top: int) -> bool:
    try:
        names = sorted(_comm(p) for p in proctree.processes(top) if p != top)
    except OSError:
        return False  # one ended or changed meanwhile: look again
    return names == [b"sh", b"sleep", b"sleep", b"sleep"]


def _comm(pid: int) -> bytes:
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().strip()


def _children(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
        return f.read().split()


def test_output_is_checked_only_when_it_is_captured() -> None:
    from hermetic.platforms.linux.limits import LimitPlan

    plan = LimitPlan(
        rlimits=(),
        cgroup=False,
        cpu_ns=0,
        sampled_memory=0,
        disk_io=0,
        output_bytes=10,
        unenforced=(),
    )
    out = os.memfd_create("out", os.MFD_CLOEXEC)
    err = os.memfd_create("err", os.MFD_CLOEXEC)
    try:
        os.write(out, b"x" * 11)
        captured = watch.Watch(plan, False, None, out, err, captured=True)
        assert captured() == "output"
        assert captured.observed["output"] == 11
        # Neither stream captured: the files behind the descriptors are
        # never looked at (closed ones here, which a look would fail on).
        os.close(out)
        os.close(err)
        out = err = -1
        passed = watch.Watch(plan, False, None, out, err, captured=False)
        assert passed() is None
        assert "output" not in passed.observed
        assert passed.interval(0.0) == timeout.CHECK_INTERVAL_MAX
    finally:
        for fd in (out, err):
            if fd >= 0:
                os.close(fd)
