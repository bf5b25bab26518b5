"""The worker's sandboxes: one executor per lease slot, reused lease after lease.

An executor made per lease (its spec declaring that lease's inputs) costs
its ``create()`` and ``close()`` every time: the plan, the prepared mount
namespace, the cgroup slots (about 5-6 ms here, against a few for a
``gcc -c``).  A slot instead keeps an exec root of its own and an executor
whose spec declares that exec root as its one output and nothing of the
worker besides (the cache, other slots' exec roots and the per-lease files
do not exist inside).  Each lease is staged into the slot's exec root, runs
with the staged inputs as the execution's own read-only paths
(``execute(read_only=...)``: bind mounts in that action's mount namespace
only), and the exec root is emptied afterwards, never replaced: its inode
is what the executor's prepared namespace binds.

Emptying leaves nothing of one lease for the next: everything below is
removed, without following a link, and the directory itself is made 0700
again with its extended attributes (the action's own, or an ACL) removed.
A slot whose exec root cannot be emptied is closed, never reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator

from hermetic import (
    EnvSet,
    Err,
    HermeticError,
    HermeticExecutor,
    HermeticSpecBuilder,
    PathSet,
    ResourceLimits,
    SandboxSpec,
)
from hermetic.core.tree import remove_tree

LOG = logging.getLogger("hermetic.remote.worker")


class SlotError(Exception):
    """A slot's sandbox cannot be made; the message says why."""


class Slot:
    """One lease at a time: an exec root, the executor that runs in it, and
    a directory of the worker's own for the lease's stdout and stderr
    files (``private``: never declared, so not in the sandbox)."""

    __slots__ = ("executor", "exec_root", "private")

    def __init__(self, exec_root: str, private: str, executor: HermeticExecutor) -> None:
        self.exec_root = exec_root
        self.private = private
        self.executor = executor


def slot_spec(exec_root: str) -> SandboxSpec:
    """The spec of a slot: the toolchain read-only, the exec root the one
    writable place; the environment is each lease's own (execute's
    ``env``), the limits hermetic's defaults."""
    return SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet((exec_root,)),
        environment=EnvSet(),
        resources=ResourceLimits.hermetic(),
    )


def _empty(exec_root: str, private: str) -> None:
    """Leave ``exec_root`` as a new one: empty, 0700, no extended attributes;
    and ``private`` empty (what the worker wrote there, only the worker's)."""
    remove_tree(private, keep=True)
    remove_tree(exec_root, keep=True)
    fd = os.open(exec_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.chmod(fd, 0o700)
        for name in os.listxattr(fd):
            os.removexattr(fd, name)
    finally:
        os.close(fd)


class Sandboxes:
    """The slots of one worker, made as leases need them (at most as many
    as run at once) and closed with :meth:`close`."""

    def __init__(self, work_dir: str, *, audit_log: str | None = None) -> None:
        """The slots' exec roots go in ``work_dir``/exec, their private
        directories in ``work_dir``/leases (hermetic/remote/worker.py's
        prepare_work_dir makes both).  ``audit_log``: every slot's executor
        appends its violations there (hermetic/security/audit.py)."""
        self._audit_log = audit_log
        self._exec_dir = os.path.join(work_dir, "exec")
        self._private_dir = os.path.join(work_dir, "leases")
        self._free: list[Slot] = []
        self._all: list[Slot] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        """A slot with an empty exec root, for one lease; emptied again and
        put back once the lease is done, or closed if that fails."""
        with self._lock:
            if self._closed:
                raise SlotError("the worker is stopping")
            taken = self._free.pop() if self._free else None
        if taken is None:
            taken = self._make()
        try:
            yield taken
        finally:
            self._release(taken)

    def warm(self) -> None:
        """Make one slot now (a worker's first lease then finds it ready);
        SlotError when no sandbox can be prepared, said before any lease."""
        made = self._make()
        with self._lock:
            self._free.append(made)

    def _make(self) -> Slot:
        made_dirs: list[str] = []
        try:
            exec_root = tempfile.mkdtemp(prefix="slot-", dir=self._exec_dir)  # 0700
            made_dirs.append(exec_root)
            private = tempfile.mkdtemp(prefix="slot-", dir=self._private_dir)
            made_dirs.append(private)
            made = HermeticExecutor.create(
                slot_spec(exec_root), max_concurrency=1, audit_log=self._audit_log
            )
            if isinstance(made, Err):
                raise SlotError(f"the sandbox cannot be prepared: {made.error}")
        except BaseException:
            for path in made_dirs:
                os.rmdir(path)
            raise
        made_slot = Slot(exec_root, private, made.unwrap())
        with self._lock:
            self._all.append(made_slot)
        return made_slot

    def _release(self, slot: Slot) -> None:
        try:
            _empty(slot.exec_root, slot.private)
        except OSError as e:
            # Never reused; the next lease gets a new slot.
            LOG.warning("exec root %s cannot be emptied (%s): slot closed", slot.exec_root, e)
            self._discard(slot)
            return
        with self._lock:
            if not self._closed:
                self._free.append(slot)
                return
        self._discard(slot)

    def _discard(self, slot: Slot) -> None:
        with self._lock:
            if slot in self._all:
                self._all.remove(slot)
        slot.executor.close()
        for path in (slot.exec_root, slot.private):
            with contextlib.suppress(OSError, HermeticError):
                remove_tree(path)

    def close(self) -> None:
        """Close every slot not in use now (one in use is closed when its
        lease ends) and remove their exec roots."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for s in free:
            self._discard(s)
