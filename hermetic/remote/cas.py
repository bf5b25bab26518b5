"""The farm's CAS, and the worker's local content-addressed cache.

:class:`CasClient` speaks the ContentAddressableStorage service
(``BatchReadBlobs``, ``FindMissingBlobs``, ``BatchUpdateBlobs``) and
ByteStream for blobs too large for one batch.  :class:`LocalCache` keeps
every fetched file once, by digest, in a directory of the worker's own that
no action's spec declares: actions cannot see it, and the copies staged
into their exec roots are hard links mounted read-only (execroot.py), so
an action cannot change a cached file through them either.

Every blob read from the farm is checked against its digest before it is
used: a corrupt or hostile CAS cannot place other bytes under a digest.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from hermetic.remote.protos import bs_grpc, bs_pb2, re_grpc, re_pb2

#: Blobs up to this size go in batches, larger ones through ByteStream.
#: gRPC's default message limit is 4 MiB; a batch stays well under it.
MAX_BATCH_BLOB = 1 << 20
#: The total payload of one BatchReadBlobs/BatchUpdateBlobs request.
MAX_BATCH_BYTES = 3 << 20
#: The chunk of a ByteStream read or write.
CHUNK = 1 << 20

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

Key = tuple[str, int]


def key(digest: Any) -> Key:
    """A digest as a hashable (hash, size) pair."""
    return (str(digest.hash), int(digest.size_bytes))


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

    def _read_stream(self, k: Key) -> bytes:
        request = bs_pb2.ReadRequest(resource_name=self._resource(k, upload=False))
        data = b"".join(r.data for r in self._bytestream.Read(request, timeout=self._timeout))
        return _check(k, data)

    def read_one(self, digest: Any) -> bytes:
        k = key(digest)
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
        return missing

    def upload(self, blobs: dict[Key, bytes]) -> None:
        """Store what the CAS lacks of ``blobs``."""
        missing = self.find_missing(blobs)
        small = sorted(k for k in missing if k[1] <= MAX_BATCH_BLOB)
        for batch in _batches(small):
            request = re_pb2.BatchUpdateBlobsRequest(
                instance_name=self._instance,
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(
                        digest=re_pb2.Digest(hash=k[0], size_bytes=k[1]), data=blobs[k]
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

    def _write_stream(self, k: Key, data: bytes) -> None:
        name = self._resource(k, upload=True)

        def requests() -> Iterator[Any]:
            offset = 0
            while True:
                piece = data[offset : offset + CHUNK]
                last = offset + len(piece) >= len(data)
                yield bs_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    finish_write=last,
                    data=piece,
                )
                offset += len(piece)
                if last:
                    return

        reply = self._bytestream.Write(requests(), timeout=self._timeout)
        if reply.committed_size not in (len(data), -1):
            raise CasError(
                f"the CAS kept {reply.committed_size} of {len(data)} bytes of blob {k[0]}"
            )


class LocalCache:
    """Files by digest, in a directory only the worker reaches.

    A file is kept read-only (0444, or 0555 when executable: one inode per
    digest and mode, since staged copies are hard links and share it).
    Entries are written under a temporary name and renamed into place, so
    a reader never sees half a file and concurrent fetches of one digest
    are harmless.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        # Only the worker: actions never get this directory, and other
        # users of the host have no business in it either.
        os.chmod(root, 0o700)
        self._lock = threading.Lock()

    def path(self, k: Key, executable: bool) -> str:
        return os.path.join(self.root, f"{k[0]}_{k[1]}{'_x' if executable else ''}")

    def has(self, k: Key, executable: bool) -> bool:
        return os.path.exists(self.path(k, executable))

    def put(self, k: Key, data: bytes, executable: bool) -> str:
        """Store ``data`` (already checked against ``k``) and return its path."""
        final = self.path(k, executable)
        if os.path.exists(final):
            return final
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o555 if executable else 0o444)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return final

    def fetch(self, cas: CasClient, wanted: Iterable[tuple[Key, bool]]) -> int:
        """Bring every (digest, executable) of ``wanted`` into the cache;
        returns how many blobs came from the farm."""
        missing = {(k, x) for k, x in wanted if not self.has(k, x)}
        if not missing:
            return 0
        need = {k for k, _ in missing}
        fetched = 0
        for k, data in cas.read(need):
            fetched += 1
            for x in (False, True):
                if (k, x) in missing:
                    self.put(k, data, x)
        return fetched
