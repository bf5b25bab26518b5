"""An action's exec root: staging its input root, collecting its outputs.

Staging (:func:`fetch_tree`, :func:`stage`) reads the input root's
Directory messages (through the local cache), checks each as the API asks
(names sorted, none twice, none with a slash), brings every file into the
local cache and builds the exec root from hard links to it (the
executable bit is the cache entry's mode), symlinks as given, and empty
directories.  Each directory is made once and its files linked from one
descriptor of it and one of the cache: the C core checks each entry (the
worker's own regular file, of the digest's size) and links it, a whole
directory per call (``LocalCache.link_all``), and the directories of one
level are filled on a few threads.

The exec root is the action's writable output, so the staged files would
be writable through it, and a hard link shares its inode with the cache:
:func:`read_only_paths` lists the input paths to declare read-only inside
that output (an input nested in an output is a read-only bind on top of
it).  Whole input directories are declared where no output lies beneath
them, single files where one does, so a typical action needs few mounts.

Collecting (:func:`collect`) never follows a symbolic link the action left:
every path is opened one component at a time with ``O_NOFOLLOW`` from a
descriptor of the exec root, so a link planted by the action cannot make
the worker read, and upload, a file of the host.  Only regular files,
directories and symbolic links are collected (FIFOs, sockets and device
nodes are left out, and a FIFO is never opened for reading); a file is
hashed in chunks and uploaded from its file, never held in memory whole.
The same holds for the directories the worker makes before the action
runs (:func:`make_output_parents`): a symbolic link of the input root on
the way is refused, never followed out of the exec root.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import functools
import os
import posixpath
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from hermetic.core.tree import Trail, walk
from hermetic.remote.cas import (
    Blob,
    CacheMiss,
    Cancel,
    CasClient,
    FileBlob,
    Key,
    LocalCache,
    check_cancel,
    checked_key,
    digest_of,
    digest_of_message,
    hash_fd,
    key,
)
from hermetic.remote.protos import re_pb2

#: Input roots of at least this many files and directories are staged on
#: STAGE_THREADS threads.
PARALLEL_FILES = 1000
STAGE_THREADS = 4
#: The largest Directory message of an input root.
MAX_DIRECTORY = 64 << 20
#: Output files up to this size are read into memory when collected, while
#: the outputs' total in memory stays under IN_MEMORY; the others stay on
#: the disk until they are uploaded.
SMALL_FILE = 64 << 10
IN_MEMORY = 16 << 20


#: Bounds on what one lease's outputs may hold (past one, the lease
#: completes with RESOURCE_EXHAUSTED, which the farm does not retry): the
#: depth of an output directory below itself, the entries of all outputs
#: (each held in memory as a Tree node), and the bytes of all output files
#: with stdout and stderr (each hashed, and uploaded).
MAX_OUTPUT_DEPTH = 512
MAX_OUTPUT_ENTRIES = 100_000
MAX_OUTPUT_BYTES = 16 << 30


#: The most read-only mounts an action's inputs may need inside its exec
#: root (see read_only_paths): past it the lease completes with
#: RESOURCE_EXHAUSTED before the action runs.
MAX_INPUT_MOUNTS = 4096
#: Bounds on an input root as it is expanded (files, directories and
#: symbolic links; the bytes of their paths, all held in memory), and on a
#: Command's outputs (their number, and the directories leading to them):
#: past one, RESOURCE_EXHAUSTED.
MAX_INPUT_ENTRIES = 1_000_000
MAX_INPUT_PATH_BYTES = 256 << 20
MAX_OUTPUTS = 10_000
MAX_OUTPUT_COMPONENTS = 50_000


class LimitError(Exception):
    """A lease is past one of the bounds above: its outputs deeper, with
    more entries, or larger; its inputs in need of too many mounts.  Not a
    ValueError (the request is valid) nor an OSError (no failure of the
    worker's that a retry could mend)."""


#: Links made in one call of the C core, between two looks at the
#: cancellation (which is also looked at before each file placed one by
#: one: a copy, or a link the C core could not make).
LINK_BATCH = 4096


class ExecRootError(ValueError):
    """The action names a path that cannot be staged or collected: absolute,
    escaping the exec root with ``..``, or a node name with a slash."""


@dataclass
class InputTree:
    """The input root, flattened: paths relative to the exec root."""

    dirs: list[str] = field(default_factory=list)
    files: list[tuple[str, Key, bool]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)


def relative(path: str, *, what: str) -> str:
    """``path`` normalised, relative and inside the exec root ('' for the root)."""
    if "\0" in path or path.startswith("/"):
        raise ExecRootError(f"{what} must be a relative path: {path!r}")
    norm = posixpath.normpath(path) if path else "."
    if norm == ".." or norm.startswith("../"):
        raise ExecRootError(f"{what} leaves the exec root: {path!r}")
    return "" if norm == "." else norm


def _check_names(rel: str, kinds: tuple[tuple[str, list[str]], ...]) -> None:
    """The API's rules for a Directory: each list sorted by name (code
    point, as UTF-8 bytes sort), no name twice in the whole directory, and
    every name one path component."""
    where = repr(rel) if rel else "the input root"
    every: list[str] = []
    for kind, names in kinds:
        if names != sorted(names):
            first = next(b for a, b in zip(names, names[1:], strict=False) if b < a)
            raise ExecRootError(f"{where} lists its {kind} out of order ({first!r})")
        every += names
    if len(set(every)) != len(every):
        twice = next(n for n, count in collections.Counter(every).items() if count > 1)
        raise ExecRootError(f"{where} holds the name {twice!r} twice")
    for name in every:
        if "/" in name or "\0" in name or name in ("", ".", ".."):
            raise ExecRootError(f"{where} holds an invalid name: {name!r}")
        # Before any path is made of it: a name of megabytes, times the
        # files below it, would be the worker's memory.
        if len(name) > NAME_MAX // 4 and len(name.encode(errors="surrogateescape")) > NAME_MAX:
            raise ExecRootError(
                f"{where} holds a name of {len(name.encode(errors='surrogateescape'))} bytes "
                f"({name[:40]!r}...): a name can be at most {NAME_MAX}"
            )


def _read_directories(
    cas: CasClient, cache: LocalCache | None, keys: list[Key], cancel: Cancel | None
) -> dict[Key, bytes]:
    if cache is None:
        return dict(cas.read(keys))
    wanted = [(k, False) for k in keys]
    with cache.pinned(wanted):
        cache.fetch(cas, wanted, cancel)
        out: dict[Key, bytes] = {}
        for k in keys:
            try:
                fd = cache.open_entry(k, False)
            except CacheMiss:
                cache.fetch(cas, [(k, False)])
                fd = cache.open_entry(k, False)
            try:
                out[k] = os.read(fd, k[1] + 1)
            finally:
                os.close(fd)
        return out


def _directory_key(digest: Any, rel: str) -> Key:
    """A Directory's digest, refused before anything is read when
    malformed or larger than MAX_DIRECTORY."""
    k = checked_key(digest, what=repr(rel) if rel else "the input root")
    if k[1] > MAX_DIRECTORY:
        raise ExecRootError(f"the Directory of {rel or 'the input root'!r} is too large: {k[1]}")
    return k


def fetch_tree(
    cas: CasClient, root: Any, cache: LocalCache | None = None, cancel: Cancel | None = None
) -> InputTree:
    """Every node of the input root ``root`` (a Digest), read level by level
    (one batch per level; through ``cache`` when given, so a warm cache
    asks the farm nothing), each Directory checked against its digest and
    against the API's rules for its names.  Cancelled once ``cancel`` is
    set (looked at before each level and each blob fetched)."""
    tree = InputTree()
    level: list[tuple[str, Key]] = [("", _directory_key(root, ""))]
    # What the tree expands to, counted as it grows: a Directory may name
    # one child many times, so a few hundred KiB can stand for millions
    # of paths.
    entries = path_bytes = 0
    while level:
        check_cancel(cancel)
        blobs = _read_directories(cas, cache, sorted({k for _, k in level}), cancel)
        following: list[tuple[str, Key]] = []
        files, dirs, symlinks = tree.files, tree.dirs, tree.symlinks
        # Each distinct Directory parsed and checked once per level.
        parsed: dict[Key, tuple[Any, list[str], list[str], list[str], list[str], int]] = {}
        for rel, k in level:
            check_cancel(cancel)
            if k not in parsed:
                try:
                    directory = re_pb2.Directory.FromString(blobs[k])
                except DecodeError:
                    raise ExecRootError(
                        f"{rel or 'the input root'!r} names a blob that is not a Directory"
                    ) from None
                fnames = [f.name for f in directory.files]
                dnames = [d.name for d in directory.directories]
                snames = [s.name for s in directory.symlinks]
                kinds = (("files", fnames), ("directories", dnames), ("symlinks", snames))
                _check_names(rel, kinds)
                targets = [s.target for s in directory.symlinks]
                for name, target in zip(snames, targets, strict=True):
                    if not target or len(target.encode(errors="surrogateescape")) >= PATH_MAX:
                        raise ExecRootError(
                            f"the symbolic link {posixpath.join(rel, name)!r} has a target of "
                            f"{len(target)} bytes: a target is 1 to {PATH_MAX - 1} bytes"
                        )
                # The names and targets each expansion of it holds.
                size = sum(map(len, (*fnames, *dnames, *snames, *targets)))
                parsed[k] = (directory, fnames, dnames, snames, targets, size)
            directory, fnames, dnames, snames, targets, size = parsed[k]
            prefix = rel + "/" if rel else ""
            n = len(fnames) + len(dnames) + len(snames)
            entries += n
            path_bytes += n * len(prefix) + size
            if entries > MAX_INPUT_ENTRIES or path_bytes > MAX_INPUT_PATH_BYTES:
                raise LimitError(
                    f"the input root holds more than {MAX_INPUT_ENTRIES} entries or "
                    f"{MAX_INPUT_PATH_BYTES} bytes of paths (at {rel or 'the input root'!r})"
                )
            # Every digest is checked where it enters, before it names a
            # cache entry or a request to the CAS.
            for f, name in zip(directory.files, fnames, strict=True):
                path = prefix + name
                files.append((path, checked_key(f.digest, what=repr(path)), f.is_executable))
            for name, target in zip(snames, targets, strict=True):
                symlinks.append((prefix + name, target))
            for sub, name in zip(directory.directories, dnames, strict=True):
                path = prefix + name
                if len(path) >= PATH_MAX:  # (names are bounded: never far past it)
                    raise ExecRootError(
                        f"the input directory {path[:60]!r}... is {len(path)} characters "
                        f"long: longer than a path can be ({PATH_MAX - 1} bytes)"
                    )
                dirs.append(path)
                following.append((path, _directory_key(sub.digest, path)))
        level = following
    return tree


def stage(
    tree: InputTree,
    cache: LocalCache,
    cas: CasClient,
    exec_root: str,
    outputs: Iterable[str] = (),
    cancel: Cancel | None = None,
) -> int:
    """Build the exec root (which must exist and be empty) from ``tree``;
    returns how many blobs were fetched from the farm.  Raises Cancelled
    once ``cancel`` is set (seen before each directory, each LINK_BATCH
    links and each file placed one by one).

    An input at or under an output location (``outputs``, relative to the
    exec root) is the action's to replace: it is a copy, writable and
    sharing nothing with the cache, instead of a hard link.
    """
    outs = _Outputs(outputs)
    check_lengths(
        exec_root,
        (*tree.dirs, *(f for f, _, _ in tree.files), *(s for s, _ in tree.symlinks)),
        what="input",
        names=False,
    )
    copies = _Copies()
    if outs:
        # Known before anything is fetched or written: the copies within
        # outputs.
        within = sum(k[1] for rel, k, _ in tree.files if outs.within(rel))
        if within > MAX_OUTPUT_BYTES:
            copies.charge(within)
    wanted = {(k, x) for _, k, x in tree.files}
    # Pinned from the fetch until every link is made: eviction (by this
    # lease's fetch or another's) cannot remove an entry in between.
    with cache.pinned(wanted):
        fetched = cache.fetch(cas, wanted, cancel)
        by_dir: dict[str, list[tuple[str, Key, bool]]] = {}
        for rel, k, x in tree.files:
            parent, _, name = rel.rpartition("/")
            by_dir.setdefault(parent, []).append((name, k, x))

        def fill(rel: str) -> int:
            # The exec root is new and only the worker writes in it until
            # the action runs; symbolic links are made last, so none is on
            # the way of a path made here.
            check_cancel(cancel)
            if rel:
                os.mkdir(os.path.join(exec_root, rel), 0o755)
            return _fill_dir(cache, cas, exec_root, rel, by_dir.get(rel, []), outs, cancel, copies)

        # Parents before children: fetch_tree lists directories by level.
        levels: dict[int, list[str]] = {0: [""]}
        for rel in tree.dirs:
            levels.setdefault(rel.count("/") + 1, []).append(rel)
        if len(tree.files) + len(tree.dirs) < PARALLEL_FILES:
            fetched += sum(fill(rel) for depth in sorted(levels) for rel in levels[depth])
        else:
            # mkdir and linkat are system calls on directories' inodes,
            # their time mostly in the kernel with the GIL released: the
            # directories of one level, independent of each other, are
            # made and filled on a few threads that overlap those waits.
            with concurrent.futures.ThreadPoolExecutor(STAGE_THREADS) as pool:
                for depth in sorted(levels):
                    fetched += sum(pool.map(fill, levels[depth]))
    for rel, target in tree.symlinks:
        os.symlink(target, os.path.join(exec_root, rel))
    return fetched


#: The longest path the kernel takes (PATH_MAX, its NUL included), and
#: the longest name of one component (NAME_MAX).
PATH_MAX = 4096
NAME_MAX = 255


def check_lengths(exec_root: str, rels: Iterable[str], *, what: str, names: bool = True) -> None:
    """ExecRootError for a path (an input, the working directory, an
    output) whose place in this exec root is longer than the kernel takes,
    or (``names``) with a name longer than a name can be: no retry could
    stage, enter or collect it.  An input tree's names were checked as its
    Directories were read."""
    room = PATH_MAX - 1 - len(os.fsencode(exec_root)) - 1
    for rel in rels:
        encoded = rel.encode(errors="surrogateescape")
        if len(encoded) > room:
            raise ExecRootError(
                f"the {what} {rel[:60]!r}... is {len(rel)} bytes long: with the exec root "
                f"that is longer than a path can be ({PATH_MAX - 1} bytes)"
            )
        if names and len(encoded) > NAME_MAX:
            longest = max(encoded.split(b"/"), key=len)
            if len(longest) > NAME_MAX:
                raise ExecRootError(
                    f"the {what} {rel[:60]!r}... has a name of {len(longest)} bytes: a name "
                    f"can be at most {NAME_MAX}"
                )


def _fill_dir(
    cache: LocalCache,
    cas: CasClient,
    exec_root: str,
    parent: str,
    entries: list[tuple[str, Key, bool]],
    outs: _Outputs,
    cancel: Cancel | None = None,
    copies: _Copies | None = None,
) -> int:
    """Link (or copy, within an output) the files of one directory, from
    one descriptor of it; returns how many blobs had to be fetched again."""
    fetched = 0
    if not entries:
        return 0
    dir_fd = os.open(
        os.path.join(exec_root, parent),
        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
    )
    try:
        links: list[tuple[str, Key, bool]] = []
        for name, k, x in entries:
            if outs and outs.within(f"{parent}/{name}" if parent else name):
                check_cancel(cancel)
                if copies is not None:
                    copies.charge(k[1])
                copy = functools.partial(cache.copy, k, x, dir_fd, name, 0o755 if x else 0o644)
                fetched += _place(cache, cas, k, x, copy, cancel)
            else:
                links.append((name, k, x))
        # The links LINK_BATCH to a call; those that failed are placed one
        # by one (which names the failure or mends it, a copy at EMLINK).
        # Each costs the same however many failed before it.
        for start in range(0, len(links), LINK_BATCH):
            check_cancel(cancel)
            batch = links[start : start + LINK_BATCH]
            for i in cache.link_all(dir_fd, batch):
                check_cancel(cancel)
                if copies is not None:
                    copies.charge(batch[i][1][1])
                name, k, x = batch[i]
                link = functools.partial(cache.link, k, x, dir_fd, name)
                fetched += _place(cache, cas, k, x, link, cancel)
    finally:
        os.close(dir_fd)
    return fetched


class _Copies:
    """The bytes staging may copy (inputs within an output, and a link at
    EMLINK), at most MAX_OUTPUT_BYTES for one lease: each file placed one
    by one is counted as a copy of its size before it is placed.  Shared
    by the staging threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.size = 0

    def charge(self, size: int) -> None:
        with self._lock:
            self.size += size
            if self.size > MAX_OUTPUT_BYTES:
                raise LimitError(
                    f"staging would copy more than {MAX_OUTPUT_BYTES} bytes of inputs (inputs "
                    "within an output are copies, and so is an input staged more often than "
                    "the filesystem allows links to one file)"
                )


def _place(
    cache: LocalCache,
    cas: CasClient,
    k: Key,
    x: bool,
    place: Callable[[], None],
    cancel: Cancel | None = None,
) -> int:
    """``place()``, after fetching its entry again if the cache lost it
    (removed or replaced behind the index's back, and dropped from it);
    returns how many blobs that fetched."""
    try:
        place()
    except CacheMiss:
        fetched = cache.fetch(cas, [(k, x)], cancel)
        place()
        return fetched
    return 0


def output_locations(command: Any) -> list[str]:
    """The command's outputs, relative to the exec root: v2.1's
    ``output_paths`` when given, else ``output_files`` and
    ``output_directories`` (all relative to the working directory)."""
    workdir = relative(command.working_directory, what="working_directory")
    names = list(command.output_paths) or [
        *command.output_files,
        *command.output_directories,
    ]
    if len(names) > MAX_OUTPUTS:
        raise LimitError(f"the command names {len(names)} outputs; at most {MAX_OUTPUTS}")
    outputs = [
        relative(posixpath.join(workdir, relative(n, what="an output path")), what="an output path")
        for n in names
    ]
    # Each component is a directory the worker may make, and a string kept.
    components = sum(o.count("/") + 1 for o in outputs)
    if components > MAX_OUTPUT_COMPONENTS:
        raise LimitError(
            f"the command's outputs have {components} path components in all; at most "
            f"{MAX_OUTPUT_COMPONENTS}"
        )
    return outputs


def make_output_parents(
    exec_root: str, outputs: Iterable[str], workdir: str, cancel: Cancel | None = None
) -> None:
    """Create the directories leading to each output (not the outputs
    themselves), as the API asks of the worker; and the working directory.
    ``outputs`` and ``workdir`` are relative to the exec root, as
    ``output_locations`` and ``relative`` give them.

    Each component is made and opened from its parent's descriptor with
    ``O_NOFOLLOW``: a symbolic link of the input root on the way (say
    ``out -> /etc``) is refused, so the worker never makes a directory
    outside the exec root."""
    root_fd = os.open(exec_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        made: set[str] = {""}
        for rel in [*(posixpath.dirname(o) for o in outputs), workdir]:
            if rel not in made:
                check_cancel(cancel)
                _make_dirs(root_fd, rel)
                made.add(rel)
    finally:
        os.close(root_fd)


def _make_dirs(root_fd: int, rel: str) -> None:
    fd = os.dup(root_fd)
    try:
        done = ""
        for part in rel.split("/"):
            done = posixpath.join(done, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ExecRootError(
                        f"{done!r} is not a directory of the exec root (a symbolic link or "
                        f"a file), so {rel!r} cannot be made"
                    ) from e
                raise
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def _ancestors(path: str) -> Iterable[str]:
    while path:
        path = posixpath.dirname(path)
        yield path


class _Outputs:
    """A Command's output locations, and whether a path is one of them or
    lies below one (the exec root itself, '', counts only for itself).
    Decided once per directory and remembered: a file costs a look-up or
    two, however deep it lies and however many outputs there are."""

    def __init__(self, outputs: Iterable[str]) -> None:
        self.paths = frozenset(outputs)
        self._dirs: dict[str, bool] = {"": False}

    def __bool__(self) -> bool:
        return bool(self.paths)

    def within(self, path: str) -> bool:
        if path in self.paths:
            return True
        cut = path.rfind("/")
        return self._dir_within(path[:cut] if cut >= 0 else "")

    def _dir_within(self, d: str) -> bool:
        chain: list[str] = []
        while True:
            known = self._dirs.get(d)
            if known is not None:
                break
            if d in self.paths:
                known = True
                self._dirs[d] = True
                break
            chain.append(d)
            cut = d.rfind("/")
            d = d[:cut] if cut >= 0 else ""
        for c in chain:
            self._dirs[c] = known
        return known


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
    outs = _Outputs(outputs)
    # The exec root itself ('') is always writable: it is the output.  Each
    # output's ancestors up to one already there (the Command's outputs
    # share most of theirs).
    open_dirs = {""}
    for o in outs.paths:
        for a in _ancestors(o):
            if a in open_dirs:
                break
            open_dirs.add(a)

    def writable_here(rel: str) -> bool:
        return rel in open_dirs or outs.within(rel)

    declared: list[str] = []
    for rel in tree.dirs:
        parent = posixpath.dirname(rel)
        if writable_here(parent) and not writable_here(rel):
            declared.append(rel)
    for rel, _, _ in tree.files:
        # A file within an output is a copy of the action's own (stage()).
        if writable_here(posixpath.dirname(rel)) and not outs.within(rel):
            declared.append(rel)
    if len(declared) > MAX_INPUT_MOUNTS:
        # Each is a bind mount: their cost grows faster than their number,
        # and the kernel's fs.mount-max would refuse them past it anyway.
        raise LimitError(
            f"{len(declared)} inputs sit in the directories of outputs, each a read-only "
            f"mount; at most {MAX_INPUT_MOUNTS} are made (put the inputs in directories "
            "that hold no output)"
        )
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


def _utf8(name: str, where: str) -> str:
    """``name`` (from the disk, undecodable bytes as surrogates) when the API
    can carry it: its strings are UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ExecRootError(
            f"{where} holds a name that is not UTF-8, which the API cannot carry: "
            f"{os.fsencode(name)!r}"
        ) from None
    return name


@dataclass
class Collected:
    """What the outputs hold, and every blob to upload for them (files as
    :class:`FileBlob`, opened again from the exec root at upload)."""

    files: list[Any] = field(default_factory=list)
    directories: list[Any] = field(default_factory=list)
    symlinks: list[Any] = field(default_factory=list)
    blobs: dict[Key, Blob] = field(default_factory=dict)
    #: Bytes of outputs held in memory (small files, up to IN_MEMORY).
    in_memory: int = 0
    #: Entries (files, directories, symbolic links) of every output so far.
    entries: int = 0
    #: Bytes of every output file so far, and of stdout and stderr.
    size: int = 0


def add_output_bytes(out: Collected, size: int, what: str) -> None:
    """Count ``size`` more bytes of output; past MAX_OUTPUT_BYTES the
    lease's outputs are refused."""
    out.size += size
    if out.size > MAX_OUTPUT_BYTES:
        raise LimitError(f"the outputs are larger than {MAX_OUTPUT_BYTES} bytes (at {what!r})")


def _reopen(exec_root: str, rel: str) -> FileBlob:
    """A blob of the regular file ``rel`` of the exec root, opened again at
    upload the way it was found: no link followed, no FIFO waited on."""

    def opener() -> int:
        root_fd = os.open(exec_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = _open_nofollow(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
        finally:
            os.close(root_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ExecRootError(f"the output {rel!r} is no longer a regular file")
        return fd

    return FileBlob(opener)


def _file_node(
    dir_fd: int, name: str, rel: str, exec_root: str, out: Collected
) -> tuple[Any, bool] | None:
    """The digest and executable bit of the regular file ``name``; None when
    it is not a regular file (any more).  A small file is read into memory
    while the outputs' total in memory stays under IN_MEMORY; any other is
    hashed in chunks and read again from the disk at upload."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        # Counted before a byte is read: a huge (or sparse) file past the
        # bound is refused without hashing it.
        add_output_bytes(out, st.st_size, rel)
        blob: Blob
        if st.st_size <= SMALL_FILE and out.in_memory + st.st_size <= IN_MEMORY:
            data = _read_at_most(fd, SMALL_FILE)
            out.in_memory += len(data)
            digest, blob = digest_of(data), data
        else:
            digest, blob = hash_fd(fd), _reopen(exec_root, rel)
    finally:
        os.close(fd)
    out.blobs.setdefault(key(digest), blob)
    return digest, bool(st.st_mode & 0o111)


def _read_at_most(fd: int, limit: int) -> bytes:
    """What ``fd`` holds, when it is at most ``limit`` bytes (a file that
    grew since its size was read is refused)."""
    chunks: list[bytes] = []
    got = 0
    while True:
        piece = os.read(fd, limit + 1 - got)
        if not piece:
            return b"".join(chunks)
        chunks.append(piece)
        got += len(piece)
        if got > limit:
            raise ExecRootError("an output grew while it was collected")


def _tree(fd: int, rel: str, exec_root: str, out: Collected) -> tuple[Any, list[Any]]:
    """The Directory of the open directory ``fd`` (``rel`` in the exec root)
    and those of its descendants; special files (FIFOs, sockets, device
    nodes) are left out.

    The walk is hermetic/core/tree.py's: iterative and descriptor-relative,
    so no depth the action makes can exhaust the stack, and no link it
    planted is followed.  It is given the directory as ``/proc/self/fd/N/.``:
    the exact inode already opened, never a path the action could swap.
    A Directory is finished when the walk leaves it (the next entry is no
    deeper), its digest added to its parent's."""
    root = re_pb2.Directory()
    # [i]: the name and the Directory being filled at depth i (0: the output).
    open_dirs: list[tuple[str, Any]] = [("", root)]
    children: list[Any] = []
    trail = Trail(rel)

    def finish(depth: int) -> None:
        while len(open_dirs) > depth:
            name, done = open_dirs.pop()
            children.append(done)
            digest, data = digest_of_message(done)
            out.blobs[key(digest)] = data
            open_dirs[-1][1].directories.add(name=name, digest=digest)

    for depth, name, dir_fd, st in walk(f"/proc/self/fd/{fd}/."):
        if dir_fd is None:
            continue  # the output directory itself
        finish(depth)
        trail.visit(depth, name, st)
        if depth > MAX_OUTPUT_DEPTH:
            raise LimitError(f"the output {rel!r} is deeper than {MAX_OUTPUT_DEPTH} directories")
        _count(out, rel)
        _utf8(name, repr(rel))
        parent = open_dirs[-1][1]
        if stat.S_ISLNK(st.st_mode):
            where = f"the symbolic link {trail.path(depth, name)!r}"
            parent.symlinks.add(name=name, target=_utf8(os.readlink(name, dir_fd=dir_fd), where))
        elif stat.S_ISDIR(st.st_mode):
            open_dirs.append((name, re_pb2.Directory()))
        elif stat.S_ISREG(st.st_mode):
            node = _file_node(dir_fd, name, trail.path(depth, name), exec_root, out)
            if node is not None:
                parent.files.add(name=name, digest=node[0], is_executable=node[1])
    finish(1)
    return root, children


def _count(out: Collected, rel: str) -> None:
    out.entries += 1
    if out.entries > MAX_OUTPUT_ENTRIES:
        raise LimitError(f"the outputs hold more than {MAX_OUTPUT_ENTRIES} entries (at {rel!r})")


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
            if not rel:
                continue  # the exec root itself is no output
            try:
                parent, leaf = _parent_fd(root_fd, rel)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                _collect_one(out, parent, leaf, rel, exec_root, name, kind)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return out


def _collect_one(
    out: Collected, parent: int, leaf: str, rel: str, exec_root: str, name: str, kind: str | None
) -> None:
    try:
        st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        _count(out, rel)
        target = _utf8(os.readlink(leaf, dir_fd=parent), f"the symbolic link {name!r}")
        out.symlinks.append(re_pb2.OutputSymlink(path=name, target=target))
    elif stat.S_ISDIR(st.st_mode) and kind != "file":
        fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            _count(out, rel)
            root, children = _tree(fd, rel, exec_root, out)
        finally:
            os.close(fd)
        tree = re_pb2.Tree(root=root, children=children)
        digest, data = digest_of_message(tree)
        out.blobs[key(digest)] = data
        root_digest, root_data = digest_of_message(root)
        out.blobs[key(root_digest)] = root_data
        out.directories.append(re_pb2.OutputDirectory(path=name, tree_digest=digest))
    elif stat.S_ISREG(st.st_mode) and kind != "dir":
        _count(out, rel)
        node = _file_node(parent, leaf, rel, exec_root, out)
        if node is not None:
            out.files.append(re_pb2.OutputFile(path=name, digest=node[0], is_executable=node[1]))
