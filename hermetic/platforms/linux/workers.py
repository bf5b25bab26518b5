"""Clone threads resident in cgroup v1 slots, for sandboxes with limits.

A sandbox is born in the cgroups of the thread that clones it.  Each worker
is a small C thread (csrc/linux/worker.c) that joins its own slot of groups
once (the only migration, when the pool grows: the thread moves itself,
about 0.2 ms) and afterwards only clones: the caller leases a worker,
prepares the slot's limits, has the worker run the clone, and waits for
the sandbox in its own thread.  The pool grows to the number of limited
actions run at once, and is closed (threads stopped, groups removed) at
interpreter exit or by ``close()``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from hermetic.core.errors import UnsupportedError
from hermetic.monitoring.cgroup_v1 import V1Slot
from hermetic.monitoring.cgroups import v1_dirs

#: The v1 controllers a slot needs.
REQUIRED = ("memory", "pids", "cpu", "cpuacct")


class Worker:
    """One clone thread and its slot."""

    def __init__(self, native: Any, slot: V1Slot) -> None:
        self.native = native  # struct hm_worker *
        self.slot = slot

    def spawn(self, plan: Any, proc: Any, error: Any) -> int:
        from hermetic._native import lib

        return int(lib.hm_worker_spawn(self.native, plan, proc, error))


def _join(native: Any, files: list[str]) -> None:
    """The worker thread moves itself into the groups of ``files`` (their
    ``tasks`` files)."""
    from hermetic._native import ffi, lib

    fds: list[int] = []
    try:
        for path in files:
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        failed = ffi.new("int *", -1)
        rc = lib.hm_worker_join(native, fds, len(fds), failed)
        if rc < 0:
            # (No file when the request itself was refused: -1.)
            culprit = files[failed[0]] if failed[0] >= 0 else None
            raise OSError(-rc, os.strerror(-rc), culprit)
    finally:
        for fd in fds:
            os.close(fd)


def _stop(native: Any) -> None:
    """Stop a worker thread (none started: nothing to do) and wait until its
    task is gone from the groups it joined."""
    from hermetic._native import ffi, lib

    tid = native.tid
    started = native.impl != ffi.NULL
    lib.hm_worker_stop(native)
    # pthread_join returns once the thread is done; the kernel task, a
    # member of the groups until it is reaped, may linger briefly.
    deadline = time.monotonic() + 5
    while started and os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
        time.sleep(0.001)


class WorkerPool:
    """Workers leased one action at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._all: list[Worker] = []
        self._names = itertools.count()
        self._pid = os.getpid()

    def available(self) -> str | None:
        """None when slots can be made here, else the reason they cannot."""
        dirs = v1_dirs()
        missing = [c for c in REQUIRED if c not in dirs]
        if missing:
            return f"no cgroup v1 hierarchy for {', '.join(missing)}"
        for c in REQUIRED:
            if not os.access(dirs[c], os.W_OK):
                return f"this process's {c} cgroup {dirs[c]} is not writable (no delegation)"
        return None

    def _start(self) -> Worker:
        """A new worker in a new slot, in the pool (leased to the caller).
        Whatever fails or is raised meanwhile (a signal handler's), nothing
        of it is left: no thread, no group."""
        from hermetic._native import ffi, lib

        own = {c: d for c, d in v1_dirs().items() if c in (*REQUIRED, "blkio")}
        try:
            slot = V1Slot.create(own, f"w{next(self._names)}")
        except OSError as e:
            raise UnsupportedError("resource limits", f"cannot create cgroup v1 groups: {e}") from e
        native: Any = None
        try:
            native = ffi.new("struct hm_worker *")
            rc = lib.hm_worker_start(native)
            if rc < 0:
                raise UnsupportedError(
                    "resource limits", f"cannot start a thread: {os.strerror(-rc)}"
                )
            try:
                _join(native, slot.task_files())
            except OSError as e:
                raise UnsupportedError(
                    "resource limits", f"cannot place a thread in cgroup v1 groups: {e}"
                ) from e
            worker = Worker(native, slot)
            with self._lock:
                self._all.append(worker)
            return worker
        except BaseException:
            if native is not None:
                _stop(native)
            slot.remove()
            raise

    @contextlib.contextmanager
    def lease(self) -> Iterator[Worker]:
        """A worker for one action, exclusively; back to the pool afterwards."""
        worker: Worker | None = None
        try:
            with self._lock:
                if self._pid != os.getpid():
                    # After fork the threads are gone (their groups stay
                    # with the parent): start afresh.
                    self._idle, self._all, self._pid = [], [], os.getpid()
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = self._start()
            yield worker
        finally:
            if worker is not None:
                with self._lock:
                    if worker in self._all:
                        self._idle.append(worker)

    def size(self) -> int:
        with self._lock:
            return len(self._all)

    def close(self) -> None:
        """Stop the idle workers and remove their groups."""
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._all = [], []
                return
            workers = list(self._idle)
            self._all = [w for w in self._all if w not in workers]
            self._idle = []
        for w in workers:
            _stop(w.native)
            w.slot.remove()


POOL = WorkerPool()
atexit.register(POOL.close)
