"""The launcher's wire format and the runtime directory (docs/launch-protocol.md).

Pure functions over bytes and paths: the daemon (daemon.py) does the I/O.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from dataclasses import dataclass

from hermetic.core.errors import SpecError

#: A request to run an action; its payload follows, the three stdio
#: descriptors ride the first bytes.  The digit is the protocol's version:
#: 2 added the daemon's challenge (PROVE); 3 sends the challenge before the
#: peer's /proc is compared, so that a refusal from that comparison comes
#: after the challenge (REFUSED).
RUN = b"HML3"
#: Control requests, with an empty payload.
STATUS = b"HMS3"
STOP = b"HMQ3"
#: The reply: this, then the exit status (int32, little-endian).  A caller
#: refused before its challenge gets this word (status 125), then one line
#: saying why; the reply to a request that ran is these 8 bytes alone.
REPLY = b"HMR1"
#: A refusal after the challenge (the comparison from /proc, or a request
#: sent without the proof): this, the status (125), then one line saying
#: why, until the connection's end.  A word of its own, so that a client
#: reads on after it, never after a REPLY.
REFUSED = b"HMN3"
#: The header: a magic and the payload's length (uint32, little-endian).
HEADER = struct.Struct("<4sI")
STATUS_WORD = struct.Struct("<4si")
#: The daemon's first message on a connection from its own uid: this
#: magic, the address of a buffer in the daemon's memory (uint64,
#: little-endian) and a nonce the client must write there
#: (process_vm_writev) before it sends its request.  A caller refused
#: before it (another uid, too many handshakes) gets a REPLY word instead,
#: then one line.
PROVE = b"HMP3"
#: Protocol 2's challenge, and its control requests (STATUS, STOP) for
#: ours: ``hermetic serve --status`` and ``--stop`` still speak to a daemon
#: of version 2, which an upgrade can leave running until its idle time.
OLDER_CONTROL = {b"HMP2": {b"HMS3": b"HMS2", b"HMQ3": b"HMQ2"}}
NONCE_BYTES = 16
CHALLENGE = struct.Struct(f"<4sQ{NONCE_BYTES}s")
#: Seconds a client has, from its connection's accept, to prove itself
#: and send its request's header.
HANDSHAKE_TIMEOUT = 1.0
#: A payload larger than this is refused (Linux's own limit on a command
#: line and its environment is 2 MiB by default, 6 MiB at most).
MAX_PAYLOAD = 16 << 20


@dataclass(frozen=True)
class Request:
    """One action, as a launcher asked for it."""

    spec_path: str
    cwd: str
    argv: tuple[str, ...]
    env: dict[str, str]


def reply(status: int) -> bytes:
    return STATUS_WORD.pack(REPLY, status)


def refusal(status: int) -> bytes:
    return STATUS_WORD.pack(REFUSED, status)


def parse_header(data: bytes) -> tuple[bytes, int]:
    """(magic, payload length) from the first 8 bytes; SpecError if bad."""
    magic, length = HEADER.unpack(data[: HEADER.size])
    if magic not in (RUN, STATUS, STOP):
        raise SpecError(f"not a launcher request (magic {magic!r})", field="request")
    if length > MAX_PAYLOAD or (magic != RUN and length):
        raise SpecError(f"request of {length} bytes refused", field="request")
    return magic, length


#: How os.fsdecode decodes, looked up once (parse_run decodes every string).
_FS_DECODE = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def parse_run(payload: bytes) -> Request:
    """A RUN payload's records: tag byte, then a NUL-terminated string.
    The payload is split at its NULs in one call: a compiler's command line
    is dozens of records, read on every action."""
    fields: dict[bytes, list[bytes]] = {b"S": [], b"C": [], b"A": [], b"E": []}
    if payload:
        records = payload.split(b"\0")
        tail = records.pop()  # what follows the last NUL: nothing, when well formed
        for i, record in enumerate(records):
            found = fields.get(record[:1])
            if found is None:
                raise _malformed(records, i)
            found.append(record[1:])
        if tail:
            raise _malformed(records, len(records))
    for tag, name in ((b"S", "spec path"), (b"C", "working directory")):
        if len(fields[tag]) != 1:
            raise SpecError(f"the request must name one {name}", field="request")
    if not fields[b"A"]:
        raise SpecError("the request names no command", field="request")
    env: dict[str, str] = {}
    for item in fields[b"E"]:
        name, sep, value = item.decode(*_FS_DECODE).partition("=")
        if not sep or not name:
            raise SpecError(f"passed variable {name!r} is not NAME=VALUE", field="env")
        env[name] = value
    spec_path, cwd = fields[b"S"][0].decode(*_FS_DECODE), fields[b"C"][0].decode(*_FS_DECODE)
    for what, path in (("spec path", spec_path), ("working directory", cwd)):
        if not path.startswith("/"):
            raise SpecError(f"the {what} must be absolute: {path!r}", field="request")
    argv = tuple(arg.decode(*_FS_DECODE) for arg in fields[b"A"])
    return Request(spec_path, cwd, argv, env)


def _malformed(records: list[bytes], i: int) -> SpecError:
    """The error for record ``i`` (its offset: the records before it, each
    with its NUL)."""
    at = sum(len(record) + 1 for record in records[:i])
    return SpecError(f"malformed request record at byte {at}", field="request")


#: Below $HOME, the runtime directory when XDG_RUNTIME_DIR is unset.
HOME_RUNTIME_DIR = ".cache/hermetic/run"


def _passwd_home(uid: int) -> str:
    """The home directory /etc/passwd gives ``uid`` ("" if none): the file
    itself, as the launcher reads it (it cannot rely on NSS)."""
    try:
        with open("/etc/passwd", "rb") as f:
            text = f.read(1 << 20)
    except OSError:
        return ""
    for line in text.split(b"\n"):
        fields = line.split(b":")
        if len(fields) >= 6 and fields[2].isdigit() and int(fields[2]) == uid:
            return os.fsdecode(fields[5])
    return ""


def runtime_dir() -> str:
    """Where the daemon's socket and lock live (docs/launch-protocol.md).
    Without XDG_RUNTIME_DIR, a directory below $HOME (as gpg-agent falls
    back to its home directory): a name in the shared /tmp could be taken
    first by another user, and the launcher refused for good."""
    given = os.environ.get("HERMETIC_RUNTIME_DIR")
    if given:
        return given
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "hermetic")
    home = os.environ.get("HOME", "")
    if not home.startswith("/"):
        home = _passwd_home(os.geteuid())
    if not home.startswith("/"):
        raise SpecError(
            "no runtime directory: set XDG_RUNTIME_DIR, HERMETIC_RUNTIME_DIR or HOME",
            field="runtime_dir",
        )
    return os.path.join(home, HOME_RUNTIME_DIR)


def checked_runtime_dir(create: bool = True) -> str:
    """runtime_dir(), made if missing (0700), and checked: a directory, not
    a link, owned by this user, with no group or other permission.  Anyone
    else able to reach the socket could run actions as this user.

    Raises SpecError naming the directory and what is wrong with it."""
    path = runtime_dir()
    if not path.startswith("/"):
        raise SpecError(f"runtime directory {path!r} is not absolute", field="runtime_dir")
    if create:
        try:
            if not os.environ.get("HERMETIC_RUNTIME_DIR") and not os.environ.get("XDG_RUNTIME_DIR"):
                os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)  # below $HOME
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise SpecError(
                f"cannot make runtime directory {path!r}: {e.strerror}", field="runtime_dir"
            ) from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise SpecError(f"runtime directory {path!r}: {e.strerror}", field="runtime_dir") from None
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory (a symbolic link is refused)"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user ({os.geteuid()})"
    elif st.st_mode & 0o077:
        problem = f"is reachable by others (mode {stat.S_IMODE(st.st_mode):o}; it must be 700)"
    if problem:
        raise SpecError(f"runtime directory {path!r} {problem}", field="runtime_dir")
    return path
