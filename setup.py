"""Build hook only: metadata lives in pyproject.toml.

cffi builds hermetic._native against the stable ABI (``_native.abi3.so``)
wherever the interpreter allows it, so one wheel serves CPython 3.10 and
later; the wheel's tag says so (cp310-abi3).  A debug or free-threaded
interpreter gets a full-ABI extension from cffi, and its wheel keeps the
interpreter's own tag: an abi3 tag there would be a false claim.
"""

import sys
import sysconfig

from setuptools import setup


def _limited_api() -> bool:
    """Whether cffi builds the extension against the stable ABI (the
    conditions of cffi.setuptools_ext._set_py_limited_api)."""
    return (
        sys.implementation.name == "cpython"
        and not hasattr(sys, "gettotalrefcount")
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if _limited_api() else {},
)
