"""The farm's CAS, and the worker's local content-addressed cache.

:class:`CasClient` speaks the ContentAddressableStorage service
(``BatchReadBlobs``, ``FindMissingBlobs``, ``BatchUpdateBlobs``) and
ByteStream for blobs too large for one batch.  :class:`LocalCache` keeps
every fetched file once, by digest, in a directory of the worker's own that
no action's spec declares: actions cannot see it, and the copies staged
into their exec roots are hard links mounted read-only (execroot.py), so
an action cannot change a cached file through them either.  It holds at
most a given number of bytes, the least recently used evicted first.

Every blob read from the farm is checked against its digest before it is
used: a corrupt or hostile CAS cannot place other bytes under a digest.
Nothing is read into memory without a bound: blobs over one batch go from
ByteStream to the cache's file (never more bytes than the digest says),
outputs are uploaded from their files (:class:`FileBlob`), and a message
blob (Action, Command, Directory) over :data:`MAX_MESSAGE` is refused.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import stat
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hermetic.remote.protos import bs_grpc, bs_pb2, grpc, re_grpc, re_pb2

#: Blobs up to this size go in batches, larger ones through ByteStream.
#: gRPC's default message limit is 4 MiB; a batch stays well under it.
MAX_BATCH_BLOB = 1 << 20
#: The total payload of one BatchReadBlobs/BatchUpdateBlobs request.
MAX_BATCH_BYTES = 3 << 20
#: The chunk of a ByteStream read or write.
CHUNK = 1 << 20

#: The largest message blob (Action, Command, Directory) read into memory;
#: the worker's gRPC channel takes messages up to the same size.
MAX_MESSAGE = 64 << 20

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

Key = tuple[str, int]

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: The largest blob a digest may name: a size above it is refused as
#: invalid before anything is asked of the CAS or the disk.
MAX_BLOB = 1 << 40


class DigestError(ValueError):
    """A digest the action gave is not a SHA-256 digest: not 64 lowercase
    hex digits, or a size below 0 or above MAX_BLOB."""


def key(digest: Any) -> Key:
    """A digest as a hashable (hash, size) pair."""
    return (str(digest.hash), int(digest.size_bytes))


def checked_key(digest: Any, *, what: str) -> Key:
    """``key(digest)`` of a digest the action gave, refused when it cannot
    name a blob: the worker would otherwise ask the CAS for nonsense, or
    make a cache file name of it (a hash of ``../`` components would name
    a file of the host).  SHA-256 is the only function the worker computes,
    so a hash is exactly 64 lowercase hex digits."""
    k = key(digest)
    if not _SHA256.fullmatch(k[0]) or not 0 <= k[1] <= MAX_BLOB:
        raise DigestError(f"{what} has an invalid digest: {k[0]!r}/{k[1]}")
    return k


def digest_of(data: bytes) -> Any:
    """The REAPI digest (SHA-256) of ``data``."""
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def digest_of_message(message: Any) -> tuple[Any, bytes]:
    """A message's digest and its bytes, serialised deterministically (the
    digest of a Directory names it in the tree)."""
    data = message.SerializeToString(deterministic=True)
    return digest_of(data), data


class CasError(OSError):
    """A blob could not be read, was not what its digest says, or could not
    be stored."""


@dataclass(frozen=True)
class FileBlob:
    """A blob that stays in its file until it is uploaded: ``opener`` opens
    it (read-only) when the upload reads it, and what it reads then is
    checked against the digest again, so a file changed after it was
    hashed is refused rather than stored under the wrong digest."""

    opener: Callable[[], int]


#: A blob to upload: its bytes, or the file that holds them.
Blob = bytes | FileBlob


def hash_fd(fd: int) -> Any:
    """The digest of what ``fd`` holds from its offset on, read in chunks
    (never the whole file in memory)."""
    h = hashlib.sha256()
    size = 0
    while True:
        piece = os.read(fd, CHUNK)
        if not piece:
            return re_pb2.Digest(hash=h.hexdigest(), size_bytes=size)
        h.update(piece)
        size += len(piece)


def file_blob(path: str) -> tuple[Any, FileBlob]:
    """The digest of the worker's own file ``path`` and a blob that reads it
    again at upload."""

    def opener() -> int:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    fd = opener()
    try:
        return hash_fd(fd), FileBlob(opener)
    finally:
        os.close(fd)


def _chunks(k: Key, blob: Blob) -> Iterator[bytes]:
    """The bytes of ``blob`` in chunks; the last is given only once the
    whole is known to match ``k`` (a file changed since it was hashed
    raises CasError before its end is sent)."""
    if isinstance(blob, bytes):
        _check(k, blob)
        for offset in range(0, len(blob), CHUNK):
            yield blob[offset : offset + CHUNK]
        return
    fd = blob.opener()
    try:
        h = hashlib.sha256()
        size = 0
        held = b""
        while True:
            piece = os.read(fd, CHUNK)
            if not piece:
                break
            size += len(piece)
            if size > k[1]:
                break
            h.update(piece)
            if held:
                yield held
            held = piece
        if size != k[1] or h.hexdigest() != k[0]:
            raise CasError(f"an output changed after it was collected: {k[0]}/{k[1]}")
        if held:
            yield held
    finally:
        os.close(fd)


def _blob_bytes(k: Key, blob: Blob) -> bytes:
    return blob if isinstance(blob, bytes) else b"".join(_chunks(k, blob))


def _check(k: Key, data: bytes) -> bytes:
    if len(data) != k[1] or hashlib.sha256(data).hexdigest() != k[0]:
        raise CasError(f"the CAS returned a blob that does not match its digest {k[0]}/{k[1]}")
    return data


def _batches(keys: Sequence[Key]) -> Iterator[list[Key]]:
    batch: list[Key] = []
    size = 0
    for k in keys:
        if batch and size + k[1] > MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(k)
        size += k[1]
    if batch:
        yield batch


class Cancelled(Exception):
    """The lease was cancelled while its inputs were fetched or staged."""


class Cancel(Protocol):
    """What fetching and staging need of a cancellation (a threading.Event)."""

    def is_set(self) -> bool: ...


def check_cancel(cancel: Cancel | None) -> None:
    """Raise Cancelled once ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("the lease was cancelled while its inputs were fetched or staged")


class CasClient:
    """The farm's CAS for one instance, over one gRPC channel."""

    def __init__(self, channel: Any, instance: str, *, timeout: float = 60.0) -> None:
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bytestream = bs_grpc.ByteStreamStub(channel)
        self._instance = instance
        self._timeout = timeout

    def _resource(self, k: Key, *, upload: bool) -> str:
        parts = [self._instance] if self._instance else []
        if upload:
            parts += ["uploads", str(uuid.uuid4())]
        parts += ["blobs", k[0], str(k[1])]
        return "/".join(parts)

    # -- reading ---------------------------------------------------------

    def read(self, keys: Iterable[Key]) -> Iterator[tuple[Key, bytes]]:
        """Each blob of ``keys`` (once each), checked against its digest."""
        wanted = sorted(set(keys))
        small = [k for k in wanted if 0 < k[1] <= MAX_BATCH_BLOB]
        for k in wanted:
            if k[1] == 0:
                yield k, _check(k, b"")
        for batch in _batches(small):
            request = re_pb2.BatchReadBlobsRequest(
                instance_name=self._instance,
                digests=[re_pb2.Digest(hash=h, size_bytes=s) for h, s in batch],
            )
            reply = self._cas.BatchReadBlobs(request, timeout=self._timeout)
            got = {}
            for r in reply.responses:
                k = key(r.digest)
                if r.status.code != 0:
                    raise CasError(f"the CAS could not give blob {k[0]}/{k[1]}: {r.status.message}")
                got[k] = _check(k, r.data)
            for k in batch:
                if k not in got:
                    raise CasError(f"the CAS left blob {k[0]}/{k[1]} out of its answer")
                yield k, got[k]
        for k in wanted:
            if k[1] > MAX_BATCH_BLOB:
                yield k, self._read_stream(k)

    def _stream(self, k: Key) -> Iterator[bytes]:
        """The pieces of a ByteStream read of ``k``; never more bytes than
        its size (a longer answer is cut off and refused)."""
        request = bs_pb2.ReadRequest(resource_name=self._resource(k, upload=False))
        call = self._bytestream.Read(request, timeout=self._timeout)
        got = 0
        try:
            for r in call:
                got += len(r.data)
                if got > k[1]:
                    raise CasError(f"the CAS sent more than the {k[1]} bytes of blob {k[0]}")
                yield r.data
        finally:
            call.cancel()

    def _read_stream(self, k: Key) -> bytes:
        if k[1] > MAX_MESSAGE:
            raise CasError(f"blob {k[0]}/{k[1]} is too large to read into memory")
        return _check(k, b"".join(self._stream(k)))

    def read_to_file(self, k: Key, fd: int, cancel: Cancel | None = None) -> None:
        """Write blob ``k`` to ``fd`` as it arrives, checked against its
        digest; Cancelled, between two pieces, once ``cancel`` is set."""
        h = hashlib.sha256()
        size = 0
        pieces = self._stream(k) if k[1] > MAX_BATCH_BLOB else (d for _, d in self.read([k]))
        for piece in pieces:
            check_cancel(cancel)
            h.update(piece)
            size += len(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        if size != k[1] or h.hexdigest() != k[0]:
            raise CasError(f"the CAS returned a blob that does not match its digest {k[0]}/{k[1]}")

    def read_one(self, digest: Any, *, what: str = "a blob") -> bytes:
        """One message blob (an Action, Command or Directory), whose digest
        the action gave: refused when malformed or over MAX_MESSAGE."""
        k = checked_key(digest, what=what)
        if k[1] > MAX_MESSAGE:
            raise DigestError(f"{what} is larger than {MAX_MESSAGE} bytes: {k[0]}/{k[1]}")
        for _, data in self.read([k]):
            return data
        raise CasError(f"the CAS did not give blob {k[0]}/{k[1]}")  # pragma: no cover

    # -- writing ---------------------------------------------------------

    def find_missing(self, keys: Iterable[Key]) -> set[Key]:
        """Which of ``keys`` the CAS lacks."""
        wanted = sorted(set(keys))
        missing: set[Key] = set()
        for start in range(0, len(wanted), 1000):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self._instance,
                blob_digests=[
                    re_pb2.Digest(hash=h, size_bytes=s) for h, s in wanted[start : start + 1000]
                ],
            )
            reply = self._cas.FindMissingBlobs(request, timeout=self._timeout)
            missing.update(key(d) for d in reply.missing_blob_digests)
        # Only what was asked: a digest the CAS adds names nothing to send.
        return missing.intersection(wanted)

    def upload(self, blobs: dict[Key, Blob]) -> None:
        """Store what the CAS lacks of ``blobs`` (a file is read again as it
        is sent, one batch or one chunk at a time)."""
        missing = self.find_missing(blobs)
        small = sorted(k for k in missing if k[1] <= MAX_BATCH_BLOB)
        for batch in _batches(small):
            request = re_pb2.BatchUpdateBlobsRequest(
                instance_name=self._instance,
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(
                        digest=re_pb2.Digest(hash=k[0], size_bytes=k[1]),
                        data=_blob_bytes(k, blobs[k]),
                    )
                    for k in batch
                ],
            )
            reply = self._cas.BatchUpdateBlobs(request, timeout=self._timeout)
            for r in reply.responses:
                if r.status.code != 0:
                    raise CasError(
                        f"the CAS refused blob {r.digest.hash}/{r.digest.size_bytes}: "
                        f"{r.status.message}"
                    )
        for k in sorted(missing):
            if k[1] > MAX_BATCH_BLOB:
                self._write_stream(k, blobs[k])

    def _write_stream(self, k: Key, blob: Blob) -> None:
        name = self._resource(k, upload=True)
        failed: list[BaseException] = []

        def requests() -> Iterator[Any]:
            offset = 0
            try:
                for piece in _chunks(k, blob):
                    yield bs_pb2.WriteRequest(
                        resource_name=name if offset == 0 else "",
                        write_offset=offset,
                        finish_write=offset + len(piece) >= k[1],
                        data=piece,
                    )
                    offset += len(piece)
            except CasError as e:
                # Ends the request stream without finish_write: the CAS
                # keeps nothing, and the error is raised below.
                failed.append(e)

        try:
            reply = self._bytestream.Write(requests(), timeout=self._timeout)
        except grpc.RpcError:
            if failed:
                raise failed[0] from None
            raise
        if failed:
            raise failed[0]
        if reply.committed_size not in (k[1], -1):
            raise CasError(f"the CAS kept {reply.committed_size} of {k[1]} bytes of blob {k[0]}")


#: ``--cache-size``'s default: the local cache's bound, in bytes.
DEFAULT_CACHE_SIZE = 10 << 30
#: Eviction brings the cache down to this fraction of its bound, so that it
#: runs now and then in a batch, not on every fetch once the cache is full.
LOW_WATER = 0.9

_ENTRY = re.compile(r"([0-9a-f]{64})_([0-9]+)(_x)?")


class CacheMiss(OSError):
    """A cache entry the index lists is gone from the disk (removed by
    hand): the caller fetches it again."""


#: The unit of a file's space on disk.
BLOCK = 4096
#: The entries the cache holds at most, whatever their size: each is an
#: inode on the disk and about 250 bytes of the index in memory.
MAX_ENTRIES = 400_000


def entry_cost(size: int) -> int:
    """What an entry of ``size`` bytes counts against the cache's bound:
    its whole blocks, and one block more for its inode, its name and its
    index entry.  Counted by content bytes alone, 20,000 files of 8 bytes
    were 160 KB against a bound of gigabytes while they took 80 MB of disk
    and 20,000 inodes."""
    return (size + BLOCK - 1) // BLOCK * BLOCK + BLOCK


class LocalCache:
    """Files by digest, in a directory only the worker reaches, at most
    ``max_bytes`` of them (each counted by entry_cost) and MAX_ENTRIES
    files, the least recently used evicted first.

    A file is kept read-only (0444, or 0555 when executable: one inode per
    digest and mode, since staged copies are hard links and share it).
    Entries are written under a temporary name and linked into place, so a
    reader never sees half a file, concurrent fetches of one digest are
    harmless, and an entry's inode never changes once it exists.

    The index of entries (their sizes, in least-recently-used order) is kept
    in memory, read from the directory once at start: staging asks it
    instead of the disk, one dictionary look-up per file.

    Eviction and staging: an entry is pinned (:meth:`pinned`) from before a
    lease fetches its inputs until they are linked into its exec root, so
    eviction never removes a file between the two.  Once linked, evicting
    the entry only removes the cache's name for the inode: the exec root's
    hard link keeps the inode, its bytes and its mode, and the exec root is
    unchanged (a file's data is freed when its last link goes and no one has
    it open).  The disk space of an evicted, still-staged file is freed when
    the lease's exec root is removed; until then the cache's size counts it
    no more.
    """

    def __init__(self, root: str, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        if max_bytes < 0:
            raise ValueError(f"the cache size must be at least 0, got {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        os.makedirs(root, mode=0o700, exist_ok=True)
        # Never through a link, and only a directory of the worker's own:
        # one another user made first would stay theirs to change.
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            owner = os.fstat(self.fd).st_uid
            if owner != os.geteuid():
                raise ValueError(
                    f"the cache {root} is owned by uid {owner}, not by this user ({os.geteuid()})"
                )
            # Only the worker: actions never get this directory, and other
            # users of the host have no business in it either.
            os.fchmod(self.fd, 0o700)
        except BaseException:
            os.close(self.fd)
            raise
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self._size = 0
        self.evicted = 0
        self._load()

    def _load(self) -> None:
        found: list[tuple[float, str, int]] = []
        with os.scandir(self.fd) as it:
            for entry in it:
                if entry.name.endswith(".tmp"):
                    # Half a fetch of a worker that was killed.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=self.fd)
                    continue
                m = _ENTRY.fullmatch(entry.name)
                st = entry.stat(follow_symlinks=False)
                if m and _is_entry(st, int(m.group(2))):
                    found.append((st.st_mtime, entry.name, int(m.group(2))))
                elif m:
                    # Named like an entry but not one the cache wrote (a
                    # link, another owner's, a size that lies): never used.
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=self.fd)
        # Oldest first: what was written longest ago is evicted first until
        # this worker's own use orders the entries.
        for _, name, size in sorted(found):
            self._entries[name] = entry_cost(size)
            self._size += entry_cost(size)
        with self._lock:
            self._evict_locked()

    def close(self) -> None:
        os.close(self.fd)

    def open_entry(self, k: Key, executable: bool) -> int:
        """A read descriptor of the entry of ``k``, opened without following
        a link and checked (fstat) to be what the cache wrote: a regular
        file of the worker's, of the digest's size.  Anything else is
        forgotten and raises CacheMiss (the caller fetches it again)."""
        name = self.name(k, executable)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ELOOP):
                raise
            self._forget(name)
            raise CacheMiss(e.errno, "a cache entry is gone", name) from e
        if not _is_entry(os.fstat(fd), k[1]):
            os.close(fd)
            self._forget(name)
            raise CacheMiss(errno.ESTALE, "a cache entry is not the file the cache wrote", name)
        return fd

    # -- names and the index ----------------------------------------------

    @staticmethod
    def name(k: Key, executable: bool) -> str:
        return f"{k[0]}_{k[1]}{'_x' if executable else ''}"

    def path(self, k: Key, executable: bool) -> str:
        return os.path.join(self.root, self.name(k, executable))

    def has(self, k: Key, executable: bool) -> bool:
        return self.name(k, executable) in self._entries

    @property
    def size(self) -> int:
        """The bytes of the entries the cache holds."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def _add_locked(self, name: str, size: int) -> None:
        if name not in self._entries:
            self._entries[name] = entry_cost(size)
            self._size += entry_cost(size)
        self._entries.move_to_end(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            size = self._entries.pop(name, None)
            if size is not None:
                self._size -= size

    def _evict_locked(self) -> None:
        if self._size <= self.max_bytes and len(self._entries) <= MAX_ENTRIES:
            return
        goal = int(self.max_bytes * LOW_WATER)
        goal_entries = int(MAX_ENTRIES * LOW_WATER)
        for name in list(self._entries):
            if self._size <= goal and len(self._entries) <= goal_entries:
                break
            if self._pins[name]:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self.fd)
            self._size -= self._entries.pop(name)
            self.evicted += 1

    def evict(self) -> None:
        """Bring the cache under its bound now (it is also done after every
        fetch)."""
        with self._lock:
            self._evict_locked()

    @contextlib.contextmanager
    def pinned(self, wanted: Iterable[tuple[Key, bool]]) -> Iterator[None]:
        """While the block runs, eviction leaves the entries of ``wanted``
        alone (present or still to be fetched)."""
        names = [self.name(k, x) for k, x in wanted]
        with self._lock:
            self._pins.update(names)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(names)
                for name in names:
                    if self._pins[name] <= 0:
                        del self._pins[name]
                # What eviction had to leave while it was pinned goes now.
                self._evict_locked()

    # -- filling ----------------------------------------------------------

    def _publish(self, fd: int, tmp: str, k: Key, executable: bool) -> None:
        """Make the finished temporary file ``tmp`` the entry of ``k``."""
        name = self.name(k, executable)
        os.fchmod(fd, 0o555 if executable else 0o444)
        try:
            # link, not rename: an entry that appeared meanwhile (another
            # lease fetched it) stays the same inode its links share.
            os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except FileExistsError:
            if not _is_entry(os.stat(name, dir_fd=self.fd, follow_symlinks=False), k[1]):
                # Not an entry the cache wrote: replaced, never used.
                os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        with self._lock:
            self._add_locked(name, k[1])

    def _write(self, k: Key, executable: bool, fill: Callable[[int], None]) -> None:
        tmp = f"{self.name(k, executable)}.{uuid.uuid4().hex}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.fd,
        )
        try:
            fill(fd)
            self._publish(fd, tmp, k, executable)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.fd)

    def put(self, k: Key, data: bytes, executable: bool) -> str:
        """Store ``data`` (already checked against ``k``) and return its path."""

        def fill(fd: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

        if not self.has(k, executable):
            self._write(k, executable, fill)
            self.evict()
        return self.path(k, executable)

    def _copy_entry(self, k: Key, src_x: bool) -> None:
        """The entry of ``k`` with the other mode, copied from ``src_x``'s."""
        src = self.open_entry(k, src_x)
        try:
            self._write(k, not src_x, lambda fd: _copy_fd(src, fd, k[1]))
        finally:
            os.close(src)

    def fetch(
        self, cas: CasClient, wanted: Iterable[tuple[Key, bool]], cancel: Cancel | None = None
    ) -> int:
        """Bring every (digest, executable) of ``wanted`` into the cache;
        returns how many blobs came from the farm.  Small blobs come in
        batches; larger ones go from ByteStream to their file as they
        arrive.  Cancelled once ``cancel`` is set (looked at for each blob,
        and each piece of a large one)."""
        wanted = list(wanted)
        with self._lock:
            missing: set[tuple[Key, bool]] = set()
            for k, x in wanted:
                name = self.name(k, x)
                if name in self._entries:
                    self._entries.move_to_end(name)
                else:
                    missing.add((k, x))
        if not missing:
            return 0
        for k, _ in missing:
            # A digest of the action's names a cache file: checked first.
            checked_key(re_pb2.Digest(hash=k[0], size_bytes=k[1]), what="an input")
        modes: dict[Key, list[bool]] = {}
        for k, x in sorted(missing):
            modes.setdefault(k, []).append(x)
        fetched = 0
        small = [k for k in modes if k[1] <= MAX_BATCH_BLOB]
        for k, data in cas.read(small):
            check_cancel(cancel)
            fetched += 1
            for x in modes[k]:
                self.put(k, data, x)
        for k in modes:
            if k[1] > MAX_BATCH_BLOB:
                fetched += 1
                first, *rest = modes[k]
                check_cancel(cancel)
                self._write(k, first, functools.partial(cas.read_to_file, k, cancel=cancel))
                for _ in rest:
                    self._copy_entry(k, first)
        self.evict()
        return fetched

    # -- staging ----------------------------------------------------------

    def link(self, k: Key, executable: bool, dir_fd: int, name: str) -> None:
        """A hard link to the entry, as ``name`` in the directory ``dir_fd``.

        An inode with as many links as the filesystem allows (EMLINK: one
        input staged that many times) is copied instead: the copy has the
        entry's read-only mode and shares nothing with the cache."""
        entry = self.name(k, executable)
        # Checked first (lstat semantics): only a regular file of the
        # worker's, of the digest's size, is linked; linkat itself never
        # follows a link either.
        try:
            st = os.stat(entry, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError as e:
            self._forget(entry)
            raise CacheMiss(errno.ENOENT, "a cache entry is gone", entry) from e
        if not _is_entry(st, k[1]):
            self._forget(entry)
            raise CacheMiss(errno.ESTALE, "a cache entry is not the file the cache wrote", entry)
        try:
            os.link(entry, name, src_dir_fd=self.fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError as e:
            self._forget(entry)
            raise CacheMiss(errno.ENOENT, "a cache entry is gone", entry) from e
        except OSError as e:
            if e.errno != errno.EMLINK:
                raise
            self.copy(k, executable, dir_fd, name, 0o555 if executable else 0o444)

    def link_all(self, dir_fd: int, entries: Sequence[tuple[str, Key, bool]]) -> list[int]:
        """Hard links to the entries of ``entries`` (name, digest,
        executable) in the directory ``dir_fd``, each checked as :meth:`link`
        checks one, all in one call of the C core; returns the indices of
        those it did not link, in order.  They are the caller's to place
        with :meth:`link`, which names what is wrong with each or mends it
        (copies an inode that has all the links it can take).  Without the
        C core it links none."""
        lib, ffi = _native()
        if lib is None or not entries:
            return list(range(len(entries)))
        packed_entries = b"".join(self.name(k, x).encode() + b"\0" for _, k, x in entries)
        packed_names = b"".join(os.fsencode(name) + b"\0" for name, _, _ in entries)
        sizes = ffi.new("long long[]", [k[1] for _, k, _ in entries])
        failed = ffi.new("long[]", len(entries))
        n = lib.hm_link_entries(
            self.fd, dir_fd, packed_entries, packed_names, sizes, len(entries), failed
        )
        return [int(i) for i in failed[0:n]]

    def copy(self, k: Key, executable: bool, dir_fd: int, name: str, mode: int) -> None:
        """A copy of the entry, its own inode, as ``name`` in ``dir_fd``: made
        with O_EXCL|O_NOFOLLOW and its mode set with fchmod, so nothing a
        link could redirect is ever written or chmodded by path."""
        src = self.open_entry(k, executable)
        try:
            dst = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                _copy_fd(src, dst, k[1])
                os.fchmod(dst, mode)
            finally:
                os.close(dst)
        finally:
            os.close(src)


@functools.cache
def _native() -> tuple[Any, Any]:
    """The C core's library and its ffi, or (None, None) where it lacks
    hm_link_entries (not Linux)."""
    try:
        from hermetic import _native as native
    except ImportError:
        return None, None
    if not hasattr(native.lib, "hm_link_entries"):
        return None, None
    return native.lib, native.ffi


def _is_entry(st: os.stat_result, size: int) -> bool:
    """Whether ``st`` (lstat) is a cache entry the worker wrote: a regular
    file it owns, of the size its name says."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_size == size


def _copy_fd(src: int, dst: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done)
            if n == 0:
                return
            done += n
    except OSError as e:
        # Another filesystem, or a kernel without it: plain reads and writes.
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while True:
        piece = os.read(src, CHUNK)
        if not piece:
            return
        view = memoryview(piece)
        while view:
            view = view[os.write(dst, view) :]
