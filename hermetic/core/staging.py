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

- Every source is looked at (its kind, and every directory listed) before
  the directory is touched; a bad or missing one is refused naming it (a
  file that cannot be read shows only as it is staged).  Only the paths
  the caller names are followed if they are symlinks (as a declared
  input's path is); below a directory input a symlink is staged as a
  symlink (resolved in the sandbox's view, as a bind shows it), never
  followed on the host, and everything is reached through descriptors of
  checked directories, so a directory swapped for a symlink meanwhile
  stages nothing from elsewhere.  Then everything is walked again as it
  is staged, checked against what was looked at.
- Only regular files, directories and symlinks are staged: a FIFO, socket
  or device would be a channel to the host that a read-only mount does not
  close.  Each file is opened and checked again as it is staged, and the
  staged name checked to be that file, so a source replaced meanwhile is
  refused, not staged.
- A file is hard-linked (no data copied) unless ``link=False`` or the file
  system refuses (another file system, ``fs.protected_hardlinks``); a copy
  has the source's data, permission bits (never setuid, setgid or sticky)
  and modification time, and no extended attributes.  A hard link is the
  source's inode: a source the sandbox can also write through another
  path (one in its outputs) must be copied (``link=False``).  Directories
  get their source's permission bits plus the owner's (the caller's, who
  empties them again); trees deeper than MAX_DEPTH levels are refused.
- The directory is emptied, never made again (an executor builds its mount
  namespace again when a bound path is a new inode), through one
  descriptor: nothing is done by its path once it is open.  After an error
  it is left empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Mapping
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


#: Levels a staged tree may have below the staging directory: each level
#: holds a descriptor while it is walked (and emptied again).
MAX_DEPTH = 128
#: Bytes of one path component (NAME_MAX).
_NAME_MAX = 255


class _Node(NamedTuple):
    rel: str  # path in the staging directory
    kind: str  # "dir" | "file" | "symlink"
    shown: str  # the host path, for messages
    mode: int  # permission bits
    dev: int
    ino: int
    target: str = ""  # a symlink's target; a named file's path without symlinks


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
    try:
        parts = [os.fsencode(part) for part in clean.split("/")]
    except UnicodeError:
        raise _bad(f"staged path {name!r} cannot be encoded for the file system", name) from None
    if any(len(part) > _NAME_MAX for part in parts) or len(parts) > MAX_DEPTH:
        raise _bad(
            f"staged path {name!r} has a component longer than {_NAME_MAX} bytes or more "
            f"than {MAX_DEPTH} levels",
            name,
        )
    return clean


def _neither(path: str, name: str) -> SpecError:
    return _bad(
        f"input {path!r} (staged as {name!r}) is neither a regular file, a directory nor "
        "a symlink: a FIFO, socket or device would be a channel to the host",
        path,
    )


def _changed(path: str) -> SpecError:
    return _bad(f"input {path!r} changed while it was staged", path)


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & 0o777


def _walk(src: str, real: str, rel: str, name: str) -> Generator[tuple[_Node, int, str]]:
    """Every node ``src`` (the caller's path, followed) stages as ``rel``,
    parents before children, names sorted, each with the descriptor of the
    directory it was found in (-1 for the named one) and its name there.

    Below the named path everything is reached through descriptors, never
    by a host path: a directory is opened relative to its parent without
    following a symlink and checked to be the one listed, so swapping a
    directory for a symlink meanwhile stages nothing from elsewhere."""
    try:
        st = os.stat(src)
    except OSError as e:
        raise _bad(f"input {src!r} (staged as {name!r}): {e.strerror}", src) from e
    if stat.S_ISREG(st.st_mode):
        # (A named file's target: its path without symlinks, to link.)
        yield _Node(rel, "file", src, _mode(st), st.st_dev, st.st_ino, real), -1, src
        return
    if not stat.S_ISDIR(st.st_mode):
        raise _neither(src, name)
    try:
        top = os.open(src, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise _bad(f"input {src!r} (staged as {name!r}): {e.strerror}", src) from e
    held = [top]  # the descriptors of the directories being walked
    try:
        got = os.fstat(top)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise _changed(src)
        yield _Node(rel, "dir", src, _mode(st), st.st_dev, st.st_ino), -1, src
        # One frame per directory being listed: its descriptor, where it
        # stages, its host path and the names left in it.
        frames = [(top, rel, src, _names(top, src, name))]
        while frames:
            fd, here, shown, names = frames[-1]
            if not names:
                frames.pop()
                os.close(held.pop())
                continue
            entry = names.pop()
            path, staged = f"{shown}/{entry}", f"{here}/{entry}"
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                raise _bad(f"input {path!r} (staged as {name!r}): {e.strerror}", path) from e
            if stat.S_ISREG(st.st_mode):
                yield _Node(staged, "file", path, _mode(st), st.st_dev, st.st_ino), fd, entry
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(entry, dir_fd=fd)
                except OSError as e:
                    raise _bad(f"input {path!r}: {e.strerror}", path) from e
                yield _Node(staged, "symlink", path, 0, 0, 0, target), fd, entry
            elif stat.S_ISDIR(st.st_mode):
                if staged.count("/") + 1 > MAX_DEPTH:
                    raise _bad(
                        f"input {src!r} (staged as {name!r}) is deeper than {MAX_DEPTH} levels",
                        src,
                    )
                try:
                    sub = os.open(entry, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise _bad(f"input {path!r}: {e.strerror}", path) from e
                held.append(sub)
                got = os.fstat(sub)
                if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
                    raise _changed(path)
                yield _Node(staged, "dir", path, _mode(st), st.st_dev, st.st_ino), fd, entry
                frames.append((sub, staged, path, _names(sub, path, name)))
            else:
                raise _neither(path, name)
    finally:
        for fd in held:
            os.close(fd)


def _names(fd: int, path: str, name: str) -> list[str]:
    """The entries of the directory open at ``fd``, last first."""
    try:
        with os.scandir(fd) as entries:
            return sorted((e.name for e in entries), reverse=True)
    except OSError as e:
        raise _bad(f"input {path!r} (staged as {name!r}): {e.strerror}", path) from e


def _clear(dfd: int) -> None:
    """Remove everything in the directory open at ``dfd``, without
    recursion (a staged tree is at most MAX_DEPTH levels: one descriptor
    per level is held) and without following a symlink."""
    frames = [(dfd, _entries(dfd))]
    held: list[int] = []
    try:
        while frames:
            fd, entries = frames[-1]
            if not entries:
                frames.pop()
                if held:
                    os.close(held.pop())
                    parent, rest = frames[-1]
                    os.rmdir(rest.pop()[0], dir_fd=parent)
                continue
            name, is_dir = entries[-1]
            if not is_dir:
                os.unlink(name, dir_fd=fd)
                entries.pop()
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except PermissionError:
                # A directory of ours without the owner's bits.
                os.chmod(name, 0o700, dir_fd=fd)
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            held.append(sub)
            try:
                os.fchmod(sub, 0o700)
            except OSError:
                pass  # not ours: rmdir tells
            frames.append((sub, _entries(sub)))
    finally:
        for fd in held:
            os.close(fd)


def _entries(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as entries:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]


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
        os.fchmod(out, _mode(st))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(out)


def _file(node: _Node, parent: int, entry: str, dfd: int, link: bool) -> None:
    """Stage one file: opened without blocking (a FIFO put there meanwhile
    does not hang this) and relative to its checked directory without
    following a symlink (the named file: by its path, followed), checked to
    be the regular file planned, then linked (the staged name checked to be
    that file) or copied from the open descriptor."""
    named = parent < 0
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    flags |= 0 if named else os.O_NOFOLLOW
    try:
        fd = os.open(node.shown, flags) if named else os.open(entry, flags, dir_fd=parent)
    except OSError as e:
        raise _bad(
            f"input {node.shown!r} (staged as {node.rel!r}): {e.strerror}", node.shown
        ) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (node.dev, node.ino):
            raise _changed(node.shown)
        if link:
            try:
                if named:
                    os.link(
                        node.target,
                        node.rel,
                        dst_dir_fd=dfd,
                        follow_symlinks=False,
                    )
                else:
                    os.link(
                        entry, node.rel, src_dir_fd=parent, dst_dir_fd=dfd, follow_symlinks=False
                    )
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
            else:
                got = os.stat(node.rel, dir_fd=dfd, follow_symlinks=False)
                if (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):
                    return
                os.unlink(node.rel, dir_fd=dfd)
                raise _changed(node.shown)
        _copy(fd, st, node.rel, dfd)
    finally:
        os.close(fd)


def stage_inputs(directory: str, inputs: Mapping[str, str], *, link: bool = True) -> None:
    """Make ``directory`` hold exactly ``inputs``: relative path in the
    directory -> host file, directory or symlink (a directory staged file
    by file; see the module's docstring).  ``link=False`` copies every file:
    a hard link is the host's file (the same inode), so a source another
    path of the sandbox can write (one in its outputs) must be copied, and
    in Landlock-only mode its times and mode are not protected.  Raises
    SpecError naming a bad or missing input, OSError for a failure of the
    file system; after either, once the directory was touched, it is left
    empty."""
    if os.open not in os.supports_dir_fd or not _DIR_FLAGS & getattr(os, "O_NOFOLLOW", 0):
        raise UnsupportedError("staging", "this platform has no openat() and O_NOFOLLOW")
    if not isinstance(directory, str) or "\0" in directory:
        raise _bad(f"staging directory {directory!r} must be a str path without NUL", directory)
    if not isinstance(inputs, Mapping):
        raise _bad(f"inputs must map staged paths to sources, got {type(inputs).__name__}", inputs)
    try:
        dfd = os.open(directory, _DIR_FLAGS)
    except (OSError, UnicodeError) as e:
        raise _bad(
            f"staging directory {directory!r} must be an existing directory, not a symlink: "
            f"{getattr(e, 'strerror', None) or e}",
            directory,
        ) from e
    try:
        stage = os.fstat(dfd)
        real_stage = os.path.realpath(directory)
        named: list[tuple[str, str, str]] = []
        staged: set[str] = set()
        below: set[str] = set()  # every directory that holds a staged path
        for name, src in inputs.items():
            rel = _relative(name)
            if not isinstance(src, str) or not src or "\0" in src:
                raise _bad(f"source of {name!r} must be a str path without NUL", src)
            try:
                real = os.path.realpath(src)
                os.fsencode(src)
            except (OSError, UnicodeError) as e:
                raise _bad(f"input {src!r} (staged as {name!r}): {e}", src) from e
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
            named.append((rel, src, real))
        # Every source looked at before the directory is touched.
        plan = [[node for node, _, _ in _walk(src, real, rel, rel)] for rel, src, real in named]
        for nodes in plan:
            for node in nodes:
                if (node.dev, node.ino) == (stage.st_dev, stage.st_ino) and node.kind == "dir":
                    raise _bad(f"input {node.shown!r} is the staging directory", node.shown)
        try:
            _clear(dfd)
            _fill(dfd, named, plan, sorted(below), link)
        except BaseException:
            try:
                _clear(dfd)
            except OSError:
                pass  # the first error is the one to report
            raise
    finally:
        os.close(dfd)


def _fill(
    dfd: int,
    named: list[tuple[str, str, str]],
    plan: list[list[_Node]],
    parents: list[str],
    link: bool,
) -> None:
    """Walk the sources again, each node checked against the plan, and
    stage them: what changed since it was looked at is refused."""
    for rel in parents:  # sorted: a parent before what it holds
        os.mkdir(rel, 0o700, dir_fd=dfd)
    dirs: list[_Node] = []
    for (rel, src, real), nodes in zip(named, plan, strict=True):
        planned = iter(nodes)
        # closing(): the walk's descriptors are closed as this loop is left,
        # whatever is raised in it.
        with contextlib.closing(_walk(src, real, rel, rel)) as walk:
            for node, parent, entry in walk:
                if node != next(planned, None):
                    raise _changed(node.shown)
                if node.kind == "dir":
                    os.mkdir(node.rel, 0o700, dir_fd=dfd)
                    dirs.append(node)
                elif node.kind == "symlink":
                    os.symlink(node.target, node.rel, dir_fd=dfd)
                else:
                    _file(node, parent, entry, dfd, link)
        if next(planned, None) is not None:
            raise _changed(src)
    # Their own bits last (a read-only one could not be filled), deepest
    # first; the owner (the caller) keeps its access, to empty them again.
    for rel in parents:
        os.chmod(rel, 0o755, dir_fd=dfd)
    for node in reversed(dirs):
        os.chmod(node.rel, node.mode | 0o700, dir_fd=dfd)
