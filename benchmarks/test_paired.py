"""The per-action targets that compare two rows, with the rows timed in turn.

The ``true`` and ``gcc`` groups (test_spawn.py, test_floor.py) time one
row after the other, as pytest-benchmark does: on a noisy machine a slow
minute then falls on one row, and two rows' medians differ by more than
the targets they are compared against (a tenth of a millisecond, 3 %).
Here each round runs every row once, in turn (``conftest.alternate``), and
each row keeps in its ``extra_info`` the median over rounds of its ratio to
the same round's baseline (``paired_ratio``), as the worker's and the
builds' groups do.

- ``true-paired``: ``/bin/true`` through floor.c's init-mounts level (the
  baseline: pid, ipc, uts and mount namespaces, ``/proc``, ``/tmp`` and an
  init; root only, else ``posix_spawn`` is the baseline), ``posix_spawn``,
  and ``execute`` with the full spec with and without resource limits.
  The limits row also keeps ``limits_over_none_ms``: the median over rounds
  of its difference to the same round's row without limits.
- ``gcc-paired``: ``gcc -c`` of a small file directly (the baseline) and
  through ``execute`` with and without limits, 100 rounds.

Every round's exit status is checked; nothing here asserts on speed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import (
    _executor,
    alternate,
    make_scratch,
    make_spec,
    record_rounds,
    sandbox_env,
    unlimited,
)
from test_floor import LEVELS, built_floor
from test_spawn import (
    GCC_WARMUP,
    TRUE,
    TRUE_ROUNDS,
    TRUE_WARMUP,
    _check_object,
    _gcc_job,
    _posix_spawn_true,
    needs_gcc,
)

#: gcc's rounds: more than the gcc group's 30, whose median moved by 3 %
#: between runs (a compile's own spread is a few milliseconds).
PAIRED_GCC_ROUNDS = 100
#: The rows of each group, the baseline first where it can run.
TRUE_ROWS = ("floor-init-mounts", "posix_spawn", "hermetic", "hermetic-no-limits")
GCC_ROWS = ("direct", "hermetic", "hermetic-no-limits")


@pytest.fixture(scope="module")
def true_rounds() -> Iterator[dict[str, list[float]]]:
    with make_scratch() as scratch, contextlib.ExitStack() as stack:
        rows: dict[str, Callable[[], Any]] = {}
        if os.geteuid() == 0:
            floor = stack.enter_context(built_floor())
            level = LEVELS["init-mounts"][0]
            rows["floor-init-mounts"] = lambda: floor.floor_action(level)
        rows["posix_spawn"] = _posix_spawn_true(sandbox_env())
        limited = stack.enter_context(_executor(make_spec(scratch)))
        free = stack.enter_context(_executor(unlimited(make_spec(scratch))))
        rows["hermetic"] = lambda: limited.execute([TRUE]).unwrap()
        rows["hermetic-no-limits"] = lambda: free.execute([TRUE]).unwrap()
        yield alternate(rows, TRUE_ROUNDS, TRUE_WARMUP)


@pytest.fixture(scope="module")
def gcc_rounds() -> Iterator[dict[str, list[float]]]:
    with make_scratch() as scratch, contextlib.ExitStack() as stack:
        argv, obj = _gcc_job(scratch)
        env = {**sandbox_env(), "TMPDIR": scratch.tmp}
        spec = make_spec(scratch, with_sources=True)
        limited = stack.enter_context(_executor(spec))
        free = stack.enter_context(_executor(unlimited(spec)))
        rows: dict[str, Callable[[], Any]] = {
            "direct": lambda: subprocess.run(argv, env=env, cwd=scratch.out, capture_output=True),
            "hermetic": lambda: limited.execute(argv, cwd=scratch.out).unwrap(),
            "hermetic-no-limits": lambda: free.execute(argv, cwd=scratch.out).unwrap(),
        }
        durations = alternate(rows, PAIRED_GCC_ROUNDS, GCC_WARMUP)
        _check_object(obj)
        yield durations


@pytest.mark.benchmark(group="true-paired")
@pytest.mark.parametrize("row", TRUE_ROWS)
def test_true_paired(benchmark: Any, true_rounds: dict[str, list[float]], row: str) -> None:
    if row not in true_rounds:
        pytest.skip("floor.c's rows need root (a pid namespace without a user namespace)")
    base_row = next(iter(true_rounds))
    extra: dict[str, Any] = {}
    if row == "hermetic":
        pairs = zip(true_rounds["hermetic"], true_rounds["hermetic-no-limits"], strict=True)
        extra["limits_over_none_ms"] = round(statistics.median(a - b for a, b in pairs) * 1e3, 4)
    record_rounds(
        benchmark,
        true_rounds[row],
        method=row,
        baseline=row == base_row,
        base=true_rounds[base_row],
        **extra,
    )


@needs_gcc
@pytest.mark.benchmark(group="gcc-paired")
@pytest.mark.parametrize("row", GCC_ROWS)
def test_gcc_paired(benchmark: Any, gcc_rounds: dict[str, list[float]], row: str) -> None:
    durations = gcc_rounds
    record_rounds(
        benchmark,
        durations[row],
        method=row,
        baseline=row == "direct",
        base=durations["direct"],
    )
