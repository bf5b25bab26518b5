"""A prepared mount namespace per spec, copied for each action (root callers).

Building the sandbox's root costs about fifty system calls per action: a
tmpfs, pivot_root, a bind and its flags per input and output, /dev's nodes,
detaching the host's root.  All of it depends on the spec alone, so for a
caller that is root on the host it is done once: a helper process builds the
root in a mount namespace of its own (``hm_mntns_create``), and a descriptor
keeps that namespace.  Each action's pid 1 joins it and unshares a private
copy (``setns`` + ``unshare(CLONE_NEWNS)``), then adds what every action must
get fresh:

- /proc, for its own pid namespace, with the read-only and masked entries;
- its private /tmp, a new tmpfs; outputs and inputs declared below /tmp are
  copied over from the prepared namespace (``HM_OP_GRAB``) before the new
  tmpfs covers them, and attached in it (``HM_OP_PLACE``); a directory the
  plan makes there to hold declared paths (read-only, bound onto itself:
  plan.py, ``_seal_tmp_holders``) is copied as one tree with the binds in
  it.

What actions share: the read-only root tmpfs (mount points and the host
root's top-level symlinks), /dev's read-only tmpfs with its nodes, and the
directories made on the prepared namespace's /tmp to hold declared paths,
seen through their read-only binds.  All are read-only mounts, and an
action holds no capability to change a mount.
The binds of inputs, outputs and temps are the same host directories either
way.  Nothing an action writes survives into the next: its writable places
are the declared outputs and temps (shared with the host anyway) and its own
/tmp.

The prepared namespace pins the host inodes it binds.  Before each action the
bound host paths are checked with ``lstat``: if any no longer resolves to the
inode that was bound (a directory removed and made again, a file replaced by
rename as ``ldconfig`` does with /etc/ld.so.cache), the namespace is built
again.  As the pinned inodes cannot be freed, their numbers cannot be reused,
so an equal (device, inode) pair is the same file.

Joining a mount namespace needs CAP_SYS_ADMIN over it and CAP_SYS_CHROOT, and
a process sharing memory with its caller cannot enter a user namespace: an
unprivileged caller's pid 1 builds its root per action as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from hermetic.core.paths import is_within
from hermetic.platforms.linux.memory import native
from hermetic.platforms.linux.plan import (
    MAX_GRABS,
    OLDROOT,
    OP_BIND,
    OP_GRAB,
    OP_MKDIR,
    OP_PLACE,
    OP_PROC,
    OP_TMPFS,
    Op,
)

Identity = tuple[tuple[str, int, int, int], ...]

#: Ops that mount something at their dst.
_MOUNTS = (OP_BIND, OP_TMPFS, OP_PROC)


def split_ops(ops: tuple[Op, ...]) -> tuple[tuple[Op, ...], tuple[Op, ...]] | None:
    """``(prepared, per_action)``: the ops a prepared namespace runs once, and
    those each action's pid 1 runs in its copy.  None when the per-action part
    would need more tree copies than an op list holds.

    Per action: everything at or below /proc and below the private /tmp (and
    the mounts themselves); the mount points stay in the prepared root,
    which is read-only afterwards.  A host bind below /tmp is made in the
    prepared namespace too, copied from there before the fresh tmpfs covers
    it, and attached again; binds nested in it come along with the copy.
    A directory made there to hold declared paths, bound read-only onto
    itself (plan.py, ``_seal_tmp_holders``), is copied the same way, with
    the binds in it: each action makes only its mount point, one for all
    the declared paths it holds.
    """
    fresh = [
        op.dst for op in ops if op.kind == OP_PROC or (op.kind == OP_TMPFS and op.dst != "/dev")
    ]
    prepared: list[Op] = []
    grabs: list[Op] = []
    action: list[Op] = []
    copied: list[str] = []
    # The holders' read-only binds (source and target the same directory
    # of the private /tmp): what lies below one is built in the prepared
    # namespace only, the copy of its tree brings it.
    holders = [
        op.dst
        for op in ops
        if op.kind == OP_BIND and op.src == op.dst and op.dst.startswith("/tmp/")
    ]
    for op in ops:
        root = None
        for r in fresh:
            if is_within(op.dst, r):
                root = r
                break
        if root is None or (op.dst == root and op.kind == OP_MKDIR):
            prepared.append(op)
            continue
        if any(is_within(op.dst, c) for c in copied) or any(
            op.dst != h and is_within(op.dst, h) for h in holders
        ):
            # Below a copied bind: the prepared namespace has it, the copy
            # (recursive) brings it.
            prepared.append(op)
            continue
        host_bind = op.kind == OP_BIND and (op.src or "").startswith(OLDROOT + "/")
        if root != "/proc":
            prepared.append(op)
        if host_bind or (op.kind == OP_BIND and op.dst in holders):
            slot = len(grabs)
            if slot >= MAX_GRABS:
                return None
            grabs.append(op._replace(kind=OP_GRAB, src=None, flags=slot))
            action.append(op._replace(kind=OP_PLACE, src=None, flags=slot))
            copied.append(op.dst)
        else:
            action.append(op)
    return tuple(prepared), tuple(grabs + action)


def host_sources(ops: tuple[Op, ...]) -> tuple[str, ...]:
    """The host paths the prepared namespace binds."""
    return tuple(
        op.src[len(OLDROOT) :]
        for op in ops
        if op.kind == OP_BIND and op.src is not None and op.src.startswith(OLDROOT + "/")
    )


def host_path(ops: tuple[Op, ...], path: str) -> str | None:
    """The host directory the sandbox shows at ``path``: through the deepest
    mount above it, when that is a host bind; None when it is one the
    sandbox makes itself (its root, /tmp, /proc)."""
    path = posixpath.normpath(path)
    best: Op | None = None
    for op in ops:
        if op.kind in _MOUNTS and is_within(path, op.dst):
            if best is None or len(op.dst) >= len(best.dst):
                best = op
    if best is None or best.kind != OP_BIND or not (best.src or "").startswith(OLDROOT + "/"):
        return None
    src = (best.src or "")[len(OLDROOT) :]
    rel = path[len(best.dst) :] if best.dst != "/" else path
    return src + rel if path != best.dst else src


def identity(paths: tuple[str, ...]) -> Identity | None:
    """(path, device, inode, type) of each path, None if one is missing."""
    out = []
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            return None
        out.append((p, st.st_dev, st.st_ino, st.st_mode >> 12))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _packed(ident: Identity) -> tuple[Any, Any]:
    """``ident`` as hm_identity_same reads it (which never writes it): made
    once per identity, which stays the same standby after standby while no
    bound path is replaced."""
    ffi = native().ffi
    paths = ffi.new("char[]", b"".join(os.fsencode(e[0]) + b"\0" for e in ident) + b"\0")
    expect = ffi.new(
        "unsigned long long[]", [v for _, dev, ino, kind in ident for v in (dev, ino, kind)]
    )
    return paths, expect


class Recorded:
    """An identity kept to be checked again (a standby's, before each use):
    packed once for hm_identity_same (csrc/linux/identity.c), so the check
    on the calling thread is one C call rather than an lstat and a Python
    object per path."""

    __slots__ = ("_expect", "_n", "_paths", "identity")

    def __init__(self, ident: Identity) -> None:
        self.identity = ident
        self._n = len(ident)
        self._paths, self._expect = _packed(ident)

    def unchanged(self) -> bool:
        """Whether every path still is what it was (as ``identity(paths) ==
        ident``: a path missing or that cannot be looked at is a change)."""
        return bool(native().lib.hm_identity_same(self._paths, self._expect, self._n) == 1)


class _Namespace:
    __slots__ = ("fd", "holders", "identity", "retired")

    def __init__(self, fd: int, ident: Identity | None) -> None:
        self.fd = fd
        self.identity = ident
        # One token per lease: a list append or remove is one step that no
        # signal handler can split, where a count's read and write are two.
        self.holders: list[object] = []
        self.retired = False


def _close_all(held: list[_Namespace]) -> None:
    # Out of the list before closed, as in _retire.
    while held:
        ns = held.pop()
        with contextlib.suppress(OSError):
            os.close(ns.fd)


#: Every template, for the fork handler below.
_TEMPLATES: weakref.WeakSet[MountTemplate] = weakref.WeakSet()


class MountTemplate:
    """The prepared namespace of one spec, rebuilt when a bound path changes.

    ``build`` makes a namespace and returns its descriptor (raising the
    setup error that names the op otherwise).  Thread-safe; a namespace in
    use by an action is closed only when that action is done with it.
    """

    def __init__(self, sources: tuple[str, ...], build: Callable[[], int]) -> None:
        self._sources = sources
        self._build = build
        self._lock = threading.Lock()
        self._current: _Namespace | None = None
        self._pid = os.getpid()
        # Descriptors still open, closed at the latest when this is collected.
        self._open: list[_Namespace] = []
        self._finalizer = weakref.finalize(self, _close_all, self._open)
        # Set by close(), cleared by a lease: prime() builds nothing then.
        self._closed = False
        _TEMPLATES.add(self)

    def _retire(self, ns: _Namespace) -> None:
        ns.retired = True
        if not ns.holders:
            # Out of the list before its number is free: a fork in between
            # (os.close lets other threads run) must not leave the child a
            # listed number that another file may take, which its
            # finalizer would close.  The other way round the child only
            # inherits a close-on-exec descriptor it does not list.
            try:
                self._open.remove(ns)
            except ValueError:
                # Not listed: the finalizer closed it already.  At exit
                # weakref.finalize runs before any atexit handler
                # registered earlier (a close() registered before the first
                # execute made this template), and its number may be
                # another file's by now: it must not be closed again.
                return
            with contextlib.suppress(OSError):
                os.close(ns.fd)

    @contextlib.contextmanager
    def lease(self, check: bool = True) -> Iterator[tuple[int, Identity | None]]:
        """The descriptor of a current namespace, for one action, and the
        identity of the paths it binds (as built, and as they are now);
        None when a path changed while it was built or cannot be found.

        ``check=False`` skips looking at the paths now when a namespace is
        there: for a caller that compares the identity returned with the
        paths before its action runs (a standby's take()), and drops the
        sandbox if they differ.
        """
        ident = identity(self._sources) if check else None
        token = object()
        ns: _Namespace | None = None
        # One try from the start: whatever a signal handler raises, the token
        # is in a list exactly when the finally must take it out.
        try:
            with self._lock:
                if self._pid != os.getpid():
                    # A forked child: the parent's leases mean nothing here.
                    self._pid = os.getpid()
                    for held in self._open:
                        held.holders.clear()
                ns = self._current
                if not check and ns is not None:
                    ident = ns.identity  # None (changed while built): build again
                if ns is None or ident is None or ns.identity != ident:
                    if ns is not None:
                        self._retire(ns)
                        self._current = None
                    ns = self._new()
                ns.holders.append(token)
                self._closed = False
            yield ns.fd, ns.identity
        finally:
            if ns is not None:
                with self._lock:
                    self._release(ns, token)

    def _release(self, ns: _Namespace, token: object) -> None:
        if token in ns.holders:
            ns.holders.remove(token)
        if ns.retired and not ns.holders and ns in self._open:
            self._retire(ns)

    def _new(self) -> _Namespace:
        before = identity(self._sources)
        fd = self._build()
        after = identity(self._sources)
        # A path that changed while the namespace was built matches no
        # identity: the next action builds it again.
        ns = _Namespace(fd, after if after == before else None)
        self._open.append(ns)
        self._current = ns
        return ns

    def prime(self) -> None:
        """Build the namespace now, from a background thread, so that the
        first lease finds it made or being made: called as the executor is
        created, it overlaps the rest of create() and the first execute's
        own preparation.  Does nothing when one is there, when another
        thread holds the lock (a lease, which builds itself), after close(),
        and in a forked child.  A failed build is left for the lease to
        repeat and report."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._current is None and not self._closed and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._new()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the namespace (actions still running keep theirs until done)."""
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._retire(self._current)
                self._current = None

    def descriptors(self) -> int:
        """How many namespaces this holds open (current and still leased)."""
        with self._lock:
            return len(self._open)


class native_build:
    """A ``build`` for MountTemplate: hm_mntns_create over ``plan``.

    ``memory`` owns what the plan points to (its ops and their strings: a
    cffi struct does not keep its pointers' targets alive).  The build holds
    it, as a build on the standby thread may run after the executor that
    made the plan is gone."""

    __slots__ = ("error", "memory", "on_error", "plan")

    def __init__(
        self, plan: Any, error: Any, on_error: Callable[[Any], BaseException], memory: Any
    ) -> None:
        self.plan = plan
        self.error = error
        self.on_error = on_error
        self.memory = memory

    def __call__(self) -> int:
        from hermetic._native import lib

        fd = int(lib.hm_mntns_create(self.plan, self.error))
        if fd < 0:
            raise self.on_error(self.error)
        return fd


def _after_fork_in_child() -> None:
    # A build holds its template's lock for milliseconds (a prime on the
    # standby thread, a lease on another): a fork meanwhile must not leave
    # the child a lock that nothing will release.  lease() sees the new pid.
    for template in list(_TEMPLATES):
        template._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
