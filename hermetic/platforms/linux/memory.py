"""C memory for the plan: strings, arrays and stack regions that must outlive
every spawn that uses them, marshalled from Python once."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from hermetic.platforms.linux import plan as linux_plan


def native() -> Any:
    from hermetic import _native

    return _native


#: What one C string or array costs besides its bytes: its cffi object, its
#: allocation's header, its key in CMemory's table (measured: about 200).
OBJECT_COST = 256


class CMemory:
    """C strings and arrays that must outlive every spawn that uses them.

    ``cost`` is about what they take, in bytes (what a cache of them counts
    against its bound); ``charge`` adds what was allocated elsewhere and
    kept here."""

    def __init__(self) -> None:
        self.ffi = native().ffi
        self.keep: list[Any] = []
        # One C copy per distinct string (the C side never writes them): a
        # plan names most of its paths twice or more.
        self._strings: dict[str, Any] = {}
        self.cost = 0

    def charge(self, size: int) -> None:
        self.cost += size + OBJECT_COST

    def cstr(self, s: str | None) -> Any:
        if s is None:
            return self.ffi.NULL
        c = self._strings.get(s)
        if c is None:
            data = os.fsencode(s)
            c = self._strings[s] = self.ffi.new("char[]", data)
            self.cost += len(data) + len(s) + OBJECT_COST
        return c

    def ops(self, ops: Sequence[linux_plan.Op]) -> Any:
        # Initialised from tuples in the struct's field order (kind, flags,
        # mode, src, dst, data): cffi fills them in C, several times faster
        # than setting each field from Python.
        cstr = self.cstr
        arr = self.ffi.new(
            "struct hm_op[]",
            [(op.kind, op.flags, op.mode, cstr(op.src), cstr(op.dst), cstr(op.data)) for op in ops],
        )
        self.keep.append(arr)
        self.charge(self.ffi.sizeof(arr))
        return arr

    def strv(self, items: Sequence[str]) -> Any:
        arr = self.ffi.new("char *[]", len(items) + 1)
        for i, s in enumerate(items):
            arr[i] = self.cstr(s)
        arr[len(items)] = self.ffi.NULL
        self.keep.append(arr)
        self.charge(self.ffi.sizeof(arr))
        return arr


class _StackPool:
    """Stack regions for pid 1 and the action, reused across spawns.

    A region goes back to the pool only once its pid 1 has been reaped.
    """

    def __init__(self) -> None:
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        region = native().lib.hm_stack_new()
        if region == native().ffi.NULL:
            raise MemoryError("cannot map a stack for the sandbox")
        return region

    def give(self, region: Any) -> None:
        with self._lock:
            if len(self._free) < 64:
                self._free.append(region)
                return
        native().lib.hm_stack_free(region)


STACKS = _StackPool()
