"""The audit log: every violation stopped or seen, as JSON Lines.

One record per violation: time, execution id, spec digest, kind, what was
attempted, what was decided, and the limit and observation when there are
some.  Environment values are never recorded (Violation holds none).

``AuditLog.append`` writes each batch with a single ``write(2)`` on a
descriptor opened with O_APPEND, so records of concurrent executions, from
threads or processes, never interleave within a line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from hermetic.core.outcome import Violation


def new_execution_id() -> str:
    """A random UUID (version 4) in hex, as ``uuid.uuid4().hex``, without
    importing uuid (and with it platform and more) for every command-line
    run."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def record(
    violation: Violation, *, execution_id: str, spec_digest: str, argv0: str | None = None
) -> dict[str, Any]:
    rec = {"time": time.time(), "execution_id": execution_id, "spec_digest": spec_digest}
    if argv0 is not None:
        rec["command"] = argv0
    rec.update(violation.to_dict())
    return rec


class AuditLog:
    """Appends records to a JSON Lines file; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append ``records``; returns how many were written."""
        lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        return len(lines)


def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of an audit file; a line that is not a JSON object raises ValueError."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}:{number}: not a JSON record: {e}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{os.fspath(path)}:{number}: not a JSON object")
            yield rec


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts per kind and decision, the executions involved, the time span."""
    kinds: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    executions: set[str] = set()
    first = last = None
    total = 0
    for rec in read(path):
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
