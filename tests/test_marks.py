"""``-m`` selects by the marks the tests are collected with (tests/conftest.py):
the runner modes, and the cgroup versions a test exercises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.linux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("root", "unprivileged", "landlock")
ISOLATION = "tests/test_linux_isolation.py"
#: Besides the runner fixtures: an indirectly parametrized one, a test's own
#: mode parameter, fixtures of their own, and tests marked by hand.
FILES = (
    ISOLATION,
    "tests/test_linux_landlock.py",
    "tests/test_linux_exec_landlock.py",
    "tests/test_linux_output_bounds.py",
    "tests/test_output_trees.py",
)


def collected(*args: str) -> list[str]:
    """The node ids ``pytest --collect-only`` selects with ``args``."""
    # Run from "/": from the checkout, ``-m`` would put its uncompiled
    # hermetic/ ahead of the installed package.
    paths = [os.path.join(ROOT, a) if a.startswith("tests/") else a for a in args]
    config = ["--rootdir", ROOT, "-c", os.path.join(ROOT, "pyproject.toml")]
    p = subprocess.run(
        [sys.executable, "-m", "pytest", *config, "--collect-only", "-q", "-p", "no:cacheprovider"]
        + paths,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=300,
    )
    # 5: nothing selected, which the assertions below tell apart.
    assert p.returncode in (0, 5), p.stdout + p.stderr
    return [line for line in p.stdout.splitlines() if "::" in line]


def mode_of(node_id: str) -> str | None:
    """The runner mode in a node id's parameters (``test_x[root-...]``)."""
    if not node_id.endswith("]"):
        return None
    found = [p for p in node_id[node_id.index("[") + 1 : -1].split("-") if p in MODES]
    assert len(found) <= 1, node_id
    return found[0] if found else None


def in_isolation(ids: list[str]) -> list[str]:
    return [i for i in ids if i.startswith(f"{ISOLATION}::")]


@pytest.mark.slow  # a collection of these files per mode
def test_each_runner_mode_selects_its_runs_and_only_them() -> None:
    every = collected(*FILES)
    for mode in MODES:
        selected = collected(*FILES, "-m", mode)
        runs = [i for i in every if mode_of(i) == mode]
        assert in_isolation(runs), mode  # each mode has runs there
        # Every run in this mode; besides, only tests marked by hand, which
        # have no mode parameter (there are none in the isolation tests).
        assert set(runs) <= set(selected), mode
        assert all(mode_of(i) in (mode, None) for i in selected), mode
        assert in_isolation(selected) == in_isolation(runs), mode
    exec_at = "tests/test_linux_exec_landlock.py::test_an_exec_at_the_allowed_address_is_refused"
    assert f"{exec_at}[landlock]" in runs
    # Without root: the other modes and the tests without runner modes.
    not_root = collected(ISOLATION, "-m", "not root")
    assert not_root == [i for i in in_isolation(every) if mode_of(i) != "root"]


def test_cgroup_marks_select_the_root_runs_that_use_a_cgroup() -> None:
    files = ("tests/test_linux_limits.py", ISOLATION)
    v1, v2 = collected(*files, "-m", "cgroup_v1"), collected(*files, "-m", "cgroup_v2")
    limits = "tests/test_linux_limits.py::"
    # A limit enforced by whichever version the host has: both.
    assert f"{limits}test_memory_limit_kills_and_names_the_limit" in v1
    assert f"{limits}test_memory_limit_kills_and_names_the_limit" in v2
    # The cgroup v1 worker threads: v1 only.
    worker = f"{limits}test_a_worker_thread_moves_itself_into_every_group_of_its_slot"
    assert worker in v1 and worker not in v2
    # Of a test with runner modes, the root run only.
    bound = f"{ISOLATION}::test_process_limit_bounds_the_whole_sandbox"
    assert f"{bound}[root-max_processes]" in v2
    assert f"{bound}[unprivileged-max_processes]" not in v1 + v2
    assert all(mode_of(i) in (None, "root") for i in v1 + v2)
