"""The files and streams the command line reads or writes for the caller:
each named on the command line, checked before the action runs, and read
within a bound."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Iterator

from hermetic.core.bounded import check_regular, chunks, read_regular, size_text
from hermetic.core.errors import SpecError

# Files the command line reads are regular files of bounded size: a FIFO
# would block the open (or the read) for ever, /dev/zero or an endless file
# would be read until memory runs out.
#: A spec file larger than this is refused (a spec is a few kilobytes).
MAX_SPEC_BYTES = 16 << 20
#: An audit log larger than this is refused (a record is about 300 bytes)...
MAX_AUDIT_BYTES = 1 << 30
#: ...and so is one with a line longer than this (it is read line by line).
MAX_AUDIT_LINE = 1 << 20
#: --stdin: standard input longer than this is refused (it is held in memory).
MAX_STDIN_BYTES = 512 << 20


def _absolute(path: str, option: str) -> str:
    """``path`` made absolute against the current directory, or SpecError
    naming ``option`` (the current directory may have been removed)."""
    if not path:
        raise SpecError(f"{option} must not be empty", field=option, value=path)
    if path.startswith("/"):
        return path
    try:
        here = os.getcwd()
    except OSError as e:
        raise SpecError(
            f"{option} {path!r} is relative and the working directory is unavailable "
            f"({e.strerror})",
            field=option,
            value=path,
        ) from None
    return os.path.join(here, path)


def _read_spec(path: str) -> bytes:
    return read_regular(path, "spec file", MAX_SPEC_BYTES)


def _audit_lines(fd: int, path: str) -> Iterator[str]:
    """The lines of an open audit log as text, each and all bounded."""
    pending = b""
    number = 0
    for chunk in chunks(fd, path, "audit log", MAX_AUDIT_BYTES):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            number += 1
            yield _audit_line(line, number, path)
        if len(pending) > MAX_AUDIT_LINE:
            _audit_line(pending, number + 1, path)  # raises: too long
    if pending:
        yield _audit_line(pending, number + 1, path)


def _audit_line(line: bytes, number: int, path: str) -> str:
    if len(line) > MAX_AUDIT_LINE:
        raise SpecError(
            f"audit log {path!r}: line {number} is longer than {size_text(MAX_AUDIT_LINE)}"
        )
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            f"audit log {path!r}: line {number} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _stdin(ns: argparse.Namespace) -> bytes | None:
    """--stdin: this process's standard input, bounded; else None."""
    if not ns.stdin:
        return None
    stream = sys.stdin
    if stream is None:
        raise SpecError("--stdin: this process has no standard input", field="stdin")
    data: bytes = stream.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise SpecError(
            f"--stdin: standard input is larger than {size_text(MAX_STDIN_BYTES)}", field="stdin"
        )
    return data


def _audit_log(path: str | None) -> str | None:
    """--audit-log, checked before the action runs: violations are appended
    after it, when a FIFO nothing reads would block and a directory would
    fail.  A regular file (or one to create), a character device (a
    terminal, /dev/null) or a FIFO being read are accepted."""
    if path is None:
        return None
    option = "--audit-log"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(_absolute(path, option))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise SpecError(
                f"{option} {path!r}: cannot create it (no writable directory {parent!r})",
                field=option,
                value=path,
            ) from None
        return path
    except OSError as e:
        raise SpecError(f"{option} {path!r}: {e.strerror}", field=option, value=path) from None
    except ValueError as e:  # a NUL byte, or text no file name can hold
        raise SpecError(f"{option} {path!r}: {e}", field=option, value=path) from None
    if stat.S_ISFIFO(st.st_mode):
        # A FIFO works while something reads it; without a reader the
        # append's open would block for ever (here: ENXIO at once).
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as e:
            reason = "a FIFO nothing reads" if e.errno == errno.ENXIO else e.strerror
            raise SpecError(
                f"{option} {path!r} is not a regular file ({reason})", field=option, value=path
            ) from None
    elif not stat.S_ISCHR(st.st_mode):  # a terminal or /dev/null is fine
        check_regular(st, path, option, sys.maxsize)
    if not os.access(path, os.W_OK):
        raise SpecError(f"{option} {path!r} is not writable", field=option, value=path)
    return path
