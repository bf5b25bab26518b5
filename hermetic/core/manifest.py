"""Output manifests: what an action left under its declared outputs.

``collect(roots)`` walks each output (never following symlinks) and lists
every directory, regular file and symlink with its size, mode and, for
files, the SHA-256 of the content.  It is computed only when asked for
(``execute(..., collect_outputs=True)``): the fast path stays fast.

The walk is hermetic/core/tree.py's: descriptor-relative, iterative, so
an action's tree of any depth (beyond PATH_MAX too) is listed, and no link
it planted is followed.  ``OutputEntry.to_dict`` gives a path that is not
UTF-8 losslessly (hermetic/core/text.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hermetic.core import text, tree

__all__ = ["OutputEntry", "collect", "file_sha256"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputEntry:
    """One thing under an output.  ``path`` is absolute, as the action saw it."""

    path: str
    kind: str  # "file", "dir", "symlink" or "other" (a fifo, a socket...)
    size: int
    mode: int  # permission bits (stat.S_IMODE)
    sha256: str | None = None  # files only
    target: str | None = None  # symlinks only

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        text.put(d, "path", self.path)
        d.update(kind=self.kind, size=self.size, mode=oct(self.mode), sha256=self.sha256)
        text.put(d, "target", self.target)
        return d


def file_sha256(path: str | bytes | os.PathLike[str], *, dir_fd: int | None = None) -> str:
    """The SHA-256 of a regular file's content, never through a symlink.

    O_NONBLOCK: a FIFO put where a file was listed must not hang the
    caller; anything but a regular file is refused (EINVAL)."""
    import hashlib  # (loads OpenSSL: only when hashing)

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fsdecode(path))
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(
    name: str, dir_fd: int | None, shown: str, st: os.stat_result, digest: bool
) -> OutputEntry:
    kind = _kind(st.st_mode)
    return OutputEntry(
        path=shown,
        kind=kind,
        size=st.st_size if kind != "dir" else 0,
        mode=stat.S_IMODE(st.st_mode),
        sha256=file_sha256(name, dir_fd=dir_fd) if digest and kind == "file" else None,
        target=os.readlink(name, dir_fd=dir_fd) if kind == "symlink" else None,
    )


def _walk(
    real: str, shown: str, digest: bool, skip: Collection[tree.Place]
) -> Iterator[OutputEntry]:
    # prefix[d] is the shown path of the directory entries of depth d + 1 are in.
    prefix = [shown]
    path = shown
    try:
        for depth, name, dir_fd, st in tree.walk(real, skip=skip):
            path = shown if depth == 0 else prefix[depth - 1] + "/" + name
            yield _entry(name, dir_fd, path, st, digest)
            if stat.S_ISDIR(st.st_mode):
                del prefix[depth:]
                prefix.append(path)
    except FileNotFoundError as e:
        if e.filename != real:
            raise OSError(e.errno, e.strerror, path) from None
    except OSError as e:
        # The walk names entries relative to their directory: say which
        # output path it was at (the last entry listed, or the one under it).
        raise OSError(e.errno, e.strerror, path) from None


def collect(
    roots: Iterable[str],
    *,
    digest: bool = True,
    shown_as: dict[str, str] | None = None,
    skip: Collection[tree.Place] = frozenset(),
) -> tuple[OutputEntry, ...]:
    """Every entry under ``roots``, sorted by path.

    ``shown_as`` maps a root to the path the action saw it at, when the two
    differ (the fresh copies of a reproducibility check).  ``skip``: the
    places (tree.places) of what is left out with all it holds
    (inputs nested in an output are the caller's, not the action's), taken
    before the action ran, as security/outputs.py's scan takes them.
    """
    out: list[OutputEntry] = []
    for root in roots:
        shown = (shown_as or {}).get(root, root)
        out.extend(_walk(root, shown, digest, skip))
    out.sort(key=lambda e: e.path)
    return tuple(out)
