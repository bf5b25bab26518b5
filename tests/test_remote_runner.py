"""The protocol modules of ``hermetic runner`` (hermetic/remote/proto/).

They are generated from Buildbarn's runner.proto and resourceusage.proto by
hermetic/remote/proto/generate.py: regenerating them must give the committed
files.
"""

from __future__ import annotations

import filecmp
import os
from typing import Any

from conftest import unavailable


def test_the_generated_modules_regenerate_alike(tmp_path: Any) -> None:
    try:
        import grpc_tools  # noqa: F401
        from grpc_tools import protoc  # noqa: F401
    except ImportError as e:
        unavailable(f"grpcio-tools is needed to regenerate the protocol modules ({e})")
    from importlib.metadata import version

    from hermetic.remote.proto import generate

    installed = version("grpcio-tools")
    if installed != generate.GRPCIO_TOOLS_VERSION:
        unavailable(
            f"the committed modules come from grpcio-tools {generate.GRPCIO_TOOLS_VERSION}, "
            f"{installed} is installed (the [test] extra pins it)"
        )
    generate.generate(str(tmp_path))
    made = sorted(
        os.path.relpath(os.path.join(top, name), tmp_path)
        for top, _, files in os.walk(tmp_path)
        for name in files
    )
    assert made == sorted(generate.GENERATED)
    for rel in generate.GENERATED:
        committed = os.path.join(generate.ROOT, rel)
        assert filecmp.cmp(committed, tmp_path / rel, shallow=False), f"{rel} differs"
