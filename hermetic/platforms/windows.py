"""The backend for Windows (job objects): not implemented yet, so it refuses every spec."""

from __future__ import annotations

from hermetic.platforms.refusing import refusing_backend

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "windows"
Prepared, capabilities, prepare, execute = refusing_backend(
    BACKEND, "the Windows (job objects) backend is not implemented yet"
)
