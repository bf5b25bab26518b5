"""Timeout and limit enforcement: wait for a sandbox, and end it when it must end.

On timeout the sequence follows Bazel's sandboxes: SIGTERM to the whole
sandbox (its pid 1 forwards it to every process), a short grace for
cleanup, then SIGKILL of pid 1, which makes the kernel kill everything left
in its pid namespace.  A breached limit (``check`` returning a reason) ends
the sandbox with SIGKILL at once, as the kernel does for a hard rlimit.
"""

from __future__ import annotations

import select
import signal
import time
from collections.abc import Callable
from typing import Protocol

#: Seconds between SIGTERM and SIGKILL.
DEFAULT_KILL_GRACE = 0.5
#: Seconds between two limit checks while an action is young: for its
#: first CHECK_FAST_FOR seconds.  Most actions of a build end within that.
CHECK_INTERVAL = 0.02
CHECK_FAST_FOR = 0.1
#: The longest interval between two checks, reached as the action ages.
#: Each check reads /proc and the cgroup's files and wakes the caller: at
#: 20 ms throughout, the caller spent about 2 % of a core per running
#: action on it (ResourceLimits.hermetic()); growing to 100 ms it is a
#: fifth of that.
CHECK_INTERVAL_MAX = 0.1
#: Longest single wait in C.  A signal the kernel hands to another thread of
#: the caller (one that does not block it) sets the interpreter's flag but
#: wakes no wait of the main thread: its handler runs when the wait returns.
SIGNAL_SLICE = 0.1


def check_interval(age: float) -> float:
    """Seconds until the next check of an action that has run ``age``
    seconds: CHECK_INTERVAL during its first CHECK_FAST_FOR seconds, then a
    fifth of its age, at most CHECK_INTERVAL_MAX.  So a limit breached at
    time t is seen by t + max(20 ms, min(t / 5, 100 ms)), plus the time the
    check itself takes (docs/limits.md)."""
    if age < CHECK_FAST_FOR:
        return CHECK_INTERVAL
    return min(CHECK_INTERVAL_MAX, max(CHECK_INTERVAL, age / 5))


class Serve(Protocol):
    """Something to serve while waiting (the seccomp listener: its
    notifications hold the action until answered)."""

    def wait(self, target: int, seconds: float | None) -> bool:
        """Like wait_readable(target, seconds), serving meanwhile."""
        ...


def wait_readable(fd: int, seconds: float | None, serve: Serve | None = None) -> bool:
    """True once ``fd`` is readable, False after ``seconds`` (None: no limit)."""
    if serve is not None:
        return serve.wait(fd, seconds)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        left = SIGNAL_SLICE if deadline is None else deadline - time.monotonic()
        ms = max(0, int(min(left, SIGNAL_SLICE) * 1000 + 0.999))
        if poller.poll(ms):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def wait_or_kill(
    pidfd: int,
    timeout: float | None,
    send: Callable[[int], None],
    grace: float = DEFAULT_KILL_GRACE,
    check: Callable[[], str | None] | None = None,
    serve: Serve | None = None,
    interval: Callable[[float], float] = check_interval,
) -> tuple[bool, str | None]:
    """Wait until the process behind ``pidfd`` has exited.

    Returns ``(timed_out, breach)``: breach is what ``check()`` returned
    when it asked to end the sandbox; it is asked ``interval(age)`` seconds
    after the last time, ``age`` the time waited so far (by default
    ``check_interval``).  ``send(sig)`` delivers a signal to the
    sandbox's pid 1.  A pidfd becomes readable when its process exits, so
    there is no SIGCHLD handler, and without a check no polling loop.
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    while True:
        now = time.monotonic()
        wait = None if deadline is None else max(0.0, deadline - now)
        if check is not None:
            every = interval(now - start)
            wait = every if wait is None else min(wait, every)
        if wait_readable(pidfd, wait, serve):
            return False, None
        if check is not None:
            breach = check()
            if breach:
                send(signal.SIGKILL)
                wait_readable(pidfd, None)
                return False, breach
        if deadline is not None and time.monotonic() >= deadline:
            break
    send(signal.SIGTERM)
    if not wait_readable(pidfd, grace, serve):
        send(signal.SIGKILL)
        wait_readable(pidfd, None)
    return True, None
