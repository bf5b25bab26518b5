"""Regenerate the Python modules of this directory from its .proto files.

    python -m hermetic.remote.proto.generate [--out DIR]

Runs grpcio-tools' protoc over runner.proto and resourceusage.proto with the
source tree's root as the include path, so that the generated modules import
each other as ``hermetic.remote.proto.*``.  The generated files are
committed; tests/test_remote_runner.py regenerates them into a scratch
directory and checks they are the same.  The committed ones were made with
the grpcio-tools version in GRPCIO_TOOLS_VERSION: another version may
write different (equally valid) code, and the check says which it used.
"""

from __future__ import annotations

import argparse
import os
import sys

#: The protocol files, relative to the source tree's root.
PROTOS = (
    "hermetic/remote/proto/resourceusage.proto",
    "hermetic/remote/proto/runner.proto",
)
#: What protoc writes for each .proto (runner.proto has a service).
GENERATED = (
    "hermetic/remote/proto/resourceusage_pb2.py",
    "hermetic/remote/proto/resourceusage_pb2.pyi",
    "hermetic/remote/proto/resourceusage_pb2_grpc.py",
    "hermetic/remote/proto/runner_pb2.py",
    "hermetic/remote/proto/runner_pb2.pyi",
    "hermetic/remote/proto/runner_pb2_grpc.py",
)
#: The grpcio-tools release the committed files were generated with.
GRPCIO_TOOLS_VERSION = "1.85.4"

#: The source tree's root: three levels above this file.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def generate(out: str) -> None:
    """Write the generated modules under ``out`` (at their paths relative to
    the tree's root).  Raises ImportError without grpcio-tools, RuntimeError
    when protoc fails."""
    import importlib.resources

    from grpc_tools import protoc

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    os.makedirs(os.path.join(out, "hermetic", "remote", "proto"), exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(os.path.join(ROOT, p) for p in PROTOS),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}: {' '.join(args)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hermetic.remote.proto.generate")
    parser.add_argument("--out", default=ROOT, help="where to write (default: the tree itself)")
    ns = parser.parse_args(argv)
    generate(ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
