"""CFFI build script: hermetic._native from csrc/ (API mode, out of line).

The declarations given to cdef() are the marked section of the platform's
header (csrc/hermetic.h on Linux, csrc/macos/hermetic_macos.h,
csrc/windows/hermetic_windows.h), so each header stays the one description
of its C interface; on Linux, the kernel constants Python needs are added
by name from the header's kernel section (see cdef_text).
"""

from __future__ import annotations

import pathlib
import re
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE / "csrc"


#: The C interface of each platform's core.
HEADERS = {
    "linux": CSRC / "hermetic.h",
    "darwin": CSRC / "macos" / "hermetic_macos.h",
    "win32": CSRC / "windows" / "hermetic_windows.h",
}


def _platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def cdef_text(header: pathlib.Path) -> str:
    """The header's declarations for cffi: the cdef section, then each HM_
    constant defined between the kernel markers (if any) as ``#define NAME
    ...``, whose value cffi takes from the C compiler."""
    text = header.read_text()
    begin = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = text.index("/* cdef-end */")
    decls = text[begin:end]
    if "/* cdef-kernel-begin */" in text:
        kernel = text[text.index("/* cdef-kernel-begin */") : text.index("/* cdef-kernel-end */")]
        names = re.findall(r"^#define (HM_\w+) ", kernel, re.MULTILINE)
        decls += "".join(f"#define {name} ...\n" for name in names)
    return decls


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


#: Warnings as errors where they catch real bugs.
WARNINGS = [
    "-Wall",
    "-Wextra",
    "-Werror=switch-enum",
    "-Werror=implicit-function-declaration",
]
#: The code after clone runs in the caller's memory and must not call into
#: libc: no stack-protector calls, and no loops turned into strlen/memset
#: calls.  It is every file of csrc/linux that includes rawsys.h: child.c
#: (pid 1's stages in order) and the stage files it calls, mounts.c,
#: creds.c, landlock.c, net.c, action.c and init.c.  Their shared functions
#: are hidden (internal.h), so calls between them are direct, and immediate
#: binding keeps the dynamic linker out of any first call made from the
#: child.  tests/test_linux_native.py links those objects built this way
#: into one and checks that it has no undefined symbols.
FREESTANDING = ["-fno-stack-protector", "-fno-builtin", "-fno-tree-loop-distribute-patterns"]

if _platform() not in HEADERS:
    raise RuntimeError(f"hermetic has no C core for platform {sys.platform!r}")
_HEADER = HEADERS[_platform()]

ffibuilder = FFI()
ffibuilder.cdef(cdef_text(_HEADER))
ffibuilder.set_source(
    "hermetic._native",
    f'#include "{_HEADER.name}"\n',
    sources=_sources(),
    include_dirs=[str(_HEADER.parent.relative_to(HERE)), str(CSRC.relative_to(HERE))],
    extra_compile_args=["-std=gnu11", *WARNINGS, *FREESTANDING]
    if sys.platform.startswith("linux")
    else ["-std=gnu11", *WARNINGS]
    if sys.platform == "darwin"
    else [],
    extra_link_args=["-Wl,-z,now"] if sys.platform.startswith("linux") else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
