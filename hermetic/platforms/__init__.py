"""Per-OS backends behind one function set; the one place that dispatches.

Every backend module exports ``BACKEND``, ``Prepared``, ``capabilities()``,
``prepare(spec)`` and ``execute(prepared, argv, *, cwd, stdin, timeout,
kill_grace)``; a test checks that the sets are identical.
"""

from __future__ import annotations

import sys
from types import ModuleType


def current() -> ModuleType:
    """The backend module for this operating system."""
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
