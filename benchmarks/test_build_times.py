"""Whole builds, plainly and with every compile through a launcher.

Two real projects, as tests/test_builds.py builds them (the same code,
tests/builds/): zlib configured by CMake and built by Ninja, Lua by its own
makefile, both with two jobs (``ninja -j2``, ``make -j2``: this machine's
cores).  Rows of each group:

- ``plain``: the build as it comes (the baseline);
- ``hermetic-launch``: ``CMAKE_C_COMPILER_LAUNCHER`` and
  ``CMAKE_C_LINKER_LAUNCHER``, or ``CC="hermetic-launch gcc -std=gnu99"``,
  with a warm daemon and the tests' spec (toolchain and sources read-only,
  the build directory writable);
- ``bwrap``: bubblewrap as the launcher, with isolation comparable to the
  spec's (every namespace, the same binds, ``/proc``, ``/dev``, a private
  ``/tmp``, a new session, the same environment), when installed.

Only the build is timed: zlib's configure step and each round's fresh tree
are set up untimed.  The machine is shared and noisy, so the rows are not
timed one after the other: one round of every row, in turn, ``ROUNDS``
times, and each row's rounds are then recorded as its benchmark's (what
``benchmark.pedantic`` records for a row of its own).  Each launcher row
also keeps, in its ``extra_info``, ``paired_ratio``: the median over rounds
of its build's time over the same round's plain build; the launcher row,
``daemon_cpu_ms_per_action``: the daemon's own CPU time (all its threads,
not the actions') per action.  Every build's artifacts are compared with
the first plain build's: the launchers must not change what is built.
Nothing asserts on speed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from builds import harness, sources  # noqa: E402
from conftest import record_rounds  # noqa: E402

#: Rounds of each row, alternating.
ROUNDS = int(os.environ.get("HERMETIC_BUILD_ROUNDS", "7"))
JOBS = 2
BWRAP = "/usr/bin/bwrap"

ROWS = ("plain", "hermetic-launch", "bwrap")
#: The key of the daemon's own CPU time per action, in seconds, per round.
DAEMON_CPU = "daemon-cpu"


def _bwrap_prefix(ws: harness.Workspace, inputs: list[str], outputs: list[str]) -> list[str]:
    """bubblewrap as a launcher, as benchmarks/test_spawn.py's bwrap rows
    run it: every namespace, the toolchain and ``inputs`` read-only,
    ``outputs`` writable, ``/proc``, ``/dev``, a private ``/tmp``, a new
    session, the sandbox's environment.  It keeps the caller's working
    directory when the sandbox has it (the build directory)."""
    from hermetic import HermeticSpecBuilder

    cmd = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in sorted(ws.action_env.items()):
        cmd += ["--setenv", key, value]
    for p in HermeticSpecBuilder.toolchain_inputs():
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        else:
            cmd += ["--ro-bind", p, p]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for p in inputs:
        cmd += ["--ro-bind", p, p]
    for p in outputs:
        cmd += ["--bind", p, p]
    return [*cmd, "--"]


class _Project:
    """One project's build, per row: ``prepare`` (untimed) then ``build``."""

    def __init__(self, ws: harness.Workspace, name: str) -> None:
        self.ws = ws
        self.name = name
        if name == "zlib":
            self.src, self.out = ws.path("zlib"), ws.path("zlib-build")
            ws.unpack("zlib", "zlib")
            ws.fresh_dir("zlib-build")
            self.inputs, self.outputs = [self.src], [self.out]
        else:
            self.src = self.out = ws.path("lua")
            ws.unpack("lua5.4", "lua")
            self.inputs, self.outputs = [], [self.out]
        ws.write_spec(self.inputs, self.outputs)
        ws.read_action_env()  # and starts the daemon, with a warm executor
        self.launchers: dict[str, list[str]] = {
            "plain": [],
            "hermetic-launch": harness.launcher_prefix(ws.spec_file),
        }
        if os.access(BWRAP, os.X_OK):
            self.launchers["bwrap"] = _bwrap_prefix(ws, self.inputs, self.outputs)

    def prepare(self, row: str) -> None:
        ws = self.ws
        if self.name == "zlib":
            ws.unpack("zlib", "zlib")
            ws.fresh_dir("zlib-build")
            launcher = self.launchers[row]
            args = [harness.CMAKE, "-S", self.src, "-B", self.out, *harness.ZLIB_CMAKE_ARGS]
            if launcher:
                words = ";".join(launcher)
                args += [
                    f"-DCMAKE_C_COMPILER_LAUNCHER={words}",
                    f"-DCMAKE_C_LINKER_LAUNCHER={words}",
                ]
            ws.run(args, cwd=self.out, env=self._env(row))
        else:
            ws.unpack("lua5.4", "lua")

    def build(self, row: str) -> None:
        ws = self.ws
        if self.name == "zlib":
            ws.run([harness.NINJA, f"-j{JOBS}", "-C", self.out], cwd=self.out, env=self._env(row))
        else:
            harness.build_lua(ws, self.out, jobs=JOBS, launcher=self.launchers[row])

    def _env(self, row: str) -> dict[str, str]:
        return self.ws.launcher_env() if row == "hermetic-launch" else self.ws.plain_env()


def _daemon_load(ws: harness.Workspace) -> tuple[float, int]:
    """The daemon's own CPU time so far (all its threads, not the actions),
    in seconds, and the connections it has served."""
    pid = ws.daemon_pid()
    status = ws.daemon_status()
    assert pid is not None and status is not None, "the daemon is not running"
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK"), int(status["served"])


@pytest.fixture(scope="module")
def tarballs() -> dict[str, str]:
    missing = harness.missing_tools()
    if missing:
        pytest.skip(f"the build benchmarks need {', '.join(missing)}")
    if not harness.native_launcher():
        pytest.skip(f"{harness.LAUNCH} is missing: install the package with its launcher")
    try:
        return sources.fetch()
    except sources.Unavailable as e:
        pytest.skip(f"the sources to build: {e}")
        raise  # unreachable


@pytest.fixture(scope="module")
def timings(tarballs: dict[str, str]) -> Iterator[dict[tuple[str, str], list[float]]]:
    """Every row's durations, measured alternately, per project."""
    ws = harness.Workspace.create()
    found: dict[tuple[str, str], list[float]] = {}
    try:
        for name in ("zlib", "lua"):
            project = _Project(ws, name)
            reference: dict[str, Any] | None = None
            for _ in range(ROUNDS):
                for row in project.launchers:
                    project.prepare(row)
                    daemon = _daemon_load(ws) if row == "hermetic-launch" else (0.0, 0)
                    start = time.perf_counter()
                    project.build(row)
                    found.setdefault((name, row), []).append(time.perf_counter() - start)
                    if row == "hermetic-launch":
                        cpu, served = _daemon_load(ws)
                        # Less the status request that asked the first count.
                        per_action = (cpu - daemon[0]) / max(1, served - daemon[1] - 1)
                        found.setdefault((name, DAEMON_CPU), []).append(per_action)
                    built = harness.artifacts(project.out)
                    if reference is None:
                        reference = built
                    assert built == reference, f"{name} through {row} built something else"
            shutil.rmtree(project.out, ignore_errors=True)

        yield found
    finally:
        ws.remove()


def _row(project: str) -> Callable[[Any, Any, str], None]:
    def test(benchmark: Any, timings: dict[tuple[str, str], list[float]], row: str) -> None:
        durations = timings.get((project, row))
        if durations is None:
            pytest.skip(f"{BWRAP} is missing: install bubblewrap to compare with it")
        extra: dict[str, Any] = {"jobs": JOBS}
        daemon_cpu = timings.get((project, DAEMON_CPU), []) if row == "hermetic-launch" else []
        if daemon_cpu:
            ms = statistics.median(daemon_cpu) * 1e3
            extra["daemon_cpu_ms_per_action"] = round(ms, 3)
        plain = timings[(project, "plain")]
        record_rounds(
            benchmark, durations, method=row, baseline=row == "plain", base=plain, **extra
        )

    return test


test_zlib_cmake_ninja = pytest.mark.benchmark(group="build-zlib")(
    pytest.mark.parametrize("row", ROWS)(_row("zlib"))
)
test_lua_make = pytest.mark.benchmark(group="build-lua")(
    pytest.mark.parametrize("row", ROWS)(_row("lua"))
)
