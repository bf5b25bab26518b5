"""Who is on the other end of a launcher's connection, and may they use us.

The daemon runs actions with its own rights, so it serves only a caller
that could already control the daemon: serving it then grants nothing new.
The kernel itself decides that, through the proof step of the protocol
(docs/launch-protocol.md): right after accept the daemon sends a challenge,
the address of a small buffer in its own memory and a random nonce, and the
caller must write the nonce there with ``process_vm_writev`` before it
sends its request.  That write needs PTRACE_MODE_ATTACH_REALCREDS over the
daemon: the same uids and gids, a superset of the daemon's capabilities, a
Landlock domain that is the daemon's or an ancestor of it, and whatever
Yama, SELinux or AppArmor add.  A caller able to write the daemon's memory
could make the daemon do anything already.

What ptrace does not judge, and a caller cannot undo, is compared first,
from /proc/PID before anything is read from the connection (``check_peer``):
the user, mount, network and pid namespaces; NoNewPrivs; the seccomp mode
and the number of seccomp filters (each filter only ever adds refusals, and
none can be removed); the real, effective, saved and file-system uids and
gids and the supplementary groups.  SO_PEERPIDFD (Linux 6.5) gives a pidfd
that proves afterwards that the pid still named the peer (a pid reused
between the two would fail the final signal-0 check).

rlimits and cgroups are not compared: an action's limits are its spec's,
as any build daemon's actions are (docs/threat-model.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import os
import signal
import socket
import struct

from hermetic.core.errors import UnsupportedError
from hermetic.serve import protocol

SO_PEERPIDFD = 77  # <linux/socket.h>, Linux 6.5
_NAMESPACES = ("user", "mnt", "net", "pid")
_STATUS_FIELDS = (b"NoNewPrivs", b"Seccomp", b"Seccomp_filters", b"Uid", b"Gid", b"Groups")
#: <linux/prctl.h>: Yama's exception for ptrace_scope 1.
_PR_SET_PTRACER = 0x59616D61
_PR_SET_PTRACER_ANY = ctypes.c_ulong(-1)
_YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


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
            found[name.decode()] = b" ".join(value.split())
    return found


_OWN: dict[str, object] | None = None


def _own() -> dict[str, object]:
    global _OWN
    if _OWN is None:
        _OWN = _identity("self")
    return _OWN


def peer_pid(conn: socket.socket) -> int:
    """The peer's pid, as SO_PEERCRED gives it."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def check_peer(conn: socket.socket) -> int:
    """The peer's pid; raise UnsupportedError unless the peer may use this
    daemon, as far as /proc tells (the proof tells the rest)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    pid = int(pid)
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
    return pid


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)


class Challenge:
    """One connection's proof: a buffer of the daemon's that only a caller
    able to write the daemon's memory can fill with the nonce.  Kept alive
    (with its buffer) until ``proven()`` has been asked."""

    def __init__(self) -> None:
        self.nonce = os.urandom(protocol.NONCE_BYTES)
        self._buffer = ctypes.create_string_buffer(protocol.NONCE_BYTES)

    def message(self) -> bytes:
        return protocol.CHALLENGE.pack(protocol.PROVE, ctypes.addressof(self._buffer), self.nonce)

    def proven(self) -> bool:
        return hmac.compare_digest(self._buffer.raw, self.nonce)


def allow_proofs() -> None:
    """Under Yama's ptrace_scope 1 only an ancestor may write a process's
    memory; PR_SET_PTRACER_ANY lets any process that passes the other
    checks (same uids, capabilities, Landlock domain) do it.  That grants
    nothing: the daemon holds no secret beyond the rights that every
    unconfined process of the user has already.  Without Yama, EINVAL."""
    with contextlib.suppress(OSError):
        _libc.prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)


def yama_scope() -> int | None:
    """kernel.yama.ptrace_scope, None without Yama."""
    try:
        with open(_YAMA_SCOPE, "rb") as f:
            return int(f.read().strip() or b"0")
    except (OSError, ValueError):
        return None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def prove(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """The client's side of the proof on a connected socket: None once the
    nonce is written into the daemon, or the daemon's refusal (its status
    and its line).  OSError when the write is not allowed."""
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        head = _recv_exactly(sock, protocol.CHALLENGE.size)
    finally:
        sock.settimeout(previous)
    if head[:4] == protocol.REPLY and len(head) >= protocol.STATUS_WORD.size:
        status = protocol.STATUS_WORD.unpack(head[: protocol.STATUS_WORD.size])[1]
        rest = head[protocol.STATUS_WORD.size :]
        while chunk := sock.recv(4096):
            rest += chunk
        return status, rest
    if len(head) < protocol.CHALLENGE.size or head[:4] != protocol.PROVE:
        raise OSError(0, "the daemon sent no challenge of this protocol")
    _, address, nonce = protocol.CHALLENGE.unpack(head)
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    local = ctypes.create_string_buffer(nonce, len(nonce))
    ours = _IoVec(ctypes.addressof(local), len(nonce))
    theirs = _IoVec(address, len(nonce))
    _libc.process_vm_writev.restype = ctypes.c_ssize_t
    done = _libc.process_vm_writev(
        ctypes.c_int(pid),
        ctypes.byref(ours),
        ctypes.c_ulong(1),
        ctypes.byref(theirs),
        ctypes.c_ulong(1),
        ctypes.c_ulong(0),
    )
    if done != len(nonce):
        e = ctypes.get_errno()
        raise OSError(e, f"cannot write the daemon's memory: {os.strerror(e)}")
    return None
