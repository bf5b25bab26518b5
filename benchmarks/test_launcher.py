"""What one action costs a build tool through ``hermetic-launch``.

Make, CMake and Ninja start a new process per action; this group runs
``/bin/true`` that way, each round a new process from ``subprocess.run``
in the output directory, in one session:

- ``/bin/true`` itself (the baseline);
- ``hermetic-launch --spec FILE -- /bin/true``: the native launcher handing
  the action to a warm ``hermetic serve`` (started before the timed
  rounds, in a private runtime directory, and stopped afterwards);
- bubblewrap with isolation comparable to the spec (the argv of the
  ``true`` group's bwrap row, benchmarks/test_spawn.py);
- ``hermetic run --spec FILE -- /bin/true``: an interpreter per action.

The spec is the full spec of the other groups (conftest.make_spec),
written to a file for the launcher and ``hermetic run``.  Every round's
exit status is checked after the timed loop; nothing asserts on speed.

Besides the times, each row's ``extra_info`` has ``cpu_ms_per_action``:
the CPU time of the process started per round and of its children (the
launcher, bwrap and the sandbox, the interpreter), over the timed rounds;
the launcher's row also ``daemon_cpu_ms_per_action``: the daemon's own
(all its threads, from their schedstat; its actions run in processes of
their own).  Both are read between rounds, outside the timed calls.
"""

from __future__ import annotations

import glob
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import PATH, Scratch, make_spec
from test_spawn import TRUE, _all_ok, _bwrap, needs_bwrap

LAUNCHER = os.path.join(os.path.dirname(sys.executable), "hermetic-launch")
needs_launcher = pytest.mark.skipif(
    not os.access(LAUNCHER, os.X_OK),
    reason=f"{LAUNCHER} is missing: install the package with pip (it builds the launcher)",
)

LAUNCH_ROUNDS, LAUNCH_WARMUP = 300, 20
BWRAP_ROUNDS = 100
RUN_ROUNDS, RUN_WARMUP = 20, 3


@pytest.fixture
def spec_file(scratch: Scratch) -> str:
    path = os.path.join(scratch.root, "spec.json")
    with open(path, "w") as f:
        f.write(make_spec(scratch).to_json())
    return path


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": PATH, "LANG": "C.UTF-8", **(extra or {})}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def runtime_dir(scratch: Scratch) -> Iterator[str]:
    """A private runtime directory, so no user's own daemon is used; the
    daemon the rounds start there is stopped (and checked gone) after."""
    path = os.path.join(scratch.root, "rt")
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        lock = os.path.join(path, "serve.lock")
        if os.path.exists(lock):
            with open(lock) as f:
                pid = int(f.read().strip())
            stop = [sys.executable, "-m", "hermetic", "serve", "--stop"]
            subprocess.run(stop, env=_env({"HERMETIC_RUNTIME_DIR": path}), check=True, cwd="/")
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid), f"daemon {pid} still running"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _threads_cpu(pid: int) -> float:
    """Seconds of CPU of every thread of ``pid`` (schedstat: nanoseconds)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def _daemon_pid(runtime_dir: str) -> int | None:
    try:
        with open(os.path.join(runtime_dir, "serve.lock")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _measure_cpu(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    method: str,
    baseline: bool,
    rounds: int,
    warmup: int,
    daemon_dir: str | None = None,
) -> list[Any]:
    """test_spawn._measure, with the CPU per action (see the module's
    docstring) in ``extra_info``: snapshots taken by pytest-benchmark's
    ``setup``, which runs before each round, untimed."""
    benchmark.extra_info["method"] = method
    benchmark.extra_info["baseline"] = baseline
    results: list[Any] = []
    snapshots: list[tuple[float, float]] = []

    def snapshot() -> tuple[float, float]:
        pid = _daemon_pid(daemon_dir) if daemon_dir is not None else None
        return _children_cpu(), _threads_cpu(pid) if pid is not None else 0.0

    def setup() -> None:
        snapshots.append(snapshot())

    benchmark.pedantic(
        lambda: results.append(fn()),
        setup=setup,
        rounds=rounds,
        iterations=1,
        warmup_rounds=warmup,
    )
    assert len(results) == rounds + warmup
    # snapshots[warmup] is taken before the first timed round.
    (child0, daemon0), (child1, daemon1) = snapshots[warmup], snapshot()
    benchmark.extra_info["cpu_ms_per_action"] = round((child1 - child0) / rounds * 1e3, 3)
    if daemon_dir is not None:
        benchmark.extra_info["daemon_cpu_ms_per_action"] = round(
            (daemon1 - daemon0) / rounds * 1e3, 3
        )
    return results


def _process(argv: list[str], cwd: str, env: dict[str, str]) -> Callable[[], Any]:
    return lambda: subprocess.run(argv, capture_output=True, cwd=cwd, env=env)


@pytest.mark.benchmark(group="launch")
def test_launch_direct(benchmark: Any, scratch: Scratch) -> None:
    _all_ok(
        _measure_cpu(
            benchmark,
            _process([TRUE], scratch.out, _env()),
            method="direct",
            baseline=True,
            rounds=LAUNCH_ROUNDS,
            warmup=LAUNCH_WARMUP,
        )
    )


@needs_launcher
@pytest.mark.benchmark(group="launch")
def test_launch_hermetic_launch(
    benchmark: Any, scratch: Scratch, spec_file: str, runtime_dir: str
) -> None:
    """The first warm-up round starts the daemon; the timed ones find it."""
    env = _env({"HERMETIC_RUNTIME_DIR": runtime_dir, "HERMETIC_SPEC": spec_file})
    results = _measure_cpu(
        benchmark,
        _process([LAUNCHER, "--", TRUE], scratch.out, env),
        method="hermetic-launch",
        baseline=False,
        rounds=LAUNCH_ROUNDS,
        warmup=LAUNCH_WARMUP,
        daemon_dir=runtime_dir,
    )
    for r in results:
        assert r.returncode == 0, r.stderr


@needs_bwrap
@pytest.mark.benchmark(group="launch")
def test_launch_bwrap(benchmark: Any, scratch: Scratch) -> None:
    _all_ok(
        _measure_cpu(
            benchmark,
            _process(_bwrap(scratch, [TRUE]), scratch.out, _env()),
            method="bwrap",
            baseline=False,
            rounds=BWRAP_ROUNDS,
            warmup=LAUNCH_WARMUP,
        )
    )


@pytest.mark.benchmark(group="launch")
def test_launch_hermetic_run(benchmark: Any, scratch: Scratch, spec_file: str) -> None:
    """An interpreter per action, from the installed package (run outside
    the checkout, as the ``cli`` group's row)."""
    argv = [sys.executable, "-m", "hermetic", "run", "--spec", spec_file, "--", TRUE]
    results = _measure_cpu(
        benchmark,
        _process(argv, scratch.out, _env()),
        method="hermetic run",
        baseline=False,
        rounds=RUN_ROUNDS,
        warmup=RUN_WARMUP,
    )
    for r in results:
        assert r.returncode == 0, r.stderr
