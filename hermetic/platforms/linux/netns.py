"""A pool of loopback-only network namespaces, each leased to one action at a time.

Creating a network namespace is the most expensive step of a sandbox here
(about 0.6 ms of the 1.6 ms; its teardown costs CPU too).  Joining a
prepared one costs about 60 us.  Each namespace in the pool is used by at
most one running action, so concurrent actions never share a loopback: one
cannot reach another's listening port or abstract socket.  Sequential
actions may reuse a namespace: when an action ends all its processes are
dead and every socket is closed, but kernel TCP state that outlives sockets
(TIME_WAIT entries on loopback ports) and the interface counters carry
over.  ``NetworkPolicy(fresh_namespace=True)`` gives each action its own
namespace instead.

Joining needs CAP_SYS_ADMIN in the caller's own user namespace as well as
over the namespace joined, so the pool serves privileged callers (root);
an unprivileged caller gets a fresh namespace per action.  The pool's
namespaces are owned by the caller's user namespace, over which the
sandbox's own user namespace has no capability: an action cannot add
addresses, routes or firewall rules that the next one would inherit.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from hermetic.core.errors import UnsupportedError


class NetnsPool:
    """Lease-based pool; safe across threads, rebuilt after fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._pid = os.getpid()

    def _create(self) -> int:
        from hermetic._native import lib

        fd = lib.hm_netns_create()
        if fd < 0:
            raise UnsupportedError(
                "network", f"cannot create a network namespace: {os.strerror(-fd)}"
            )
        return int(fd)

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        """A namespace descriptor for one action; returned to the pool afterwards."""
        fd = -1
        # One try from the start: a signal handler may raise as the lock is
        # released, with the descriptor already out of the free list.
        try:
            with self._lock:
                if self._pid != os.getpid():
                    # A forked child must not share namespaces with its
                    # parent's running actions: drop the inherited ones.
                    for held in self._free:
                        os.close(held)
                    self._free = []
                    self._pid = os.getpid()
                if self._free:
                    # Indexing, not pop(): no call returns between the
                    # descriptor leaving the list and its being held here.
                    fd = self._free[-1]
                    del self._free[-1]
            if fd < 0:
                fd = self._create()
            yield fd
        finally:
            # Every process of the action is dead by now (its pid 1 was
            # reaped, or setup failed and pid 1 was reaped): nothing of it
            # runs in the namespace any more.
            if fd >= 0:
                # Back to the list even in a forked child (the lease's
                # holder forked): the child's next lease closes the
                # parent's descriptors it finds there.
                with self._lock:
                    self._free.append(fd)

    def size(self) -> int:
        with self._lock:
            return len(self._free)


POOL = NetnsPool()
