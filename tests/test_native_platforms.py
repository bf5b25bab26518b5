"""The macOS and Windows C cores, checked from here as far as this host allows.

- Windows: csrc/windows/*.c compiles with mingw-w64 with every warning an
  error (Debian's gcc-mingw-w64-x86-64-win32; .ci/run installs it).
- macOS: csrc/macos/sandbox.c uses POSIX plus two declarations of
  libsystem_sandbox it carries itself, so the host's compiler type-checks it.
- Every platform's header section parses as cffi declarations.
- A wheel builds and auditwheel accepts it for a manylinux tag.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINGW = "x86_64-w64-mingw32-gcc"


def _build_ffi():
    spec = importlib.util.spec_from_file_location("build_ffi_for_tests", f"{ROOT}/build_ffi.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_platform_header_parses_as_cffi_declarations():
    import cffi

    build = _build_ffi()
    for platform, header in build.HEADERS.items():
        ffi = cffi.FFI()
        ffi.cdef(build.cdef_text(header))  # raises on a declaration cffi cannot take
        assert header.exists(), platform


def test_windows_core_compiles_with_mingw(tmp_path):
    if shutil.which(MINGW) is None:
        unavailable(f"{MINGW} is missing (Debian: apt-get install gcc-mingw-w64-x86-64-win32)")
    for source in sorted(glob.glob(f"{ROOT}/csrc/windows/*.c")):
        out = tmp_path / (os.path.basename(source) + ".o")
        cmd = [MINGW, "-std=c11", "-Wall", "-Wextra", "-Werror", "-c", source, "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes()[:2] == b"\x64\x86"  # an x86-64 COFF object


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checked with the Linux gcc")
def test_macos_core_type_checks():
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("gcc is required (installed by .ci/run)")
    for source in sorted(glob.glob(f"{ROOT}/csrc/macos/*.c")):
        cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-D_GNU_SOURCE"]
        done = subprocess.run(
            [*cmd, f"-I{ROOT}/csrc/macos", source], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="manylinux is Linux's")
def test_wheel_builds_and_auditwheel_accepts_it(tmp_path):
    if shutil.which("auditwheel") is None and not os.path.exists(
        os.path.join(os.path.dirname(sys.executable), "auditwheel")
    ):
        unavailable("auditwheel is missing (it is in the [test] extra)")
    auditwheel = shutil.which("auditwheel") or os.path.join(
        os.path.dirname(sys.executable), "auditwheel"
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "hermetic-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("hermetic/_native") for n in names)
    show = subprocess.run([auditwheel, "show", wheel], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "manylinux_" in show.stdout, show.stdout
