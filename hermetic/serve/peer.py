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

What ptrace does not judge, and a caller cannot undo, is compared before
anything is read from the connection: the effective uid as it is accepted
(``check_uid``), before the challenge; then, while the caller answers the
challenge, from /proc/PID (``check_proc``):
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

import collections
import contextlib
import ctypes
import hmac
import os
import re
import signal
import socket
import struct

from hermetic.core.errors import UnsupportedError
from hermetic.serve import protocol

SO_PEERPIDFD = 77  # <linux/socket.h>, Linux 6.5
_NAMESPACES = ("user", "mnt", "net", "pid")
#: The lines of /proc/PID/status compared, found in one pass over the text
#: (in C): the connection's check runs on every action, and splitting the
#: whole file into lines in Python cost more than reading it.
_STATUS_LINES = re.compile(
    rb"^(NoNewPrivs|Seccomp|Seccomp_filters|Uid|Gid|Groups):[ \t]*(.*?)[ \t]*$", re.M
)
_CREDS = struct.Struct("3i")
#: <linux/prctl.h>: Yama's exception for ptrace_scope 1.
_PR_SET_PTRACER = 0x59616D61
_PR_SET_PTRACER_ANY = ctypes.c_ulong(-1)
_YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"

#: What is compared: the namespaces' links, then the status lines as
#: (name, value) pairs, in the file's order.
_Identity = tuple[tuple[str, ...], list[tuple[bytes, bytes]]]


def _identity(pid: int | str) -> _Identity:
    proc = f"/proc/{pid}/"
    # "user:[4026531837]": the namespace's type and inode number.  All
    # namespaces are inodes of the one nsfs (Linux 3.8 on), so this names
    # the namespace as (st_dev, st_ino) would, and readlink makes no nsfs
    # dentry: a third of a stat's cost, on every connection.
    links = tuple(os.readlink(f"{proc}ns/{ns}") for ns in _NAMESPACES)
    fd = os.open(f"{proc}status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    # Both texts come from the same kernel, which formats equal values
    # alike: the raw values compare as the fields do.
    return links, _STATUS_LINES.findall(text)


def _differences(own: _Identity, theirs: _Identity) -> list[str]:
    """The names of what differs (for the refusal's message)."""
    names = [ns for ns, a, b in zip(_NAMESPACES, own[0], theirs[0], strict=True) if a != b]
    mine, their = dict(own[1]), dict(theirs[1])
    names += [k.decode() for k, v in mine.items() if their.get(k) != v]
    return sorted(names)


_OWN: _Identity | None = None


def _own() -> _Identity:
    global _OWN
    if _OWN is None:
        _OWN = _identity("self")
    return _OWN


def peer_creds(conn: socket.socket) -> tuple[int, int]:
    """The peer's pid and effective uid, as SO_PEERCRED gives them."""
    pid, uid, _gid = _CREDS.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    return int(pid), int(uid)


def peer_pid(conn: socket.socket) -> int:
    """The peer's pid, as SO_PEERCRED gives it."""
    return peer_creds(conn)[0]


_EUID: int | None = None


def check_uid(uid: int) -> None:
    """Raise UnsupportedError unless ``uid`` (SO_PEERCRED's) is ours."""
    global _EUID
    if _EUID is None:
        _EUID = os.geteuid()  # the daemon never changes it
    if uid != _EUID:
        raise UnsupportedError("launcher", f"the daemon serves uid {_EUID} only, not {uid}")


def check_proc(conn: socket.socket, pid: int) -> None:
    """Raise UnsupportedError unless the peer ``pid`` of ``conn`` is
    confined as the daemon is, as far as /proc tells (the proof tells the
    rest)."""
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
        own = _own()
        if theirs != own:
            raise UnsupportedError(
                "launcher",
                "the caller is confined differently from the daemon "
                f"({', '.join(_differences(own, theirs))}): it would run actions with more "
                "rights than the caller has; give it a daemon of its own (HERMETIC_RUNTIME_DIR)",
            )
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def check_peer(conn: socket.socket, creds: tuple[int, int] | None = None) -> int:
    """The peer's pid; raise UnsupportedError unless the peer may use this
    daemon, as far as SO_PEERCRED and /proc tell (the proof tells the
    rest).  ``creds``: what ``peer_creds(conn)`` gave, when the caller has
    it already."""
    pid, uid = creds if creds is not None else peer_creds(conn)
    check_uid(uid)
    check_proc(conn, pid)
    return pid


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)


class Challenges:
    """The daemon's challenge buffers: ``slots`` buffers of NONCE_BYTES in
    one allocation made once, for the daemon's life.

    A buffer whose connection has ended may still be written by a caller
    that proved itself late (stopped, then continued, after its
    handshake's timeout): the write must never land in memory the
    interpreter has given to anything else, so a buffer is only ever
    reused for another challenge, and the least recently freed first
    (a late write then at worst spoils one later proof, which is refused).
    Nonces are drawn from the system's random source in batches.  Used
    by one thread at a time (the daemon's leader)."""

    def __init__(self, slots: int) -> None:
        self._buffers = ctypes.create_string_buffer(slots * protocol.NONCE_BYTES)
        self._base = ctypes.addressof(self._buffers)
        self._free = collections.deque(range(slots))
        self._random = b""

    def take(self) -> Challenge | None:
        """A new challenge, None when every buffer is in use."""
        if not self._free:
            return None
        slot = self._free.popleft()
        if len(self._random) < protocol.NONCE_BYTES:
            self._random = os.urandom(protocol.NONCE_BYTES * 64)
        nonce, self._random = (
            self._random[: protocol.NONCE_BYTES],
            self._random[protocol.NONCE_BYTES :],
        )
        address = self._base + slot * protocol.NONCE_BYTES
        ctypes.memset(address, 0, protocol.NONCE_BYTES)
        return Challenge(self, slot, address, nonce)

    def _give_back(self, slot: int) -> None:
        self._free.append(slot)


class Challenge:
    """One connection's proof: a buffer of the daemon's that only a caller
    able to write the daemon's memory can fill with the nonce.  ``end()``
    gives the buffer back once the proof is checked or the connection
    closed."""

    def __init__(self, pool: Challenges, slot: int, address: int, nonce: bytes) -> None:
        self._pool: Challenges | None = pool
        self._slot = slot
        self._address = address
        self.nonce = nonce

    def message(self) -> bytes:
        return protocol.CHALLENGE.pack(protocol.PROVE, self._address, self.nonce)

    def proven(self) -> bool:
        if self._pool is None:
            return False
        written = ctypes.string_at(self._address, protocol.NONCE_BYTES)
        return hmac.compare_digest(written, self.nonce)

    def end(self) -> None:
        if self._pool is not None:
            self._pool._give_back(self._slot)
            self._pool = None


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


def prove(
    sock: socket.socket,
    timeout: float = 10.0,
    accept: tuple[bytes, ...] = (protocol.PROVE,),
    seen: list[bytes] | None = None,
) -> tuple[int, bytes] | None:
    """The client's side of the proof on a connected socket: None once the
    nonce is written into the daemon, or the daemon's refusal (its status
    and its line).  OSError when the write is not allowed.  ``accept``: the
    challenges' magics taken (their layout is the same); the one met is
    appended to ``seen``."""
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
    if len(head) < protocol.CHALLENGE.size or head[:4] not in accept:
        raise OSError(0, "the daemon sent no challenge of this protocol")
    if seen is not None:
        seen.append(head[:4])
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
        # The daemon may have refused us from /proc meanwhile, for a
        # reason it names: half-closed, the connection brings that
        # refusal, or its end.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            rest = b""
            while chunk := sock.recv(4096):
                rest += chunk
            if rest[:4] == protocol.REFUSED and len(rest) > protocol.STATUS_WORD.size:
                status = protocol.STATUS_WORD.unpack(rest[: protocol.STATUS_WORD.size])[1]
                return status, rest[protocol.STATUS_WORD.size :]
        raise OSError(e, f"cannot write the daemon's memory: {os.strerror(e)}")
    return None
