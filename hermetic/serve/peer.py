"""Who is on the other end of a launcher's connection, and may they use us.

The daemon runs actions with its own rights.  A peer may use it only when
that gives the peer nothing it lacks: the same effective uid
(SO_PEERCRED), the same user, mount, network and pid namespaces, and the
same no_new_privs and seccomp state.  A process confined more tightly
(inside another sandbox, a container, under a seccomp filter) is refused:
through the daemon it would escape its confinement.

The peer's /proc entries are read by pid; SO_PEERPIDFD (Linux 6.5) gives a
pidfd that proves afterwards that the pid still named the peer (a pid
reused between the two would fail the final signal-0 check).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct

from hermetic.core.errors import UnsupportedError

SO_PEERPIDFD = 77  # <linux/socket.h>, Linux 6.5
_NAMESPACES = ("user", "mnt", "net", "pid")
_STATUS_FIELDS = (b"NoNewPrivs", b"Seccomp")


def _identity(pid: int | str) -> dict[str, object]:
    found: dict[str, object] = {}
    for ns in _NAMESPACES:
        # "user:[4026531837]": the namespace's type and inode number.  All
        # namespaces are inodes of the one nsfs (Linux 3.8 on), so this
        # names the namespace as (st_dev, st_ino) would, and readlink makes
        # no nsfs dentry: a third of a stat's cost, on every connection.
        found[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
    fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    for line in text.split(b"\n"):
        name, _, value = line.partition(b":")
        if name in _STATUS_FIELDS:
            found[name.decode()] = value.strip()
    return found


_OWN: dict[str, object] | None = None


def _own() -> dict[str, object]:
    global _OWN
    if _OWN is None:
        _OWN = _identity("self")
    return _OWN


def check_peer(conn: socket.socket) -> None:
    """Raise UnsupportedError unless the peer may use this daemon."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        raise UnsupportedError("launcher", f"the daemon serves uid {os.geteuid()} only, not {uid}")
    pidfd = -1
    with contextlib.suppress(OSError):
        pidfd = struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    try:
        try:
            theirs = _identity(pid)
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, 0)  # still the same process
        except OSError as e:
            raise UnsupportedError("launcher", f"cannot inspect the caller: {e}") from None
        differs = sorted(k for k, v in _own().items() if theirs.get(k) != v)
        if differs:
            raise UnsupportedError(
                "launcher",
                "the caller is confined differently from the daemon "
                f"({', '.join(differs)}): it would run actions with more rights than the "
                "caller has; give it a daemon of its own (HERMETIC_RUNTIME_DIR)",
            )
    finally:
        if pidfd >= 0:
            os.close(pidfd)
