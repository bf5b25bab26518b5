"""The C core's own guarantees, checked on the built objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.linux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_code_after_clone_calls_nothing_in_libc(tmp_path):
    """child.c runs in the caller's memory with the caller's TLS: no libc calls."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (installed by .ci/run)")
    sys.path.insert(0, ROOT)
    try:
        import build_ffi
    finally:
        sys.path.remove(ROOT)
    obj = tmp_path / "child.o"
    subprocess.run(
        [
            "gcc",
            "-c",
            "-O2",
            "-fPIC",
            "-std=gnu11",
            *build_ffi.WARNINGS,
            *build_ffi.FREESTANDING,
            "-I",
            os.path.join(ROOT, "csrc"),
            os.path.join(ROOT, "csrc", "linux", "child.c"),
            "-o",
            str(obj),
        ],
        check=True,
    )
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    assert undefined.stdout.split() == []
