"""Capabilities: what this host can enforce, as probed once per process."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Capabilities:
    """What the host offers.  ``notes`` explains each missing feature."""

    platform: str
    backend: str
    user_namespaces: bool = False
    namespaces: tuple[str, ...] = ()
    mount_setattr: bool = False
    cgroup_v1_controllers: tuple[str, ...] = ()
    cgroup_v2: bool = False
    cgroup_v2_controllers: tuple[str, ...] = ()
    seccomp: bool = False
    seccomp_user_notif: bool = False
    landlock_abi: int | None = None
    pidfd: bool = False
    clone3: bool = False
    #: How ResourceLimits are enforced: "cgroup-v1" (whole sandbox) or
    #: "rlimits" (per process, plus RLIMIT_NPROC per user namespace).
    limits: str = "none"
    #: The filesystem isolation actions get: "namespaces", "landlock" (user
    #: namespaces forbidden, Landlock ABI >= 6 and seccomp alone), or "none"
    #: (every execution is refused).
    isolation: str = "none"
    notes: tuple[tuple[str, str], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = dict(self.notes)
        return data

    def can_sandbox(self) -> bool:
        """Whether actions can be isolated here (by namespaces or by Landlock alone)."""
        if self.isolation != "none":
            return True
        return self.user_namespaces and self.mount_setattr
