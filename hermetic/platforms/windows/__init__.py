"""The Windows backend: a job object per action (backend.py)."""

from hermetic.platforms.windows.backend import BACKEND, Prepared, capabilities, execute, prepare

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]
