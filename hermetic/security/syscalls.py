"""The seccomp listener's caller side: turn notifications into violations.

The action's filter (csrc/linux/seccomp.c) hands two kinds of calls to a
listener the caller holds; ``hm_notify_serve`` (csrc/linux/notify.c)
answers them and returns what it saw:

- a denied call (the default deny list, a namespace flag, fork or exec a
  ProcessPolicy forbids, a set-id mode, a set*xattr, a socket family the
  sandbox does not contain): answered its errno (EPERM; EOPNOTSUPP for
  set*xattr, EAFNOSUPPORT for a socket family, what libcs and tools expect
  when a filesystem or the kernel lacks them), recorded as a "syscall" or
  "process" violation with the call's name and arguments;
- a call that changes a file's mode, owner or times, where Landlock is the
  filesystem layer (it does not cover them): performed by the listener
  itself on a file beneath the outputs and temps, refused otherwise and
  recorded as a "filesystem" violation with the path;
- a call that writes a path: let through, the sandbox's mounts deciding.
  When the path is outside the spec's outputs and temps the mounts refuse
  it (read-only inputs and root), and it is recorded as a "filesystem"
  violation with the path.

Identical records of one execution are merged, with their count in
``observed``, and at most ``MAX_RECORDS`` distinct ones are kept.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import time
from collections.abc import Iterable
from typing import Any

from hermetic.core.outcome import Violation, ViolationKind
from hermetic.core.paths import is_within
from hermetic.security.timeout import SIGNAL_SLICE

__all__ = ["MAX_RECORDS", "SyscallAudit"]

#: Distinct records kept per execution; the rest are counted in one more.
MAX_RECORDS = 1000
#: Notifications taken per call into C.
_BATCH = 16

#: Writable without being an output: devices and descriptors.
_ALWAYS_WRITABLE = frozenset(
    ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/stdout", "/dev/stderr", "/dev/stdin")
)
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd)/\d+$")

#: Calls that create processes or run programs: "process" violations.
_PROCESS_CALLS = frozenset(("clone", "fork", "vfork", "execve", "execveat"))


def _native() -> Any:
    from hermetic import _native

    return _native


#: Notice buffers (33 KiB each) of finished executions, for the next ones:
#: a list's pop and append are each one step, so an execution started by a
#: signal handler amid another's wait takes a buffer of its own.
_BUFFERS: list[Any] = []

Roots = tuple[tuple[str, bool], ...]


@functools.lru_cache(maxsize=64)
def _packed_writable(writable: tuple[str, ...]) -> Any:
    """The writable roots for C (NUL-separated, an empty one ends them):
    where the listener performs metadata calls (Landlock-only mode).  Made
    once per set (an executor's are the same every execution: an
    execution's own read-only paths are never among them, so what is kept
    is bounded by the executors' specs); C only reads it."""
    ffi = _native().ffi
    return ffi.new("char[]", b"".join(os.fsencode(p) + b"\0" for p in writable) + b"\0")


class SyscallAudit:
    """Serves one execution's listener and keeps its violations."""

    @staticmethod
    def roots(writable: Iterable[str], readonly: Iterable[str] = ()) -> Roots:
        """The declared paths, deepest first, each with whether it is
        writable: the deepest above a written path decides (an input inside
        the private /tmp is read-only).  Computed once per spec."""
        return tuple(
            sorted(
                [(p, True) for p in writable] + [(p, False) for p in readonly],
                key=lambda e: len(e[0]),
                reverse=True,
            )
        )

    def __init__(self, roots: Roots) -> None:
        nat = _native()
        self._lib = nat.lib
        self._ffi = nat.ffi
        try:
            self._buf = _BUFFERS.pop()
        except IndexError:
            self._buf = nat.ffi.new("struct hm_notice[]", _BATCH)
        self._roots = roots
        self._writable = _packed_writable(tuple(p for p, w in roots if w))
        self._seen: dict[tuple[ViolationKind, str, str], int] = {}
        self._shown: dict[tuple[ViolationKind, str, str], str] = {}
        self._dropped = 0
        self.served = 0
        self._listener = -1

    def close(self) -> None:
        """Done serving: the buffer goes to the next execution."""
        buf, self._buf = self._buf, None
        if buf is not None and len(_BUFFERS) < 8:
            _BUFFERS.append(buf)

    def attach(self, listener: int) -> SyscallAudit:
        """Serve ``listener`` (the action's seccomp listener) while waiting."""
        self._listener = listener
        return self

    def wait(self, target: int, seconds: float | None) -> bool:
        """Wait for ``target`` (pid 1's pidfd) like a poll, answering the
        listener meanwhile in C (csrc/linux/notify.c: hm_notify_wait), so a
        write costs no interpreter wakeup; the notices come back here a
        batch at a time, which also keeps the deadline checks going however
        fast the action makes calls."""
        deadline = None if seconds is None else time.monotonic() + seconds
        count = self._ffi.new("int *")
        while True:
            # Sliced, so that the interpreter runs its signal handlers (see
            # SIGNAL_SLICE).
            left = SIGNAL_SLICE if deadline is None else deadline - time.monotonic()
            ms = max(0, int(min(left, SIGNAL_SLICE) * 1000 + 0.999))
            r = self._lib.hm_notify_wait(
                target, self._listener, ms, self._buf, _BATCH, count, self._writable
            )
            for i in range(count[0]):
                self._take(self._buf[i])
            self.served += count[0]
            if r < 0:
                raise OSError(-r, f"seccomp listener: {os.strerror(-r)}")
            if r == 1:
                return True
            # Also after a full batch (r == 2): a flood of calls that never
            # leaves the listener idle must not hold the deadline off.
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _take(self, ev: Any) -> None:
        ffi = self._ffi
        name_c = self._lib.hm_syscall_name(ev.nr)
        name = ffi.string(name_c).decode() if name_c != ffi.NULL else f"syscall {ev.nr}"
        if ev.kind == self._lib.HM_NOTICE_WRITE:
            for raw in (ffi.string(ev.path), ffi.string(ev.path2)):
                if raw:
                    path = posixpath.normpath(os.fsdecode(raw))
                    if not self._may_write(path):
                        self._add(ViolationKind.FILESYSTEM, path, "refused", name)
            return
        if ev.kind == self._lib.HM_NOTICE_REFUSED:
            # A metadata call outside every writable root (Landlock-only mode).
            path = os.fsdecode(ffi.string(ev.path)) or f"{name}(fd)"
            raw_path = posixpath.normpath(path) if path.startswith("/") else path
            self._add(ViolationKind.FILESYSTEM, raw_path, "refused", name)
            return
        args = ", ".join(hex(ev.args[i]) for i in range(6))
        kind = ViolationKind.PROCESS if name in _PROCESS_CALLS else ViolationKind.SYSCALL
        # Merged by call: unused argument registers hold leftovers, so the
        # arguments shown are the first attempt's.
        self._add(kind, f"{name}({args})", "denied", name, merge=name)

    def _may_write(self, path: str) -> bool:
        if path in _ALWAYS_WRITABLE or _FD_PATH.match(path):
            return True
        if not path.startswith("/"):
            return True  # not resolvable (a descriptor outside any mount we know)
        for root, writable in self._roots:
            if is_within(path, root):
                return writable
        return False

    def _add(
        self, kind: ViolationKind, attempted: str, decision: str, call: str, merge: str = ""
    ) -> None:
        key = (kind, merge or attempted, decision if kind is not ViolationKind.FILESYSTEM else call)
        if key in self._seen:
            self._seen[key] += 1
        elif len(self._seen) < MAX_RECORDS:
            self._seen[key] = 1
            self._shown[key] = attempted
        else:
            self._dropped += 1

    def violations(self) -> list[Violation]:
        out = []
        for key, count in self._seen.items():
            kind, _, extra = key
            attempted = self._shown[key]
            times = f"{count} times" if count > 1 else None
            if kind is ViolationKind.FILESYSTEM:
                observed = f"{extra}" + (f", {times}" if times else "")
                out.append(
                    Violation(kind, attempted=attempted, decision="refused", observed=observed)
                )
            else:
                out.append(Violation(kind, attempted=attempted, decision=extra, observed=times))
        if self._dropped:
            out.append(
                Violation(
                    ViolationKind.SYSCALL,
                    attempted=f"{self._dropped} more calls",
                    decision="denied or refused",
                    observed=f"beyond {MAX_RECORDS} distinct records",
                )
            )
        return out
