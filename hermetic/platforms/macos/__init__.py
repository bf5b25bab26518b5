"""The macOS backend: the Seatbelt sandbox (backend.py) and its profiles (sbpl.py)."""

from hermetic.platforms.macos.backend import BACKEND, Prepared, capabilities, execute, prepare

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]
