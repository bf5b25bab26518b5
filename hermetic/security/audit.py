"""The audit log: every violation stopped or seen, as JSON Lines.

One record per violation: time, execution id, spec digest, kind, what was
attempted, what was decided, and the limit and observation when there are
some.  Environment values are never recorded (Violation holds none).

``AuditLog.append`` writes each batch with a single ``write(2)`` on a
descriptor opened with O_APPEND, so records of concurrent executions, from
threads or processes, never interleave within a line.

The file is opened once, when the log is made, and written through that
descriptor until ``close()``: never reopened by path, so nothing an action
does to the path later (a symlink in its place) redirects a record.  It is
opened with O_NOFOLLOW and must be a regular file; and an executor refuses
a log inside, equal to or above any path its actions may write (outputs,
temps), compared as canonical paths (hermetic/core/paths.py).

Paths are bytes: a value that is not valid UTF-8 (a path an action made)
is recorded readable, each bad byte as ``\\xNN``, and whole, in base64,
under the same key plus ``_b64`` (e.g. ``attempted_b64``; see
hermetic/core/text.py).  Each record is encoded on its own, so one that
cannot be (it holds something JSON cannot) is written in a reduced form
rather than stopping the others.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from hermetic.core import text
from hermetic.core.errors import SpecError
from hermetic.core.outcome import Violation
from hermetic.core.paths import canonical, check_encodable, is_within


def record(
    violation: Violation, *, execution_id: str, spec_digest: str, argv0: str | None = None
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "time": time.time(),
        "execution_id": execution_id,
        "spec_digest": spec_digest,
    }
    if argv0 is not None:
        text.put(rec, "command", argv0)
    rec.update(violation.to_dict())
    return rec


def _line(rec: dict[str, Any]) -> bytes:
    """One record as a JSON line, whatever it holds.

    A lone surrogate left in a string becomes a ``\\uXXXX`` escape: in JSON
    text it can only stand inside a string, where that escape is valid and
    reads back as the same string.
    """
    try:
        line = json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as e:  # keys JSON cannot hold, or not sortable
        plain = (str, int, float, bool)
        safe = {str(k): v if isinstance(v, plain) else repr(v) for k, v in rec.items()}
        safe["unencodable"] = str(e)
        line = json.dumps(safe, sort_keys=True, ensure_ascii=False)
    return (line + "\n").encode("utf-8", "backslashreplace")


class AuditLog:
    """Appends records to a JSON Lines file; safe across threads and processes.

    The file is opened (created 0640 if missing) here, once: a symlink or
    anything but a regular file is refused.  ``writable`` are the paths the
    actions may write: a log inside, equal to or above one of them is
    refused, since an action could replace or fill it.  Raises SpecError
    naming ``audit_log`` and the path.
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: Iterable[str] = ()) -> None:
        # Checked here, before any action runs: records are appended after
        # one, when a bad path would fail with the action's record lost.
        raw: object = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise SpecError(
                f"audit_log must be a non-empty str path without NUL bytes, got {raw!r}",
                field="audit_log",
                value=raw,
            )
        check_encodable(raw, "audit_log", field="audit_log")
        self.path = raw
        self._lock = threading.Lock()
        self._fd: int | None = None
        where = canonical(os.path.abspath(self.path), field="audit_log")
        for root in writable:
            if is_within(where, root) or is_within(root, where):
                raise SpecError(
                    f"audit_log {where!r} is inside, equal to or above {root!r}, "
                    "which actions may write: an action could replace it",
                    field="audit_log",
                    value=self.path,
                )
        # O_NONBLOCK: opening a FIFO must fail at once, not wait for a reader.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags | os.O_NOCTTY | os.O_NONBLOCK, 0o640)
        except OSError as e:
            why = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
            raise SpecError(
                f"audit_log {self.path!r} cannot be opened: {why}",
                field="audit_log",
                value=self.path,
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpecError(
                f"audit_log {self.path!r} is not a regular file",
                field="audit_log",
                value=self.path,
            )
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append ``records``; returns how many were written.  Raises OSError
        when the write fails, ValueError once the log is closed."""
        lines = [_line(r) for r in records]
        if not lines:
            return 0
        data = b"".join(lines)
        with self._lock:
            if self._fd is None:
                raise ValueError(f"audit log {self.path!r} is closed")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        return len(lines)


def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of an audit file; a line that is not a JSON object raises ValueError."""
    # surrogateescape: a damaged line is reported, not a decoding crash.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from parse(f, os.fspath(path))


def parse(lines: Iterable[str], source: str) -> Iterator[dict[str, Any]]:
    """The records in ``lines`` of audit log ``source`` (named in errors);
    a line that is not a JSON object raises ValueError naming it."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except RecursionError:
            # The decoder recurses per level; a record nests 2 deep.
            raise ValueError(f"{source}:{number}: not a JSON record: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, or a number too long for int()
            raise ValueError(f"{source}:{number}: not a JSON record: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{source}:{number}: not a JSON object")
        yield rec


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts per kind and decision, the executions involved, the time span."""
    return summarize_records(read(path))


def summarize_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """:func:`summarize` of records already read (see :func:`parse`)."""
    kinds: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    executions: set[str] = set()
    first = last = None
    total = 0
    for rec in records:
        total += 1
        kinds[str(rec.get("kind"))] += 1
        decisions[str(rec.get("decision"))] += 1
        executions.add(str(rec.get("execution_id")))
        t = rec.get("time")
        if isinstance(t, (int, float)):
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
    return {
        "records": total,
        "executions": len(executions),
        "by_kind": dict(kinds.most_common()),
        "by_decision": dict(decisions.most_common()),
        "first": first,
        "last": last,
    }
