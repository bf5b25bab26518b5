"""ResourceMonitor: usage and limit breaches aggregated over many executions.

    monitor = hermetic.create_monitor(spec.resources)
    monitor.start()          # from now on, every execution of this process counts
    ...executions...
    usage = monitor.snapshot()   # live: includes actions still running
    monitor.stop()

A started monitor aggregates every execution this process runs while it is
started; ``executor.execute(argv, monitor=m)`` adds one execution to ``m``
whether or not it is started.  Finished executions contribute their
ExecutionResult's usage (cgroup and rusage figures); running ones are
sampled with psutil, which is what the OS offers for a live process tree.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.policies import ResourceLimits
from hermetic.core.usage import ResourceUsage

_FIGURES = (
    "wall_time",
    "cpu_time",
    "user_time",
    "system_time",
    "io_read_bytes",
    "io_write_bytes",
    "peak_memory",
    "peak_processes",
)
_ACTIVE: set[ResourceMonitor] = set()
_ACTIVE_LOCK = threading.Lock()


@dataclass
class _Totals:
    executions: int = 0
    wall_time: float = 0.0
    cpu_time: float | None = None
    user_time: float | None = None
    system_time: float | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    peak_memory: int | None = None
    peak_processes: int | None = None
    violations: list[Violation] = field(default_factory=list)
    sources: dict[str, set[str]] = field(default_factory=dict)


def _add(a: Any, b: Any) -> Any:
    if b is None:
        return a
    return b if a is None else a + b


def _max(a: Any, b: Any) -> Any:
    if b is None:
        return a
    return b if a is None else max(a, b)


class ResourceMonitor:
    """Aggregates the usage of executions; see the module docstring."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._totals = _Totals()
        self._running: dict[int, int] = {}  # token -> host pid of the sandbox's pid 1

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> ResourceMonitor:
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        return self

    def stop(self) -> ResourceUsage:
        """Stop counting new executions; returns the final snapshot."""
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        return self.snapshot()

    @property
    def started(self) -> bool:
        with _ACTIVE_LOCK:
            return self in _ACTIVE

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fed by the executor -------------------------------------------------

    def _began(self, token: int, pid: int) -> None:
        with self._lock:
            self._running[token] = pid

    def _finished(self, token: int, result: ExecutionResult | None) -> None:
        with self._lock:
            self._running.pop(token, None)
            if result is None:
                return
            t, u = self._totals, result.usage
            t.executions += 1
            t.wall_time += result.duration
            t.cpu_time = _add(t.cpu_time, u.cpu_time)
            t.user_time = _add(t.user_time, u.user_time)
            t.system_time = _add(t.system_time, u.system_time)
            t.io_read_bytes = _add(t.io_read_bytes, u.io_read_bytes)
            t.io_write_bytes = _add(t.io_write_bytes, u.io_write_bytes)
            t.peak_memory = _max(t.peak_memory, u.peak_memory)
            t.peak_processes = _max(t.peak_processes, u.peak_processes)
            t.violations.extend(result.violations)
            for name, source in u.sources:
                t.sources.setdefault(name, set()).add(source)

    # -- reading -------------------------------------------------------------

    @property
    def executions(self) -> int:
        with self._lock:
            return self._totals.executions

    def snapshot(self) -> ResourceUsage:
        """Totals of finished executions plus a live sample of running ones."""
        with self._lock:
            t = self._totals
            running = list(self._running.values())
            cpu, user, system = t.cpu_time, t.user_time, t.system_time
            rd, wr, mem, procs = t.io_read_bytes, t.io_write_bytes, t.peak_memory, t.peak_processes
            wall = t.wall_time
            known = {name: "+".join(sorted(found)) for name, found in t.sources.items()}
        known.setdefault("wall_time", "clock")
        sources = [(name, known.get(name, "")) for name in _FIGURES]
        if running:
            live = _sample(running)
            user = _add(user, live["user"])
            system = _add(system, live["system"])
            cpu = _add(cpu, live["cpu"])
            rd = _add(rd, live["read"])
            wr = _add(wr, live["write"])
            mem = _max(mem, live["rss"])
            procs = _max(procs, live["procs"])
            sources = [
                (n, s if n == "wall_time" else "+".join(filter(None, (s, "psutil"))))
                for n, s in sources
            ]
        values: dict[str, Any] = {
            "wall_time": wall,
            "cpu_time": cpu,
            "user_time": user,
            "system_time": system,
            "io_read_bytes": rd,
            "io_write_bytes": wr,
            "peak_memory": mem,
            "peak_processes": procs,
        }
        known_sources = tuple(sorted((n, s) for n, s in sources if s and values[n] is not None))
        return ResourceUsage(sources=known_sources, **values)

    def violations(self) -> list[Violation]:
        """Breaches recorded by the executions so far, and those the totals show."""
        with self._lock:
            recorded = list(self._totals.violations)
        return recorded + self._breaches(self.snapshot())

    def would_exceed(self, usage: ResourceUsage) -> bool:
        """Whether ``usage`` breaks one of this monitor's limits."""
        return bool(self._breaches(usage))

    def _breaches(self, usage: ResourceUsage) -> list[Violation]:
        lim = self.limits
        found: list[Violation] = []

        def breach(name: str, limit: int, seen: float) -> None:
            found.append(
                Violation(
                    ViolationKind.RESOURCE,
                    attempted=f"{name} beyond the limit",
                    decision="observed",
                    limit=f"{name}={limit}",
                    observed=f"{seen:g}",
                )
            )

        if lim.max_memory_bytes and (usage.peak_memory or 0) > lim.max_memory_bytes:
            breach("max_memory_bytes", lim.max_memory_bytes, usage.peak_memory or 0)
        if lim.max_cpu_time_ms and (usage.cpu_time or 0) * 1000 > lim.max_cpu_time_ms:
            breach("max_cpu_time_ms", lim.max_cpu_time_ms, (usage.cpu_time or 0) * 1000)
        io = (usage.io_read_bytes or 0) + (usage.io_write_bytes or 0)
        if lim.max_disk_io and io > lim.max_disk_io:
            breach("max_disk_io", lim.max_disk_io, io)
        if lim.max_processes and (usage.peak_processes or 0) > lim.max_processes:
            breach("max_processes", lim.max_processes, usage.peak_processes or 0)
        return found


def _sample(pids: list[int]) -> dict[str, Any]:
    """psutil over each running sandbox (pid 1's descendants; pid 1 is hermetic's)."""
    import psutil

    out: dict[str, Any] = {
        "user": 0.0,
        "system": 0.0,
        "cpu": 0.0,
        "read": 0,
        "write": 0,
        "rss": 0,
        "procs": 0,
    }
    for pid in pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
        out["procs"] += len(children)
        for child in children:
            try:
                with child.oneshot():
                    times = child.cpu_times()
                    out["user"] += times.user + times.children_user
                    out["system"] += times.system + times.children_system
                    out["rss"] += child.memory_info().rss
                    io = child.io_counters()
                    out["read"] += io.read_bytes
                    out["write"] += io.write_bytes
            except psutil.Error:
                continue
    out["cpu"] = out["user"] + out["system"]
    return out


class Observer:
    """What the executor tells the monitors about one execution."""

    _next = 0
    _next_lock = threading.Lock()

    def __init__(self, extra: ResourceMonitor | None) -> None:
        with _ACTIVE_LOCK:
            monitors = set(_ACTIVE)
        if extra is not None:
            monitors.add(extra)
        self.monitors = list(monitors)
        with Observer._next_lock:
            Observer._next += 1
            self.token = Observer._next

    def __bool__(self) -> bool:
        return bool(self.monitors)

    def started(self, pid: int) -> None:
        for m in self.monitors:
            m._began(self.token, pid)

    def finished(self, result: ExecutionResult | None) -> None:
        for m in self.monitors:
            m._finished(self.token, result)


def create_monitor(limits: ResourceLimits | None = None) -> ResourceMonitor:
    """A stopped monitor for ``limits`` (the defaults when None)."""
    return ResourceMonitor(limits if limits is not None else ResourceLimits.defaults())
