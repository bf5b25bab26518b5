"""The periodic check while a sandbox runs: which limit, if any, it has broken.

Called by the wait (hermetic/security/timeout.py) when the spec has a
limit that needs a live figure: while one could be overshot between two
checks, every 20 ms during the action's first 100 ms, then at a fifth of
its age, at most every 100 ms (``timeout.check_interval``); else every
100 ms (``Watch.interval``; docs/limits.md has the guarantees); returns
the name of the broken limit, and the wait then ends the sandbox.  See
limits.py for which limit is checked here and why.

A check runs for as long as the action does, in the caller's (or the
launcher's daemon's) thread, so it reads what it can through descriptors
kept open: opening a /proc file costs a path walk and a permission check
of the process (30-90 us here), reading an open one a few microseconds.
``_Tree`` keeps them per process of the sandbox, as
hermetic/monitoring/proctree.py reads them by path.
"""

from __future__ import annotations

import contextlib
import os
import time

from hermetic.core.outcome import Violation, ViolationKind
from hermetic.monitoring.cgroup_v1 import V1Slot
from hermetic.monitoring.cgroup_v2 import V2Group
from hermetic.platforms.linux.limits import LimitPlan
from hermetic.security.timeout import CHECK_INTERVAL, CHECK_INTERVAL_MAX, check_interval

_PAGE = os.sysconf("SC_PAGE_SIZE")
_READ = os.O_RDONLY | os.O_CLOEXEC
#: More storage bytes than one CPU moves in a second, as /proc/PID/io counts
#: them (read from storage, or dirtied in the page cache for it): a copy
#: into memory at memory's speed, which no core sustains past about 20 GB/s.
#: Until a sandbox's processes could have moved ``max_disk_io`` at this rate
#: on every CPU, the checks do not walk them for it.
IO_BYTES_PER_CPU_SECOND = 32 * 1024**3
#: CPUs the sandbox's processes may run on at most: every CPU the machine
#: may ever bring online, from the C library (os.cpu_count() can be lowered
#: by the interpreter's options, and counts only those online now).
_CPUS = max(os.sysconf("SC_NPROCESSORS_CONF"), os.cpu_count() or 1)


def _pread(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


class _Proc:
    """One process's /proc files, open.  The descriptors name that very
    process: once it has exited, reading them fails (ESRCH) or gives
    nothing, even if its pid number was given to another process since."""

    def __init__(self, pid: int, statm: bool) -> None:
        self.fds: list[int] = []
        try:
            base = f"/proc/{pid}"
            self.stat = self._open(f"{base}/stat")
            self.children = self._open(f"{base}/task/{pid}/children")
            self.io = self._open(f"{base}/io")
            self.statm = self._open(f"{base}/statm") if statm else -1
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> int:
        fd = os.open(path, _READ)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _fields(stat: bytes) -> list[bytes]:
    """/proc/PID/stat's fields after the command's name (which may hold
    spaces and parentheses): [0] is the state, [17] the thread count."""
    return stat.rsplit(b")", 1)[-1].split()


class _Tree:
    """The sandbox's processes, found from pid 1 down each check (as
    proctree.processes does), with their files kept open between checks.

    A pid that shows up in a parent's children while the files kept under
    that number are an exited process's (the pid was reused) has them
    reopened: a kept file that cannot be read is never trusted, and one
    that reads as a zombie's is reopened once, so a new process under an
    old number is read, not the old one's last figures."""

    def __init__(self, pid1: int, statm: bool) -> None:
        self.pid1 = pid1
        self.statm = statm
        self.procs: dict[int, _Proc] = {}

    def _stat(self, pid: int) -> tuple[_Proc, list[bytes]] | None:
        """The process's kept files and its stat fields; None once gone."""
        for attempt in (0, 1):
            proc = self.procs.get(pid)
            if proc is None:
                try:
                    proc = self.procs[pid] = _Proc(pid, self.statm)
                except OSError:
                    return None  # gone already
            try:
                fields = _fields(_pread(proc.stat))
                if fields and (attempt or fields[0] not in (b"Z", b"X")):
                    return proc, fields
            except OSError:
                pass
            proc.close()
            del self.procs[pid]
        return None

    def _children(self, pid: int, proc: _Proc, threads: int) -> list[int]:
        if threads <= 1:
            text = _pread(proc.children)
        else:
            # Children hang off the thread that forked them; a process
            # with threads is rare in a build (and read by path).
            text = b""
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        fd = os.open(f"/proc/{pid}/task/{tid}/children", _READ)
                        try:
                            text += b" " + _pread(fd)
                        finally:
                            os.close(fd)
        return [int(c) for c in text.split()]

    def walk(self) -> list[tuple[int, _Proc]]:
        """pid 1 and every live descendant, with their files."""
        found: list[tuple[int, _Proc]] = []
        todo = [self.pid1]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            got = self._stat(pid)
            if got is None:
                continue
            proc, fields = got
            found.append((pid, proc))
            try:
                threads = int(fields[17])
                todo.extend(self._children(pid, proc, threads))
            except (OSError, ValueError, IndexError):
                pass
        for pid in [p for p in self.procs if p not in seen]:
            self.procs.pop(pid).close()  # exited: its descriptors go
        return found

    def close(self) -> None:
        for proc in self.procs.values():
            proc.close()
        self.procs.clear()


def _left(limit: int, rate: float, read: tuple[float, int]) -> float:
    """Seconds until a figure read as ``read[1]`` at ``read[0]``, growing by
    at most ``rate`` per second on each CPU, could pass ``limit`` (<= 0:
    it could have by now).  A reading that cannot show a breach is not
    taken: none for an action shorter than that, and one at most every so
    often after."""
    since, seen = read
    return since + (limit - seen) / (rate * _CPUS) - time.monotonic()


def _io_bytes(proc: _Proc) -> int:
    """Bytes read from and written to storage (reaped children's included)."""
    total = 0
    with contextlib.suppress(OSError, ValueError):
        for line in _pread(proc.io).splitlines():
            key, _, value = line.partition(b":")
            if key in (b"read_bytes", b"write_bytes"):
                total += int(value)
    return total


def _resident(proc: _Proc) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(_pread(proc.statm).split()[1]) * _PAGE
    return 0


class Watch:
    """State of the checks for one action; ``pid1`` is set once it runs.

    The descriptors it keeps are closed by ``tmp_violation()``, which the
    caller asks once the sandbox is reaped, and at the latest when the
    object goes."""

    # What close() reads, set before __init__ runs: an exception raised
    # partway through it (a signal handler's) still leaves an object that
    # can go.
    _tmp_fd = -1
    _tree: _Tree | None = None

    def __init__(
        self,
        plan: LimitPlan,
        memory_in_slot: bool,
        slot: V1Slot | V2Group | None,
        out_fd: int,
        err_fd: int,
        tmp_bytes: int = 0,
        tmp_limit: str = "",
        captured: bool = True,
    ) -> None:
        self.plan = plan
        self.memory_in_slot = memory_in_slot
        self.slot = slot
        self.out_fd = out_fd
        self.err_fd = err_fd
        #: Whether the action's stdout or stderr goes to out_fd or err_fd
        #: (else both are the caller's, and nothing is captured).
        self.captured = captured
        self.pid1 = 0
        self.observed: dict[str, int] = {}
        self.peak_processes: int | None = None
        #: The private /tmp's size (0: none) and the limit that set it.
        self.tmp_bytes = tmp_bytes
        self.tmp_limit = tmp_limit
        self.tmp_full = False
        #: The private /tmp's root, opened (O_PATH) at the first check
        #: through pid 1's root; -1 before, or when it could not be.
        self._tmp_fd = -1
        self._tmp_tried = False
        self._tree: _Tree | None = None
        #: (monotonic) Made just before the action's start: what the
        #: sandbox's processes read or wrote before it is pid 1's own setup
        #: (a few directory blocks at most), so every byte the walk could
        #: count against ``max_disk_io`` moved after it.
        self.started = time.monotonic()
        #: The last reading of the group's CPU and of the processes' I/O:
        #: (when, before it was read; what it read).
        self._cpu_read: tuple[float, int] | None = None
        self._io_read = (self.started, 0)

    def interval(self, age: float) -> float:
        """Seconds from this check to the next (``wait_or_kill``'s
        ``interval``).  While a watched limit could be overshot between two
        checks (memory sampled without a cgroup, a captured output's
        ``max_output_bytes``, ``max_cpu_time_ms`` or ``max_disk_io`` once
        within reach) the checks follow ``check_interval``: 20 ms apart at
        first, so the overshoot stays in proportion.  Otherwise what they
        watch is held meanwhile (memory in a cgroup waits at its limit, a
        full ``/tmp`` refuses the write) or cannot be reached sooner: 100 ms
        apart, or as soon as a limit comes within reach."""
        plan, slot = self.plan, self.slot
        if plan.sampled_memory or (plan.output_bytes and self.captured):
            return check_interval(age)
        lefts = []
        if plan.disk_io:
            lefts.append(_left(plan.disk_io, IO_BYTES_PER_CPU_SECOND, self._io_read))
        if plan.cpu_ns and slot is not None:
            lefts.append(_left(plan.cpu_ns, 1e9, self._cpu_reading(slot)))
        if not lefts:
            return CHECK_INTERVAL_MAX
        left = min(lefts)
        if left <= 0:
            return check_interval(age)
        return min(CHECK_INTERVAL_MAX, max(CHECK_INTERVAL, left))

    def _cpu_reading(self, slot: V1Slot | V2Group) -> tuple[float, int]:
        """The last reading of the group's CPU, or none yet: 0 at its baseline."""
        return self._cpu_read or (slot.since, 0)

    def __call__(self) -> str | None:
        plan, slot = self.plan, self.slot
        if slot is not None and self.memory_in_slot and slot.under_oom():
            return "memory"
        # CPU time grows by at most a second per second on each CPU: the
        # group's counter is read only once the limit is within reach.
        if (
            plan.cpu_ns
            and slot is not None
            and _left(plan.cpu_ns, 1e9, self._cpu_reading(slot)) <= 0
        ):
            now = time.monotonic()
            used = slot.cpu_ns()
            if used is not None:
                self._cpu_read = (now, used)
                if used > plan.cpu_ns:
                    self.observed["cpu"] = used
                    return "cpu"
        # Only captured output is bounded (the caller's own descriptors are
        # the caller's business): the capture files are not looked at
        # otherwise, as interval() does not hurry for them.
        if plan.output_bytes and self.captured:
            size = os.fstat(self.out_fd).st_size + os.fstat(self.err_fd).st_size
            if size > plan.output_bytes:
                self.observed["output"] = size
                return "output"
        tmp_used = self._sample_tmp() if self.pid1 > 0 else 0
        disk_io = plan.disk_io and (
            _left(plan.disk_io, IO_BYTES_PER_CPU_SECOND, self._io_read) <= 0
        )
        if (disk_io or plan.sampled_memory) and self.pid1 > 0:
            walked = time.monotonic()
            if self._tree is None:
                self._tree = _Tree(self.pid1, bool(plan.sampled_memory))
            procs = self._tree.walk()
            # pid 1 is hermetic's, not the action's.
            count = sum(1 for pid, _ in procs if pid != self.pid1)
            self.peak_processes = max(self.peak_processes or 0, count)
            if disk_io:
                io = sum(_io_bytes(proc) for _, proc in procs)
                self._io_read = (walked, io)
                if io > plan.disk_io:
                    self.observed["disk_io"] = io
                    return "disk_io"
            if plan.sampled_memory:
                # The private /tmp is memory too, which no process's
                # resident size shows.  (A memory cgroup charges its pages
                # to the group by itself: checked on cgroup v1 here, where
                # a 48 MB file in /tmp raised the group's peak by 48 MB;
                # sampling is for hosts without one.)  pid 1 shares the
                # caller's memory: left out.
                rss = sum(_resident(proc) for pid, proc in procs if pid != self.pid1)
                rss += tmp_used
                self.observed["memory"] = max(self.observed.get("memory", 0), rss)
                if rss > plan.sampled_memory:
                    return "memory"
        return None

    def _sample_tmp(self) -> int:
        """The bytes the private /tmp holds now (0 when there is none or it
        cannot be seen), noting whether it is full."""
        if not self.tmp_bytes:
            return 0
        if not self._tmp_tried:
            self._tmp_tried = True
            # O_PATH: nothing of the action's is opened for reading (a FIFO
            # cannot block us), and O_NOFOLLOW|O_DIRECTORY: /tmp itself,
            # never a link the action put there.  Kept, it also holds the
            # tmpfs for one last look once the sandbox is gone.
            with contextlib.suppress(OSError):
                self._tmp_fd = os.open(
                    f"/proc/{self.pid1}/root/tmp",
                    os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                )
        if self._tmp_fd < 0:
            return 0
        try:
            st = os.fstatvfs(self._tmp_fd)
        except OSError:
            return 0
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        self.observed["tmp"] = max(self.observed.get("tmp", 0), used)
        # No block or no inode left: a write got ENOSPC.
        self.tmp_full = self.tmp_full or st.f_bfree == 0 or st.f_ffree == 0
        return used

    def close(self) -> None:
        """Close the kept descriptors (again: nothing)."""
        if self._tmp_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._tmp_fd)
            self._tmp_fd = -1
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def __del__(self) -> None:
        self.close()

    def tmp_violation(self) -> Violation | None:
        """The private /tmp seen full: a write got ENOSPC.  Seen by the
        periodic checks and by one last look here, after the sandbox is
        gone (the kept descriptor holds the tmpfs), so a /tmp left full is
        recorded whenever any check ran; one filled and emptied again
        between two checks goes unrecorded (the write was refused all the
        same).  Closes what the checks kept open."""
        try:
            if self._tmp_fd >= 0:
                self._sample_tmp()
        finally:
            self.close()
        if not self.tmp_full:
            return None
        return Violation(
            ViolationKind.RESOURCE,
            attempted="writes to the private /tmp beyond its size",
            decision="denied",
            limit=self.tmp_limit,
            observed=f"/tmp full at {self.observed.get('tmp', 0)} bytes",
        )
