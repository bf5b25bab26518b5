"""Text for JSON from strings that may hold a path's raw bytes.

Paths are bytes.  Python holds the bytes of a path that are not UTF-8 as
surrogate escapes (``os.fsdecode``), which no UTF-8 encoder accepts, so a
record holding one could not be written.  ``put`` stores such a value
twice: readable, with each bad byte shown as ``\\xNN`` (``backslashreplace``),
and whole, as the base64 of its bytes under the key plus ``_b64``.  A value
that is valid text is stored as it is, with no ``_b64`` key: its presence
is what says the readable form is an escaped one.
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["put", "raw_bytes"]


def raw_bytes(value: str) -> bytes:
    """The bytes ``value`` stands for (``os.fsencode``); a lone surrogate that
    is no escaped byte is kept as its UTF-8-like form (``surrogatepass``)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def put(into: dict[str, Any], key: str, value: str | None) -> None:
    """``into[key] = value``, losslessly and always encodable as UTF-8."""
    if value is None:
        into[key] = None
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = raw_bytes(value)
        into[key] = raw.decode("utf-8", "backslashreplace")
        into[key + "_b64"] = base64.b64encode(raw).decode("ascii")
    else:
        into[key] = value
