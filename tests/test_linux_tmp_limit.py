"""The private /tmp is a sized tmpfs, and filling it is refused and recorded.

A tmpfs's own default size is half of the host's RAM, and its pages are
memory that no process's resident size shows: without a size an action
could hold gigabytes in /tmp past a memory limit that is only sampled.
"""

from __future__ import annotations

import textwrap

import pytest

from hermetic import ResourceLimits, SandboxSpec, SpecError
from hermetic.platforms.linux import plan as linux_plan

pytestmark = pytest.mark.linux

PY = "/usr/bin/python3"
MiB = 1 << 20

#: Writes 1 MiB blocks to /tmp until a write fails or ``cap`` MiB are
#: written, prints the errno and the bytes written, then waits to be ended
#: (with /tmp held full, for the periodic check to see).  At a memory limit
#: the print itself may fail (ENOMEM): it still waits, holding what it holds.
FILL = """
import errno, os, sys, time
cap = int(sys.argv[1])
fd = os.open("/tmp/fill", os.O_WRONLY | os.O_CREAT, 0o600)
block, written, err = b"x" * (1 << 20), 0, "none"
while written < cap << 20:
    try:
        written += os.write(fd, block)
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
        break
try:
    print(err, written, flush=True)
except OSError:
    pass
time.sleep(600)
"""


def _spec(resources: ResourceLimits) -> SandboxSpec:
    from test_linux_isolation import spec_for

    return spec_for(resources=resources)


def _resource_violations(raw: dict[str, object]) -> list[dict[str, str]]:
    found = raw["violations"]
    assert isinstance(found, list)
    return [v for v in found if v["kind"] == "resource"]


def test_a_write_beyond_the_private_tmp_gets_enospc_and_is_recorded(runner):
    spec = _spec(ResourceLimits(max_tmp_bytes=8 * MiB))
    # The action waits to be ended: the timeout ends it.  It need only cover
    # the interpreter's start and an 8 MiB write, then the periodic check
    # (at most 100 ms apart, docs/limits.md) sees /tmp full.
    out = runner.run(spec, [PY, "-c", textwrap.dedent(FILL), "64"], timeout=2)
    assert out.error is None, out.error
    err, written = out.text.split()
    assert err == "ENOSPC"
    assert int(written) <= 8 * MiB
    assert out.timed_out
    tmp = [v for v in _resource_violations(out.raw) if "/tmp" in v["attempted"]]
    assert len(tmp) == 1, out.raw["violations"]
    assert tmp[0]["decision"] == "denied"
    assert tmp[0]["limit"] == f"max_tmp_bytes={8 * MiB}"


#: Waits a moment (so that the periodic check has run), fills /tmp until a
#: write fails, and exits at once: no check need see /tmp full while the
#: sandbox runs.
FILL_AND_EXIT = """
import errno, os, time
time.sleep(0.5)
fd = os.open("/tmp/fill", os.O_WRONLY | os.O_CREAT, 0o600)
block, err = b"x" * (1 << 20), "none"
for _ in range(64):
    try:
        os.write(fd, block)
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
        break
print(err, flush=True)
"""


def test_a_private_tmp_left_full_at_exit_is_recorded(runner):
    # The check keeps the tmpfs open once it has seen it, and looks once
    # more after the sandbox is gone.
    spec = _spec(ResourceLimits(max_tmp_bytes=8 * MiB))
    out = runner.run(spec, [PY, "-c", textwrap.dedent(FILL_AND_EXIT)], timeout=60)
    assert out.error is None, out.error
    assert out.text.split() == ["ENOSPC"]
    assert not out.timed_out and out.exit_code == 0
    tmp = [v for v in _resource_violations(out.raw) if "/tmp" in v["attempted"]]
    assert len(tmp) == 1, out.raw["violations"]
    assert tmp[0]["decision"] == "denied"
    assert tmp[0]["limit"] == f"max_tmp_bytes={8 * MiB}"


@pytest.mark.cgroup
def test_the_private_tmp_counts_against_the_memory_limit(runner):
    # Root runs in a cgroup (its memory counts the tmpfs's pages); a normal
    # user's limit is sampled, best effort, and the sample adds /tmp's usage.
    limits = ResourceLimits(max_memory_bytes=96 * MiB, best_effort=True)
    out = runner.run(_spec(limits), [PY, "-c", textwrap.dedent(FILL), "512"], timeout=30)
    assert out.error is None, out.error
    words = out.text.split()
    if len(words) == 2:  # printed whole: not killed first, nor refused the print
        assert int(words[1]) <= 96 * MiB
    found = _resource_violations(out.raw)
    # Stopped at the memory limit: refused (the /tmp capped at it is full)
    # or killed for memory, never 512 MiB held in /tmp.
    assert any(
        "/tmp" in v["attempted"] or "max_memory_bytes" in (v["limit"] or "") for v in found
    ), out.raw["violations"]


def test_max_tmp_bytes_round_trips_and_is_validated():
    spec = SandboxSpec(resources=ResourceLimits(max_tmp_bytes=12 * MiB))
    assert SandboxSpec.from_json(spec.to_json()).resources.max_tmp_bytes == 12 * MiB
    assert ResourceLimits().max_tmp_bytes == 256 * MiB
    for bad in (0, -1, "1", True):
        with pytest.raises(SpecError, match="max_tmp_bytes"):
            ResourceLimits(max_tmp_bytes=bad)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="max_tmp_bytes"):
        SandboxSpec.from_json('{"resources": {"max_tmp_bytes": 0}}')


@pytest.mark.parametrize(
    ("limits", "size"),
    [
        (ResourceLimits(), 256 * MiB),
        (ResourceLimits(max_tmp_bytes=MiB), MiB),
        (ResourceLimits(max_memory_bytes=64 * MiB), 64 * MiB),
        (ResourceLimits(max_memory_bytes=64 * MiB, max_tmp_bytes=MiB), MiB),
    ],
)
def test_the_private_tmp_is_mounted_with_its_size(limits, size):
    spec = SandboxSpec(resources=limits)
    ops = linux_plan.build_ops(spec)
    (tmp,) = [o for o in ops if o.kind == linux_plan.OP_TMPFS and o.dst == "/tmp"]
    assert tmp.data is not None
    opts = dict(o.split("=") for o in tmp.data.split(","))
    assert int(opts["size"]) == size
    assert linux_plan.TMP_INODES_MIN <= int(opts["nr_inodes"]) <= linux_plan.TMP_INODES_MAX
    assert linux_plan.private_tmp(spec, ops) == size
