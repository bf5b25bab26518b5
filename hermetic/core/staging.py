"""Per-action inputs on one reused executor: a staging directory.

An executor is the fast path (its plan, its prepared mount namespace, its
standby sandbox are reused), but its spec, and with it the set of visible
paths, is fixed.  A build system whose actions each declare their own input
files keeps one executor per concurrent action slot, whose spec declares a
staging directory as an input (and as the working directory), and before
each action fills that directory with exactly the action's inputs, as
Bazel's sandboxes stage an exec root per action.  The sandbox binds the
directory itself: the action sees what it holds, read-only.

``stage_inputs`` keeps a staged tree to what the same files would show as
declared inputs, and no more:

- Every source is looked at (``lstat``) before the directory is touched; a
  bad or missing one is refused naming it.  Only the paths the caller
  names are followed if they are symlinks; below a directory input a
  symlink is staged as a symlink (resolved in the sandbox's view, as a
  bind shows it), never followed on the host.
- Only regular files, directories and symlinks are staged: a FIFO, socket
  or device would be a channel to the host that a read-only mount does not
  close.  Each file is opened and checked again as it is staged, and the
  staged name checked to be that file, so a source replaced meanwhile is
  refused, not staged.
- A file is hard-linked (no data copied) unless ``link=False`` or the file
  system refuses (another file system, ``fs.protected_hardlinks``); a copy
  has the source's data, permission bits (never setuid, setgid or sticky)
  and modification time, and no extended attributes.  Directories get
  their source's permission bits.
- The directory is emptied, never made again (an executor builds its mount
  namespace again when a bound path is a new inode), through one
  descriptor: nothing is done by its path once it is open.  After an error
  it is left empty.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import NamedTuple

from hermetic.core.errors import SpecError, UnsupportedError
from hermetic.core.paths import is_within

# (getattr: this module is imported on every platform; stage_inputs checks.)
_DIR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
#: Link errors after which a file is copied instead.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class _Entry(NamedTuple):
    rel: str  # path in the staging directory
    kind: str  # "dir" | "file" | "symlink"
    src: str  # host path (for a symlink: its target)
    follow: bool  # a file the caller named: its symlinks are followed
    mode: int  # permission bits (directories, copies)
    dev: int
    ino: int
    real: str = ""  # a followed file's path without symlinks, to link


def _bad(message: str, value: object) -> SpecError:
    return SpecError(message, field="inputs", value=value)


def _relative(name: object) -> str:
    """``name`` as a clean relative path inside the staging directory."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise _bad(f"staged path {name!r} must be a non-empty string without NUL", name)
    clean = os.path.normpath(name)
    if os.path.isabs(name) or clean == "." or clean.split("/")[0] == "..":
        raise _bad(
            f"staged path {name!r} must be relative and stay inside the staging directory", name
        )
    return clean


def _status(path: str, name: str, follow: bool) -> os.stat_result:
    try:
        return os.stat(path) if follow else os.lstat(path)
    except OSError as e:
        raise _bad(f"input {path!r} (staged as {name!r}): {e.strerror}", path) from e


def _neither(path: str, name: str) -> SpecError:
    return _bad(
        f"input {path!r} (staged as {name!r}) is neither a regular file, a directory nor "
        "a symlink: a FIFO, socket or device would be a channel to the host",
        path,
    )


def _plan(name: str, src: str, real: str, stage: os.stat_result, out: list[_Entry]) -> None:
    """Everything ``src`` (the caller's, followed: ``real``) stages as
    ``name``, parents before children, without recursion (any depth)."""
    top = _status(src, name, follow=True)
    todo = [(name, src, top)]
    while todo:
        rel, path, st = todo.pop()
        mode = stat.S_IMODE(st.st_mode) & 0o777
        if stat.S_ISREG(st.st_mode):
            named = rel == name
            out.append(
                _Entry(
                    rel, "file", path, named, mode, st.st_dev, st.st_ino, real if named else path
                )
            )
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError as e:
                raise _bad(f"input {path!r} (staged as {name!r}): {e.strerror}", path) from e
            out.append(_Entry(rel, "symlink", target, False, 0, 0, 0))
        elif stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) == (stage.st_dev, stage.st_ino):
                raise _bad(f"input {path!r} (staged as {name!r}) is the staging directory", path)
            out.append(_Entry(rel, "dir", path, False, mode, st.st_dev, st.st_ino))
            try:
                names = sorted(os.listdir(path), reverse=True)
            except OSError as e:
                raise _bad(f"input {path!r} (staged as {name!r}): {e.strerror}", path) from e
            for child in names:
                child_path = os.path.join(path, child)
                todo.append((f"{rel}/{child}", child_path, _status(child_path, name, False)))
        else:
            raise _neither(path, name)


def _clear(dfd: int) -> None:
    """Remove everything in the directory open at ``dfd`` (not following
    symlinks; subdirectories made writable first: staged ones keep their
    source's bits)."""
    with os.scandir(dfd) as entries:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in names:
        if not is_dir:
            os.unlink(name, dir_fd=dfd)
            continue
        sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            try:
                os.fchmod(sub, 0o700)
            except OSError:
                pass  # not ours: rmdir below tells
            _clear(sub)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dfd)


def _copy(fd: int, st: os.stat_result, rel: str, dfd: int) -> None:
    out = os.open(
        rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
    )
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
        os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(out)


def _file(entry: _Entry, dfd: int, link: bool) -> None:
    """Stage one file: opened without blocking (a FIFO put there meanwhile
    does not hang this), checked to be the regular file planned, then
    linked (the staged name checked to be that file) or copied from the
    open descriptor."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if entry.follow else os.O_NOFOLLOW)
    try:
        fd = os.open(entry.src, flags)
    except OSError as e:
        raise _bad(f"input {entry.src!r} (staged as {entry.rel!r}): {e.strerror}", entry.src) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            raise _bad(f"input {entry.src!r} changed while it was staged", entry.src)
        if link:
            try:
                os.link(entry.real, entry.rel, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
            else:
                got = os.stat(entry.rel, dir_fd=dfd, follow_symlinks=False)
                if (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):
                    return
                os.unlink(entry.rel, dir_fd=dfd)
                raise _bad(f"input {entry.src!r} changed while it was staged", entry.src)
        _copy(fd, st, entry.rel, dfd)
    finally:
        os.close(fd)


def stage_inputs(directory: str, inputs: Mapping[str, str], *, link: bool = True) -> None:
    """Make ``directory`` hold exactly ``inputs``: relative path in the
    directory -> host file, directory or symlink (a directory staged file
    by file; see the module's docstring).  ``link=False`` copies every file
    (in Landlock-only mode a hard link is the host's file, whose times and
    mode Landlock does not protect).  Raises SpecError naming a bad or
    missing input, OSError for a failure of the file system; after either,
    once the directory was touched, it is left empty."""
    if os.open not in os.supports_dir_fd or not _DIR_FLAGS & getattr(os, "O_NOFOLLOW", 0):
        raise UnsupportedError("staging", "this platform has no openat() and O_NOFOLLOW")
    if not isinstance(directory, str) or "\0" in directory:
        raise _bad(f"staging directory {directory!r} must be a path without NUL", directory)
    try:
        dfd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise _bad(
            f"staging directory {directory!r} must be an existing directory, not a symlink: "
            f"{e.strerror}",
            directory,
        ) from e
    try:
        stage = os.fstat(dfd)
        real_stage = os.path.realpath(directory)
        plan: list[_Entry] = []
        staged: set[str] = set()
        below: set[str] = set()  # every directory that holds a staged path
        for name, src in inputs.items():
            rel = _relative(name)
            if not isinstance(src, str) or not src or "\0" in src:
                raise _bad(f"source of {name!r} must be a path without NUL", src)
            real = os.path.realpath(src)
            if is_within(real, real_stage) or is_within(real_stage, real):
                raise _bad(
                    f"input {src!r} (staged as {name!r}) is, holds or lies in the staging "
                    "directory",
                    src,
                )
            parts = rel.split("/")
            parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
            if rel in staged or rel in below or any(p in staged for p in parents):
                raise _bad(
                    f"staged path {rel!r} ({src!r}) is, holds or lies in another staged path",
                    name,
                )
            staged.add(rel)
            below.update(parents)
            _plan(rel, src, real, stage, plan)
        _clear(dfd)
        try:
            _fill(dfd, plan, sorted(below), link)
        except BaseException:
            try:
                _clear(dfd)
            except OSError:
                pass  # the first error is the one to report
            raise
    finally:
        os.close(dfd)


def _fill(dfd: int, plan: list[_Entry], parents: list[str], link: bool) -> None:
    for rel in parents:  # sorted: a parent before what it holds
        os.mkdir(rel, 0o700, dir_fd=dfd)
    dirs: list[_Entry] = []
    for entry in plan:
        if entry.kind == "dir":
            os.mkdir(entry.rel, 0o700, dir_fd=dfd)
            dirs.append(entry)
        elif entry.kind == "symlink":
            os.symlink(entry.src, entry.rel, dir_fd=dfd)
        else:
            _file(entry, dfd, link)
    # Their own bits last (a read-only one could not be filled), deepest first.
    for rel in parents:
        os.chmod(rel, 0o755, dir_fd=dfd)
    for entry in reversed(dirs):
        os.chmod(entry.rel, entry.mode, dir_fd=dfd)
