"""Bazel through BuildGrid and two hermetic workers, end to end: the ``bazel``
lane of .ci/run (``pytest -m bazel tests/test_remote_bazel.py``), left out
of the default run by pyproject's addopts.

Bazel 4.2.3 (Debian's ``bazel-bootstrap``) builds the workspace of
tests/remote/bazel_workspace.py (a ``cc_binary`` on 100 ``cc_library``
targets, a directory output and an action reading it, the binary run in the
farm, a genrule that checks the sandbox from inside) with every action
remote and no local fallback, through a real BuildGrid 0.9.1
(tests/remote/farm.py) and two ``hermetic worker`` processes.  Then a clean
rebuild, not served from the action cache, during which one worker gets
SIGTERM once it holds a lease: the build completes on the other.

Without Bazel, Debian's rules or the farm's prerequisites these tests skip
with the reason; under CI=true they fail.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import IN_CI, unavailable

try:
    import buildgrid.common  # noqa: F401
except ImportError as e:  # a skip where the extra is not installed; under CI a failure
    if IN_CI:
        pytest.fail(f"required under CI: the 'remote' extra ({e})", pytrace=False)
    pytest.skip(f"needs the 'remote' extra: {e}", allow_module_level=True)

from google.protobuf import struct_pb2  # noqa: E402
from remote import bazel_workspace as workspace  # noqa: E402
from remote.bazel import BAZEL, Bazel  # noqa: E402
from remote.client import Worker, completed_results  # noqa: E402
from remote.farm import INSTANCE, Farm, FarmUnavailable  # noqa: E402

from hermetic import (  # noqa: E402
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    NetworkPolicy,
    PathSet,
    SandboxSpec,
)
from hermetic.remote import worker  # noqa: E402
from hermetic.remote.protos import code_pb2  # noqa: E402

pytestmark = [pytest.mark.bazel, pytest.mark.linux]

#: A variable of the workers' own environment, which no action may see.
CANARY = "HERMETIC_WORKER_CANARY"
BOTS = ("bazel-a", "bazel-b")


@dataclasses.dataclass
class Lane:
    farm: Farm
    workers: list[Worker]
    bazel: Bazel
    flags: list[str]
    base: str


def _prerequisites() -> None:
    for path in (BAZEL, workspace.RULES_CC, workspace.RULES_JAVA):
        if not os.path.exists(path):
            unavailable(
                f"{path} is missing: apt-get install bazel-bootstrap bazel-rules-cc "
                "bazel-rules-java (Debian 12)"
            )


@pytest.fixture(scope="module")
def lane() -> Iterator[Lane]:
    _prerequisites()
    try:
        farm = Farm()
    except FarmUnavailable as e:
        unavailable(str(e))
    base = tempfile.mkdtemp(prefix="hermetic-bazel-")
    os.chmod(base, 0o755)
    workers: list[Worker] = []
    bazel: Bazel | None = None
    try:
        farm.start()
        for bot in BOTS:
            workers.append(
                Worker(
                    farm.url,
                    INSTANCE,
                    os.path.join(base, bot),
                    bot_id=bot,
                    concurrency=2,
                    env={**os.environ, CANARY: "the worker's own"},
                )
            )
        bazel_base = os.path.join(base, "bazel")
        hidden = [
            *(os.path.join(w.work_dir, sub) for w in workers for sub in ("cas", "leases")),
            os.path.join(base, "ws"),
            bazel_base,
            farm.dir,
            "/root",
            "/home",
        ]
        ws = workspace.write(base, farm_port=farm.port, hidden=hidden)
        bazel = Bazel(ws, bazel_base)
        flags = workspace.bazel_flags(
            base, executor=farm.url, instance=INSTANCE, platform=worker.default_platform()
        )
        yield Lane(farm, workers, bazel, flags, base)
    finally:
        try:
            if bazel is not None:
                killed = bazel.close()
                assert killed == [], "bazel shutdown left its server running"
            for w in workers:
                assert w.terminate() == 0, w.text()
                assert os.listdir(os.path.join(w.work_dir, "exec")) == [], w.text()
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            farm.stop()
            shutil.rmtree(base, ignore_errors=True)
    assert not os.path.exists(base) and not os.path.exists(farm.dir)


def _logs(lane: Lane, done: str) -> str:
    text = [done[-6000:]]
    for w in lane.workers:
        text.append(f"--- {w.bot_id}\n{w.text()[-3000:]}")
    return "\n".join(text)


@pytest.fixture(scope="module")
def first_build(lane: Lane) -> subprocess.CompletedProcess[str]:
    return lane.bazel.run("build", *lane.flags, *workspace.TARGETS)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _check_outputs(lane: Lane) -> None:
    """The binary runs here; it ran in the farm too; the directory output
    has its files, and the action that read it saw them all; a symbolic
    link came back as one."""
    main = subprocess.run([lane.bazel.bin("main")], capture_output=True, text=True, timeout=60)
    assert (main.returncode, main.stdout) == (0, workspace.MAIN_OUTPUT + "\n")
    assert _read(lane.bazel.bin("main_output.txt")) == workspace.MAIN_OUTPUT + "\n"
    gen = lane.bazel.bin("gen_dir")
    found = {
        os.path.relpath(os.path.join(d, n), gen): _read(os.path.join(d, n))
        for d, _, names in os.walk(gen)
        for n in names
    }
    assert found == workspace.DIR_FILES
    listing = "".join(workspace.DIR_FILES[k] for k in sorted(workspace.DIR_FILES))
    assert _read(lane.bazel.bin("dir_listing.txt")) == listing
    assert os.readlink(lane.bazel.bin("link.txt")) == "real.txt"
    assert _read(lane.bazel.bin("link.txt")) == "real\n"


#: The worker's stages in ExecutedActionMetadata, in order.
STAGES = (
    "worker_start",
    "input_fetch_start",
    "input_fetch_completed",
    "execution_start",
    "execution_completed",
    "output_upload_start",
    "output_upload_completed",
    "worker_completed",
)


def _stages_ms(meta: object) -> list[float]:
    """The time from each stage's timestamp to the next, in ms."""
    ns = [int(getattr(meta, f"{s}_timestamp").ToNanoseconds()) for s in STAGES]
    return [(b - a) / 1e6 for a, b in zip(ns, ns[1:], strict=False)]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _report_overhead(results: list[object]) -> None:
    """The worker's own time per action, with each stage's median.

    BuildGrid writes worker_start and worker_completed itself (when it
    assigns the lease, and when it takes the completion: its scheduler
    overwrites the worker's), so the worker's own time is
    input_fetch_start..output_upload_completed without the execution; the
    first and last stages are BuildGrid's hand-over and take-back."""
    stages = [_stages_ms(r.result.execution_metadata) for r in results]  # type: ignore[attr-defined]
    assert all(t >= 0 for s in stages for t in s), stages
    own = sorted(sum(s[1:-1]) - s[3] for s in stages)
    cpu = []
    for r in results:
        (aux,) = r.result.execution_metadata.auxiliary_metadata  # type: ignore[attr-defined]
        usage = struct_pb2.Struct()
        assert aux.Unpack(usage)
        cpu.append(usage["hermetic_worker_cpu_ms"])
    names = [f"{a}..{b}" for a, b in zip(STAGES, STAGES[1:], strict=False)]
    medians = ", ".join(
        f"{n} {_median([s[i] for s in stages]):.1f}" for i, n in enumerate(names) if i != 3
    )
    print(
        f"{len(results)} actions; the worker's own time per action (fetch to upload, "
        "without the action): median "
        f"{_median(own):.1f} ms, p90 {own[len(own) * 9 // 10]:.1f} ms (stage medians, ms: "
        f"{medians}); the actions' own median {_median([s[3] for s in stages]):.1f} ms; "
        f"the CPU of the worker's thread per lease: median {_median(cpu):.1f} ms"
    )


def test_bazel_builds_through_two_hermetic_workers(lane, first_build):
    assert first_build.returncode == 0, _logs(lane, first_build.stdout + first_build.stderr)
    out = first_build.stderr
    # Every action ran remotely: none on this machine.
    summary = next(line for line in out.splitlines() if " processes: " in line)
    assert " remote" in summary and "local" not in summary and "sandbox" not in summary, summary
    _check_outputs(lane)

    results = completed_results(lane.farm.target, INSTANCE)
    # 100 libraries and main compiled, main linked, five genrules, the directory.
    assert len(results) >= 108, len(results)
    assert all(r.status.code == code_pb2.OK and r.result.exit_code == 0 for r in results)
    bots = {r.result.execution_metadata.worker.rpartition("-")[0] for r in results}
    assert bots == set(BOTS), bots  # both workers ran actions
    for w in lane.workers:
        assert ": lease " in w.text(), w.text()

    _report_overhead(results)


def test_the_genrule_found_the_sandbox_hermetic(lane, first_build):
    assert first_build.returncode == 0, _logs(lane, first_build.stderr)
    assert _read(lane.bazel.bin("sandbox_check.txt")) == workspace.SANDBOX_MARKER + "\n"
    # Its stdout, which Bazel shows.
    assert workspace.SANDBOX_MARKER in first_build.stdout + first_build.stderr


#: Ways to weaken the sandbox the check runs in, and what it must say.
WEAKENED = {
    "hermetic": None,
    "host network": "connected to the farm",
    "/root declared": "the host's /root is visible",
    "input writable": "wrote to the input",
    "a variable more": "the environment holds",
}


@pytest.mark.parametrize("weakness", list(WEAKENED))
def test_the_sandbox_check_fails_in_a_weaker_sandbox(lane, tmp_path, weakness):
    """Each of the genrule's checks can fail: run here in a sandbox laid out
    as the worker lays out an action (an exec root holding a read-only
    input), it passes, and fails as soon as one property is given up."""
    ws = lane.bazel.workspace
    root = tmp_path / "root"
    root.mkdir()
    for name in ("check_sandbox.sh", "check_input.txt"):
        shutil.copy(os.path.join(ws, name), root / name)
    readonly = [str(root / "check_sandbox.sh")]
    if weakness != "input writable":
        readonly.append(str(root / "check_input.txt"))
    if weakness == "/root declared":
        readonly.append("/root")
    env = [("PATH", "/bin:/usr/bin:/usr/local/bin")]
    if weakness == "a variable more":
        env.append((CANARY, "x"))
    spec = SandboxSpec(
        inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *readonly)),
        outputs=PathSet((str(root),)),
        environment=EnvSet(vars=tuple(env)),
        network=NetworkPolicy.host() if weakness == "host network" else NetworkPolicy.hermetic(),
    )
    executor = HermeticExecutor.create(spec).unwrap()
    try:
        argv = ["./check_sandbox.sh", "out.txt", "check_input.txt"]
        ran = executor.execute(argv, cwd=str(root), timeout=120).unwrap()
    finally:
        executor.close()
    expected = WEAKENED[weakness]
    if expected is None:
        assert ran.exit_code == 0, ran.stderr
        assert (root / "out.txt").read_text() == workspace.SANDBOX_MARKER + "\n"
    else:
        assert ran.exit_code == 1 and expected.encode() in ran.stderr, ran.stderr
        assert not (root / "out.txt").exists()


def _holder_of_slow(lane: Lane, build: subprocess.Popen[bytes]) -> Worker:
    """The worker whose exec root holds the running ``//:slow`` action."""
    end = time.monotonic() + 300  # a bound proving the build reached it
    while time.monotonic() < end and build.poll() is None:
        for w in lane.workers:
            for r in glob.glob(os.path.join(w.work_dir, "exec", "*", workspace.SLOW_MARKER)):
                if os.path.exists(r):
                    return w
        time.sleep(0.02)
    raise AssertionError(f"no worker ran //:slow in the rebuild (bazel: {build.poll()})")


def test_a_worker_terminated_mid_build_does_not_stall_it(lane, first_build):
    """A clean rebuild that the action cache cannot serve; the worker that
    runs ``//:slow`` gets SIGTERM while it does, hands the lease back,
    signs off and exits 0; the other finishes the build, ``//:slow``
    included."""
    assert first_build.returncode == 0, _logs(lane, first_build.stderr)
    cleaned = lane.bazel.run("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not os.path.exists(lane.bazel.bin("main"))
    log = os.path.join(lane.base, "rebuild.log")
    build = lane.bazel.start(
        "build", *lane.flags, "--noremote_accept_cached", *workspace.TARGETS, log=log
    )
    try:
        leaving = _holder_of_slow(lane, build)
        (staying,) = [w for w in lane.workers if w is not leaving]
        assert leaving.terminate() == 0, leaving.text()
        assert "handed back" in leaving.text() and "signed off" in leaving.text()
        after = len(staying.text())
        assert build.wait(timeout=480) == 0, _logs(lane, _read(log))
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert ": lease " in staying.text()[after:], staying.text()
    assert os.listdir(os.path.join(leaving.work_dir, "exec")) == []
    _check_outputs(lane)
    assert _read(lane.bazel.bin("sandbox_check.txt")) == workspace.SANDBOX_MARKER + "\n"
    assert _read(lane.bazel.bin("slow.txt")) == "slept\n"
    # Its last run, the one Bazel took, was the other worker's.
    slow = [
        r.result.execution_metadata
        for r in completed_results(lane.farm.target, INSTANCE)
        if any(f.path.endswith("/slow.txt") for f in r.result.output_files)
    ]
    last = max(slow, key=lambda m: m.worker_completed_timestamp.ToNanoseconds())
    assert last.worker.rpartition("-")[0] == staying.bot_id, slow
