"""Per-OS backends behind one typed seam; the one place that dispatches.

Every backend package exports ``BACKEND``, ``Prepared``, ``capabilities()``,
``prepare(spec)`` and ``execute(prepared, argv, *, cwd, stdin, timeout,
kill_grace, ...)``: each is a ``Backend`` over its own ``Prepared``
(hermetic/platforms/base.py), which mypy checks below and a test checks
at run time.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from hermetic.platforms.base import Backend

if TYPE_CHECKING:
    from hermetic.platforms import linux, macos, unsupported, windows

    _CONFORMING: tuple[
        Backend[linux.Prepared],
        Backend[macos.Prepared],
        Backend[windows.Prepared],
        Backend[Any],
    ] = (linux, macos, windows, unsupported)


def current() -> Backend[Any]:
    """The backend for this operating system.

    ``Any``: the executor pairs a backend with the prepared specs that same
    backend made, whose type depends on the OS found at run time.
    """
    if sys.platform.startswith("linux"):
        from hermetic.platforms import linux

        return linux
    if sys.platform == "darwin":
        from hermetic.platforms import macos

        return macos
    if sys.platform == "win32":
        from hermetic.platforms import windows

        return windows
    from hermetic.platforms import unsupported

    return unsupported
