"""cgroup v2 groups for sandboxes: one per action, entered at clone time.

On cgroup v2, clone3(CLONE_INTO_CGROUP) starts pid 1 inside its group, so
no task is ever migrated and a fresh group per action costs a mkdir, a few
control-file writes and an rmdir.  The groups live in ``hermetic-<pid>``
below this process's own group, with the memory, pids and cpu controllers
enabled for them; that needs the own group either to be the hierarchy's
root or to have those controllers delegated already (a group holding
processes cannot enable controllers for its children: the "no internal
processes" rule).  Teardown writes cgroup.kill, then removes the group.

Only the action's processes are in its group: pid 1, which shares the
caller's memory, clones the action into it (clone3 from pid 1) and stays
outside, so the kernel's OOM killer there can only pick the action's
processes, never a task whose address space is the caller's.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import threading
import time

from hermetic.core.policies import ResourceLimits
from hermetic.monitoring.cgroup_v1 import SlotUsage
from hermetic.monitoring.cgroups import (
    PREFIX,
    field,
    hierarchies,
    read_text,
    remove_stale,
    remove_tree,
    write_text,
)

CONTROLLERS = ("memory", "pids", "cpu")


def weight(shares: int) -> int:
    """cpu.shares (v1, 2..262144, default 1024) as cpu.weight (v2, 1..10000, 100)."""
    return max(1, min(10000, 1 + ((max(2, shares) - 2) * 9999) // 262142))


class V2Parent:
    """This process's ``hermetic-<pid>`` group, made once, with controllers on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._pid = 0
        self._names = itertools.count()
        self._in_use: set[str] = set()

    @staticmethod
    def own_dir() -> str | None:
        for h in hierarchies():
            if h.version == 2:
                return h.own_dir
        return None

    def available(self) -> str | None:
        """None when per-action v2 groups can be made here, else why not."""
        own = self.own_dir()
        if own is None:
            return "no cgroup v2 hierarchy"
        try:
            have = set(read_text(os.path.join(own, "cgroup.controllers")).split())
        except OSError as e:
            return f"cannot read {own}/cgroup.controllers: {e.strerror}"
        missing = [c for c in CONTROLLERS if c not in have]
        if missing:
            return f"cgroup v2 controllers {', '.join(missing)} are not available in {own}"
        if not os.access(own, os.W_OK):
            return f"this process's cgroup {own} is not writable (no delegation)"
        return None

    def path(self) -> str:
        with self._lock:
            if self._path is not None and self._pid == os.getpid():
                return self._path
            own = self.own_dir()
            if own is None:
                raise OSError("no cgroup v2 hierarchy")
            remove_stale(own)
            enabled = set(read_text(os.path.join(own, "cgroup.subtree_control")).split())
            if not set(CONTROLLERS) <= enabled:
                # EBUSY when the own group holds processes and is not the root.
                write_text(
                    os.path.join(own, "cgroup.subtree_control"),
                    " ".join(f"+{c}" for c in CONTROLLERS),
                )
            path = os.path.join(own, f"{PREFIX}{os.getpid()}")
            os.makedirs(path, exist_ok=True)
            write_text(
                os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS)
            )
            self._path, self._pid = path, os.getpid()
            return path

    def new_group(self, limits: ResourceLimits, leased: list[V2Group]) -> V2Group:
        """A new group for one action, appended to ``leased`` as soon as it exists.

        The caller closes what ``leased`` holds in a ``finally``: an exception
        (a signal handler's) can land anywhere, and a group must not outlive
        its action.  Groups left by an interruption before they reached
        ``leased`` are swept whenever no group is in use.
        """
        parent = self.path()
        with self._lock:
            if not self._in_use:
                self._sweep(parent)
            path = os.path.join(parent, f"a{next(self._names)}")
        # In ``leased`` before the directory exists: from here on, any
        # interruption leaves something the caller's ``finally`` closes.
        group = V2Group(path, self)
        leased.append(group)
        with self._lock:
            self._in_use.add(path)
        os.mkdir(path)
        group.configure(limits)
        return group

    def _sweep(self, parent: str) -> None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                if entry.is_dir() and entry.path not in self._in_use:
                    with contextlib.suppress(OSError):
                        write_text(os.path.join(entry.path, "cgroup.kill"), "1")
                    remove_tree(entry.path)

    def _done(self, path: str) -> None:
        with self._lock:
            self._in_use.discard(path)

    def close(self) -> None:
        with self._lock:
            if self._path is not None and self._pid == os.getpid():
                remove_tree(self._path)
            self._path = None


class V2Group:
    """One action's group: limits set, a directory descriptor for clone3."""

    def __init__(self, path: str, parent: V2Parent) -> None:
        self.path = path
        #: (monotonic) Before the group existed: no CPU it counts was used before.
        self.since = time.monotonic()
        self._parent = parent
        self._open: list[int] = []
        self.fd = -1
        self._cpu = -1

    def configure(self, limits: ResourceLimits) -> None:
        if limits.max_memory_bytes:
            write_text(self._f("memory.max"), str(limits.max_memory_bytes))
            if os.path.exists(self._f("memory.swap.max")):
                write_text(self._f("memory.swap.max"), "0")
        # Only the action's processes are in the group: pid 1 stays outside.
        write_text(
            self._f("pids.max"), str(limits.max_processes) if limits.max_processes else "max"
        )
        if limits.cpu_shares != 1024:
            write_text(self._f("cpu.weight"), str(weight(limits.cpu_shares)))
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._open.append(self.fd)
        self._cpu = os.open(self._f("cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
        self._open.append(self._cpu)

    def _f(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cpu_ns(self) -> int | None:
        text = os.pread(self._cpu, 4096, 0).decode("ascii")
        return field(text, "usage_usec") * 1000

    def under_oom(self) -> bool:
        # The kernel's OOM killer acts inside the group by itself.
        return False

    def cpu_times(self) -> tuple[float, float]:
        text = os.pread(self._cpu, 4096, 0).decode("ascii")
        return field(text, "user_usec") / 1e6, field(text, "system_usec") / 1e6

    def usage(self) -> SlotUsage:
        peak = None
        with contextlib.suppress(OSError, ValueError):
            peak = int(read_text(self._f("memory.peak")))
        oom = forks = 0
        with contextlib.suppress(OSError):
            oom = field(read_text(self._f("memory.events")), "oom_kill")
        with contextlib.suppress(OSError):
            forks = field(read_text(self._f("pids.events")), "max")
        return SlotUsage(peak, oom, forks)

    def peak_processes(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(read_text(self._f("pids.peak")))
        return None

    def close(self) -> None:
        """Kill whatever is left in the group, then remove it.

        Finishes even when an exception (a signal handler's) interrupts it,
        and raises that exception afterwards: a half-closed group would stay.
        """
        pending: BaseException | None = None
        while True:
            try:
                self._close_once()
                break
            except BaseException as e:
                pending = e
        if pending is not None:
            raise pending

    def _close_once(self) -> None:
        with contextlib.suppress(OSError):
            write_text(self._f("cgroup.kill"), "1")
        while self._open:
            fd = self._open.pop()
            with contextlib.suppress(OSError):
                os.close(fd)
        remove_tree(self.path, patience=2.0)
        self._parent._done(self.path)


PARENT = V2Parent()
atexit.register(PARENT.close)
