"""An action's exec root: staging its input root, collecting its outputs.

Staging (:func:`fetch_tree`, :func:`stage`) reads the input root's
Directory messages from the CAS, brings every file into the local cache and
builds the exec root from hard links to it (the executable bit is the
cache entry's mode), symlinks as given, and empty directories.

The exec root is the action's writable output, so the staged files would
be writable through it, and a hard link shares its inode with the cache:
:func:`read_only_paths` lists the input paths to declare read-only inside
that output (an input nested in an output is a read-only bind on top of
it).  Whole input directories are declared where no output lies beneath
them, single files where one does, so a typical action needs few mounts.

Collecting (:func:`collect`) never follows a symbolic link the action left:
every path is opened one component at a time with ``O_NOFOLLOW`` from a
descriptor of the exec root, so a link planted by the action cannot make
the worker read, and upload, a file of the host.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hermetic.remote.cas import CasClient, Key, LocalCache, digest_of, digest_of_message, key
from hermetic.remote.protos import re_pb2


class ExecRootError(ValueError):
    """The action names a path that cannot be staged or collected: absolute,
    escaping the exec root with ``..``, or a node name with a slash."""


@dataclass
class InputTree:
    """The input root, flattened: paths relative to the exec root."""

    dirs: list[str] = field(default_factory=list)
    files: list[tuple[str, Key, bool]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)


def _name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ExecRootError(f"an input node has an invalid name: {name!r}")
    return name


def relative(path: str, *, what: str) -> str:
    """``path`` normalised, relative and inside the exec root ('' for the root)."""
    if "\0" in path or path.startswith("/"):
        raise ExecRootError(f"{what} must be a relative path: {path!r}")
    norm = posixpath.normpath(path) if path else "."
    if norm == ".." or norm.startswith("../"):
        raise ExecRootError(f"{what} leaves the exec root: {path!r}")
    return "" if norm == "." else norm


def fetch_tree(cas: CasClient, root: Any) -> InputTree:
    """Every node of the input root ``root`` (a Digest), read level by level
    (one batch per level), each Directory checked against its digest."""
    tree = InputTree()
    level: list[tuple[str, Key]] = [("", key(root))]
    while level:
        blobs = dict(cas.read(k for _, k in level))
        following: list[tuple[str, Key]] = []
        for rel, k in level:
            directory = re_pb2.Directory.FromString(blobs[k])
            for f in directory.files:
                path = posixpath.join(rel, _name(f.name))
                tree.files.append((path, key(f.digest), bool(f.is_executable)))
            for s in directory.symlinks:
                tree.symlinks.append((posixpath.join(rel, _name(s.name)), s.target))
            for d in directory.directories:
                path = posixpath.join(rel, _name(d.name))
                tree.dirs.append(path)
                following.append((path, key(d.digest)))
        level = following
    return tree


def stage(
    tree: InputTree,
    cache: LocalCache,
    cas: CasClient,
    exec_root: str,
    outputs: Iterable[str] = (),
) -> int:
    """Build the exec root (which must exist and be empty) from ``tree``;
    returns how many blobs were fetched from the farm.

    An input at or under an output location (``outputs``, relative to the
    exec root) is the action's to replace: it is a copy, writable and
    sharing nothing with the cache, instead of a hard link.
    """
    outs = tuple(outputs)
    fetched = cache.fetch(cas, ((k, x) for _, k, x in tree.files))
    # Parents before children: fetch_tree lists directories by level.
    for rel in tree.dirs:
        os.mkdir(os.path.join(exec_root, rel), 0o755)
    for rel, k, x in tree.files:
        dest = os.path.join(exec_root, rel)
        if _within(rel, outs):
            shutil.copyfile(cache.path(k, x), dest, follow_symlinks=False)
            os.chmod(dest, 0o755 if x else 0o644)
        else:
            os.link(cache.path(k, x), dest, follow_symlinks=False)
    for rel, target in tree.symlinks:
        os.symlink(target, os.path.join(exec_root, rel))
    return fetched


def output_locations(command: Any) -> list[str]:
    """The command's outputs, relative to the exec root: v2.1's
    ``output_paths`` when given, else ``output_files`` and
    ``output_directories`` (all relative to the working directory)."""
    workdir = relative(command.working_directory, what="working_directory")
    names = list(command.output_paths) or [
        *command.output_files,
        *command.output_directories,
    ]
    return [
        relative(posixpath.join(workdir, relative(n, what="an output path")), what="an output path")
        for n in names
    ]


def make_output_parents(command: Any, exec_root: str) -> None:
    """Create the directories leading to each output (not the outputs
    themselves), as the API asks of the worker; and the working directory."""
    workdir = relative(command.working_directory, what="working_directory")
    for rel in [*(posixpath.dirname(o) for o in output_locations(command)), workdir]:
        if rel:
            os.makedirs(os.path.join(exec_root, rel), 0o755, exist_ok=True)


def _ancestors(path: str) -> Iterable[str]:
    while path:
        path = posixpath.dirname(path)
        yield path


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def read_only_paths(tree: InputTree, outputs: Iterable[str], exec_root: str) -> list[str]:
    """The absolute paths to declare as inputs inside the writable exec root.

    Every staged hard link must be read-only (it shares its inode with
    the cache); files within an output are copies and stay writable.  A
    directory is declared whole when no output lies at or beneath it (one
    mount for its subtree); otherwise its files are declared one by one
    and its subdirectories decided the same way.
    Symbolic links need no declaration: replacing one changes only this
    action's exec root.
    """
    outs = set(outputs)
    # The exec root itself ('') is always writable: it is the output.
    open_dirs = {""} | {a for o in outs for a in _ancestors(o)}

    def writable_here(rel: str) -> bool:
        return rel in open_dirs or _within(rel, outs)

    declared: list[str] = []
    for rel in tree.dirs:
        parent = posixpath.dirname(rel)
        if writable_here(parent) and not writable_here(rel):
            declared.append(rel)
    for rel, _, _ in tree.files:
        # A file within an output is a copy of the action's own (stage()).
        if writable_here(posixpath.dirname(rel)) and not _within(rel, outs):
            declared.append(rel)
    return [os.path.join(exec_root, rel) for rel in sorted(declared)]


# -- collecting ---------------------------------------------------------------


def _open_nofollow(root_fd: int, rel: str, flags: int) -> int:
    """Open ``rel`` beneath ``root_fd`` without following any symbolic link
    on the way (each component with O_NOFOLLOW)."""
    parts = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _parent_fd(root_fd: int, rel: str) -> tuple[int, str]:
    parent, name = posixpath.split(rel)
    if not parent:
        return os.dup(root_fd), name
    return _open_nofollow(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY), name


def _read_regular(fd: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ExecRootError("not a regular file")
    chunks: list[bytes] = []
    while True:
        piece = os.read(fd, 1 << 20)
        if not piece:
            return b"".join(chunks)
        chunks.append(piece)


@dataclass
class Collected:
    """What the outputs hold, and every blob to upload for them."""

    files: list[Any] = field(default_factory=list)
    directories: list[Any] = field(default_factory=list)
    symlinks: list[Any] = field(default_factory=list)
    blobs: dict[Key, bytes] = field(default_factory=dict)


def _file_node(dir_fd: int, name: str, blobs: dict[Key, bytes]) -> tuple[Any, bool]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = _read_regular(fd)
        executable = bool(os.fstat(fd).st_mode & 0o111)
    finally:
        os.close(fd)
    digest = digest_of(data)
    blobs[key(digest)] = data
    return digest, executable


def _directory(fd: int, blobs: dict[Key, bytes], children: list[Any]) -> Any:
    """The Directory message of the open directory ``fd``, its descendants
    appended to ``children``; special files (FIFOs, sockets) are left out."""
    directory = re_pb2.Directory()
    for name in sorted(os.listdir(fd)):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=fd)
            directory.symlinks.add(name=name, target=target)
        elif stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                child = _directory(sub, blobs, children)
            finally:
                os.close(sub)
            children.append(child)
            digest, data = digest_of_message(child)
            blobs[key(digest)] = data
            directory.directories.add(name=name, digest=digest)
        elif stat.S_ISREG(st.st_mode):
            digest, executable = _file_node(fd, name, blobs)
            directory.files.add(name=name, digest=digest, is_executable=executable)
    return directory


def collect(command: Any, exec_root: str) -> Collected:
    """The outputs the command declared, as ActionResult entries; a
    declared output that does not exist is left out, as the API says."""
    out = Collected()
    workdir = relative(command.working_directory, what="working_directory")
    v21 = bool(command.output_paths)
    wanted: list[tuple[str, str | None]] = (
        [(n, None) for n in command.output_paths]
        if v21
        else [
            *((n, "file") for n in command.output_files),
            *((n, "dir") for n in command.output_directories),
        ]
    )
    root_fd = os.open(exec_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, kind in wanted:
            rel = relative(posixpath.join(workdir, name), what="an output path")
            try:
                parent, leaf = _parent_fd(root_fd, rel)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                _collect_one(out, parent, leaf, name, kind)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return out


def _collect_one(out: Collected, parent: int, leaf: str, name: str, kind: str | None) -> None:
    try:
        st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(leaf, dir_fd=parent)
        out.symlinks.append(re_pb2.OutputSymlink(path=name, target=target))
    elif stat.S_ISDIR(st.st_mode) and kind != "file":
        fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            children: list[Any] = []
            root = _directory(fd, out.blobs, children)
        finally:
            os.close(fd)
        tree = re_pb2.Tree(root=root, children=children)
        digest, data = digest_of_message(tree)
        out.blobs[key(digest)] = data
        root_digest, root_data = digest_of_message(root)
        out.blobs[key(root_digest)] = root_data
        out.directories.append(re_pb2.OutputDirectory(path=name, tree_digest=digest))
    elif stat.S_ISREG(st.st_mode) and kind != "dir":
        digest, executable = _file_node(parent, leaf, out.blobs)
        out.files.append(re_pb2.OutputFile(path=name, digest=digest, is_executable=executable))
