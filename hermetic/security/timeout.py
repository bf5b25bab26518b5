"""Timeout enforcement: wait for a sandbox, and past its deadline end it.

The sequence follows Bazel's sandboxes: SIGTERM to the whole sandbox (its
pid 1 forwards it to every process), a short grace for cleanup, then
SIGKILL of pid 1, which makes the kernel kill everything left in its pid
namespace.
"""

from __future__ import annotations

import select
import signal
from collections.abc import Callable

#: Seconds between SIGTERM and SIGKILL.
DEFAULT_KILL_GRACE = 0.5


def _wait_readable(fd: int, seconds: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if seconds is None else max(0, int(seconds * 1000 + 0.999))
    return bool(poller.poll(ms))


def wait_or_kill(
    pidfd: int,
    timeout: float | None,
    send: Callable[[int], None],
    grace: float = DEFAULT_KILL_GRACE,
) -> bool:
    """Wait until the process behind ``pidfd`` has exited; True when it timed out.

    ``send(sig)`` delivers a signal to the sandbox's pid 1.  A pidfd becomes
    readable when its process exits, so no polling loop and no SIGCHLD
    handler is needed.
    """
    if _wait_readable(pidfd, timeout):
        return False
    send(signal.SIGTERM)
    if not _wait_readable(pidfd, grace):
        send(signal.SIGKILL)
        _wait_readable(pidfd, None)
    return True
