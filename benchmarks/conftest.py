"""Fixtures for the spawn benchmarks.

This directory is not part of the test suite (the pytest configuration in
pyproject.toml has ``testpaths = ["tests"]``); run it explicitly, see
README.md.  This file is only loaded when ``benchmarks/`` is collected.

Layout of the scratch directory every benchmark gets::

    <scratch>/src   read-only input of the sandbox (sources for gcc and cat)
    <scratch>/out   the declared output directory
    <scratch>/tmp   the declared temp directory
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_*.py"]

#: PATH inside the sandbox and for the direct runs.
PATH = "/usr/bin:/bin"

#: Size of the resident buffer held by the process in the ``true-1GiB`` group.
BIG_RSS_BYTES = 1 << 30
PAGE = 4096


@dataclass(frozen=True)
class Scratch:
    root: str
    src: str
    out: str
    tmp: str


@contextlib.contextmanager
def make_scratch() -> Iterator[Scratch]:
    """A fresh directory with ``src/``, ``out/`` and ``tmp/``, removed afterwards."""
    root = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-bench-"))
    os.chmod(root, 0o755)
    dirs = {name: os.path.join(root, name) for name in ("src", "out", "tmp")}
    for path in dirs.values():
        os.mkdir(path)
    try:
        yield Scratch(root, dirs["src"], dirs["out"], dirs["tmp"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    with make_scratch() as made:
        yield made


# -- rows timed in turn ---------------------------------------------------------


def exit_status(result: Any) -> int | None:
    """The exit status of a round's result: an exit code, a CompletedProcess
    or an ExecutionResult."""
    if isinstance(result, int):
        return result
    return getattr(result, "returncode", getattr(result, "exit_code", None))


def alternate(
    rows: dict[str, Callable[[], Any]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Each row's durations (seconds), a round of every row in turn: on a
    noisy machine a slow stretch then slows every row of a round, where
    pytest-benchmark's row after row would put it on one row only.  Each
    call's result must be an exit status of 0 (an int, a CompletedProcess
    or an ExecutionResult: ``exit_status``), checked as it returns."""
    durations: dict[str, list[float]] = {row: [] for row in rows}
    for n in range(warmup + rounds):
        for row, fn in rows.items():
            start = time.perf_counter()
            result = fn()
            took = time.perf_counter() - start
            assert exit_status(result) == 0, f"{row}: a round failed: {result!r}"
            if n >= warmup:
                durations[row].append(took)
    return durations


def paired_ratio(durations: list[float], base: list[float]) -> float:
    """The median of each round's ratio to the same round's baseline: the
    rows ran in turn, so a slow stretch of the machine slows both sides of
    a pair."""
    return statistics.median(d / b for d, b in zip(durations, base, strict=True))


def record_rounds(
    benchmark: Any,
    durations: list[float],
    *,
    method: str,
    baseline: bool,
    base: list[float],
    **extra: Any,
) -> None:
    """A row's rounds, timed in turn with other rows', as this benchmark's,
    with its ``paired_ratio`` to ``base`` in ``extra_info``.
    pytest-benchmark times only a function it calls itself, one row after
    the other, so the rounds are recorded the way ``benchmark.pedantic``
    records its own (one stats entry, a duration per round), through the
    fixture's internals (pytest-benchmark 4 and 5)."""
    benchmark.extra_info["method"] = method
    benchmark.extra_info["baseline"] = baseline
    benchmark.extra_info["paired_ratio"] = round(paired_ratio(durations, base), 4)
    benchmark.extra_info.update(extra)
    benchmark._mode = "alternating rounds"  # the fixture counts as used
    stats = benchmark._make_stats(1)
    for d in durations:
        stats.update(d)


def make_spec(scratch: Scratch, *, with_sources: bool = False):  # type: ignore[no-untyped-def]
    """The full spec: toolchain read-only, ``out`` writable, ``tmp`` as temp.

    With ``with_sources`` the ``src`` directory is an extra read-only input.
    """
    from hermetic import EnvSet, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec

    inputs = HermeticSpecBuilder.toolchain_inputs()
    if with_sources:
        inputs += (scratch.src,)
    return SandboxSpec(
        inputs=PathSet(inputs),
        outputs=PathSet((scratch.out,)),
        temps=PathSet((scratch.tmp,)),
        # TMPDIR as for the direct runs: gcc's temporary files on the same
        # filesystem on both sides (not the sandbox's private tmpfs /tmp).
        environment=EnvSet.minimal().with_var("PATH", PATH).with_var("TMPDIR", scratch.tmp),
        resources=ResourceLimits.defaults(),
    )


def unlimited(spec: Any) -> Any:
    """``spec`` without resource limits: no cgroup slot, no rlimits but no core."""
    import dataclasses

    from hermetic import ResourceLimits

    none = ResourceLimits(max_processes=0, max_file_size=0, max_open_files=0)
    return dataclasses.replace(spec, resources=none)


def sandbox_env() -> dict[str, str]:
    """The sandbox's environment, so direct and sandboxed runs see the same one."""
    from hermetic import EnvSet

    return dict(EnvSet.minimal().with_var("PATH", PATH).vars)


def _executor(spec, **create: object):  # type: ignore[no-untyped-def]
    from hermetic import HermeticError, HermeticExecutor

    created = HermeticExecutor.create(spec, **create)  # type: ignore[arg-type]
    try:
        ex = created.unwrap()
    except HermeticError as e:
        pytest.skip(f"the sandbox cannot be prepared on this host: {e}")
    # One run up front: a host that cannot create the namespaces fails here,
    # with the reason, rather than inside a timed round.
    try:
        r = ex.execute(["/bin/true"]).unwrap()
    except HermeticError as e:
        ex.close()
        pytest.skip(f"the sandbox cannot run on this host: {e}")
    except BaseException:
        ex.close()
        raise
    if r.exit_code != 0:
        ex.close()
    assert r.exit_code == 0, r
    return ex


@pytest.fixture
def executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """An executor for the full spec."""
    return _executor(make_spec(scratch))


@pytest.fixture
def unlimited_executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """The full spec without resource limits (``unlimited``)."""
    return _executor(unlimited(make_spec(scratch)))


@pytest.fixture
def fresh_netns_executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """The full spec with a new network namespace per action instead of the pool."""
    import dataclasses

    from hermetic import NetworkPolicy

    spec = make_spec(scratch)
    return _executor(dataclasses.replace(spec, network=NetworkPolicy(fresh_namespace=True)))


@pytest.fixture
def unaudited_executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """The full spec with ``audit_writes=False``: path writes are not shown
    to the seccomp listener (refused ones are then not recorded)."""
    return _executor(make_spec(scratch), audit_writes=False)


@pytest.fixture
def no_standby_executor(scratch: Scratch, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The full spec without a standby sandbox: every execute sets up its
    sandbox from scratch (as a single-use executor does)."""
    from hermetic.platforms.linux import prepared as linux

    monkeypatch.setattr(linux, "STANDBY", False)
    ex = _executor(make_spec(scratch))
    assert ex._prepared.standby is None
    return ex


@pytest.fixture
def rebuilt_root_executor(scratch: Scratch, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The full spec with the root built per action, as for an unprivileged
    caller, instead of copied from the prepared mount namespace (root
    callers), and without a standby sandbox."""
    from hermetic.platforms.linux import prepared as linux

    monkeypatch.setattr(linux, "MOUNT_TEMPLATE", False)
    monkeypatch.setattr(linux, "STANDBY", False)
    ex = _executor(make_spec(scratch))
    assert ex._prepared.mount_template is None
    return ex


@pytest.fixture
def source_executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """The full spec plus ``src`` as a read-only input (for gcc and cat)."""
    return _executor(make_spec(scratch, with_sources=True))


@pytest.fixture
def unlimited_source_executor(scratch: Scratch):  # type: ignore[no-untyped-def]
    """``source_executor`` without resource limits (``unlimited``)."""
    return _executor(unlimited(make_spec(scratch, with_sources=True)))


@pytest.fixture
def direct_env() -> dict[str, str]:
    """The sandbox's environment (``sandbox_env``)."""
    return sandbox_env()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def big_rss() -> Iterator[bytearray]:
    """1 GiB allocated and made resident (one byte written per page), freed
    after the module's last test.  Once for the whole group: a gigabyte
    freed between two rows leaves the kernel (and, on a VM reporting free
    pages to its host, a kworker) busy with it while the next row runs."""
    before = _rss_bytes()
    buf = bytearray(BIG_RSS_BYTES)
    buf[::PAGE] = b"\x01" * (BIG_RSS_BYTES // PAGE)
    grown = _rss_bytes() - before
    assert grown >= BIG_RSS_BYTES * 0.95, f"only {grown >> 20} MiB became resident"
    # The same for the allocation: let what the kernel does after it settle
    # before the first row.
    time.sleep(2)
    try:
        yield buf
    finally:
        # Emptying the bytearray frees its buffer now, whoever still refers to it.
        del buf[:]
