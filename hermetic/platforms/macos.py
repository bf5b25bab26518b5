"""The backend for macOS (generated SBPL profiles applied with sandbox_init).

Not implemented yet, so it refuses every spec.
"""

from __future__ import annotations

from hermetic.platforms.refusing import refusing_backend

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "macos"
Prepared, capabilities, prepare, execute = refusing_backend(
    BACKEND, "the macOS backend (SBPL profiles with sandbox_init) is not implemented yet"
)
