"""ResourceMonitor: aggregation over executions, live snapshots, breaches."""

from __future__ import annotations

import threading
import time

import pytest

import hermetic
from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    PathSet,
    ResourceLimits,
    ResourceUsage,
    SandboxSpec,
)

pytestmark = [pytest.mark.linux, pytest.mark.root]

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass"


@pytest.fixture(scope="module")
def ex() -> HermeticExecutor:
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    return HermeticExecutor.create(spec).unwrap()


@pytest.mark.cgroup
def test_started_monitor_aggregates_every_execution(ex):
    monitor = hermetic.create_monitor(ResourceLimits(max_cpu_time_ms=10_000))
    ex.execute(["true"]).unwrap()  # before start: not counted
    monitor.start()
    results = [
        ex.execute(["/usr/bin/python3", "-c", BUSY.format(s=0.1)]).unwrap() for _ in range(3)
    ]
    usage = monitor.stop()
    ex.execute(["true"]).unwrap()  # after stop: not counted
    assert monitor.executions == 3
    assert usage.cpu_time == pytest.approx(sum(r.usage.cpu_time for r in results))
    assert usage.cpu_time >= 0.3
    assert usage.source("cpu_time") == "rusage"
    assert usage.source("peak_memory") == results[0].usage.source("peak_memory")
    assert monitor.violations() == []


@pytest.mark.cgroup
def test_explicit_monitor_counts_one_execution(ex):
    monitor = hermetic.create_monitor()
    ex.execute(["true"], monitor=monitor).unwrap()
    assert monitor.executions == 1 and not monitor.started


@pytest.mark.cgroup
def test_snapshot_is_live_while_an_action_runs(ex):
    monitor = hermetic.create_monitor().start()
    try:
        done = threading.Event()
        t = threading.Thread(
            target=lambda: (ex.execute(["/usr/bin/python3", "-c", BUSY.format(s=1.0)]), done.set())
        )
        t.start()
        # Mid-run: sampled until psutil has seen CPU spent (a second of it
        # is coming), the deadline only a bound.
        deadline = time.monotonic() + 60
        live = monitor.snapshot()
        while (live.cpu_time or 0) < 0.1 and not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
            live = monitor.snapshot()
        t.join()
        final = monitor.snapshot()
    finally:
        monitor.stop()
    assert monitor.executions == 1
    # Mid-run, psutil saw CPU already spent (the action was not finished).
    assert live.cpu_time is not None and 0.1 <= live.cpu_time < final.cpu_time
    assert "psutil" in (live.source("cpu_time") or "")
    assert live.peak_processes == 1


def test_would_exceed_and_breaches():
    monitor = hermetic.create_monitor(ResourceLimits(max_memory_bytes=1 << 20, max_disk_io=100))
    assert monitor.would_exceed(ResourceUsage(peak_memory=2 << 20))
    assert not monitor.would_exceed(ResourceUsage(peak_memory=1 << 19, io_write_bytes=50))
    assert monitor.would_exceed(ResourceUsage(io_read_bytes=60, io_write_bytes=60))
    assert not monitor.would_exceed(ResourceUsage())  # unknown figures break nothing


@pytest.mark.cgroup
def test_violations_of_executions_are_collected(ex):
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        resources=ResourceLimits(max_output_bytes=10),
    )
    limited = HermeticExecutor.create(spec).unwrap()
    with hermetic.create_monitor(spec.resources) as monitor:
        limited.execute(["sh", "-c", "echo 0123456789abcdef"]).unwrap()
    # Cut afterwards, or stopped by the periodic check on a slow host.
    [v] = monitor.violations()
    assert "max_output_bytes" in v.limit and v.decision in ("truncated", "killed")
