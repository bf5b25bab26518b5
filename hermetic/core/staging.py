"""Per-action inputs on one reused executor: a staging directory.

An executor is the fast path (its plan, its prepared mount namespace, its
standby sandbox are reused), but its spec, and with it the set of visible
paths, is fixed.  A build system whose actions each declare their own input
files keeps one executor per concurrent action slot anyway, whose spec
declares a staging directory as an input (and the action's working
directory), and before each action fills that directory with exactly the
action's inputs (Bazel's sandboxes stage an exec root per action the same
way).  The sandbox binds the directory itself, so what the directory holds
when the action starts is what the action sees, read-only; nothing else of
the host is visible through it.

``stage_inputs`` empties the directory (it stays the same directory: an
executor checks that each bound path is still the inode it bound, and a
directory removed and made again would make it build its namespace again)
and links each input into it: a hard link where the file system allows
one (no data is copied; the read-only bind keeps the action from writing
through it), a copy otherwise.  A directory input is staged file by file.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Mapping

from hermetic.core.errors import SpecError


def _relative(name: str) -> str:
    """``name`` as a clean relative path inside the staging directory."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise SpecError(
            f"staged path {name!r} must be a non-empty string without NUL",
            field="inputs",
            value=name,
        )
    clean = posixpath.normpath(name)
    if posixpath.isabs(name) or clean == "." or clean.split("/")[0] == "..":
        raise SpecError(
            f"staged path {name!r} must be relative and stay inside the staging directory",
            field="inputs",
            value=name,
        )
    return clean


def _empty(directory: str) -> None:
    import shutil  # imported when used, as in the executor

    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.islink(src):
        # link(2) would link the symlink itself (os.link's follow_symlinks
        # does not reach it on Linux): the file it points to.
        src = os.path.realpath(src)
    try:
        os.link(src, dst)
    except OSError as e:
        # Another file system, a file system without links, or a file the
        # caller may not link (fs.protected_hardlinks): copy it.
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        import shutil

        shutil.copy2(src, dst)


def _kind(src: str, name: str) -> os.stat_result:
    """``src``'s status (symlinks followed): a regular file or a directory.
    Anything else (a FIFO, a socket, a device) would be a channel to the
    host that a read-only mount does not close."""
    try:
        st = os.stat(src)
    except OSError as e:
        raise SpecError(
            f"input {src!r} (staged as {name!r}): {e.strerror}", field="inputs", value=src
        ) from e
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise SpecError(
            f"input {src!r} (staged as {name!r}) is neither a regular file nor a directory",
            field="inputs",
            value=src,
        )
    return st


def _stage(src: str, dst: str, name: str, above: frozenset[tuple[int, int]]) -> None:
    st = _kind(src, name)
    if not stat.S_ISDIR(st.st_mode):
        _link_or_copy(src, dst)
        return
    here = (st.st_dev, st.st_ino)
    if here in above:
        raise SpecError(
            f"input {name!r}: {src!r} leads back to a directory above it",
            field="inputs",
            value=src,
        )
    os.mkdir(dst, 0o755)
    with os.scandir(src) as entries:
        for entry in entries:
            _stage(entry.path, os.path.join(dst, entry.name), name, above | {here})


def stage_inputs(directory: str, inputs: Mapping[str, str]) -> None:
    """Make ``directory`` hold exactly ``inputs``: relative path in the
    directory -> host regular file or directory (staged file by file,
    symlinks followed).  Raises SpecError naming a bad or missing input
    (checked before the directory is touched), OSError for a failure of the
    file system."""
    if "\0" in directory or not os.path.isdir(directory) or os.path.islink(directory):
        raise SpecError(
            f"staging directory {directory!r} must be an existing directory (not a symlink)",
            field="inputs",
            value=directory,
        )
    plan: list[tuple[str, str]] = []
    staged: set[str] = set()
    below: set[str] = set()  # every directory that holds a staged path
    for name, src in inputs.items():
        rel = _relative(name)
        if not isinstance(src, str) or "\0" in src:
            raise SpecError(
                f"source of {name!r} must be a path without NUL", field="inputs", value=src
            )
        _kind(src, name)
        parts = rel.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if rel in staged or rel in below or any(p in staged for p in parents):
            raise SpecError(
                f"staged path {rel!r} ({src!r}) is, holds or lies in another staged path",
                field="inputs",
                value=name,
            )
        staged.add(rel)
        below.update(parents)
        plan.append((rel, src))
    _empty(directory)
    for rel, src in plan:
        dst = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        _stage(src, dst, rel, frozenset())
