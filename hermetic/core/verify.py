"""Reproducibility reports: did N runs of one action produce the same outputs?

``HermeticExecutor.verify_reproducible`` runs an action several times, each
in fresh temps and fresh, empty copies of its outputs, and hands the runs'
results and manifests to :func:`compare`.  A difference names the output
path (as the action saw it), what differs (content, mode, kind, symlink
target, presence), the runs that differ from the first, and for content the
first differing byte offset and, when both sides are text, the first
differing line.  stdout, stderr and the exit status are compared too.

The fresh copies live in the temporary directory (``tempfile``), named
``hermetic-verify-<pid>-<start>-<random>``: the caller's pid and its start
time (clock ticks since boot, /proc/PID/stat), which together name one
process for the life of the host.  A caller killed before it removed its
copies (SIGKILL, or SIGTERM's default action) leaves them behind; the next
check by the same user removes those whose process is gone
(``remove_stale``), as the Linux backend does with its cgroups.  A copy
whose process still runs, or is unknown, is never touched.  Every removal
is hermetic/core/tree.py's: no link the action planted is followed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hermetic.core import text, tree
from hermetic.core.manifest import OutputEntry
from hermetic.core.outcome import ExecutionResult
from hermetic.core.paths import is_within

__all__ = [
    "Difference",
    "ReproducibilityReport",
    "compare",
    "first_difference",
    "fresh_copy",
    "real_path",
    "remove_copies",
    "remove_stale",
]

PREFIX = "hermetic-verify-"

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Difference:
    """One way the runs disagree.  ``runs`` are 1-based and differ from run 1."""

    path: str  # an output path, or "<stdout>", "<stderr>", "<exit status>"
    what: str  # "content", "missing", "extra", "kind", "mode", "symlink target", "value"
    runs: tuple[int, ...]
    offset: int | None = None  # first differing byte (content)
    line: int | None = None  # first differing line, 1-based, when both sides are text

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        text.put(d, "path", self.path)  # an action's path need not be UTF-8
        d.update(what=self.what, runs=list(self.runs), offset=self.offset, line=self.line)
        return d

    def describe(self) -> str:
        where = ""
        if self.offset is not None:
            where = f" at byte {self.offset}" + (f" (line {self.line})" if self.line else "")
        runs = ", ".join(str(r) for r in self.runs)
        path = text.raw_bytes(self.path).decode("utf-8", "backslashreplace")
        return f"{path}: {self.what} differs{where} in run(s) {runs} from run 1"


@dataclass(frozen=True)
class ReproducibilityReport:
    reproducible: bool
    runs: int
    differences: tuple[Difference, ...]
    results: tuple[ExecutionResult, ...]
    outputs: tuple[OutputEntry, ...]  # the first run's manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproducible": self.reproducible,
            "runs": self.runs,
            "differences": [d.to_dict() for d in self.differences],
            "exit_codes": [r.exit_code for r in self.results],
            "outputs": [e.to_dict() for e in self.outputs],
        }


def _line_of(data: bytes, offset: int) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data.count(b"\n", 0, offset) + 1


def first_difference(a: bytes, b: bytes) -> tuple[int | None, int | None]:
    """(byte offset, line) of the first difference of two byte strings; (None, None) if equal."""
    if a == b:
        return None, None
    n = min(len(a), len(b))
    offset = next((i for i in range(n) if a[i] != b[i]), n)
    line_a, line_b = _line_of(a, offset), _line_of(b, offset)
    return offset, line_a if line_a is not None and line_b is not None else None


def _open(path: str) -> Any:
    """A file of a fresh copy, for reading: a path of any length, no link followed."""
    return os.fdopen(tree.open_long(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _file_difference(path_a: str, path_b: str) -> tuple[int | None, int | None]:
    """First difference of two files, read in chunks; the line needs both to be text."""
    offset = 0
    with _open(path_a) as fa, _open(path_b) as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                i = next((k for k in range(n) if ca[k] != cb[k]), n)
                offset += i
                break
            if not ca:
                return None, None
            offset += len(ca)
    la, lb = _file_line_of(path_a, offset), _file_line_of(path_b, offset)
    return offset, la if la is not None and lb is not None else None


def _file_line_of(path: str, offset: int) -> int | None:
    """``_line_of`` for a file, in chunks: the caller holds one chunk at a
    time, however large the action made its outputs."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line, seen = 1, 0
    with _open(path) as f:
        while chunk := f.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return None
            if seen < offset:
                line += chunk.count(b"\n", 0, offset - seen)
            seen += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None
    return line


def compare(
    results: Sequence[ExecutionResult],
    manifests: Sequence[Sequence[OutputEntry]],
    real_paths: Sequence[dict[str, str]],
) -> tuple[Difference, ...]:
    """The differences between run 1 and every other run.

    ``real_paths[i]`` maps run i's shown paths to where its files are now.
    """
    found: dict[tuple[str, str], list[int]] = {}
    where: dict[tuple[str, str], tuple[int | None, int | None]] = {}

    def note(
        path: str, what: str, run: int, pos: tuple[int | None, int | None] = (None, None)
    ) -> None:
        key = (path, what)
        found.setdefault(key, []).append(run)
        where.setdefault(key, pos)

    base = {e.path: e for e in manifests[0]}
    first = results[0]
    for i in range(1, len(results)):
        run = i + 1
        other = results[i]
        if (other.exit_code, other.signal) != (first.exit_code, first.signal):
            note("<exit status>", "value", run)
        for name in ("stdout", "stderr"):
            a, b = getattr(first, name), getattr(other, name)
            if a != b:
                note(f"<{name}>", "content", run, first_difference(a, b))
        mine = {e.path: e for e in manifests[i]}
        for path in sorted(set(base) | set(mine)):
            a, b = base.get(path), mine.get(path)
            if b is None:
                note(path, "missing", run)
            elif a is None:
                note(path, "extra", run)
            elif a.kind != b.kind:
                note(path, "kind", run)
            elif a.kind == "file" and a.sha256 != b.sha256:
                pos = _file_difference(real_paths[0][path], real_paths[i][path])
                note(path, "content", run, pos)
            elif a.kind == "symlink" and a.target != b.target:
                note(path, "symlink target", run)
            elif a.mode != b.mode:
                note(path, "mode", run)
    return tuple(
        Difference(path, what, tuple(runs), *where[(path, what)])
        for (path, what), runs in sorted(found.items())
    )


# --- The fresh copies ---------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (the start time in clock ticks), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def _owner_tag() -> str:
    return f"{os.getpid()}-{_start_time(os.getpid()) or 0}-"


def fresh_copy(path: str, made: list[str]) -> str:
    """An empty directory (or file) like ``path``, with its permission bits,
    named after this process; appended to ``made`` before anything can fail."""
    import tempfile

    st = os.stat(path)
    prefix = PREFIX + _owner_tag()
    if stat.S_ISDIR(st.st_mode):
        fresh = tempfile.mkdtemp(prefix=prefix)
        made.append(fresh)
    else:
        fd, fresh = tempfile.mkstemp(prefix=prefix)
        made.append(fresh)
        os.close(fd)
    os.chmod(fresh, stat.S_IMODE(st.st_mode))
    return fresh


def mount_points(fresh: str, declared: str, inputs: Sequence[str]) -> list[str]:
    """Make in the fresh copy of ``declared`` a mount point for each of
    ``inputs`` nested in it (an empty directory, or an empty file for a
    file), as the host's tree has; the paths made there."""
    made = []
    for inp in inputs:
        if not is_within(inp, declared) or inp == declared:
            continue
        target = fresh + inp[len(declared.rstrip("/")) :]
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.isdir(inp):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        made.append(target)
    return made


def real_path(shown: str, roots: dict[str, str]) -> str:
    """Where a path the action saw under an output is in its fresh copy."""
    for declared, fresh in roots.items():
        if shown == declared:
            return fresh
        if shown.startswith(declared.rstrip("/") + "/"):
            return fresh + shown[len(declared.rstrip("/")) :]
    return shown


def remove_copies(paths: Sequence[str]) -> list[tuple[str, OSError]]:
    """Remove every fresh copy in ``paths``; the ones that could not be, with why."""
    failed = []
    for path in paths:
        try:
            tree.remove_tree(path)
        except OSError as e:
            failed.append((path, e))
    return failed


def _dead(pid: int, start: str) -> bool:
    """True only when the process that made a copy surely no longer runs."""
    now = _start_time(pid)
    if now is not None and start != "0":
        return now != start  # the pid was reused by another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False  # alive, but its /proc entry is hidden from us


def remove_stale(directory: str | None = None) -> list[str]:
    """Remove this user's fresh copies whose process no longer runs; the paths removed."""
    import tempfile

    where = directory or tempfile.gettempdir()
    removed = []
    uid = os.geteuid()
    with contextlib.suppress(OSError):
        for name in os.listdir(where):
            if not name.startswith(PREFIX):
                continue
            pid_text, _, rest = name[len(PREFIX) :].partition("-")
            start, _, _ = rest.partition("-")
            if not (pid_text.isdigit() and start.isdigit()):
                continue
            path = os.path.join(where, name)
            try:
                if os.lstat(path).st_uid != uid or not _dead(int(pid_text), start):
                    continue
                tree.remove_tree(path)
            except OSError:
                continue
            removed.append(path)
    return removed
