"""Action digests: one stable key for everything that decides a result.

``action_digest`` hashes the spec's digest, argv, the working directory,
the environment the action gets, and a Merkle tree of every input: a file
is its content's SHA-256 and its executable bit, a symlink its target, a
directory the sorted names and digests of its entries.  Equal digests
mean equal actions, in any process and on any host with the same inputs:
it is the key a build system's action cache uses.

Reading every input again for each digest would dominate: ``TreeHasher``
keeps each file's content hash keyed by its path and by the stat fields
that change when the content does (device, inode, size, mtime, ctime), and
each directory's digest keyed by a snapshot of its entries' stat fields
taken in C (csrc/linux/tree.c), so an unchanged tree costs one C call per
directory, and for a tree seen before those calls run on a few threads.
A file whose mtime alone changed is read again and hashes the same.

Trees are walked without recursion (an explicit stack, children before
their directory), and a path longer than PATH_MAX, as in a tree an action
nested thousands of levels deep, is opened a run of components at a time
(``hermetic.core.tree.open_long``): any depth the filesystem holds has a digest.

The system directories a spec takes from the host (``/usr``, ``/lib``...,
``HermeticSpecBuilder.TOOLCHAIN_INPUTS``) are identified by their path by
default, as build systems treat a host toolchain; ``system_inputs="content"``
hashes them too (the first time takes as long as reading them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hermetic.core.errors import SpecError
from hermetic.core.manifest import file_sha256
from hermetic.core.spec import SandboxSpec
from hermetic.core.tree import open_long

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["DIGEST_FORMAT", "TREES", "TreeHasher", "action_digest"]

#: Part of every digest: bumped whenever what goes into one changes.
DIGEST_FORMAT = 1


def _h(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


_FIELDS = struct.Struct("=6Q")  # mode, dev, ino, size, mtime_ns, ctime_ns
_LEN = struct.Struct("=I")


#: Longer paths are too long for one system call: opened by runs of components.
_SHORT = 3072


def _snapshot_py(path: str) -> bytes:
    """hm_dir_snapshot's format, for hosts without the C core's version and
    for paths longer than PATH_MAX."""
    fd = open_long(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        names = sorted(os.fsencode(n) for n in os.listdir(fd))
        parts = []
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            parts.append(_LEN.pack(len(name)) + name)
            parts.append(
                _FIELDS.pack(
                    st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
                )
            )
        return b"".join(parts)
    finally:
        os.close(fd)


def _snapshot(path: str, hint: int) -> bytes:
    """The directory's entries and their stat fields, sorted (csrc/linux/tree.c)."""
    if len(os.fsencode(path)) > _SHORT:
        return _snapshot_py(path)
    try:
        from hermetic import _native
    except ImportError:
        return _snapshot_py(path)
    lib, ffi = _native.lib, _native.ffi
    if not hasattr(lib, "hm_dir_snapshot"):
        return _snapshot_py(path)
    need = ffi.new("unsigned long *")
    cap = max(hint, 4096)
    while True:
        buf = _uncleared("char[]", cap)
        n = lib.hm_dir_snapshot(os.fsencode(path), buf, cap, need)
        if n == -errno.ENOSPC:
            cap = need[0] + 4096
            continue
        if n < 0:
            raise OSError(-n, os.strerror(-n), path)
        return bytes(ffi.buffer(buf, n))


def _uncleared(ctype: str, size: int) -> Any:
    from hermetic import _native

    global _ALLOC
    if _ALLOC is None:
        _ALLOC = _native.ffi.new_allocator(should_clear_after_alloc=False)
    return _ALLOC(ctype, size)


_ALLOC: Any = None


#: Directories from which an unchanged tree's snapshots go parallel.
_PARALLEL_DIRS = 8
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _snapshots(dirs: list[bytes], hints: dict[bytes, int]) -> dict[bytes, bytes]:
    """Snapshots of ``dirs``, taken by a few threads (the C call releases the
    GIL), each taking every n-th directory; a directory that vanished is
    left out (its parent's snapshot shows the change)."""
    global _POOL
    import concurrent.futures  # only here: it is slow to import

    workers = max(1, min(4, os.cpu_count() or 1))
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="hermetic-digest"
            )
        pool = _POOL

    def chunk(part: list[bytes]) -> list[tuple[bytes, bytes]]:
        out = []
        for d in part:
            try:
                out.append((d, _snapshot(os.fsdecode(d), hints.get(d, 0))))
            except OSError:
                continue
        return out

    parts = [dirs[i::workers] for i in range(workers)]
    found: dict[bytes, bytes] = {}
    for result in pool.map(chunk, parts):
        found.update(result)
    return found


def _entries(snap: bytes) -> list[tuple[bytes, tuple[int, ...]]]:
    out = []
    at = 0
    while at < len(snap):
        (n,) = _LEN.unpack_from(snap, at)
        name = snap[at + 4 : at + 4 + n]
        at += 4 + n
        out.append((name, _FIELDS.unpack_from(snap, at)))
        at += _FIELDS.size
    return out


class TreeHasher:
    """Merkle digests of files and trees, with bounded caches.

    Files: content hash by path and stat fields.  Directories: the digest by
    path and snapshot (every entry's name and stat fields, from one C call),
    valid while the snapshot and every subdirectory's digest are unchanged;
    so an unchanged tree costs one call per directory and no Python per
    file.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._files: dict[bytes, tuple[tuple[int, ...], str]] = {}
        # path -> (snapshot, digest, subdirectories, their digests)
        self._dirs: dict[bytes, tuple[bytes, str, tuple[bytes, ...], tuple[str, ...]]] = {}
        self._max = max_entries
        self._lock = threading.Lock()
        self.reads = 0  # files read (cache misses), for tests and benchmarks

    def tree(self, path: str) -> str:
        """The digest of the file, symlink or directory tree at ``path``."""
        st = os.lstat(path)
        fields = (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        raw = os.fsencode(path)
        fresh: dict[bytes, bytes] = {}
        if stat.S_ISDIR(st.st_mode):
            # A tree seen before: its directories are known, so their
            # snapshots (the whole cost of an unchanged tree, one fstatat
            # per entry) are taken on several threads at once.
            known = self._known_dirs(raw)
            if known is not None and len(known) >= _PARALLEL_DIRS:
                fresh = _snapshots(known, {d: len(self._dirs[d][0]) for d in known})
        return self._node(raw, fields, fresh)

    def _known_dirs(self, root: bytes) -> list[bytes] | None:
        """Every directory of a cached tree, or None if part of it is not cached."""
        out = []
        todo = [root]
        while todo:
            d = todo.pop()
            cached = self._dirs.get(d)
            if cached is None:
                return None
            out.append(d)
            todo.extend(d + b"/" + name for name in cached[2])
        return out

    def _node(self, path: bytes, fields: tuple[int, ...], fresh: dict[bytes, bytes]) -> str:
        mode = fields[0]
        if stat.S_ISREG(mode):
            executable = b"x" if mode & 0o111 else b"-"
            return _h(b"file\0", executable, self._content(path, fields).encode())
        if stat.S_ISLNK(mode):
            return _h(b"link\0", _readlink(path))
        if stat.S_ISDIR(mode):
            return self._dir(path, fresh)
        # Devices, fifos, sockets: their kind is all that is stable.
        return _h(b"special\0", str(stat.S_IFMT(mode)).encode())

    def _dir(self, root: bytes, fresh: dict[bytes, bytes]) -> str:
        """The digest of the tree at ``root``: every directory's snapshot is
        taken on the way down, its digest made once all its subdirectories
        have one (an explicit stack, so any depth works)."""
        done: dict[bytes, str] = {}
        todo: list[tuple[bytes, bytes | None]] = [(root, None)]
        while todo:
            path, snap = todo.pop()
            if snap is None:
                snap = fresh.get(path)
                if snap is None:
                    cached = self._dirs.get(path)
                    snap = _snapshot(os.fsdecode(path), len(cached[0]) if cached else 0)
                todo.append((path, snap))
                todo.extend(
                    (path + b"/" + name, None)
                    for name, fields in _entries(snap)
                    if stat.S_ISDIR(fields[0])
                )
            else:
                done[path] = self._dir_digest(path, snap, done, fresh)
        return done[root]

    def _dir_digest(
        self, path: bytes, snap: bytes, done: dict[bytes, str], fresh: dict[bytes, bytes]
    ) -> str:
        """One directory's digest, its subdirectories' taken from ``done``."""
        entries = _entries(snap)
        subs = {
            name: done.pop(path + b"/" + name)
            for name, fields in entries
            if stat.S_ISDIR(fields[0])
        }
        cached = self._dirs.get(path)
        if cached is not None and cached[0] == snap and tuple(subs.values()) == cached[3]:
            return cached[1]
        h = hashlib.sha256(b"dir\0")
        for name, fields in entries:
            child = subs[name] if name in subs else self._node(path + b"/" + name, fields, fresh)
            h.update(name + b"\0" + child.encode() + b"\n")
        digest = h.hexdigest()
        with self._lock:
            if len(self._dirs) >= self._max:
                self._dirs.clear()
            self._dirs[path] = (snap, digest, tuple(subs), tuple(subs.values()))
        return digest

    def _content(self, path: bytes, fields: tuple[int, ...]) -> str:
        key = fields[1:]  # dev, ino, size, mtime_ns, ctime_ns
        hit = self._files.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        digest = _file_sha256(path)
        with self._lock:
            self.reads += 1
            if len(self._files) >= self._max:
                self._files.clear()
            self._files[path] = (key, digest)
        return digest


def _at(path: bytes) -> tuple[int | None, bytes]:
    """(a descriptor of the directory, the name) for a long path; else (None, path)."""
    if len(path) <= _SHORT:
        return None, path
    head, _, name = path.rpartition(b"/")
    return open_long(head, os.O_PATH | os.O_DIRECTORY), name


def _readlink(path: bytes) -> bytes:
    dir_fd, name = _at(path)
    try:
        return os.readlink(name, dir_fd=dir_fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _file_sha256(path: bytes) -> str:
    dir_fd, name = _at(path)
    try:
        return file_sha256(name, dir_fd=dir_fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


#: The process-wide cache executors share.
TREES = TreeHasher()


def _system_paths() -> frozenset[str]:
    """The system directories, canonical (/bin is /usr/bin on merged-/usr hosts)."""
    from hermetic.core.builders import HermeticSpecBuilder

    return frozenset(os.path.realpath(p) for p in HermeticSpecBuilder.TOOLCHAIN_INPUTS)


def action_digest(
    spec: SandboxSpec,
    argv: Sequence[str],
    cwd: str | None,
    environment: Mapping[str, str],
    *,
    system_inputs: str = "path",
    hasher: TreeHasher = TREES,
) -> str:
    """The hex SHA-256 of everything that decides the action's result."""
    if system_inputs not in ("path", "content"):
        raise SpecError(
            f"system_inputs must be 'path' or 'content', got {system_inputs!r}",
            field="system_inputs",
            value=system_inputs,
        )
    system = _system_paths() if system_inputs == "path" else frozenset()
    inputs: dict[str, str] = {}
    for path in spec.inputs:
        try:
            if any(path == s or path.startswith(s + "/") for s in system):
                inputs[path] = "system"
            else:
                inputs[path] = hasher.tree(path)
        except FileNotFoundError:
            raise SpecError(
                f"input path does not exist: {path!r}", field="inputs", value=path
            ) from None
    doc = {
        "format": DIGEST_FORMAT,
        "spec": spec.digest(),
        "argv": list(argv),
        "cwd": cwd or spec.workdir or "/",
        "environment": sorted(environment.items()),
        "inputs": inputs,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
