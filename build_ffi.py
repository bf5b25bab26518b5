"""CFFI build script: hermetic._native from csrc/ (API mode, out of line).

The declarations given to cdef() are the marked section of csrc/hermetic.h,
so the header stays the one description of the C interface.
"""

from __future__ import annotations

import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _cdef_text() -> str:
    text = (CSRC / "hermetic.h").read_text()
    begin = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = text.index("/* cdef-end */")
    return text[begin:end]


def _sources() -> list[str]:
    if sys.platform.startswith("linux"):
        folder = CSRC / "linux"
    elif sys.platform == "darwin":
        folder = CSRC / "macos"
    elif sys.platform == "win32":
        folder = CSRC / "windows"
    else:
        raise RuntimeError(f"hermetic has no C core for platform {sys.platform!r}")
    # Relative paths: setuptools wants them relative to setup.py.
    return sorted(str(p.relative_to(HERE)) for p in folder.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "hermetic._native",
    '#include "hermetic.h"\n',
    sources=_sources(),
    include_dirs=[str(CSRC.relative_to(HERE))],
    extra_compile_args=[
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Werror=switch-enum",
        "-Werror=implicit-function-declaration",
    ]
    if sys.platform != "win32"
    else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
