"""Limit violations: the records of a breached limit, and of a captured
stream cut to its cap."""

from __future__ import annotations

import signal
from collections.abc import Sequence

from hermetic.core.outcome import Violation, ViolationKind
from hermetic.core.spec import SandboxSpec, process_limit
from hermetic.monitoring.cgroup_v1 import SlotUsage

#: Bytes of each captured stream (stdout, stderr) the caller keeps when the
#: spec sets no ``max_output_bytes``: the caller holds the output in its own
#: memory, and an action can make a stream look as large as it likes for
#: free (ftruncate leaves a hole), so some bound always applies.  A stream
#: cut to it is reported as a "resource" violation, decision "truncated".
DEFAULT_STREAM_CAP = 64 * 1024 * 1024  # 64 MiB


def kept_sizes(limit: int, out_size: int, err_size: int) -> tuple[int, int]:
    """How many bytes of stdout and stderr the result holds, from their
    sizes as the action left them (st_size: a hole counts in full).

    With ``max_output_bytes`` (``limit``) the two share it, stdout first;
    without, each is kept to DEFAULT_STREAM_CAP.  Either way the caller's
    memory is bounded by the cap, never by what the action claims."""
    if limit:
        kept_out = min(out_size, limit)
        return kept_out, min(err_size, limit - kept_out)
    return min(out_size, DEFAULT_STREAM_CAP), min(err_size, DEFAULT_STREAM_CAP)


def default_cap_violations(streams: Sequence[tuple[str, int, int]]) -> list[Violation]:
    """One "truncated" record per stream (name, size, kept) cut to
    DEFAULT_STREAM_CAP."""
    return [
        Violation(
            ViolationKind.RESOURCE,
            attempted=f"{name} beyond the default output cap (output_truncated)",
            decision="truncated",
            limit=f"{DEFAULT_STREAM_CAP} bytes per stream (the spec sets no max_output_bytes)",
            observed=f"{size} bytes, the first {kept} kept",
        )
        for name, size, kept in streams
        if size > kept
    ]


#: Signals the kernel sends for a breached rlimit: the limit and what was tried.
_RLIMIT_SIGNALS: dict[int, tuple[str, str]] = {
    int(signal.SIGXFSZ): ("max_file_size", "a file larger than max_file_size"),
    int(signal.SIGXCPU): ("max_cpu_time_ms", "CPU time beyond max_cpu_time_ms in one process"),
}


def limit_violations(
    spec: SandboxSpec,
    counted: SlotUsage,
    breach: str | None,
    observed: dict[str, int],
    sig: int | None,
    written: int,
    cut: Sequence[str] = (),
) -> list[Violation]:
    """Every limit breach of one action: from the cgroup's counters, the
    periodic check (``breach``), the main process's end signal, and the
    captured output's size (``written``; ``cut``: the streams the result
    holds only part of)."""
    limits = spec.resources
    out = []

    def resource_killed(what: str, limit: str, seen: str) -> None:
        out.append(
            Violation(
                ViolationKind.RESOURCE,
                attempted=what,
                decision="killed",
                limit=limit,
                observed=seen,
            )
        )

    if breach == "memory" or counted.oom_kills:
        peak = counted.peak_memory if counted.peak_memory is not None else observed.get("memory")
        resource_killed(
            "memory beyond max_memory_bytes",
            f"max_memory_bytes={limits.max_memory_bytes}",
            f"peak {peak} bytes",
        )
    if counted.fork_refusals:
        out.append(
            Violation(
                ViolationKind.PROCESS,
                attempted="fork beyond the process limit",
                decision="denied",
                limit=process_limit(spec),
                observed=f"{counted.fork_refusals} fork(s) refused",
            )
        )
    if breach == "cpu":
        resource_killed(
            "CPU time beyond max_cpu_time_ms",
            f"max_cpu_time_ms={limits.max_cpu_time_ms}",
            f"{observed.get('cpu', 0) / 1e6:.0f} ms",
        )
    if breach == "disk_io":
        resource_killed(
            "disk I/O beyond max_disk_io",
            f"max_disk_io={limits.max_disk_io}",
            f"{observed.get('disk_io', 0)} bytes",
        )
    if breach == "output":
        resource_killed(
            "output beyond max_output_bytes",
            f"max_output_bytes={limits.max_output_bytes}",
            f"{observed.get('output', 0)} bytes",
        )
    elif limits.max_output_bytes and written > limits.max_output_bytes:
        # Written faster than the periodic check: cut to the limit afterwards.
        out.append(
            Violation(
                ViolationKind.RESOURCE,
                attempted="output beyond max_output_bytes"
                + (f" ({', '.join(cut)} output_truncated)" if cut else ""),
                decision="truncated",
                limit=f"max_output_bytes={limits.max_output_bytes}",
                observed=f"{written} bytes",
            )
        )
    if sig in _RLIMIT_SIGNALS:
        # The kernel ended the main process for a per-process rlimit.
        name, what = _RLIMIT_SIGNALS[sig]
        resource_killed(
            what, f"{name}={getattr(limits, name)}", f"signal {signal.Signals(sig).name}"
        )
    return out
