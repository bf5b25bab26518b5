"""What ``hermetic worker`` costs per lease, next to the same lease unsandboxed.

The leases are real REAPI messages (Action, Command, the input root's
Directory tree) in a CAS held in memory and served by an in-process gRPC
server (``tests/memory_cas.py``); the worker talks to it with its own
``CasClient``, as to a farm.  Every round is one call of
``worker.execute_lease``: fetch the Action's Command and input root, stage
the exec root from the warm local cache, run, collect the outputs, upload
what the CAS lacks, build the ActionResult.

- ``worker-gcc``: ``gcc -c`` of a small C file that includes three headers
  (``-pipe``: no temporary files, so /tmp is not part of the comparison),
  once with the command run by ``subprocess`` instead of the sandbox (the
  baseline: the same staging, collection and upload, in a slot of its
  own), sandboxed as the worker runs it (``hermetic``: one slot reused
  lease after lease, hermetic/remote/sandboxes.py: its executor's
  ``execute`` with the staged inputs as read-only paths, the exec root
  emptied afterwards), sandboxed in a slot made and closed for the lease
  (``hermetic-new-slot``: ``HermeticExecutor.create`` and ``close`` every
  lease), and the command alone (``subprocess``, no worker: what the
  worker adds around the command is the baseline's difference to it).
  The rows run in turn, a round of each, so a slow stretch of a shared
  machine slows every row alike;
  ``paired_ratio`` is the median of the rounds' ratios to the baseline's.
  ``extra_info`` also holds the median of every stage from the result's
  ``ExecutedActionMetadata``: ``fetch`` (Command, input tree, staging),
  ``prepare`` (the sandbox's creation), ``execute``, ``upload``
  (collection and upload) and the whole ``worker``.
- ``worker-staging``: an input root of 10,000 files in 100 directories,
  every blob already in the local cache: ``fetch_tree`` (the Directory
  messages from the CAS) and ``stage`` (the exec root's directories and
  hard links) into a fresh exec root each round; ``extra_info`` has
  ``files_per_s`` for the median round, and the medians of the two parts.

Both groups' rows run in one session with the same leases.  Every round's
lease status and exit code are checked after the timed loop; nothing here
asserts on speed.
"""

from __future__ import annotations

import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

pytest.importorskip(
    "buildgrid.common", reason="needs the 'remote' extra (pip install 'hermetic[remote]')"
)

from conftest import record_rounds  # noqa: E402
from memory_cas import MemoryCas, input_root, lease  # noqa: E402

from hermetic import ExecutionResult, Ok  # noqa: E402
from hermetic.remote import execroot, sandboxes, worker  # noqa: E402
from hermetic.remote.cas import CasClient, LocalCache  # noqa: E402
from hermetic.remote.protos import code_pb2  # noqa: E402
from hermetic.remote.sandboxes import Sandboxes  # noqa: E402

GCC = "/usr/bin/gcc"
GCC_ROUNDS, GCC_WARMUP = 100, 5
STAGING_ROUNDS, STAGING_WARMUP = 10, 2
STAGING_DIRS, STAGING_FILES_PER_DIR = 100, 100

HEADERS = {
    "include/square.h": b"#pragma once\nstatic inline int square(int x) { return x * x; }\n",
    "include/cube.h": b'#pragma once\n#include "square.h"\n'
    b"static inline int cube(int x) { return x * square(x); }\n",
    "include/config.h": b"#pragma once\n#define ROUNDS 3\n",
}
HELLO_C = b"""\
#include <stdio.h>
#include "config.h"
#include "cube.h"

int main(void)
{
    for (int i = 0; i < ROUNDS; i++)
        printf("%d %d\\n", square(i), cube(i));
    return 0;
}
"""

needs_gcc = pytest.mark.skipif(
    not os.access(GCC, os.X_OK),
    reason=f"{GCC} is missing: install gcc (apt-get install gcc) to run the worker-gcc group",
)


class Direct:
    """``HermeticExecutor``'s face over ``subprocess``: the lease's command
    runs unsandboxed, with the Command's environment, in the exec root,
    its output in the worker's files.  Everything else of the lease is the
    worker's own code."""

    @classmethod
    def create(cls, spec: Any, **_: Any) -> Any:
        return Ok(cls())

    def execute(
        self,
        argv: list[str],
        *,
        cwd: str,
        timeout: float | None,
        streams: Any,
        cancel: Any,
        env: dict[str, str],
        read_only: Any,
    ) -> Any:
        start = time.monotonic()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=streams.stdout, stderr=streams.stderr)
        # Waited for on a pidfd: subprocess's own wait with a timeout polls,
        # sleeping up to 50 ms between looks, which would add its own delay
        # to the baseline.
        pidfd = os.pidfd_open(p.pid)
        try:
            waiter = select.poll()
            waiter.register(pidfd, select.POLLIN)
            if not waiter.poll(None if timeout is None else timeout * 1e3):
                p.kill()
        finally:
            os.close(pidfd)
        p.wait()
        return Ok(
            ExecutionResult(
                argv=tuple(argv),
                exit_code=p.returncode if p.returncode >= 0 else None,
                signal=-p.returncode if p.returncode < 0 else None,
                stdout=b"",
                stderr=b"",
                duration=time.monotonic() - start,
            )
        )

    def close(self) -> None:
        pass


class Bench:
    """One worker's state: the memory CAS, the client, the work directory."""

    def __init__(self) -> None:
        self.cas = MemoryCas()
        self.channel = self.cas.channel()
        self.client = CasClient(self.channel, "")
        self.work = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-bench-worker-"))
        worker.prepare_work_dir(self.work)
        self.cache = LocalCache(os.path.join(self.work, "cas"))
        self.slots = Sandboxes(self.work)

    def run(self, the_lease: Any, slots: Sandboxes | None = None) -> Any:
        """One lease; ``slots``: the reused ones, None for a slot of its own."""
        return worker.execute_lease(
            the_lease,
            cas=self.client,
            cache=self.cache,
            work_dir=self.work,
            bot_id="bench",
            cancel=threading.Event(),
            sandboxes=slots,
        )

    def close(self) -> None:
        self.slots.close()
        self.cache.close()
        self.channel.close()
        self.cas.close()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    try:
        yield b
    finally:
        b.close()


def _seconds(start: Any, end: Any) -> float:
    return float(end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def _stages(outcomes: list[Any]) -> dict[str, float]:
    """The median of every stage of the leases' metadata, in ms."""
    parts: dict[str, list[float]] = {}
    for o in outcomes:
        m = o.result.execution_metadata
        for name, (a, b) in {
            "fetch": (m.input_fetch_start_timestamp, m.input_fetch_completed_timestamp),
            "prepare": (m.input_fetch_completed_timestamp, m.execution_start_timestamp),
            "execute": (m.execution_start_timestamp, m.execution_completed_timestamp),
            "upload": (m.output_upload_start_timestamp, m.output_upload_completed_timestamp),
            "worker": (m.worker_start_timestamp, m.worker_completed_timestamp),
        }.items():
            parts.setdefault(name, []).append(_seconds(a, b) * 1e3)
    return {f"{k}_ms": round(statistics.median(v), 3) for k, v in parts.items()}


def _gcc_lease(cas: MemoryCas) -> Any:
    files = {"src/hello.c": (HELLO_C, False), **{p: (d, False) for p, d in HEADERS.items()}}
    root = input_root(cas, files)
    return lease(
        cas,
        [GCC, "-pipe", "-O2", "-Iinclude", "-c", "src/hello.c", "-o", "out/hello.o"],
        root,
        output_files=("out/hello.o",),
    )


#: The worker-gcc rows, timed in turn round after round.
GCC_ROWS = ("unsandboxed", "hermetic", "hermetic-new-slot", "gcc-alone")


@pytest.fixture(scope="module")
def gcc_rounds() -> Iterator[dict[str, tuple[list[float], dict[str, float]]]]:
    """Every worker-gcc row's durations and stage medians, measured in turn:
    a round of each row, GCC_ROUNDS times, after GCC_WARMUP untimed ones.
    ``gcc-alone`` is the command by itself (subprocess, in a copy of the
    exec root, no worker): what the worker adds around it is the
    unsandboxed row's difference to it."""
    if not os.access(GCC, os.X_OK):
        pytest.skip(f"{GCC} is missing: install gcc (apt-get install gcc) for the worker-gcc group")
    b = Bench()
    alone = tempfile.mkdtemp(prefix="alone-", dir=os.path.join(b.work, "exec"))
    # The baseline's own slots (their executors are Direct ones).
    direct = Sandboxes(b.work)
    try:
        the_lease = _gcc_lease(b.cas)
        os.makedirs(os.path.join(alone, "out"))
        os.makedirs(os.path.join(alone, "src"))
        for rel, data in [("src/hello.c", HELLO_C), *HEADERS.items()]:
            os.makedirs(os.path.dirname(os.path.join(alone, rel)), exist_ok=True)
            with open(os.path.join(alone, rel), "wb") as f:
                f.write(data)
        argv = [GCC, "-pipe", "-O2", "-Iinclude", "-c", "src/hello.c", "-o", "out/hello.o"]
        env = {"PATH": "/usr/bin:/bin"}
        durations: dict[str, list[float]] = {row: [] for row in GCC_ROWS}
        outcomes: dict[str, list[Any]] = {row: [] for row in GCC_ROWS}

        def one(row: str) -> float:
            start = time.perf_counter()
            if row == "gcc-alone":
                with open(os.devnull, "wb") as null:
                    p = subprocess.run(argv, cwd=alone, env=env, stdout=null, stderr=null)
                assert p.returncode == 0
                return time.perf_counter() - start
            if row == "unsandboxed":
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(sandboxes, "HermeticExecutor", Direct)
                    outcome = b.run(the_lease, direct)
            else:
                outcome = b.run(the_lease, b.slots if row == "hermetic" else None)
            took = time.perf_counter() - start
            assert outcome.status.code == code_pb2.OK, outcome.status
            assert outcome.result.exit_code == 0, outcome.result
            assert [f.path for f in outcome.result.output_files] == ["out/hello.o"]
            outcomes[row].append(outcome)
            return took

        for _ in range(GCC_WARMUP):
            for row in GCC_ROWS:
                one(row)
        for row in GCC_ROWS:
            outcomes[row].clear()
        for _ in range(GCC_ROUNDS):
            for row in GCC_ROWS:
                durations[row].append(one(row))
        yield {
            row: (durations[row], _stages(outcomes[row]) if outcomes[row] else {})
            for row in GCC_ROWS
        }
    finally:
        direct.close()
        b.close()


@needs_gcc
@pytest.mark.benchmark(group="worker-gcc")
@pytest.mark.parametrize("row", GCC_ROWS)
def test_worker_gcc(benchmark: Any, gcc_rounds: Any, row: str) -> None:
    """The row's rounds (timed in turn with the other rows') as this
    benchmark's, recorded the way ``benchmark.pedantic`` records its own,
    through the fixture's internals (as benchmarks/test_build_times.py)."""
    durations, stages = gcc_rounds[row]
    base = gcc_rounds["unsandboxed"][0]
    record_rounds(
        benchmark, durations, method=row, baseline=row == "unsandboxed", base=base, **stages
    )


# -- staging ----------------------------------------------------------------------


@pytest.mark.benchmark(group="worker-staging")
def test_worker_staging_10k_files(benchmark: Any, bench: Bench) -> None:
    files = {
        f"d{d:03}/f{f:03}.h": (f"// {d} {f}\n".encode() * (1 + f % 7), f % 10 == 0)
        for d in range(STAGING_DIRS)
        for f in range(STAGING_FILES_PER_DIR)
    }
    n = len(files)
    root = input_root(bench.cas, files)
    # Warm the cache: every blob fetched once, as a previous lease would.
    tree = execroot.fetch_tree(bench.client, root, bench.cache)
    first = os.path.join(bench.work, "exec", "warm")
    os.mkdir(first)
    execroot.stage(tree, bench.cache, bench.client, first)
    shutil.rmtree(first)

    roots: list[str] = []
    parts: dict[str, list[float]] = {"fetch_tree": [], "stage": []}
    fetched: list[int] = []

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        # The previous round's exec root is removed outside the timed part.
        for r in roots:
            shutil.rmtree(r)
        roots.clear()
        r = tempfile.mkdtemp(prefix="root-", dir=os.path.join(bench.work, "exec"))
        roots.append(r)
        return (r,), {}

    def once(exec_root: str) -> None:
        t0 = time.perf_counter()
        tree = execroot.fetch_tree(bench.client, root, bench.cache)
        t1 = time.perf_counter()
        fetched.append(execroot.stage(tree, bench.cache, bench.client, exec_root))
        t2 = time.perf_counter()
        parts["fetch_tree"].append(t1 - t0)
        parts["stage"].append(t2 - t1)

    benchmark.extra_info["method"] = "fetch_tree+stage"
    benchmark.extra_info["baseline"] = True
    benchmark.pedantic(once, setup=setup, rounds=STAGING_ROUNDS, warmup_rounds=STAGING_WARMUP)
    # A warm cache: nothing came from the farm, and the last root is whole.
    assert fetched == [0] * (STAGING_ROUNDS + STAGING_WARMUP)
    count = sum(len(names) for _, _, names in os.walk(roots[0]))
    assert count == n
    for r in roots:
        shutil.rmtree(r)
    benchmark.extra_info["files"] = n
    benchmark.extra_info["files_per_s"] = round(n / benchmark.stats.stats.median)
    for name, values in parts.items():
        benchmark.extra_info[f"{name}_ms"] = round(statistics.median(values) * 1e3, 3)
