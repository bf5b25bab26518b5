"""Standby sandboxes: the next action's sandbox set up while the current one runs.

Most of an action's cost before its command starts depends on the spec
alone: pid 1 and its namespaces, the mounts, and the action's own setup
(session, rlimits, no_new_privs, capabilities, Landlock, seccomp).  Once an
executor has run a second action (so it is being reused), every execute
also asks a background thread to prepare one sandbox ahead: cloned and set
up like any other, with ``hm_plan.standby`` set, so that its action stops
after installing seccomp and waits on its report channel.  The next execute
takes it: ``hm_activate`` sends the action its stdin, stdout and stderr and
fills in argv and the candidate paths of argv[0]; the action execs.  The
setup then overlaps the previous action instead of preceding the next one,
on a machine with a core to spare.

An execution with read-only paths of its own (``execute(read_only=...)``)
needs mounts no standby can have ahead: its standby is a late one
(``HM_STANDBY_LATE``), whose action stops before its working directory, with
its capabilities; the go brings the mounts, which it makes, and then it
takes every step after them (working directory, rlimits, capabilities,
Landlock, seccomp) before the exec.  Pid 1, its namespaces and the mounts
of the spec are still ready ahead.  A late standby serves an execution
without read-only paths too; a set-up one serves only those.

The action enters its working directory while it still has capabilities,
as every sandbox's does, so a standby serves only an execution with that
same directory: it is made for the directory of the execution that asked
for it, once two in a row used it (a directory per action would only make
standbys to drop), and the directory's host inode is checked with the
bound paths'.  An execution with another directory drops it (on the
background thread, or in close() if that comes first) and starts afresh.

A standby is one sandbox, used once, like any other: it shares nothing with
the action before it.  It is dropped (killed and reaped) instead of used
when a host path it binds no longer resolves to the inode it bound (checked
as for the prepared mount namespace), when the executor is closed or
collected, or in a forked child.  Specs whose filter names the action's own
exec paths (``allow_exec=False``), fresh clocks (their offsets are set when
the sandbox starts) and the egress proxy never stand by.  At most one
standby exists per executor; concurrent executes that find none spawn
their sandbox directly, and while more than one execution of the spec
runs, none is made: the callers keep the CPUs busy already.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import queue
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from hermetic.monitoring.cgroup_v2 import PARENT as V2
from hermetic.monitoring.cgroup_v2 import V2Group
from hermetic.platforms.linux.memory import STACKS, native
from hermetic.platforms.linux.netns import POOL as NETNS
from hermetic.platforms.linux.reap import reap
from hermetic.platforms.linux.template import Identity, Recorded, identity
from hermetic.platforms.linux.workers import POOL as WORKERS

#: Every standby not yet reaped and released: it runs in this process's
#: memory (its plan, its stack), which must outlive it whatever happens to
#: the object that took it.
_LIVE: set[Standby] = set()


class Standby:
    """A sandbox set up to the exec of its action, waiting for ``hm_activate``."""

    def __init__(
        self,
        plan: Any,
        keep: list[Any],
        proc: Any,
        stack: Any,
        leases: contextlib.ExitStack,
        ident: Identity,
        cwd: str,
        release: Callable[[Standby], None],
        worker: Any = None,
        group: Any = None,
        *,
        recorded: Recorded,
        late: bool = False,
    ) -> None:
        self.plan = plan
        #: Waits before its working directory and takes read-only paths at
        #: its go (hm_plan.standby HM_STANDBY_LATE).
        self.late = late
        self.keep = keep  # C memory the sandbox reads: alive as long as it is
        self.proc = proc
        self.stack = stack
        self.leases = leases
        self.identity = ident
        self.paths = tuple(entry[0] for entry in ident)
        #: The same, packed for the check before its use (made before the
        #: spawn: nothing may fail here once its pid 1 runs).
        self.recorded = recorded
        #: Its action's working directory, entered while it had capabilities.
        self.cwd = cwd
        self.worker = worker
        self.group = group
        self.owner = os.getpid()
        #: Set once it is activated (or dropped): from then on the
        #: execution that took it ends and reaps it.
        self.used = False
        self._release = release
        self._stage = 0  # what drop() has done: 1 killed, 2 reaped, 3 released, 4 done
        # One drop at a time: the keeper's and a close()'s may meet.  A drop
        # a signal handler starts inside one on the same thread leaves the
        # work to the outer one (which holds the descriptors it read).
        self._dropping = threading.RLock()
        self._dropper: int | None = None
        _LIVE.add(self)

    def alive(self) -> bool:
        """Whether its pid 1 still runs (a parent-death signal, the OOM
        killer or someone else may have ended it)."""
        poller = select.poll()
        poller.register(int(self.proc.pidfd), select.POLLIN)
        return not poller.poll(0)

    def drop(self) -> None:
        """Kill and reap it, and give back what it held.  Whatever a signal
        handler raises meanwhile is raised again once all of that is done."""
        self.used = True
        if self.owner != os.getpid():
            _LIVE.discard(self)
            return  # the parent's sandbox, not this process's child
        me = threading.get_ident()
        if self._dropper == me:
            return
        interrupted: BaseException | None = None
        with self._dropping:
            self._dropper = me
            try:
                while self._stage < 4:
                    try:
                        self._step()
                    except BaseException as e:  # finish first
                        interrupted = interrupted or e
            finally:
                self._dropper = None
        if interrupted is not None:
            raise interrupted

    def _step(self) -> None:
        pid, pidfd = int(self.proc.pid), int(self.proc.pidfd)
        # Killing and reaping may be repeated; the stages after them are
        # marked before their effect.
        if self._stage == 0:
            if pid > 0:
                # A standby is its own pid namespace: SIGKILL of pid 1 ends it.
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            self._stage = 1
        elif self._stage == 1:
            if pid > 0:
                # By its pidfd: a repeated reap can never take a process
                # that reused the pid (pid 1 has no exit signal: see
                # reap.py).  ECHILD: reaped already; any other error
                # would only repeat.
                with contextlib.suppress(OSError):
                    reap(pidfd)
            self._stage = 2
        elif self._stage == 2:
            self._stage = 3
            self._release(self)
        else:
            self._stage = 4
            try:
                self.leases.close()
            finally:
                _LIVE.discard(self)

    def done(self) -> None:
        """After the execution that used it: reaped and released there; its
        slot or group and its namespaces go back now."""
        try:
            self.leases.close()
        finally:
            _LIVE.discard(self)


def _forget(held: list[Standby] | None, sb: Standby) -> None:
    # After it is dropped (or handed to the keeper to drop): a second drop
    # is harmless, a lost one is not.
    if held is not None and sb in held:
        held.remove(sb)


def drop_all() -> None:
    """Every standby of this process (at exit: before the cgroup slots and
    groups are removed)."""
    for sb in list(_LIVE):
        if not sb.used:
            with contextlib.suppress(Exception):
                sb.drop()


KEEPER_THREAD = "hermetic-standby"
#: Seconds an execute waits for a standby that is being set up.
WAIT_FOR_PENDING = 0.05


class _Keeper:
    """The one thread that makes standbys, for every executor of the process
    (and builds each new executor's prepared mount namespace ahead of its
    first action: MountTemplate.prime).

    It is also the parent thread of the standbys' pid 1, which their
    parent-death signal watches: it lives as long as the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # None until the first task, and again in a forked child (the fork
        # handler below): the thread is started then.
        self._queue: queue.SimpleQueue[Callable[[], None]] | None = None
        self._exit_hook = False

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._queue is None:
                q: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(q,), name=KEEPER_THREAD, daemon=True
                ).start()
                # Published only once its thread runs.
                self._queue = q
                if not self._exit_hook:
                    # Registered after the worker pool's and the cgroup
                    # parent's cleanups (atexit runs the latest first).
                    atexit.register(drop_all)
                    self._exit_hook = True
            q = self._queue
        q.put(task)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every task submitted so far is done (tests)."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    @staticmethod
    def _serve(q: queue.SimpleQueue[Callable[[], None]]) -> None:
        # Signals are the main thread's business: a signal delivered to this
        # thread would not wake a main thread blocked in a wait.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        # This thread clones the standbys' pid 1: an empty bounding set here
        # saves each action dropping it (see hm_spawner_thread_init).
        from hermetic import _native

        _native.lib.hm_spawner_thread_init()
        while True:
            task = q.get()
            with contextlib.suppress(Exception):
                task()
            del task


KEEPER = _Keeper()

#: Every slot, for the fork handler.
_SLOTS: weakref.WeakSet[StandbySlot] = weakref.WeakSet()


class Unavailable(Exception):
    """No standby can be made now: a path it would bind or enter is missing
    (a working directory removed, say).  Not a failed setup: the next
    request tries again."""


class StandbySlot:
    """At most one standby for one prepared spec.

    ``make(owner, cwd, late)`` sets one up for working directory ``cwd`` (None
    when it cannot: the next execute then spawns directly and reports any
    error itself; after three such failures in a row no more are made).
    It raises Unavailable when a path is missing, which is not counted.
    """

    def __init__(self, owner: object, make: Callable[[Any, str, bool], Standby | None]) -> None:
        self._owner = weakref.ref(owner)
        self._make = make
        # Reentrant: a collection on a thread holding it runs _collected().
        self._lock = threading.RLock()
        self._filled = threading.Condition(self._lock)
        self._standby: Standby | None = None
        self._pending = False
        self._pending_cwd = ""
        self._pending_late = False
        self._claimed = False
        # The working directory of the last execution (see want()), and
        # standbys handed to the keeper to drop (see close()).
        self._last_cwd: str | None = None
        self._dropping: set[Standby] = set()
        self._active = 0
        self._runs = 0
        self._failures = 0
        #: Executions that started in a standby (tests, benchmarks).
        self.taken = 0
        weakref.finalize(owner, self._collected)
        _SLOTS.add(self)

    def take(
        self,
        cwd: str,
        wait: float = WAIT_FOR_PENDING,
        into: list[Standby] | None = None,
        *,
        late: bool = False,
    ) -> Standby | None:
        """The standby, if there is one still current for working directory
        ``cwd`` (and a late one if ``late``: the execution has read-only
        paths of its own); it is the caller's now.

        One being made is waited for (up to ``wait`` seconds, by one caller
        at a time): its setup has started, so finishing it is quicker than
        a second one from scratch.  With ``into``, the standby is appended
        to it before it leaves the slot (and removed again if it is not
        returned): whatever a signal handler raises in between, it is in
        one of the two, for the caller's ``finally`` to end.
        """
        with self._lock:
            if (
                self._standby is None
                and self._pending
                and self._pending_cwd == cwd
                and (self._pending_late or not late)
                and not self._claimed
            ):
                self._claimed = True
                try:
                    deadline = time.monotonic() + wait
                    while self._standby is None and self._pending:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._filled.wait(left)
                finally:
                    self._claimed = False
            sb = self._standby
            if sb is None:
                return None
            if into is not None:
                into.append(sb)
            self._standby = None
        try:
            if sb.cwd != cwd or (late and not sb.late):
                # Made for the working directory of the executions before,
                # or set up past the mounts this one needs: off this
                # execution's path (here if the keeper cannot).
                self._drop_later(sb)
                _forget(into, sb)
                return None
            current = sb.owner == os.getpid() and sb.alive() and sb.recorded.unchanged()
        except BaseException:
            sb.drop()
            raise
        if not current:
            sb.drop()
            _forget(into, sb)
            return None
        self.taken += 1
        return sb

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Counts the executions in progress (see want())."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def _drop_later(self, sb: Standby) -> None:
        """Drop ``sb`` on the keeper thread (or in close(), if that comes first)."""
        with self._lock:
            self._dropping.add(sb)

        def drop() -> None:
            try:
                sb.drop()
            finally:
                with self._lock:
                    self._dropping.discard(sb)

        try:
            KEEPER.submit(drop)
        except RuntimeError:  # no thread to run it
            drop()
        except BaseException:
            drop()  # (one the keeper started meanwhile is waited for)
            raise

    def want(self, cwd: str, late: bool = False) -> None:
        """An action has started in ``cwd``: once the spec is being reused,
        prepare the next, for the same working directory, if the execution
        before used it too (one that changes every time would only make
        standbys to drop); a late one if ``late`` (this execution had
        read-only paths of its own, so the next likely has too).

        Not while other executions of this spec run: concurrent callers keep
        the CPUs busy already, and a standby would only take its share.
        """
        claimed = submitted = False
        # One try from the start: a signal handler may raise as the lock is
        # released, after _pending is set; close() would then wait for a
        # fill that was never submitted.
        try:
            with self._lock:
                self._runs += 1
                same_cwd, self._last_cwd = self._last_cwd == cwd, cwd
                if self._runs < 2 or not same_cwd or self._pending or self._standby is not None:
                    return
                if self._active > 1:
                    return
                if self._failures >= 3:
                    return  # the sandbox keeps failing to set up: stop trying
                self._pending = claimed = True
                self._pending_cwd = cwd
                self._pending_late = late
            KEEPER.submit(functools.partial(self.fill, cwd, late))
            submitted = True
        except BaseException:
            if claimed and not submitted:
                # (Submitted but raised before it was marked: the fill runs
                # and clears _pending itself; clearing it here too only
                # lets a close() not wait for it, and the fill then drops
                # what it made, as the runs were reset.)
                with self._lock:
                    self._pending = False
                    self._filled.notify_all()
            raise

    def fill(self, cwd: str, late: bool = False) -> None:
        """Make the standby for ``cwd`` (on the keeper thread)."""
        owner = self._owner()
        sb = None
        unavailable = False
        try:
            if owner is not None:
                sb = self._make(owner, cwd, late)
        except Unavailable:
            unavailable = True
        except Exception:
            sb = None
        finally:
            del owner
        with self._lock:
            if not unavailable:
                self._failures = self._failures + 1 if sb is None else 0
            if sb is not None and self._standby is None and self._runs > 0:
                self._standby, sb = sb, None
                self._filled.notify_all()  # a take() may be waiting for it
        try:
            if sb is not None:
                sb.drop()  # closed or collected meanwhile
        finally:
            # Only now: close() waits for this, and nothing of the dropped
            # one may outlive it.
            with self._lock:
                self._pending = False
                self._filled.notify_all()

    def close(self) -> None:
        """Drop the standby; the next ones come after the spec is reused again.

        One being made is waited for (and dropped), so that nothing of the
        executor runs once this returns.
        """
        with self._lock:
            self._runs = 0
            self._last_cwd = None
            if threading.current_thread().name != KEEPER_THREAD:
                while self._pending:
                    self._filled.wait()
            sb, self._standby = self._standby, None
            queued = list(self._dropping)
        # Those handed to the keeper too: drop() runs once, whoever calls it.
        # Each is dropped whatever a signal handler raises meanwhile.
        interrupted: BaseException | None = None
        for other in [*queued, *([sb] if sb is not None else [])]:
            try:
                other.drop()
            except BaseException as e:
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted

    def _collected(self) -> None:
        # At collection, which may come at any point of any thread: drop
        # what is there without waiting; one still being made is dropped by
        # fill() as the count of runs is 0.
        with self._lock:
            self._runs = 0
            sb, self._standby = self._standby, None
            queued = list(self._dropping)
        # Not here: a finalizer swallows what a signal handler raises while
        # it waits for the reap.  (Those already queued again: drop() runs
        # once.)
        for other in [*queued, *([sb] if sb is not None else [])]:
            KEEPER.submit(other.drop)

    def _after_fork(self) -> None:
        # The parent's standby and its keeper's work are not this process's;
        # its locks may have been held by a thread that does not exist here.
        self._lock = threading.RLock()
        self._filled = threading.Condition(self._lock)
        self._standby = None
        self._pending = self._claimed = False
        self._active = self._runs = 0
        self._last_cwd = None
        self._dropping = set()

    def ready(self) -> bool:
        with self._lock:
            return self._standby is not None


def _after_fork_in_child() -> None:
    _LIVE.clear()
    KEEPER._lock = threading.Lock()
    KEEPER._queue = None
    for slot in list(_SLOTS):
        slot._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def make_standby(prepared: Any, cwd: str, late: bool = False) -> Standby | None:
    """A sandbox for ``prepared`` set up to its action's exec in working
    directory ``cwd`` (on the keeper thread), or, if ``late``, to the
    action's wait before that directory; None when setup failed (the
    next execute spawns directly and reports the error).  Raises
    Unavailable when a path it would bind or enter is missing."""
    lib = native().lib
    leases = contextlib.ExitStack()
    stack = None
    try:
        worker = group = None
        if prepared.limits.cgroup and prepared.cgroup_version == 1:
            worker = leases.enter_context(WORKERS.lease())
            worker.slot.prepare(prepared.spec.resources)
        elif prepared.limits.cgroup:
            made: list[V2Group] = []

            def close_groups() -> None:
                for g in made:
                    g.close()

            leases.callback(close_groups)
            group = V2.new_group(prepared.spec.resources, made)
        # The identity of the bound host paths, and of the working
        # directory's own, as the sandbox will bind and enter them: take()
        # checks it again, so that a path replaced on the host since (or
        # while this is set up) is never the one the action sees.  The
        # prepared namespace's was taken as it was built and checked as it
        # was leased; without one, the binds come after this.
        sources = prepared.host_sources
        at = prepared.host_path(cwd)
        extra = (at,) if at is not None and at not in sources else ()
        plan, keep = prepared.new_plan(cwd, "/")
        plan.standby = lib.HM_STANDBY_LATE if late else lib.HM_STANDBY_SET_UP
        plan.stdin_fd = plan.stdout_fd = plan.stderr_fd = -1
        if group is not None:
            plan.cgroup_fd = group.fd
        if prepared.pooled_network:
            plan.netns_fd = leases.enter_context(NETNS.lease())
        if prepared.mount_template is not None:
            # take() checks the identity: no need to look at the paths twice.
            lease = prepared.mount_template.lease(check=False)
            plan.mntns_fd, bound = leases.enter_context(lease)
            own = identity(extra)
            ident = bound + own if bound is not None and own is not None else None
        else:
            ident = identity(sources + extra)
        if ident is None:
            # The handler below ends the leases taken so far.
            raise Unavailable("a bound path or the working directory is missing")
        recorded = Recorded(ident)
        ffi = native().ffi
        proc = ffi.new("struct hm_proc *")
        proc.notify_fd = proc.proxy_fd = -1
        proc.pid = -1
        error = ffi.new("struct hm_error *")
        stack = STACKS.take()
        proc.stack = stack
        spawn = worker.spawn if worker is not None else lib.hm_spawn
        if spawn(plan, proc, error) < 0:
            # Released by hm_spawn; the stack was borrowed.
            given, stack = stack, None
            STACKS.give(given)
            leases.close()
            return None
    except BaseException:
        if stack is not None and proc.pid <= 0:
            STACKS.give(stack)
        leases.close()
        raise

    def release(sb: Standby) -> None:
        lib.hm_proc_release(sb.proc)
        STACKS.give(sb.stack)

    keep.append(prepared._mem)
    return Standby(
        plan,
        keep,
        proc,
        stack,
        leases,
        ident,
        cwd,
        release,
        worker,
        group,
        recorded=recorded,
        late=late,
    )
