"""The protocol modules, imported in one place.

The messages and stubs are the generated ones buildgrid-common ships
(REAPI v2, ByteStream, Remote Workers v1test2, google.rpc); nothing here
speaks the wire by hand.  A missing extra is said once, with the command
that installs it.
"""

from __future__ import annotations

try:
    import grpc
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
        remote_execution_pb2 as re_pb2,
    )
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
        remote_execution_pb2_grpc as re_grpc,
    )
    from buildgrid.common.protos.google.bytestream import bytestream_pb2 as bs_pb2
    from buildgrid.common.protos.google.bytestream import bytestream_pb2_grpc as bs_grpc
    from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import (
        bots_pb2,
        bots_pb2_grpc,
        worker_pb2,
    )
    from buildgrid.common.protos.google.rpc import code_pb2, status_pb2
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"hermetic's remote worker needs the 'remote' extra: pip install 'hermetic[remote]' ({e})",
        name=e.name,
    ) from e

__all__ = [
    "bots_pb2",
    "bots_pb2_grpc",
    "bs_grpc",
    "bs_pb2",
    "code_pb2",
    "grpc",
    "re_grpc",
    "re_pb2",
    "status_pb2",
    "worker_pb2",
]
