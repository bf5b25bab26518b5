"""A farm's CAS held in memory, served by a real in-process gRPC server.

The worker's own :class:`hermetic.remote.cas.CasClient` talks to it over a
loopback channel exactly as to BuildGrid (``FindMissingBlobs``,
``BatchReadBlobs``, ``BatchUpdateBlobs``, ByteStream ``Read`` and
``Write``), so the tests of the worker's host side and the worker
benchmark run the real client code without a farm.  ``blobs`` is the store:
a test may place a blob under a digest it does not match (a lying CAS);
``stats`` counts what was asked of it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

from hermetic.remote.protos import (
    bots_pb2,
    bs_grpc,
    bs_pb2,
    code_pb2,
    grpc,
    re_grpc,
    re_pb2,
    status_pb2,
)

Key = tuple[str, int]

CHUNK = 1 << 20


def _key(digest: Any) -> Key:
    return (str(digest.hash), int(digest.size_bytes))


def _matches(k: Key, data: bytes) -> bool:
    return len(data) == k[1] and hashlib.sha256(data).hexdigest() == k[0]


class _Cas(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, store: MemoryCas) -> None:
        self.store = store

    def FindMissingBlobs(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.store.stats["FindMissingBlobs"] += 1
        with self.store.lock:
            missing = [d for d in request.blob_digests if _key(d) not in self.store.blobs]
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=missing)

    def BatchReadBlobs(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.store.stats["BatchReadBlobs"] += 1
        reply = re_pb2.BatchReadBlobsResponse()
        for d in request.digests:
            data = self.store.blobs.get(_key(d))
            if data is None:
                reply.responses.add(digest=d, status=status_pb2.Status(code=code_pb2.NOT_FOUND))
            else:
                reply.responses.add(digest=d, data=data, status=status_pb2.Status(code=0))
        return reply

    def GetTree(self, request: Any, context: Any) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the worker never asks for a tree")

    def BatchUpdateBlobs(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.store.stats["BatchUpdateBlobs"] += 1
        reply = re_pb2.BatchUpdateBlobsResponse()
        for r in request.requests:
            k = _key(r.digest)
            if _matches(k, r.data):
                with self.store.lock:
                    self.store.blobs[k] = r.data
                code = 0
            else:
                code = code_pb2.INVALID_ARGUMENT
            reply.responses.add(digest=r.digest, status=status_pb2.Status(code=code))
        return reply


class _ByteStream(bs_grpc.ByteStreamServicer):
    def __init__(self, store: MemoryCas) -> None:
        self.store = store

    @staticmethod
    def _blob_key(resource: str) -> Key:
        parts = resource.split("/")
        i = parts.index("blobs")
        return (parts[i + 1], int(parts[i + 2]))

    def Read(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        self.store.stats["Read"] += 1
        data = self.store.blobs.get(self._blob_key(request.resource_name))
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
            return
        for offset in range(request.read_offset, len(data), CHUNK):
            self.store.stats["Read bytes"] += len(data[offset : offset + CHUNK])
            yield bs_pb2.ReadResponse(data=data[offset : offset + CHUNK])

    def QueryWriteStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the worker never resumes a write")

    def Write(self, requests: Iterator[Any], context: Any) -> Any:  # noqa: N802
        self.store.stats["Write"] += 1
        k: Key | None = None
        h = hashlib.sha256()
        size = 0
        for r in requests:
            if k is None:
                k = self._blob_key(r.resource_name)
            h.update(r.data)
            size += len(r.data)
            self.store.stats["Write chunks"] += 1
            self.store.max_chunk = max(self.store.max_chunk, len(r.data))
            if r.finish_write:
                break
        if k is None or (h.hexdigest(), size) != k:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the data does not match the digest")
            raise AssertionError("abort raises")
        # What was sent is kept as the digest (not the bytes): a test of a
        # large upload checks the digest and the chunking, not a copy.
        with self.store.lock:
            self.store.streamed[k] = size
        return bs_pb2.WriteResponse(committed_size=size)


class MemoryCas:
    """Blobs in a dict, served on 127.0.0.1 (``target``) until :meth:`close`."""

    def __init__(self) -> None:
        self.blobs: dict[Key, bytes] = {}
        self.streamed: dict[Key, int] = {}
        self.stats: Counter[str] = Counter()
        self.max_chunk = 0
        self.lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        re_grpc.add_ContentAddressableStorageServicer_to_server(_Cas(self), self._server)
        bs_grpc.add_ByteStreamServicer_to_server(_ByteStream(self), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.target = f"127.0.0.1:{port}"

    def channel(self) -> Any:
        return grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )

    def put(self, data: bytes) -> Any:
        """Store ``data``; its Digest."""
        d = re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        self.blobs[_key(d)] = data
        return d

    def put_message(self, message: Any) -> Any:
        return self.put(message.SerializeToString(deterministic=True))

    def has(self, digest: Any) -> bool:
        k = _key(digest)
        return k in self.blobs or k in self.streamed

    def close(self) -> None:
        self._server.stop(grace=None).wait()


#: An input file: its bytes, and whether it is executable.
File = tuple[bytes, bool]


def input_root(
    cas: MemoryCas,
    files: dict[str, File],
    symlinks: dict[str, str] | None = None,
    dirs: tuple[str, ...] = (),
) -> Any:
    """Store the Directory messages of a tree of ``files`` (paths relative to
    the root), ``symlinks`` (path -> target) and empty ``dirs``; the root's
    Digest.  Names are sorted, as the API asks."""
    tree: dict[str, dict[str, Any]] = {"": {}}

    def node(path: str) -> dict[str, Any]:
        if path not in tree:
            parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
            node(parent)[name] = tree.setdefault(path, {})
        return tree[path]

    for d in dirs:
        node(d)
    for path, (data, x) in files.items():
        parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
        node(parent)[name] = (cas.put(data), x)
    for path, target in (symlinks or {}).items():
        parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
        node(parent)[name] = target

    def store(entries: dict[str, Any]) -> Any:
        msg = re_pb2.Directory()
        for name in sorted(entries):
            v = entries[name]
            if isinstance(v, dict):
                msg.directories.add(name=name, digest=store(v))
            elif isinstance(v, str):
                msg.symlinks.add(name=name, target=v)
            else:
                msg.files.add(name=name, digest=v[0], is_executable=v[1])
        return cas.put_message(msg)

    return store(tree[""])


def lease(
    cas: MemoryCas,
    argv: list[str],
    root: Any,
    *,
    env: dict[str, str] | None = None,
    output_paths: tuple[str, ...] = (),
    output_files: tuple[str, ...] = (),
    output_directories: tuple[str, ...] = (),
    working_directory: str = "",
    timeout: float | None = None,
    lease_id: str = "lease",
) -> Any:
    """A Lease whose payload is ``Any(Action)`` of ``argv`` over ``root``."""
    command = re_pb2.Command(
        arguments=argv,
        environment_variables=[
            re_pb2.Command.EnvironmentVariable(name=k, value=v)
            for k, v in sorted((env or {"PATH": "/usr/bin:/bin"}).items())
        ],
        output_paths=output_paths,
        output_files=output_files,
        output_directories=output_directories,
        working_directory=working_directory,
    )
    action = re_pb2.Action(command_digest=cas.put_message(command), input_root_digest=root)
    if timeout is not None:
        action.timeout.FromSeconds(int(timeout))
    out = bots_pb2.Lease(id=lease_id, state=bots_pb2.PENDING)
    out.payload.Pack(action)
    return out
