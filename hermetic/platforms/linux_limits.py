"""Which mechanism enforces each ResourceLimits field on this Linux host.

- rlimits, set in the action's process before exec: ``max_file_size``
  (RLIMIT_FSIZE), ``max_open_files`` (RLIMIT_NOFILE), core dumps off, and
  ``max_processes`` as RLIMIT_NPROC, which the kernel counts per user
  namespace and uid, so in the sandbox's fresh user namespace it bounds the
  whole sandbox (the kernel exempts the global root user, though).
- cgroup v1 slots (see hermetic/platforms/linux_workers.py):
  ``max_memory_bytes`` (memory.limit_in_bytes; an action that reaches it
  is killed when the group reports under_oom), ``max_processes``
  for root (pids.max), ``max_cpu_time_ms`` summed over the sandbox
  (cpuacct.usage, checked every 20 ms), ``cpu_shares`` (cpu.shares).
- nothing yet: ``max_disk_io``, ``max_output_bytes``, ``max_network_io``
  (the network is loopback only, so there is nothing to count).

A limit with no mechanism here is listed in ``unenforced`` with the reason,
and shows in every ExecutionResult's ``unenforced_limits``.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass

from hermetic.core.policies import ResourceLimits


@dataclass(frozen=True)
class LimitPlan:
    rlimits: tuple[tuple[int, int, int], ...]
    cgroup: bool  # run in a cgroup v1 slot
    cpu_ns: int  # summed CPU limit checked on the slot (0: none)
    unenforced: tuple[str, ...]


def plan_limits(r: ResourceLimits, cgroup_unavailable: str | None) -> LimitPlan:
    """``cgroup_unavailable`` is None when cgroup slots work here, else why not."""
    root = os.geteuid() == 0
    values = [(resource.RLIMIT_CORE, 0, 0)]
    unenforced: list[str] = []
    needs_cgroup: list[str] = []
    if r.max_open_files:
        values.append((resource.RLIMIT_NOFILE, r.max_open_files, r.max_open_files))
    if r.max_file_size:
        values.append((resource.RLIMIT_FSIZE, r.max_file_size, r.max_file_size))
    if r.max_processes:
        values.append((resource.RLIMIT_NPROC, r.max_processes + 1, r.max_processes + 1))
        if root:
            needs_cgroup.append("max_processes")
    if r.max_cpu_time_ms:
        # Per process, as a backstop; the cgroup check sums the sandbox.
        secs = max(1, math.ceil(r.max_cpu_time_ms / 1000))
        values.append((resource.RLIMIT_CPU, secs, secs + 1))
        needs_cgroup.append("max_cpu_time_ms")
    if r.max_memory_bytes:
        needs_cgroup.append("max_memory_bytes")
    if r.cpu_shares != 1024:
        needs_cgroup.append("cpu_shares")
    use_cgroup = bool(needs_cgroup) and cgroup_unavailable is None
    if needs_cgroup and not use_cgroup:
        for name in needs_cgroup:
            unenforced.append(f"{name}: not enforced ({cgroup_unavailable})")
    if r.max_disk_io:
        unenforced.append("max_disk_io: not enforced yet")
    if r.max_output_bytes:
        unenforced.append("max_output_bytes: not enforced yet")
    cpu_ns = r.max_cpu_time_ms * 1_000_000 if use_cgroup else 0
    return LimitPlan(tuple(values), use_cgroup, cpu_ns, tuple(unenforced))
