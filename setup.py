"""Build hook only: metadata lives in pyproject.toml.

cffi builds hermetic._native against the stable ABI (``_native.abi3.so``)
wherever the interpreter allows it, so one wheel serves CPython 3.10 and
later; the wheel's tag says so (cp310-abi3).  A debug or free-threaded
interpreter gets a full-ABI extension from cffi, and its wheel keeps the
interpreter's own tag: an abi3 tag there would be a false claim.

The same build compiles the native launcher, ``hermetic-launch``
(csrc/launch/), with the build's own C compiler and ships it as a script:
its ``build_scripts`` reads every script as text (for a ``#!python``
line to adjust) and fails on an executable, so the launcher is copied
unchanged here instead, into the environment's ``bin/`` (the wheel's
``hermetic-0.1.0.data/scripts/``), next to the ``hermetic`` command it
starts the daemon with.  Windows has no
launcher (it talks over a Unix socket with descriptor passing).
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

# isort: off
# After setuptools, which makes `distutils` its own copy (Python 3.12 has
# none); importing it as setuptools._distutils would load a second copy.
from distutils.command.build_scripts import build_scripts
from distutils.errors import LinkError

# isort: on

#: The launcher's sources and where the build puts it, relative to setup.py
#: (setuptools wants script paths relative to it).
LAUNCHER_SOURCES = ["csrc/launch/launch.c"]
LAUNCHER = "build/launch/hermetic-launch"
#: How the launcher is linked, in order of preference; the first the
#: toolchain accepts is used.  The launcher is exec'd once per action, and
#: the dynamic loader (mapping libc, relocating, binding) was 0.17 ms of its
#: 0.6 ms start here: a static PIE skips it and keeps ASLR.  It needs the C
#: library's static archive (glibc-static, libc.a), which a build image may
#: lack; then a dynamic link, bound at once (-z now: the few symbols it
#: uses cost nothing more, and the GOT becomes read-only).  macOS has no
#: static C library: only the dynamic link is tried there.
#: HERMETIC_LAUNCHER_LINK=dynamic skips the static attempt.
LAUNCHER_LINKS: dict[str, list[str]] = {
    "static-pie": ["-static-pie"],
    "dynamic": ["-Wl,-O1,--as-needed,-z,now,-z,relro"],
    # macOS's linker: none of GNU ld's options; it binds lazily.
    "dynamic-plain": [],
}
#: Warnings as errors where they catch real bugs (as build_ffi.py).
LAUNCHER_FLAGS = [
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror=switch-enum",
    "-Werror=implicit-function-declaration",
]


def _limited_api() -> bool:
    """Whether cffi builds the extension against the stable ABI (the
    conditions of cffi.setuptools_ext._set_py_limited_api)."""
    return (
        sys.implementation.name == "cpython"
        and not hasattr(sys, "gettotalrefcount")
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )


def _has_launcher() -> bool:
    """Linux and macOS; not Windows (no Unix socket with SCM_RIGHTS)."""
    return os.name == "posix"


class build_ext_and_launcher(build_ext):  # type: ignore[misc]  # noqa: N801 (a command's name)
    """build_ext, then the launcher with the same compiler and flags.

    It runs before build_scripts (the ``build`` command's order), which then
    finds the executable at ``LAUNCHER``; an editable install runs it too.
    """

    def run(self) -> None:
        super().run()
        if _has_launcher():
            self._build_launcher()

    def _build_launcher(self) -> None:
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler

        compiler = self.compiler
        if compiler is None or isinstance(compiler, str):  # no extension was built
            compiler = new_compiler(compiler=compiler, force=self.force)
            customize_compiler(compiler)
        version = self.distribution.get_version()
        objects = compiler.compile(
            LAUNCHER_SOURCES,
            output_dir=os.path.join(self.build_temp, "launch"),
            macros=[("HERMETIC_VERSION", f'"{version}"')],
            extra_postargs=LAUNCHER_FLAGS,
        )
        # macOS: the compile flags carry the target architectures
        # (cibuildwheel's ARCHFLAGS); the linker must get the same ones.
        arch: list[str] = []
        if sys.platform == "darwin":
            words = list(compiler.compiler_so)
            for i, word in enumerate(words[:-1]):
                if word in ("-arch", "-isysroot"):
                    arch += [word, words[i + 1]]
                elif word.startswith("-mmacosx-version-min="):
                    arch.append(word)
        os.makedirs(os.path.dirname(LAUNCHER), exist_ok=True)
        links = _launcher_links()
        for name in links:
            try:
                compiler.link_executable(
                    objects,
                    os.path.basename(LAUNCHER),
                    output_dir=os.path.dirname(LAUNCHER),
                    extra_preargs=arch,
                    extra_postargs=LAUNCHER_LINKS[name],
                )
            except LinkError:
                if name == links[-1]:
                    raise
                continue  # the next way, with the same objects
            break


def _launcher_links() -> list[str]:
    """The ways to link the launcher to try here, best first."""
    if sys.platform.startswith("linux") and os.environ.get("HERMETIC_LAUNCHER_LINK") != "dynamic":
        return ["static-pie", "dynamic"]
    if sys.platform.startswith("linux"):
        return ["dynamic"]
    return ["dynamic-plain"]


class build_scripts_and_launcher(build_scripts):  # noqa: N801
    """build_scripts, with the launcher copied as it is: setuptools opens
    every script with ``tokenize.open`` to look for a Python ``#!`` line,
    which raises SyntaxError on the bytes of an executable."""

    def copy_scripts(self) -> tuple[list[str], list[str]]:
        scripts = list(self.scripts or [])
        self.scripts = [s for s in scripts if s != LAUNCHER]
        try:
            outfiles, updated = super().copy_scripts() if self.scripts else ([], [])  # type: ignore[no-untyped-call]
        finally:
            self.scripts = scripts
        if LAUNCHER in scripts:
            self.mkpath(self.build_dir)
            out = os.path.join(self.build_dir, os.path.basename(LAUNCHER))
            # copy_file keeps the mode (rwxr-xr-x from the linker).
            self.copy_file(LAUNCHER, out)
            outfiles.append(out)
            updated.append(out)
        return outfiles, updated


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_and_launcher, "build_scripts": build_scripts_and_launcher},
    scripts=[LAUNCHER] if _has_launcher() else [],
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if _limited_api() else {},
)
