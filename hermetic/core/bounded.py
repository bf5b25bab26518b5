"""Reading a file a caller names: a regular file of bounded size, or an
error naming it.

A FIFO would block the open (or the read) for ever, /dev/zero or an
endless file would be read until memory runs out, and opening some
devices has effects: the command line's spec files and audit logs and the
launcher daemon's spec files are all read through here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from hermetic.core.errors import SpecError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def size_text(limit: int) -> str:
    return f"{limit >> 30} GiB" if limit >= 1 << 30 else f"{limit >> 20} MiB"


def check_regular(st: os.stat_result, path: str, what: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
        raise SpecError(f"{what} {path!r} is not a regular file ({kind})", field=what, value=path)
    if st.st_size > limit:
        raise SpecError(
            f"{what} {path!r} is larger than {size_text(limit)}", field=what, value=path
        )


def open_regular(path: str, what: str, limit: int) -> int:
    """A descriptor open for reading on the regular file ``path`` of at most
    ``limit`` bytes, or SpecError naming ``what`` (``"spec file"``), the
    path and the reason."""
    try:
        # stat first: nothing but a regular file is opened (opening some
        # devices has effects).  O_NONBLOCK: should the name now be a FIFO,
        # the open returns at once and fstat refuses it.
        check_regular(os.stat(path), path, what, limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except SpecError:
        raise
    except OSError as e:
        raise SpecError(
            f"cannot read {what} {path!r}: {e.strerror}", field=what, value=path
        ) from None
    except ValueError as e:  # a NUL byte, or text no file name can hold
        raise SpecError(f"cannot read {what} {path!r}: {e}", field=what, value=path) from None
    try:
        check_regular(os.fstat(fd), path, what, limit)
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunks(fd: int, path: str, what: str, limit: int) -> Iterator[bytes]:
    """The content of ``fd`` (from :func:`open_regular`) in chunks, at most
    ``limit`` bytes in all (the file may have grown since fstat), or
    SpecError.  The descriptor stays non-blocking: a file that only looks
    regular (/proc/kmsg) and would wait for data is refused, not waited on."""
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        except BlockingIOError:
            raise SpecError(
                f"cannot read {what} {path!r}: reading it would wait for data",
                field=what,
                value=path,
            ) from None
        except OSError as e:
            raise SpecError(
                f"cannot read {what} {path!r}: {e.strerror}", field=what, value=path
            ) from None
        if not chunk:
            return
        total += len(chunk)
        if total > limit:
            raise SpecError(
                f"{what} {path!r} is larger than {size_text(limit)}", field=what, value=path
            )
        yield chunk


def read_regular(path: str, what: str, limit: int) -> bytes:
    """The whole of the regular file ``path``, at most ``limit`` bytes, or
    SpecError naming ``what`` (``"spec file"``), the path and the reason."""
    fd = open_regular(path, what, limit)
    try:
        return b"".join(chunks(fd, path, what, limit))
    finally:
        os.close(fd)
