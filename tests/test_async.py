"""execute_async: many actions from asyncio, bounded, cancellable."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from test_linux_isolation import spec_for

from hermetic import HermeticExecutor, SpecError

pytestmark = pytest.mark.linux

STAMP = (
    "import json, time; a = time.monotonic(); time.sleep(0.05); "
    "print(json.dumps([a, time.monotonic()]))"
)


@pytest.mark.root
def test_many_actions_run_concurrently_within_the_bound():
    ex = HermeticExecutor.create(spec_for(), max_concurrency=3).unwrap()

    async def main():
        return await asyncio.gather(
            *(ex.execute_async(["python3", "-c", STAMP]) for _ in range(12))
        )

    with ex:
        results = [r.unwrap() for r in asyncio.run(main())]
    assert all(r.success for r in results), [r.stderr for r in results]
    spans = [json.loads(r.stdout) for r in results]
    # At no moment were more than 3 actions running (the sandboxes share
    # the host's monotonic clock).
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 3


@pytest.mark.root
def test_cancelling_the_task_ends_the_sandbox():
    ex = HermeticExecutor.create(spec_for()).unwrap()

    async def main():
        task = asyncio.ensure_future(ex.execute_async(["sleep", "60"]))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    closer = threading.Thread(target=ex.close)
    closer.start()
    closer.join(timeout=20)  # a guard, not a measurement: 60 s means not cancelled
    assert not closer.is_alive()


def test_max_concurrency_is_checked():
    err = HermeticExecutor.create(spec_for(), max_concurrency=0).unwrap_err()
    assert isinstance(err, SpecError) and "max_concurrency" in str(err)
