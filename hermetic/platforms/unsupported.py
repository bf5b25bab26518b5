"""The backend for this operating system: not implemented yet, so it refuses every spec."""

from __future__ import annotations

from hermetic.platforms.refusing import refusing_backend

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "unsupported"
Prepared, capabilities, prepare, execute = refusing_backend(
    BACKEND, "the this operating system backend is not implemented yet"
)
