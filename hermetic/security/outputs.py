"""After each run: no set-id file, and no file capability, left where the action wrote.

The outputs and temps are the host paths an action can write.  A set-uid
or set-gid file there (or one with a ``security.capability`` attribute)
would hand whoever runs it later the file owner's identity or the
capabilities, whatever the sandbox refused while the action ran: the
seccomp filter refuses making such files, this scan is the layer behind it,
and also catches a set-id file that was in an output before the run.

``scan(roots)`` walks each root without following a symbolic link (every
directory is opened with O_NOFOLLOW relative to its parent's descriptor, so
a name swapped for a link is never entered) and, for each regular file:

- set-uid or set-gid: the bits are cleared with fchmod on a descriptor of
  the file (opened O_NOFOLLOW, its identity checked against the entry's);
  a file with more than one name may be one the host has elsewhere (a hard
  link of an input), so its name in the output is removed instead: the
  host's other names keep their mode;
- executable with a ``security.capability`` attribute: the attribute is
  removed (or, where the caller may not, the execute bits: file
  capabilities act only at exec).

Each is one "filesystem" violation (``attempted`` names the path and
"setid_output"), decision "stripped", "removed" or "left" (with why).
The walk goes to any depth, one directory descriptor at a time
(hermetic/core/tree.py), and is bounded: at most MAX_ENTRIES entries (the
rest reported as not scanned) and MAX_RECORDS violations, the rest
counted in one.
With no roots it costs nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from hermetic.core import tree
from hermetic.core.outcome import Violation, ViolationKind

__all__ = ["MAX_ENTRIES", "MAX_RECORDS", "scan"]

#: Entries looked at per run; beyond, the rest is reported as not scanned.
MAX_ENTRIES = 1_000_000
#: Violations kept per run; the rest are counted in one more.
MAX_RECORDS = 100

_SETID = stat.S_ISUID | stat.S_ISGID
_EXEC = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
#: A file with none of these bits needs no more than its entry's stat.
_LOOK = _SETID | _EXEC
_FCAPS = "security.capability"
_PATH_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass
class _Report:
    records: list[Violation] = field(default_factory=list)
    dropped: int = 0
    entries: int = 0

    def add(self, path: str, decision: str, observed: str) -> None:
        if len(self.records) < MAX_RECORDS:
            self.records.append(
                Violation(
                    ViolationKind.FILESYSTEM,
                    attempted=f"{path}: in an output as the run ended (setid_output)",
                    decision=decision,
                    observed=observed,
                )
            )
        else:
            self.dropped += 1

    def violations(self) -> list[Violation]:
        out = list(self.records)
        if self.dropped:
            out.append(
                Violation(
                    ViolationKind.FILESYSTEM,
                    attempted=f"{self.dropped} more set-id or capability files (setid_output)",
                    decision="stripped, removed or left",
                    observed=f"beyond {MAX_RECORDS} records",
                )
            )
        return out


def scan(roots: Iterable[str], skip: Collection[tree.Place] = frozenset()) -> list[Violation]:
    """Clear set-id bits and file capabilities under ``roots`` (host paths,
    each a directory or a file); one violation per file found (see the
    module docstring).  ``skip``: the places (tree.places) of what
    is left alone with all it holds, inputs nested in an output (the
    caller's files), taken before the action ran: looked up afterwards, a
    path could name what the action put there instead (it may rename the
    writable directory around a read-only input)."""
    report = _Report()
    idents = skip
    for root in roots:
        try:
            st = os.lstat(root)
        except OSError as e:
            if e.errno != errno.ENOENT:
                report.add(root, "left", f"not scanned: {os.strerror(e.errno or 0)}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            _check_root_file(root, report)
            continue
        try:
            _walk(root, report, idents)
        except OSError as e:
            report.add(root, "left", f"not scanned: {os.strerror(e.errno or 0)}")
    return report.violations()


def _check_root_file(root: str, report: _Report) -> None:
    """A root that is a file (an output may be one)."""
    parent, name = os.path.split(root)
    try:
        pfd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        report.add(root, "left", f"not scanned: {os.strerror(e.errno or 0)}")
        return
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_mode & _LOOK:
            _check_file(pfd, name, root, st, report)
    except OSError as e:
        if e.errno != errno.ENOENT:
            report.add(root, "left", f"not scanned: {os.strerror(e.errno or 0)}")
    finally:
        os.close(pfd)


def _walk(root: str, report: _Report, skip: Collection[tree.Place]) -> None:
    """Every regular file below the directory ``root`` that may need it is
    checked, at any depth (hermetic/core/tree.py: one descriptor at a time,
    never through a link); a directory that cannot be entered is reported
    and the walk goes on."""
    trail = tree.Trail(root)

    def unreadable(e: OSError, depth: int, name: str) -> None:
        report.add(trail.path(depth, name), "left", f"not scanned: {os.strerror(e.errno or 0)}")

    for depth, name, dfd, st in tree.walk(root, unreadable, skip):
        if dfd is None:
            continue  # the root itself
        report.entries += 1
        if report.entries > MAX_ENTRIES:
            report.add(root, "left", f"not scanned: more than {MAX_ENTRIES} entries under it")
            return
        trail.visit(depth, name, st)
        if stat.S_ISREG(st.st_mode) and st.st_mode & _LOOK:
            try:
                _check_file(dfd, name, trail.path(depth, name), st, report)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    unreadable(e, depth, name)


def _check_file(dfd: int, name: str, path: str, st: os.stat_result, report: _Report) -> None:
    try:
        pfd = os.open(name, _PATH_FLAGS, dir_fd=dfd)
    except OSError:
        return  # gone, or replaced by a link since the listing
    try:
        now = os.fstat(pfd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return  # replaced since the listing: not the file seen
        # The mode and the attribute are read from this descriptor alone,
        # one inode's, however the name is swapped meanwhile (by an action
        # still running on the same outputs).
        setid = now.st_mode & _SETID
        if not setid and not now.st_mode & _EXEC:
            return
        caps = False
        if not setid:
            caps = _has_caps(pfd)
            if not caps:
                return
        what = _describe(now, caps)
        if now.st_nlink > 1:
            # Perhaps a host file's other name (a hard link of an input):
            # its mode is not the output's to change.
            try:
                os.unlink(name, dir_fd=dfd)
                report.add(path, "removed", f"{what}, {now.st_nlink} names: this one removed")
            except OSError as e:
                report.add(path, "left", f"{what}: cannot remove: {os.strerror(e.errno or 0)}")
            return
        try:
            if setid:
                _chmod(pfd, name, dfd, stat.S_IMODE(now.st_mode) & ~_SETID)
            if caps or (setid and _has_caps(pfd)):
                _drop_caps(pfd, name, dfd, stat.S_IMODE(now.st_mode) & ~_SETID)
            report.add(path, "stripped", what)
        except OSError as e:
            report.add(path, "left", f"{what}: {os.strerror(e.errno or 0)}")
    finally:
        os.close(pfd)


def _describe(st: os.stat_result, caps: bool) -> str:
    kinds = [
        label
        for bit, label in ((stat.S_ISUID, "set-uid"), (stat.S_ISGID, "set-gid"))
        if st.st_mode & bit
    ]
    if caps:
        kinds.append("file capabilities")
    return f"{' and '.join(kinds)} file, mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"


def _has_caps(pfd: int) -> bool:
    try:
        os.getxattr(f"/proc/self/fd/{pfd}", _FCAPS)
    except OSError:
        return False  # none (ENODATA), or no attributes on this filesystem
    return True


def _chmod(pfd: int, name: str, dfd: int, mode: int) -> None:
    """``mode`` on the file ``pfd`` (an O_PATH descriptor) holds: fchmod
    through a descriptor opened for reading, or where the caller may not
    read it, chmod through /proc/self/fd (the same inode either way)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except OSError:
        os.chmod(f"/proc/self/fd/{pfd}", mode)
        return
    try:
        a, b = os.fstat(fd), os.fstat(pfd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise OSError(errno.ESTALE, "replaced while being stripped")
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _drop_caps(pfd: int, name: str, dfd: int, mode: int) -> None:
    try:
        os.removexattr(f"/proc/self/fd/{pfd}", _FCAPS)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return
        # Not the caller's to remove (CAP_SETFCAP): capabilities act only at
        # exec, so the file is no longer executable.
        _chmod(pfd, name, dfd, mode & ~_EXEC)
