"""What a hermetic sandbox costs per action, next to plain process spawning.

Each group runs the same command several ways in one session so the rows
can be compared side by side (``python benchmarks/compare.py FILE``):

- ``true``: ``/bin/true`` via ``os.posix_spawn`` (the baseline),
  ``subprocess.run`` and ``HermeticExecutor.execute`` with the full spec,
  once with the pooled network namespace (the default), once with
  ``NetworkPolicy(fresh_namespace=True)`` and once without resource limits
  (no cgroup slot: the cost of limits and accounting is the difference),
  and with an executor created and closed around every action for a spec
  of its own ("one shot", as for a build system whose actions each
  declare their own inputs).
- ``true-1GiB``: the same three while this process holds 1 GiB resident.
  glibc's posix_spawn uses ``clone(CLONE_VM | CLONE_VFORK)``, CPython's
  subprocess uses vfork when it can, and the sandbox is cloned with
  ``CLONE_VM``: none of them copies the parent's page tables, so the row
  should match ``true``.  A copy (fork) would show up as milliseconds.
- ``gcc``: ``gcc -c`` of a small C file, directly (baseline), sandboxed,
  and one shot (an executor per action, each with its own source directory).
- ``cat``: ``sh -c 'cat in > out'``, directly (baseline) and sandboxed.
- ``writes``: a shell loop opening a file in the outputs for writing 200
  times, directly (baseline), sandboxed, and sandboxed with
  ``audit_writes=False``: the difference is what auditing every open for
  writing costs (a round trip to the seccomp listener each), allowed or
  refused.

Every round's exit status is recorded and checked after the timed loop;
nothing here asserts on speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import exit_status

TRUE = "/bin/true"
GCC = "/usr/bin/gcc"
SH = "/bin/sh"
#: PATH for bubblewrap's sandbox (the same as the specs').
PATH = "/usr/bin:/bin"

TRUE_ROUNDS, TRUE_WARMUP = 300, 20
GCC_ROUNDS, GCC_WARMUP = 30, 3
CAT_ROUNDS, CAT_WARMUP = 100, 10
#: Opens for writing per action in the ``writes`` group: each is one round
#: trip to the seccomp listener when writes are audited.
WRITES = 200
WRITES_ROUNDS, WRITES_WARMUP = 30, 3

HELLO_C = """\
#include <stdio.h>

static int square(int x) { return x * x; }

int main(void)
{
    for (int i = 0; i < 3; i++)
        printf("%d\\n", square(i));
    return 0;
}
"""

CAT_INPUT = bytes(range(256)) * 256  # 64 KiB


def _measure(
    benchmark: Any, fn: Callable[[], Any], *, method: str, baseline: bool, rounds: int, warmup: int
) -> list[Any]:
    """Time ``fn`` for ``rounds`` rounds; return what every call returned (timed or not)."""
    benchmark.extra_info["method"] = method
    benchmark.extra_info["baseline"] = baseline
    results: list[Any] = []

    def once() -> None:
        results.append(fn())

    benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=warmup)
    assert len(results) == rounds + warmup
    return results


def _all_ok(results: list[Any]) -> None:
    """Each entry is an exit code, a CompletedProcess or an ExecutionResult."""
    for r in results:
        assert exit_status(r) == 0, f"a round failed: {r!r}"


# -- /bin/true ---------------------------------------------------------------


def _posix_spawn_true(env: dict[str, str]) -> Callable[[], int]:
    def run() -> int:
        pid = os.posix_spawn(TRUE, [TRUE], env)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    return run


def _subprocess_true(env: dict[str, str]) -> Callable[[], subprocess.CompletedProcess[bytes]]:
    return lambda: subprocess.run([TRUE], env=env)


def _hermetic_true(executor: Any) -> Callable[[], Any]:
    return lambda: executor.execute([TRUE]).unwrap()


@pytest.mark.benchmark(group="true")
def test_true_posix_spawn(benchmark: Any, direct_env: dict[str, str]) -> None:
    _all_ok(
        _measure(
            benchmark,
            _posix_spawn_true(direct_env),
            method="posix_spawn",
            baseline=True,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )


@pytest.mark.benchmark(group="true")
def test_true_subprocess(benchmark: Any, direct_env: dict[str, str]) -> None:
    _all_ok(
        _measure(
            benchmark,
            _subprocess_true(direct_env),
            method="subprocess",
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )


#: The sandboxed variants of the group: fixture -> method tag.
HERMETIC_VARIANTS = {
    "executor": "hermetic",
    "unlimited_executor": "hermetic-no-limits",
    "fresh_netns_executor": "hermetic-fresh-netns",
    "no_standby_executor": "hermetic-no-standby",
    "rebuilt_root_executor": "hermetic-rebuilt-root",
}


@pytest.mark.benchmark(group="true")
@pytest.mark.parametrize("variant", list(HERMETIC_VARIANTS))
def test_true_hermetic(benchmark: Any, request: pytest.FixtureRequest, variant: str) -> None:
    _all_ok(
        _measure(
            benchmark,
            _hermetic_true(request.getfixturevalue(variant)),
            method=HERMETIC_VARIANTS[variant],
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )


def _one_shot(scratch: Any, rounds: int, argv_for: Callable[[str], list[str]]) -> Callable[[], Any]:
    """An executor per action, as a build system whose actions each declare
    their own inputs uses it: every call creates one for a spec of its own
    (the full spec plus a directory of sources no other call declares),
    executes ``argv_for(that directory)`` in the outputs and closes it.
    Nothing of an executor is carried over; what the process keeps (the
    pooled network namespaces, the threads) is."""
    import dataclasses

    from conftest import make_spec

    from hermetic import HermeticExecutor, PathSet

    base = make_spec(scratch)
    jobs = []
    for i in range(rounds):
        own = os.path.join(scratch.src, f"action-{i}")
        os.mkdir(own)
        spec = dataclasses.replace(base, inputs=PathSet((*base.inputs, own)))
        jobs.append((spec, argv_for(own)))
    pending = iter(jobs)

    def once() -> Any:
        spec, argv = next(pending)
        ex = HermeticExecutor.create(spec).unwrap()
        try:
            return ex.execute(argv, cwd=scratch.out).unwrap()
        finally:
            ex.close()

    return once


def _staged(
    scratch: Any, rounds: int, name: str, text: str, argv_for: Callable[[str], list[str]]
) -> Callable[[], Any]:
    """The same actions as ``_one_shot`` (each with an input of its own, the
    file ``name`` holding ``text`` in a directory of its own), on one
    executor: its spec declares a staging directory, and before each
    action ``stage_inputs`` puts that action's file in it (a hard link);
    ``argv_for(the staged file)`` runs.  The staging is timed with the
    action."""
    import dataclasses

    from conftest import _executor, make_spec

    from hermetic import PathSet, stage_inputs

    stage = os.path.join(scratch.root, "stage")
    os.mkdir(stage)
    base = make_spec(scratch)
    executor = _executor(dataclasses.replace(base, inputs=PathSet((*base.inputs, stage))))
    jobs = []
    for i in range(rounds):
        own = os.path.join(scratch.src, f"action-{i}")
        os.mkdir(own)
        with open(os.path.join(own, name), "w") as f:
            f.write(text)
        jobs.append((os.path.join(own, name), argv_for(os.path.join(stage, name))))
    pending = iter(jobs)

    def once() -> Any:
        src, argv = next(pending)
        stage_inputs(stage, {name: src})
        return executor.execute(argv, cwd=scratch.out).unwrap()

    return once


@pytest.mark.benchmark(group="true")
def test_true_hermetic_staged(benchmark: Any, scratch: Any) -> None:
    _all_ok(
        _measure(
            benchmark,
            _staged(scratch, TRUE_ROUNDS + TRUE_WARMUP, "input", "in\n", lambda _: [TRUE]),
            method="hermetic-staged",
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )


@pytest.mark.benchmark(group="true")
def test_true_hermetic_one_shot(benchmark: Any, scratch: Any) -> None:
    _all_ok(
        _measure(
            benchmark,
            _one_shot(scratch, TRUE_ROUNDS + TRUE_WARMUP, lambda _: [TRUE]),
            method="hermetic-one-shot",
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )


# -- gcc -c ------------------------------------------------------------------

needs_gcc = pytest.mark.skipif(
    not os.access(GCC, os.X_OK),
    reason=f"{GCC} is missing: install gcc (Debian: apt-get install gcc) to run the gcc group",
)


def _gcc_job(scratch: Any) -> tuple[list[str], str]:
    src = os.path.join(scratch.src, "hello.c")
    obj = os.path.join(scratch.out, "hello.o")
    with open(src, "w") as f:
        f.write(HELLO_C)
    return [GCC, "-c", src, "-o", obj], obj


def _check_object(obj: str) -> None:
    with open(obj, "rb") as f:
        assert f.read(4) == b"\x7fELF", f"{obj} is not an ELF object"


def _gcc_row(
    benchmark: Any, fn: Callable[[], Any], obj: str, *, method: str, baseline: bool = False
) -> None:
    """A row of the gcc group: ``fn`` timed, every round's status checked,
    and the object it wrote checked at the end."""
    _all_ok(
        _measure(
            benchmark, fn, method=method, baseline=baseline, rounds=GCC_ROUNDS, warmup=GCC_WARMUP
        )
    )
    _check_object(obj)


@needs_gcc
@pytest.mark.benchmark(group="gcc")
def test_gcc_direct(benchmark: Any, scratch: Any, direct_env: dict[str, str]) -> None:
    argv, obj = _gcc_job(scratch)
    env = {**direct_env, "TMPDIR": scratch.tmp}
    _gcc_row(
        benchmark,
        lambda: subprocess.run(argv, env=env, cwd=scratch.out, capture_output=True),
        obj,
        method="direct",
        baseline=True,
    )


@needs_gcc
@pytest.mark.benchmark(group="gcc")
@pytest.mark.parametrize(
    "variant", ["source_executor", "unlimited_source_executor"], ids=["limits", "no-limits"]
)
def test_gcc_hermetic(
    benchmark: Any, scratch: Any, request: pytest.FixtureRequest, variant: str
) -> None:
    argv, obj = _gcc_job(scratch)
    executor = request.getfixturevalue(variant)
    _gcc_row(
        benchmark,
        lambda: executor.execute(argv, cwd=scratch.out).unwrap(),
        obj,
        method="hermetic" if variant == "source_executor" else "hermetic-no-limits",
    )


@needs_gcc
@pytest.mark.benchmark(group="gcc")
def test_gcc_hermetic_one_shot(benchmark: Any, scratch: Any) -> None:
    """gcc -c with an executor per action (see _one_shot): each action's
    source in a directory of its own, the object in the outputs."""
    obj = os.path.join(scratch.out, "hello.o")

    def job(own: str) -> list[str]:
        src = os.path.join(own, "hello.c")
        with open(src, "w") as f:
            f.write(HELLO_C)
        return [GCC, "-c", src, "-o", obj]

    _gcc_row(
        benchmark, _one_shot(scratch, GCC_ROUNDS + GCC_WARMUP, job), obj, method="hermetic-one-shot"
    )


@needs_gcc
@pytest.mark.benchmark(group="gcc")
def test_gcc_hermetic_staged(benchmark: Any, scratch: Any) -> None:
    """The one-shot row's actions on one executor, each action's source
    staged before it (see _staged)."""
    obj = os.path.join(scratch.out, "hello.o")
    staged = _staged(
        scratch,
        GCC_ROUNDS + GCC_WARMUP,
        "hello.c",
        HELLO_C,
        lambda path: [GCC, "-c", path, "-o", obj],
    )
    _gcc_row(benchmark, staged, obj, method="hermetic-staged")


# -- sh -c 'cat in > out' ------------------------------------------------------


def _cat_job(scratch: Any) -> tuple[list[str], str]:
    src = os.path.join(scratch.src, "in.bin")
    dst = os.path.join(scratch.out, "out.bin")
    with open(src, "wb") as f:
        f.write(CAT_INPUT)
    return [SH, "-c", f"cat {src} > {dst}"], dst


def _check_copy(dst: str) -> None:
    with open(dst, "rb") as f:
        assert f.read() == CAT_INPUT, f"{dst} differs from the input"


@pytest.mark.benchmark(group="cat")
def test_cat_direct(benchmark: Any, scratch: Any, direct_env: dict[str, str]) -> None:
    argv, dst = _cat_job(scratch)
    results = _measure(
        benchmark,
        lambda: subprocess.run(argv, env=direct_env, cwd=scratch.out, capture_output=True),
        method="direct",
        baseline=True,
        rounds=CAT_ROUNDS,
        warmup=CAT_WARMUP,
    )
    _all_ok(results)
    _check_copy(dst)


@pytest.mark.benchmark(group="cat")
def test_cat_hermetic(benchmark: Any, scratch: Any, source_executor: Any) -> None:
    argv, dst = _cat_job(scratch)
    results = _measure(
        benchmark,
        lambda: source_executor.execute(argv, cwd=scratch.out).unwrap(),
        method="hermetic",
        baseline=False,
        rounds=CAT_ROUNDS,
        warmup=CAT_WARMUP,
    )
    _all_ok(results)
    _check_copy(dst)


# -- many writes: what auditing path writes costs -----------------------------


def _writes_job(scratch: Any) -> list[str]:
    """WRITES opens for writing of a file in the outputs, one process."""
    out = os.path.join(scratch.out, "f")
    loop = f"i=0; while [ $i -lt {WRITES} ]; do : > {out}; i=$((i+1)); done"
    return [SH, "-c", loop]


@pytest.mark.benchmark(group="writes")
def test_writes_direct(benchmark: Any, scratch: Any, direct_env: dict[str, str]) -> None:
    argv = _writes_job(scratch)
    _all_ok(
        _measure(
            benchmark,
            lambda: subprocess.run(argv, env=direct_env, capture_output=True),
            method="direct",
            baseline=True,
            rounds=WRITES_ROUNDS,
            warmup=WRITES_WARMUP,
        )
    )


@pytest.mark.benchmark(group="writes")
@pytest.mark.parametrize(
    "variant", ["executor", "unaudited_executor"], ids=["audited", "unaudited"]
)
def test_writes_hermetic(
    benchmark: Any, scratch: Any, request: pytest.FixtureRequest, variant: str
) -> None:
    argv = _writes_job(scratch)
    executor = request.getfixturevalue(variant)
    _all_ok(
        _measure(
            benchmark,
            lambda: executor.execute(argv).unwrap(),
            method="hermetic" if variant == "executor" else "hermetic-no-write-audit",
            baseline=False,
            rounds=WRITES_ROUNDS,
            warmup=WRITES_WARMUP,
        )
    )


# -- bubblewrap, when installed ---------------------------------------------

BWRAP = "/usr/bin/bwrap"
needs_bwrap = pytest.mark.skipif(
    not os.access(BWRAP, os.X_OK),
    reason=f"{BWRAP} is missing: install bubblewrap (Debian: apt-get install bubblewrap) "
    "to compare with it",
)


def _bwrap(scratch: Any, argv: list[str], *, with_sources: bool = False) -> list[str]:
    """bubblewrap with isolation comparable to the full spec: every namespace
    (a fresh network one: bwrap has no pool), the toolchain read-only, out
    and tmp writable, /proc, /dev, a private /tmp, a new session, the same
    environment."""
    from hermetic import HermeticSpecBuilder

    cmd = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    cmd += ["--setenv", "PATH", PATH, "--setenv", "LANG", "C.UTF-8", "--setenv", "TZ", "UTC"]
    cmd += ["--setenv", "TMPDIR", scratch.tmp]
    for p in HermeticSpecBuilder.toolchain_inputs():
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        else:
            cmd += ["--ro-bind", p, p]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if with_sources:
        cmd += ["--ro-bind", scratch.src, scratch.src]
    cmd += ["--bind", scratch.out, scratch.out, "--bind", scratch.tmp, scratch.tmp]
    cmd += ["--chdir", scratch.out, "--", *argv]
    return cmd


def _bwrap_run(argv: list[str]) -> Callable[[], subprocess.CompletedProcess[bytes]]:
    return lambda: subprocess.run(argv, capture_output=True)


def _bwrap_true(benchmark: Any, scratch: Any, rounds: int, warmup: int) -> None:
    _all_ok(
        _measure(
            benchmark,
            _bwrap_run(_bwrap(scratch, [TRUE])),
            method="bwrap",
            baseline=False,
            rounds=rounds,
            warmup=warmup,
        )
    )


@needs_bwrap
@pytest.mark.benchmark(group="true")
def test_true_bwrap(benchmark: Any, scratch: Any) -> None:
    _bwrap_true(benchmark, scratch, TRUE_ROUNDS // 3, TRUE_WARMUP)


@needs_bwrap
@needs_gcc
@pytest.mark.benchmark(group="gcc")
def test_gcc_bwrap(benchmark: Any, scratch: Any) -> None:
    argv, obj = _gcc_job(scratch)
    _gcc_row(benchmark, _bwrap_run(_bwrap(scratch, argv, with_sources=True)), obj, method="bwrap")


@needs_bwrap
@pytest.mark.benchmark(group="cat")
def test_cat_bwrap(benchmark: Any, scratch: Any) -> None:
    argv, dst = _cat_job(scratch)
    _all_ok(
        _measure(
            benchmark,
            _bwrap_run(_bwrap(scratch, argv, with_sources=True)),
            method="bwrap",
            baseline=False,
            rounds=CAT_ROUNDS,
            warmup=CAT_WARMUP,
        )
    )
    _check_copy(dst)


# -- /bin/true while holding 1 GiB resident ----------------------------------
# Last: the gigabyte is touched and freed here, and the kernel's work on it
# would otherwise land on the groups after it.


@pytest.mark.benchmark(group="true-1GiB")
def test_true_1gib_posix_spawn(
    benchmark: Any, big_rss: bytearray, direct_env: dict[str, str]
) -> None:
    _all_ok(
        _measure(
            benchmark,
            _posix_spawn_true(direct_env),
            method="posix_spawn",
            baseline=True,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )
    assert len(big_rss) == 1 << 30


@pytest.mark.benchmark(group="true-1GiB")
def test_true_1gib_subprocess(
    benchmark: Any, big_rss: bytearray, direct_env: dict[str, str]
) -> None:
    _all_ok(
        _measure(
            benchmark,
            _subprocess_true(direct_env),
            method="subprocess",
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )
    assert len(big_rss) == 1 << 30


@pytest.mark.benchmark(group="true-1GiB")
def test_true_1gib_hermetic(benchmark: Any, big_rss: bytearray, executor: Any) -> None:
    _all_ok(
        _measure(
            benchmark,
            _hermetic_true(executor),
            method="hermetic",
            baseline=False,
            rounds=TRUE_ROUNDS,
            warmup=TRUE_WARMUP,
        )
    )
    assert len(big_rss) == 1 << 30


# -- the command line, a process per action -----------------------------------

CLI_ROUNDS, CLI_WARMUP = 20, 3


def _process_per_round(
    benchmark: Any, scratch: Any, argv: list[str], method: str, baseline: bool
) -> None:
    """``argv`` as a new process each round, started in the scratch
    directory (outside the checkout)."""
    _all_ok(
        _measure(
            benchmark,
            lambda: subprocess.run(argv, capture_output=True, cwd=scratch.root),
            method=method,
            baseline=baseline,
            rounds=CLI_ROUNDS,
            warmup=CLI_WARMUP,
        )
    )


@pytest.mark.benchmark(group="cli")
def test_cli_python_start(benchmark: Any, scratch: Any) -> None:
    """The floor of any command line in Python: the interpreter's start."""
    _process_per_round(benchmark, scratch, [sys.executable, "-c", "pass"], "python -c pass", True)


@pytest.mark.benchmark(group="cli")
def test_cli_hermetic_run(benchmark: Any, scratch: Any) -> None:
    """`hermetic run -- /bin/true`: its default spec (the toolchain
    read-only, default limits), a new process per action.  Run outside the
    checkout, so that the installed package is the one imported: from a
    regular install, whose modules are byte-compiled (an editable one with
    PYTHONDONTWRITEBYTECODE set compiles them at every start)."""
    argv = [sys.executable, "-m", "hermetic", "run", "--", TRUE]
    _process_per_round(benchmark, scratch, argv, "hermetic run", False)


@needs_bwrap
@pytest.mark.benchmark(group="cli")
def test_cli_bwrap(benchmark: Any, scratch: Any) -> None:
    _bwrap_true(benchmark, scratch, CLI_ROUNDS, CLI_WARMUP)
