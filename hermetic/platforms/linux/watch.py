"""The periodic check while a sandbox runs: which limit, if any, it has broken.

Called every 20 ms by the wait (hermetic/security/timeout.py) when the
spec has a limit that needs a live figure; returns the name of the broken
limit, and the wait then ends the sandbox.  See limits.py for which
limit is checked here and why.
"""

from __future__ import annotations

import os

from hermetic.core.outcome import Violation, ViolationKind
from hermetic.monitoring import proctree
from hermetic.monitoring.cgroup_v1 import V1Slot
from hermetic.monitoring.cgroup_v2 import V2Group
from hermetic.platforms.linux.limits import LimitPlan


class Watch:
    """State of the checks for one action; ``pid1`` is set once it runs."""

    def __init__(
        self,
        plan: LimitPlan,
        memory_in_slot: bool,
        slot: V1Slot | V2Group | None,
        out_fd: int,
        err_fd: int,
        tmp_bytes: int = 0,
        tmp_limit: str = "",
    ) -> None:
        self.plan = plan
        self.memory_in_slot = memory_in_slot
        self.slot = slot
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.pid1 = 0
        self.observed: dict[str, int] = {}
        self.peak_processes: int | None = None
        #: The private /tmp's size (0: none) and the limit that set it.
        self.tmp_bytes = tmp_bytes
        self.tmp_limit = tmp_limit
        self.tmp_full = False

    def __call__(self) -> str | None:
        plan, slot = self.plan, self.slot
        if slot is not None and self.memory_in_slot and slot.under_oom():
            return "memory"
        if plan.cpu_ns and slot is not None:
            used = slot.cpu_ns()
            if used is not None and used > plan.cpu_ns:
                self.observed["cpu"] = used
                return "cpu"
        if plan.output_bytes:
            size = os.fstat(self.out_fd).st_size + os.fstat(self.err_fd).st_size
            if size > plan.output_bytes:
                self.observed["output"] = size
                return "output"
        tmp_used = 0
        if self.tmp_bytes and self.pid1 > 0:
            seen = proctree.private_tmp(self.pid1)
            if seen is not None:
                tmp_used, full = seen
                self.observed["tmp"] = max(self.observed.get("tmp", 0), tmp_used)
                self.tmp_full = self.tmp_full or full
        if (plan.disk_io or plan.sampled_memory) and self.pid1 > 0:
            pids = proctree.processes(self.pid1)
            # pid 1 is hermetic's, not the action's.
            count = len(pids) - 1
            self.peak_processes = max(self.peak_processes or 0, count)
            if plan.disk_io:
                io = proctree.io_bytes(pids)
                if io > plan.disk_io:
                    self.observed["disk_io"] = io
                    return "disk_io"
            if plan.sampled_memory:
                # The private /tmp is memory too, which no process's
                # resident size shows (a cgroup charges it by itself).
                rss = proctree.resident_bytes(pids, exclude=self.pid1) + tmp_used
                self.observed["memory"] = max(self.observed.get("memory", 0), rss)
                if rss > plan.sampled_memory:
                    return "memory"
        return None

    def tmp_violation(self) -> Violation | None:
        """The private /tmp seen full: a write got ENOSPC.  Seen by the
        periodic check, so a /tmp filled and emptied again between two
        checks goes unrecorded (the write was refused all the same)."""
        if not self.tmp_full:
            return None
        return Violation(
            ViolationKind.RESOURCE,
            attempted="writes to the private /tmp beyond its size",
            decision="denied",
            limit=self.tmp_limit,
            observed=f"/tmp full at {self.observed.get('tmp', 0)} bytes",
        )
