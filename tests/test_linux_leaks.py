"""Nothing is left behind: 200 executions leave descriptors, child processes,
mounts and temporary directories as they were."""

from __future__ import annotations

import gc
import os
import tempfile

import psutil
import pytest

from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    PathSet,
    ResourceLimits,
    SandboxSpec,
)
from hermetic.platforms.linux.standby import KEEPER

pytestmark = [pytest.mark.linux, pytest.mark.slow]


def _state() -> dict[str, object]:
    me = psutil.Process()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    tmp = tempfile.gettempdir()
    return {
        "fds": sorted(os.listdir("/proc/self/fd")),
        "children": sorted(p.pid for p in me.children(recursive=True)),
        "mounts": mounts,
        "tmp": sorted(os.listdir(tmp)),
        "threads": me.num_threads(),
    }


@pytest.mark.root
def test_200_executions_leave_nothing_behind(scratch, monkeypatch):
    # hermetic's temporary files go where ``tempfile`` says: a directory of
    # this test's own, so that other processes' files in /tmp do not count.
    private = os.path.join(scratch, "tmp")
    os.mkdir(private)
    monkeypatch.setattr(tempfile, "tempdir", private)
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet((out,)),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    ex = HermeticExecutor.create(spec).unwrap()
    # Warm up before the snapshot: the probe, the plan, and the second
    # execute starts the standby thread and grows the pools to what a
    # standby and an action hold at once.  close() drops the standby (a
    # child process) and the prepared mount namespace, here and at the end.
    for _ in range(3):
        ex.execute(["true"]).unwrap()
    ex.close()
    # Earlier tests' executors, and their standby sandboxes (dropped by the
    # standby thread).
    gc.collect()
    KEEPER.flush()
    before = _state()
    outcomes = {"ok": 0, "fail": 0, "timeout": 0, "setup-error": 0}
    for i in range(200):
        kind = i % 4
        if kind == 0:
            r = ex.execute(["sh", "-c", f"echo {i} > {out}/f; sleep 0 &"]).unwrap()
            outcomes["ok"] += r.success
        elif kind == 1:
            r = ex.execute(["sh", "-c", "exit 3"], stdin=b"x" * 1000).unwrap()
            outcomes["fail"] += r.exit_code == 3
        elif kind == 2:
            r = ex.execute(["sh", "-c", "sleep 5 & sleep 5"], timeout=0.05).unwrap()
            outcomes["timeout"] += r.timed_out
        else:
            outcomes["setup-error"] += ex.execute(["no-such-command"]).is_err()
    assert outcomes == {"ok": 50, "fail": 50, "timeout": 50, "setup-error": 50}
    ex.close()
    assert _state() == before
