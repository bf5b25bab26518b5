"""Where this process's cgroups are, and the groups hermetic makes below them.

hermetic creates groups only below the calling process's own group in each
hierarchy (as read from /proc/self/cgroup), in a parent named
``hermetic-<pid>`` for this process, and removes them after every outcome.
Parents left by a process that died (its pid no longer runs) are removed by
the next process that sets up groups.  No process but hermetic's own
threads and sandboxes is ever moved.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "blkio")
PREFIX = "hermetic-"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and this process's group in it."""

    version: int  # 1 or 2
    controllers: tuple[str, ...]  # v1: the mounted controllers; v2: cgroup.controllers
    mount: str
    own: str  # this process's group, relative to the mount ("/" for the root)

    @property
    def own_dir(self) -> str:
        return os.path.normpath(self.mount + self.own)


def _mounts() -> list[tuple[str, str, tuple[str, ...]]]:
    out: list[tuple[str, str, tuple[str, ...]]] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, options = rfields[0], rfields[2]
        if fstype in ("cgroup", "cgroup2"):
            root = fields[3]
            if root != "/":
                # A bind of a subtree (containers): paths in /proc/self/cgroup
                # are relative to the hierarchy's root, not to this mount.
                continue
            out.append((fstype, fields[4], tuple(options.split(","))))
    return out


def hierarchies() -> list[Hierarchy]:
    """The hierarchies this process can see, with its own group in each."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            membership = f.read().splitlines()
    except OSError:
        return []
    own_v1: dict[str, str] = {}
    own_v2 = None
    for line in membership:
        hid, names, path = line.split(":", 2)
        if hid == "0" and names == "":
            own_v2 = path
        for c in names.split(","):
            if c:
                own_v1[c] = path
    found: list[Hierarchy] = []
    for fstype, mount, options in _mounts():
        if fstype == "cgroup2":
            if own_v2 is None:
                continue
            try:
                with open(os.path.join(mount, "cgroup.controllers"), encoding="utf-8") as f:
                    ctrls = tuple(f.read().split())
            except OSError:
                ctrls = ()
            found.append(Hierarchy(2, ctrls, mount, own_v2))
        else:
            ctrls = tuple(o for o in options if o in V1_CONTROLLERS)
            if ctrls and ctrls[0] in own_v1:
                found.append(Hierarchy(1, ctrls, mount, own_v1[ctrls[0]]))
    return found


def v1_dirs() -> dict[str, str]:
    """Controller -> this process's own group directory, for the v1 controllers used."""
    dirs: dict[str, str] = {}
    for h in hierarchies():
        if h.version == 1:
            for c in h.controllers:
                dirs.setdefault(c, h.own_dir)
    return dirs


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def write_text(path: str, value: str | int) -> None:
    """One write of a control file (each write is one command to the kernel)."""
    with open(path, "w", encoding="ascii") as f:
        f.write(str(value))


def field(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed control file (``key value`` lines), or 0."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: str, patience: float = 1.0) -> bool:
    """rmdir a group and its subgroups, deepest first; False if any is still in use.

    Tasks that just exited (the last processes of a killed sandbox, torn
    down by the kernel after their pid 1) leave their groups a moment
    later: a busy group is retried for up to ``patience`` seconds.
    """
    deadline = time.monotonic() + patience
    while not _remove_tree_once(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not os.path.exists(path)


def _remove_tree_once(path: str) -> bool:
    ok = True
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        ok = False
    return ok


def remove_stale(parent_dir: str) -> list[str]:
    """Remove the ``hermetic-<pid>`` groups of processes that no longer run."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent_dir):
            if not name.startswith(PREFIX):
                continue
            pid_text = name[len(PREFIX) :]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            path = os.path.join(parent_dir, name)
            if remove_tree(path):
                removed.append(path)
    return removed
