"""cgroup v1 groups for sandboxes: limits, counters, and their reset between actions.

Moving a task into a v1 group by its id costs 8-16 ms here (the write
write-locks every thread group of the system, which waits for an RCU grace
period), far more than a whole sandbox; a thread that moves itself (writes
"0") skips that lock: about 0.2 ms for a slot's five groups, from Python.
Even that is kept off the per-action path: a V1Slot is a set of groups (memory,
pids, cpu, cpuacct, blkio) that one long-lived worker thread joins once,
moving itself; every sandbox that thread clones is born in the slot's
groups and needs no migration.
Between two actions the slot's limits are rewritten and its counters taken
as a baseline (writes and reads of control files cost microseconds).

The worker thread itself is one task of the slot: pids.max is raised by one
for it, and its own CPU (the spawn call, microseconds) lands in cpuacct.
Being a task of the memory group, it would also be a candidate for the
group's OOM killer, which weighs a task by its address space: the caller's
whole interpreter.  So the kernel's OOM killer is disabled in the slot
(memory.oom_control), an action that reaches the limit in a page fault
waits in the kernel, one that reaches it in a system call gets ENOMEM, and
the caller, seeing the group out of memory (under_oom()), ends the
sandbox.  The worker's own memory is charged to the caller's group (its address space's
owner), never to the slot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass

from hermetic.core.policies import ResourceLimits
from hermetic.monitoring.cgroups import PREFIX, field, remove_stale, remove_tree

UNLIMITED = -1

#: What a charge takes at once (the kernel's batch, 64 pages): a group with
#: less than this free, and as little page cache, is out of memory (see
#: _full()).
HEADROOM = 64 * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class SlotUsage:
    """What the slot's counters say about one action (None: not measured)."""

    peak_memory: int | None
    oom_kills: int
    fork_refusals: int


class V1Slot:
    """One worker thread's groups, one per used v1 controller.

    The control files read or written per action stay open, and a limit is
    written only when it differs from the previous action's: an action pays
    a handful of pread/pwrite calls, not opens.
    """

    #: (key, controller, file, writable) kept open for the slot's lifetime.
    FILES = (
        ("limit", "memory", "memory.limit_in_bytes", True),
        ("memsw", "memory", "memory.memsw.limit_in_bytes", True),
        ("usage", "memory", "memory.usage_in_bytes", False),
        ("peak", "memory", "memory.max_usage_in_bytes", True),
        ("oom", "memory", "memory.oom_control", True),
        ("stat", "memory", "memory.stat", False),
        ("pids", "pids", "pids.max", True),
        ("forks", "pids", "pids.events", False),
        ("shares", "cpu", "cpu.shares", True),
        ("cpu", "cpuacct", "cpuacct.usage", False),
    )

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs
        self._base: dict[str, int] = {}
        self._written: dict[str, str] = {}
        #: (oom_kill, pids.events max) as usage() last read them; the next
        #: prepare() takes them as its baselines instead of reading again.
        self._counted: tuple[int, int] | None = None
        self.since = 0.0  # see prepare()
        self._fds: dict[str, int] = {}
        try:
            for key, controller, name, writable in self.FILES:
                d = dirs.get(controller)
                path = os.path.join(d, name) if d else None
                if path and os.path.exists(path):
                    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
                    self._fds[key] = os.open(path, flags)
            if "oom" in self._fds:
                self._set("oom", "1")
        except BaseException:  # a signal handler's too: no descriptor left open
            self._close()
            raise

    @classmethod
    def create(cls, own_dirs: dict[str, str], name: str) -> V1Slot:
        """Make ``hermetic-<pid>/<name>`` below this process's group in each hierarchy."""
        made: list[str] = []
        dirs: dict[str, str] = {}
        try:
            for controller, own in sorted(own_dirs.items()):
                remove_stale(own)
                path = os.path.join(own, f"{PREFIX}{os.getpid()}", name)
                if path not in made:
                    os.makedirs(path, exist_ok=True)
                    made.append(path)
                dirs[controller] = path
            return cls(dirs)
        except BaseException:  # a signal handler's too: no group left behind
            for path in made:
                remove_tree(path)
            raise

    def task_files(self) -> list[str]:
        """Each group's ``tasks`` file, for a worker thread to join them all
        (once per slot: it writes "0" to each, see csrc/linux/worker.c)."""
        return [os.path.join(path, "tasks") for path in sorted(set(self.dirs.values()))]

    def _get(self, key: str, size: int = 4096) -> str | None:
        fd = self._fds.get(key)
        return None if fd is None else os.pread(fd, size, 0).decode("ascii")

    def _set(self, key: str, value: str) -> None:
        fd = self._fds.get(key)
        if fd is not None:
            os.pwrite(fd, value.encode("ascii"), 0)

    def _limit(self, key: str, value: str) -> None:
        if self._written.get(key) != value:
            self._set(key, value)
            self._written[key] = value

    def prepare(self, limits: ResourceLimits) -> None:
        """Set this action's limits and take the counters' baselines."""
        # (monotonic) No CPU that cpu_ns() counts was used before this.
        self.since = time.monotonic()
        mem = str(limits.max_memory_bytes or UNLIMITED)
        if self._written.get("limit", str(UNLIMITED)) != mem:
            # Unknown until all three writes are done: a failed one makes
            # the next action write them again (memsw may be lifted).
            self._written["limit"] = "?"
            try:
                # memsw (memory+swap) must stay >= memory: lift it, set
                # memory, then cap memsw too (no swap beyond the limit).
                self._set("memsw", str(UNLIMITED))
                self._set("limit", mem)
                self._set("memsw", mem)
            except OSError as e:
                # EBUSY: below what the group uses already.
                shown = mem if limits.max_memory_bytes else "unset"
                raise OSError(e.errno, f"max_memory_bytes={shown}: {e.strerror}") from e
            self._written["limit"] = mem
        self._limit("pids", str(limits.max_processes + 2) if limits.max_processes else "max")
        self._limit("shares", str(max(2, limits.cpu_shares)))
        self._set("peak", "0")
        usage = self._get("usage")
        self._base["memory"] = int(usage) if usage else 0
        # The counters usage() read after the previous action, when it was
        # the last to use the slot: they cannot have moved since, as no
        # task of the group but the worker thread (which only clones) is
        # left once the action's pid 1 is reaped.
        counted, self._counted = self._counted, None
        if counted is not None:
            self._base["oom"], self._base["forks"] = counted
        else:
            self._base["forks"] = field(self._get("forks") or "", "max")
            self._base["oom"] = field(self._get("oom") or "", "oom_kill")
        # Only a CPU limit reads the group's CPU (see cpu_ns).
        if limits.max_cpu_time_ms:
            self._base["cpu"] = self._cpu_total()
        else:
            self._base.pop("cpu", None)

    def _cpu_total(self) -> int:
        text = self._get("cpu")
        return int(text) if text else 0

    def cpu_ns(self) -> int | None:
        """CPU used since prepare(), in ns, all tasks of the group; None
        when prepare() had no CPU limit to watch."""
        if "cpu" not in self._fds or "cpu" not in self._base:
            return None
        return self._cpu_total() - self._base["cpu"]

    def under_oom(self) -> bool:
        """Whether the group is out of memory: a task of it waits for memory
        the limit does not allow, or it holds its limit with nothing left
        to reclaim.

        The kernel makes a task wait (``under_oom``) only when the charge
        comes from its page fault.  A charge made within a system call (a
        write to the private /tmp, a pipe's buffer) fails with ENOMEM
        instead, and the action may go on, or sleep, at its limit with no
        task waiting: _full() sees that state.
        """
        try:
            if field(self._get("oom") or "", "under_oom") > 0:
                return True
            return self._full()
        except OSError as e:
            if e.errno == errno.ENOMEM:
                # Reading a control file allocates kernel memory charged to
                # the reading thread's group, this one: full means out of memory.
                return True
            raise

    def _full(self) -> bool:
        """Whether the group is at its limit (usage within HEADROOM of it)
        with no file page left to reclaim (the file LRU lists, which also
        hold anonymous memory freed lazily with MADV_FREE; no swap is
        allowed beyond the limit, see prepare()).  memory.stat is read only
        when usage is that close.

        The rest of usage is then anonymous and shared memory, which only
        an exit frees, and kernel memory: pipe and Unix socket buffers, page
        tables, and caches of names and inodes (TCP and UDP buffers are not
        charged to a v1 group at all).  v1 shows no part of kernel
        memory (memory.kmem.slabinfo is empty on current kernels), so the
        caches, which reclaim could still shrink, count as held too: a
        group whose memory is all in them once its page cache is gone is
        ended as out of memory (docs/limits.md)."""
        limit = self._written.get("limit", str(UNLIMITED))
        usage = self._get("usage")
        if not limit.isdigit() or not usage:
            return False
        free = int(limit) - int(usage)
        if free > HEADROOM:
            return False
        # About 1 KiB here, but kernels add fields, and the totals come
        # after the group's own figures: read it whole.
        stat = self._get("stat", 1 << 16) or ""
        file = field(stat, "total_inactive_file") + field(stat, "total_active_file")
        return file <= HEADROOM

    def usage(self) -> SlotUsage:
        """The counters since prepare(); a figure that cannot be read is None."""
        peak = None
        with contextlib.suppress(OSError):
            top = self._get("peak")
            peak = None if top is None else max(0, int(top) - self._base.get("memory", 0))
        oom_total = field(self._get("oom") or "", "oom_kill")
        forks_total = field(self._get("forks") or "", "max")
        self._counted = (oom_total, forks_total)
        oom = oom_total - self._base.get("oom", 0)
        forks = forks_total - self._base.get("forks", 0)
        return SlotUsage(peak, oom, forks)

    def _close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def remove(self) -> None:
        """Remove the groups (the worker thread must have exited or left)."""
        self._close()
        for path in sorted(set(self.dirs.values())):
            remove_tree(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # the per-process parent, once empty
