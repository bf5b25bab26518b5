"""Reaping a sandbox's pid 1: through its pidfd, never by its pid.

pid 1 is cloned without an exit signal (a "clone child", see
csrc/linux/spawn.c): a ``waitpid(-1)`` elsewhere in the caller (a library's
SIGCHLD handler, a thread reaping zombies) does not see it, so no one else
reaps it, and hermetic never waits on or signals a number that another
process may have taken since.
"""

from __future__ import annotations

import dataclasses
import errno
import os


@dataclasses.dataclass(frozen=True)
class Rusage:
    """A reaped process's rusage, shaped like os.wait4's (the figures used)."""

    ru_utime: float
    ru_stime: float
    ru_inblock: int
    ru_oublock: int


def reap(pidfd: int) -> tuple[int, Rusage]:
    """Wait for the process of ``pidfd`` (a child of this process) to end and
    reap it: its wait status and rusage.  Raises ChildProcessError when it
    was reaped already, OSError for any other failure."""
    from hermetic._native import ffi, lib

    out = ffi.new("struct hm_reaped *")
    while True:
        rc = int(lib.hm_reap(pidfd, out))
        # Repeated here, not in C: between two tries Python runs its signal
        # handlers (a KeyboardInterrupt raises out of the wait).
        if rc != -errno.EINTR:
            break
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))  # ChildProcessError for ECHILD
    status = int(out.status)
    return status, Rusage(
        out.utime_us / 1e6, out.stime_us / 1e6, int(out.inblock), int(out.oublock)
    )
