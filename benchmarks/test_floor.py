"""The kernel's floor for a sandbox on this machine, in the ``true`` group.

``floor.c`` runs ``/bin/true`` with only the namespaces' own work (see
the file): a new pid namespace with an init, the same with ipc, uts and
mount namespaces and ``/proc`` and ``/tmp`` mounted, and those without the
init (the command as pid 1).  Next to ``posix_spawn`` in the same group it
shows how much of the sandbox's cost no implementation with that isolation
avoids here; the rest of hermetic's (user and network namespaces, seccomp,
Landlock, capabilities, cgroups, the audit, Python) is the difference to
its rows.  Built with gcc into the session's temp directory and called
through ctypes; needs root (a pid namespace without a user namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from test_spawn import GCC, TRUE, TRUE_ROUNDS, TRUE_WARMUP, _all_ok, _measure

#: Level (floor.c's FLOOR_*) per row, and the row's method tag.
LEVELS = {
    "init": (1, "floor: pid namespace, init"),
    "init-mounts": (2, "floor: pid, ipc, uts, mount namespaces, /proc, /tmp, init"),
    "as-pid-1": (3, "floor: the same, the command as pid 1"),
}


@contextlib.contextmanager
def built_floor() -> Iterator[Any]:
    """floor.c built and loaded (skips where it cannot run: no gcc, not
    root, or the namespaces refused)."""
    if not os.access(GCC, os.X_OK):
        pytest.skip(f"{GCC} not installed: the floor is built with it")
    if os.geteuid() != 0:
        pytest.skip("the floor needs root (a pid namespace without a user namespace)")
    source = pathlib.Path(__file__).with_name("floor.c")
    with tempfile.TemporaryDirectory(prefix="hermetic-floor-") as d:
        lib = os.path.join(d, "floor.so")
        subprocess.run([GCC, "-O2", "-shared", "-fPIC", "-o", lib, str(source)], check=True)
        floor = ctypes.CDLL(lib)
        floor.floor_action.argtypes = [ctypes.c_int]
        floor.floor_action.restype = ctypes.c_int
        rc = floor.floor_action(LEVELS["init-mounts"][0])
        if rc < 0:
            pytest.skip(f"the floor cannot clone its namespaces here: {os.strerror(-rc)}")
        yield floor


@pytest.fixture(scope="module")
def floor_lib() -> Iterator[Any]:
    with built_floor() as floor:
        yield floor


@pytest.mark.benchmark(group="true")
@pytest.mark.parametrize("level", list(LEVELS))
def test_true_floor(benchmark: Any, floor_lib: Any, level: str) -> None:
    number, method = LEVELS[level]
    assert os.access(TRUE, os.X_OK)
    _all_ok(
        _measure(
            benchmark,
            lambda: floor_lib.floor_action(number),
            method=method,
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )
