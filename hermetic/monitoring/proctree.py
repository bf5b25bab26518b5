"""Sampling a running sandbox through /proc: its processes, their I/O and memory.

Used while an action runs, every few milliseconds, for limits that need a
live figure: disk I/O (any host), and memory where no cgroup is available
(best effort: a fast allocation can overshoot between two samples).

The sandbox's pid 1 reaps every orphan, and the kernel adds a reaped
process's I/O counters to its reaper's, so the sum over the live processes
of /proc/<pid>/io covers every process the sandbox ever had.  pid 1 shares
the caller's memory, so its resident size is not the sandbox's and is left
out of the memory sum.
"""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def processes(pid1: int) -> list[int]:
    """pid 1 and every live descendant (host pids), from /proc/*/task/*/children."""
    found = [pid1]
    i = 0
    while i < len(found):
        pid = found[i]
        i += 1
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    found.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass
    return found


def io_bytes(pids: list[int]) -> int:
    """Bytes read from and written to storage by these processes and their reaped children."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io", "rb") as f:
                for line in f.read().splitlines():
                    key, _, value = line.partition(b":")
                    if key in (b"read_bytes", b"write_bytes"):
                        total += int(value)
        except (OSError, ValueError):
            pass
    return total


def resident_bytes(pids: list[int], exclude: int) -> int:
    """Summed resident size, without ``exclude`` (pid 1, which shares the caller's memory)."""
    total = 0
    for pid in pids:
        if pid == exclude:
            continue
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def private_tmp(pid1: int) -> tuple[int, bool] | None:
    """The sandbox's private /tmp (a tmpfs), seen through pid 1's root: the
    bytes it holds, and whether it is full (no block or no inode left, so
    a write got ENOSPC).  Its pages are memory no process's resident size
    shows.  None once pid 1 is gone."""
    try:
        st = os.statvfs(f"/proc/{pid1}/root/tmp")
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bfree == 0 or st.f_ffree == 0
