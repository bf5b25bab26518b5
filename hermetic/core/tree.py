"""Walking and removing trees an action wrote, without trusting them.

What an action leaves under its outputs is hostile input to the host side,
which runs with the caller's rights: it may hold symlinks to the caller's
files, directories of any mode, and directories nested deeper than
Python's recursion limit, the descriptor limit or PATH_MAX.  So:

- No symlink is ever followed.  Every directory is opened relative to its
  parent's descriptor with ``O_DIRECTORY | O_NOFOLLOW`` (a symlink fails to
  open), entries are examined with ``lstat`` semantics, and a mode is only
  ever changed on a descriptor of a directory opened that way: a planted
  link can neither redirect a read nor have its target's mode changed.
- Nothing recurses, and a walk holds one directory descriptor at a time,
  whatever the depth.  Going back up opens ``..`` and checks that it is the
  directory the walk came from (device and inode), so a tree moved during
  the walk stops it with an error instead of sending it elsewhere.
- No full path is needed below the root: the depth is bounded only by what
  the filesystem allows.

``open_long`` opens a path longer than PATH_MAX, a component run at a time,
for the callers (digests, comparisons) that hold such paths.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator

__all__ = ["Place", "Trail", "open_dir", "open_long", "places", "remove_tree", "walk"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Paths up to this length are opened in one call; longer ones in runs of
#: components of at most this length (PATH_MAX is 4096 with the NUL).
_RUN = 3072


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


#: Where an entry is: its directory's (device, inode), its name there, and
#: its own (device, inode).
Place = tuple[tuple[int, int], str, tuple[int, int]]


def places(paths: Iterable[str]) -> frozenset[Place]:
    """The place of each of ``paths`` that exists (lstat, its directory
    included): what :func:`walk`'s ``skip`` takes.  Both the entry and its
    directory must match: taken before an action runs, a place names that
    entry where it was and nothing put in its stead (a new directory at its
    path), and not another hard link to the same file elsewhere."""
    found = set()
    for path in paths:
        parent, name = os.path.split(path)
        try:
            found.add((_ident(os.lstat(parent or "/")), name, _ident(os.lstat(path))))
        except OSError:
            continue
    return frozenset(found)


def open_dir(name: str | bytes, dir_fd: int | None = None, *, for_removal: bool = False) -> int:
    """A read descriptor of the directory ``name`` (relative to ``dir_fd``),
    never through a symlink.

    ``for_removal``: a directory the caller owns but cannot read (an action
    made it mode 0) is made 0700 first.  That chmod goes through an
    ``O_PATH`` descriptor of the directory itself, never a path: a symlink
    put in its place cannot redirect it.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not for_removal:
            raise
    # O_PATH needs no permission on the directory; with O_DIRECTORY and
    # O_NOFOLLOW it fails on a symlink.  /proc/self/fd/N names exactly the
    # inode that descriptor holds.
    pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{pfd}", 0o700)
        return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(pfd)


def _parent(fd: int, expected: tuple[int, int]) -> int:
    """The directory above ``fd``, which must be the one the walk came from."""
    up = os.open("..", _DIR_FLAGS, dir_fd=fd)
    if _ident(os.fstat(up)) != expected:
        os.close(up)
        raise OSError(errno.ESTALE, "a directory was moved while the tree was walked")
    return up


def walk(
    root: str,
    onerror: Callable[[OSError, int, str], None] | None = None,
    skip: Collection[Place] = (),
) -> Iterator[tuple[int, str, int | None, os.stat_result]]:
    """Every entry of the tree at ``root``, parents before children, each
    directory's entries in sorted order, as ``(depth, name, dir_fd, st)``.

    ``onerror(error, depth, name)``: a directory below the root that cannot
    be opened is passed to it and left out, and the walk goes on; without
    it the error is raised.

    The root comes first with depth 0, its path as name and ``dir_fd`` None;
    below it ``name`` is relative to ``dir_fd``, a descriptor of its
    directory that stays open only until the next entry is asked for.
    ``st`` is the entry's own status (lstat).  An entry removed during the
    walk is left out; a missing root raises FileNotFoundError.

    ``skip``: the places (:func:`places`) of entries below the root to
    leave out with all they hold (the caller's inputs nested in an output).
    """
    st = os.lstat(root)
    yield 0, root, None, st
    if not stat.S_ISDIR(st.st_mode):
        return
    fd = open_dir(root)
    try:
        idents = [_ident(os.fstat(fd))]
        pending = sorted(os.listdir(fd), reverse=True)  # popped from the end
        above: list[list[str]] = []
        while True:
            if not pending:
                if not above:
                    return
                idents.pop()
                up = _parent(fd, idents[-1])
                os.close(fd)
                fd, pending = up, above.pop()
                continue
            name = pending.pop()
            try:
                cst = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if skip and (idents[-1], name, _ident(cst)) in skip:
                continue
            yield len(idents), name, fd, cst
            if not stat.S_ISDIR(cst.st_mode):
                continue
            try:
                child = open_dir(name, fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                if onerror is None:
                    raise
                onerror(e, len(idents), name)
                continue
            try:
                names = sorted(os.listdir(child), reverse=True)
            except BaseException:
                os.close(child)
                raise
            os.close(fd)
            fd = child
            idents.append(_ident(os.fstat(fd)))
            above.append(pending)
            pending = names
    finally:
        os.close(fd)


class Trail:
    """The paths of what :func:`walk` yields from ``root``, for messages:
    the names of the directories on the way down, a path built only when
    asked (a deep tree's paths are long).  Call :meth:`visit` with each
    entry below the root, in the walk's order."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._dirs: list[str] = []  # [i]: the directory at depth i + 1

    def visit(self, depth: int, name: str, st: os.stat_result) -> None:
        del self._dirs[depth - 1 :]
        if stat.S_ISDIR(st.st_mode):
            self._dirs.append(name)

    def path(self, depth: int, name: str) -> str:
        """The path of entry ``name`` at ``depth`` (the last one visited, or
        one of its directory's entries)."""
        return "/".join([self.root, *self._dirs[: depth - 1], name])


def _writable(fd: int) -> None:
    """Let the owner list and empty a directory, by its descriptor."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        try:
            os.chmod(fd, 0o700)
        except PermissionError:
            pass  # not ours: the unlink that needs it reports the failure


def remove_tree(path: str, *, keep: bool = False) -> None:
    """Remove ``path`` and everything below it, never following a link.

    Directories the action left unreadable or unwritable are made 0700
    through their own descriptors first.  Raises OSError when something
    cannot be removed; a missing ``path`` is not an error.  ``keep``: the
    directory ``path`` itself stays, emptied.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if keep and not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = open_dir(path, for_removal=True)
    try:
        _writable(fd)
        idents = [_ident(os.fstat(fd))]
        pending = os.listdir(fd)
        above: list[tuple[str, list[str]]] = []
        while True:
            if not pending:
                if not above:
                    break
                idents.pop()
                up = _parent(fd, idents[-1])
                os.close(fd)
                fd = up
                name, pending = above.pop()
                os.rmdir(name, dir_fd=fd)
                continue
            name = pending.pop()
            try:
                cst = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                os.unlink(name, dir_fd=fd)
                continue
            child = open_dir(name, fd, for_removal=True)
            os.close(fd)
            fd = child
            _writable(fd)
            idents.append(_ident(os.fstat(fd)))
            above.append((name, pending))
            pending = os.listdir(fd)
    finally:
        os.close(fd)
    if not keep:
        os.rmdir(path)


def open_long(path: str | bytes, flags: int) -> int:
    """``os.open(path, flags)`` for an absolute path of any length.

    A path longer than PATH_MAX is resolved a run of components at a time,
    each run relative to the directory the previous one reached; the last
    component is opened with ``flags`` (add O_NOFOLLOW to refuse a link
    there, as for a short path).
    """
    raw = os.fsencode(path)
    if len(raw) <= _RUN:
        return os.open(raw, flags | os.O_CLOEXEC)
    head, _, last = raw.rstrip(b"/").rpartition(b"/")
    fd = os.open(b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        run: list[bytes] = []
        size = 0
        for part in [p for p in head.split(b"/") if p] + [b""]:
            if part and size + len(part) + 1 <= _RUN:
                run.append(part)
                size += len(part) + 1
                continue
            if run:
                nxt = os.open(b"/".join(run), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
            run, size = ([part], len(part) + 1) if part else ([], 0)
        return os.open(last, flags | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
