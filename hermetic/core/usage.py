"""ResourceUsage: what one execution consumed, each figure with its source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ResourceUsage:
    """Resources used by one execution (the whole sandbox, reaped children included).

    A figure is None when it is not known; it is never a made-up zero.
    ``sources`` maps each known figure to where it came from ("rusage",
    "clock", and later "cgroup-v2", "cgroup-v1", "psutil").
    """

    wall_time: float | None = None
    cpu_time: float | None = None
    user_time: float | None = None
    system_time: float | None = None
    peak_memory: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    peak_processes: int | None = None
    sources: tuple[tuple[str, str], ...] = field(default=())

    def source(self, name: str) -> str | None:
        """Where the figure ``name`` came from, or None when it is unknown."""
        return dict(self.sources).get(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sources"] = dict(self.sources)
        return data

    @classmethod
    def from_rusage(cls, wall_time: float, ru: Any) -> ResourceUsage:
        """From the rusage of the reap of a pid 1 that reaped every descendant.

        ru_maxrss is the largest single process, not the sandbox's total, so
        it is not reported as peak_memory.  ru_inblock and ru_oublock count
        512-byte blocks read from and dirtied for storage (not page-cache
        hits, not tmpfs).  ``ru`` None (the rusage was lost): wall time only.
        """
        if ru is None:
            return cls(wall_time=wall_time, sources=(("wall_time", "clock"),))
        user = float(ru.ru_utime)
        system = float(ru.ru_stime)
        return cls(
            wall_time=wall_time,
            cpu_time=user + system,
            user_time=user,
            system_time=system,
            io_read_bytes=int(ru.ru_inblock) * 512,
            io_write_bytes=int(ru.ru_oublock) * 512,
            sources=(
                ("wall_time", "clock"),
                ("cpu_time", "rusage"),
                ("user_time", "rusage"),
                ("system_time", "rusage"),
                ("io_read_bytes", "rusage"),
                ("io_write_bytes", "rusage"),
            ),
        )

    def with_figure(self, name: str, value: int | float, source: str) -> ResourceUsage:
        """The same figures with ``name`` set to ``value`` from ``source``."""
        kept = tuple(p for p in self.sources if p[0] != name)
        changes: dict[str, Any] = {name: value, "sources": tuple(sorted((*kept, (name, source))))}
        return replace(self, **changes)

    def with_cgroup(self, peak_memory: int | None, source: str) -> ResourceUsage:
        """The same figures plus what a cgroup measured."""
        if peak_memory is None:
            return self
        # The constructor, not replace(): this runs once per execution.
        return ResourceUsage(
            self.wall_time,
            self.cpu_time,
            self.user_time,
            self.system_time,
            peak_memory,
            self.io_read_bytes,
            self.io_write_bytes,
            self.peak_processes,
            tuple(sorted((*self.sources, ("peak_memory", source)))),
        )
