"""Throughput: many short actions from 2 and from 8 concurrent callers.

Each round runs BATCH ``/bin/true`` actions spread over N threads sharing
one executor (the fast path: one spec, prepared once), next to
``os.posix_spawn`` + ``waitpid`` from N threads (the baseline).  The ratio
of the medians is the inverse of the throughput ratio: 1.25x means the
sandbox sustains 80 % of direct spawning's rate.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from typing import Any

import pytest

TRUE = "/bin/true"
BATCH = 48
ROUNDS, WARMUP = 20, 2


@pytest.fixture(params=[2, 8], ids=["2-callers", "8-callers"])
def pool(request: pytest.FixtureRequest) -> Iterator[tuple[int, concurrent.futures.Executor]]:
    with concurrent.futures.ThreadPoolExecutor(request.param) as p:
        yield request.param, p


def _round(pool: concurrent.futures.Executor, one: Any) -> list[int]:
    return list(pool.map(lambda _: one(), range(BATCH)))


def _spawn_true() -> int:
    pid = os.posix_spawn(TRUE, [TRUE], {"PATH": "/usr/bin:/bin"})
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_throughput_posix_spawn(benchmark: Any, pool: Any) -> None:
    callers, p = pool
    benchmark.group = f"throughput-{callers}"
    benchmark.extra_info.update(method="posix_spawn", baseline=True, actions=BATCH)
    codes = benchmark.pedantic(_round, args=(p, _spawn_true), rounds=ROUNDS, warmup_rounds=WARMUP)
    assert codes == [0] * BATCH


@pytest.mark.parametrize(
    "variant", ["executor", "no_standby_executor"], ids=["standby", "no-standby"]
)
def test_throughput_hermetic(
    benchmark: Any, pool: Any, request: pytest.FixtureRequest, variant: str
) -> None:
    callers, p = pool
    executor = request.getfixturevalue(variant)
    benchmark.group = f"throughput-{callers}"
    method = "hermetic" if variant == "executor" else "hermetic-no-standby"
    benchmark.extra_info.update(method=method, baseline=False, actions=BATCH)

    def one() -> int:
        return int(executor.execute([TRUE]).unwrap().exit_code)

    codes = benchmark.pedantic(_round, args=(p, one), rounds=ROUNDS, warmup_rounds=WARMUP)
    assert codes == [0] * BATCH
