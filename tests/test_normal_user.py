"""The first hour as a normal user: the default spec runs, limits the caller
set stay hard, ``hermetic doctor`` says what this host gives.

A normal user without a delegated cgroup (this host's ``hermetic-test``)
cannot have memory or summed CPU time enforced for the whole sandbox.  The
``ResourceLimits.hermetic()`` defaults are then weakened and listed in
``unenforced_limits``; a limit the caller set fails closed.  Each check runs
as the caller of the suite and as a normal user (``hermetic-test`` from a
root suite, the suite's own user otherwise), and asserts what the limit
mechanism probed in that same process implies.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from hermetic import ResourceLimits, SandboxSpec
from hermetic.core.errors import SpecError, UnsupportedError
from hermetic.platforms.linux.limits import plan_limits

pytestmark = pytest.mark.linux

#: Why a cgroup cannot be used, as plan_limits() is told it.
NO_CGROUP = "no delegation (test)"
#: The limits of ResourceLimits.hermetic() that need a cgroup to bound the
#: whole sandbox, as a normal user sees them (root adds max_processes).
CGROUP_LIMITS = {"max_cpu_time_ms", "max_memory_bytes"}

#: Run in a child: a build workspace, the builder's default spec, and what
#: running under it gave.  ``CHANGE`` edits the spec's limits first;
#: ``NOFILE`` lowers this process's open-file limit first.
CHILD = """
import dataclasses, json, os, resource, subprocess, sys, tempfile
sys.path[:0] = {path!r}
if {nofile!r}:
    resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile!r}, {nofile!r}))
from hermetic import HermeticExecutor, HermeticSpecBuilder
from hermetic.platforms.linux.limits import cgroup_mechanism

report = {{"uid": os.geteuid(), "no_cgroup": cgroup_mechanism()[1]}}
with tempfile.TemporaryDirectory(prefix="hermetic-test-nu-") as ws:
    for d in ("src", "out", "tmp"):
        os.mkdir(os.path.join(ws, d))
    spec = HermeticSpecBuilder.for_build(ws, ["src"], "out", "tmp").unwrap()
    change = {change!r}
    if change:
        spec = dataclasses.replace(
            spec, resources=dataclasses.replace(spec.resources, **change)
        )
    made = HermeticExecutor.create(spec)
    if made.is_err():
        err = made.unwrap_err()
        report["error"] = [type(err).__name__, str(err)]
    else:
        with made.unwrap() as ex:
            r = ex.execute(["sh", "-c", "ulimit -t; ulimit -n"]).unwrap()
        report["exit"] = r.exit_code
        report["out"] = r.stdout.decode().split()
        report["unenforced"] = list(r.unenforced_limits)
    if {cli!r}:
        # The command line under the same spec, from a spec file.
        f = os.path.join(ws, "spec.json")
        with open(f, "w") as out:
            out.write(spec.to_json())
        p = subprocess.run(
            [sys.executable, "-m", "hermetic", "run", "--spec", f, "--", "true"],
            capture_output=True, text=True, timeout=120, cwd="/",
        )
        report["cli"] = [p.returncode, p.stderr]
print(json.dumps(report))
"""


def _child(
    test_user: Any,
    normal: bool,
    *,
    change: dict[str, int] | None = None,
    nofile: int = 0,
    cli: bool = False,
) -> dict[str, Any]:
    """CHILD's report, run as the suite's caller or (``normal``) as a normal user."""
    from conftest import python_as

    code = textwrap.dedent(CHILD.format(path=sys.path, change=change or {}, nofile=nofile, cli=cli))
    if normal and test_user is not None:
        p = python_as(test_user, code, timeout=300)
    else:
        # The suite's own user: a normal user already when it is not root.
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/"
        )
    assert p.returncode == 0, p.stderr
    report: dict[str, Any] = json.loads(p.stdout)
    if normal:
        assert report["uid"] != 0
    return report


def _names(unenforced: list[str]) -> set[str]:
    return {entry.partition(":")[0] for entry in unenforced}


# -- which limit values are defaults ----------------------------------------


def test_the_preset_is_all_defaults_and_a_value_set_over_it_is_not() -> None:
    preset = ResourceLimits.hermetic()
    names = {f.name for f in dataclasses.fields(ResourceLimits)} - {"best_effort", "defaulted"}
    assert set(preset.defaulted) == names
    assert SandboxSpec().resources == preset
    cpu = dataclasses.replace(preset, max_cpu_time_ms=60_000)
    assert not cpu.is_default("max_cpu_time_ms") and cpu.is_default("max_memory_bytes")
    assert set(cpu.defaulted) == names - {"max_cpu_time_ms"}
    # Constructed directly: every value is the caller's.
    assert ResourceLimits(max_memory_bytes=4 << 30).defaulted == ()
    with pytest.raises(SpecError, match="defaulted"):
        ResourceLimits(defaulted=("max_memory",))
    with pytest.raises(SpecError, match="defaulted"):
        ResourceLimits(defaulted="max_memory_bytes")  # type: ignore[arg-type]


def test_defaults_survive_a_spec_file_and_a_value_written_in_it_is_the_callers() -> None:
    spec = SandboxSpec()
    assert SandboxSpec.from_json(spec.to_json()) == spec
    explicit = SandboxSpec(resources=dataclasses.replace(ResourceLimits.hermetic(), defaulted=()))
    assert SandboxSpec.from_json(explicit.to_json()) == explicit
    assert explicit.digest() != spec.digest()
    # A hand-written resources section: what it names is the caller's, the
    # rest keeps the defaults.
    text = json.dumps({"resources": {"max_memory_bytes": 1 << 30}})
    limits = SandboxSpec.from_json(text).resources
    assert not limits.is_default("max_memory_bytes") and limits.is_default("max_cpu_time_ms")


def test_a_spec_of_explicit_limits_keeps_its_digest() -> None:
    # The digest of limits that are all the caller's does not hash the
    # (empty) ``defaulted``: the same content hashes as it always did.
    import hashlib

    spec = SandboxSpec(resources=ResourceLimits(max_cpu_time_ms=5))
    data = spec.to_dict()
    del data["resources"]["defaulted"]

    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert spec.digest() == hashlib.sha256(text.encode()).hexdigest()


def test_without_a_cgroup_defaults_are_weakened_and_explicit_limits_refused() -> None:
    plan = plan_limits(ResourceLimits.hermetic(), NO_CGROUP)
    assert not plan.cgroup
    assert CGROUP_LIMITS <= _names(list(plan.unenforced))
    assert all(NO_CGROUP in entry for entry in plan.unenforced)
    # Memory is still bounded, by sampling; CPU time per process.
    assert plan.sampled_memory == 4 << 30
    assert any(res == resource.RLIMIT_CPU for res, _, _ in plan.rlimits)
    explicit = dataclasses.replace(ResourceLimits.hermetic(), max_cpu_time_ms=60_000)
    with pytest.raises(UnsupportedError) as caught:
        plan_limits(explicit, NO_CGROUP)
    # Only the caller's limit is named: the defaults would have run weakened.
    assert "max_cpu_time_ms" in str(caught.value)
    assert "max_memory_bytes" not in str(caught.value)
    relaxed = dataclasses.replace(explicit, best_effort=True)
    assert CGROUP_LIMITS <= _names(list(plan_limits(relaxed, NO_CGROUP).unenforced))


def test_the_host_network_weakens_a_default_network_limit_and_refuses_a_set_one() -> None:
    plan = plan_limits(ResourceLimits.hermetic(), None, network_counted=False)
    assert "max_network_io" in _names(list(plan.unenforced))
    explicit = dataclasses.replace(ResourceLimits.hermetic(), max_network_io=1 << 20)
    with pytest.raises(UnsupportedError, match="max_network_io"):
        plan_limits(explicit, None, network_counted=False)


# -- the builder's default spec, for real ------------------------------------


@pytest.mark.parametrize("normal", [False, True], ids=["caller", "normal-user"])
def test_default_build_spec_runs_for_a_normal_user(test_user: Any, normal: bool) -> None:
    report = _child(test_user, normal, cli=True)
    assert "error" not in report, report
    assert report["exit"] == 0
    # RLIMIT_CPU (seconds) and RLIMIT_NOFILE of the preset, always applied.
    assert report["out"] == ["3600", "512"]
    code, stderr = report["cli"]
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if "limits weakened here" in line]
    if report["no_cgroup"] is None:
        assert report["unenforced"] == [] and lines == []
    else:
        # Weakened and said: in the result, and once on the command line.
        weak = _names(report["unenforced"])
        assert CGROUP_LIMITS <= weak
        assert weak <= CGROUP_LIMITS | {"max_processes", "cpu_shares"}
        assert len(lines) == 1 and all(name in lines[0] for name in CGROUP_LIMITS)


@pytest.mark.parametrize("normal", [False, True], ids=["caller", "normal-user"])
def test_explicit_cpu_limit_fails_closed_for_a_normal_user(test_user: Any, normal: bool) -> None:
    report = _child(test_user, normal, change={"max_cpu_time_ms": 60_000}, cli=True)
    code, stderr = report["cli"]
    if report["no_cgroup"] is None:
        assert "error" not in report and report["exit"] == 0
        assert report["out"][0] == "60" and code == 0
    else:
        kind, message = report["error"]
        assert kind == "UnsupportedError"
        assert "max_cpu_time_ms" in message and "max_memory_bytes" not in message
        assert code == 125 and "max_cpu_time_ms" in stderr


@pytest.mark.unprivileged
def test_a_default_above_the_callers_hard_rlimit_is_lowered_to_it(test_user: Any) -> None:
    report = _child(test_user, True, nofile=256)
    assert "error" not in report, report
    assert report["exit"] == 0 and report["out"] == ["3600", "256"]
    # The same value set by the caller is refused.
    report = _child(test_user, True, nofile=256, change={"max_open_files": 400})
    kind, message = report["error"]
    assert kind == "UnsupportedError" and "max_open_files" in message and "256" in message


# -- hermetic doctor ----------------------------------------------------------


def _doctor(test_user: Any, normal: bool, *args: str) -> subprocess.CompletedProcess[str]:
    from conftest import python_as

    code = f"import sys\nsys.path[:0] = {sys.path!r}\nfrom hermetic.cli import main\n"
    code += f"sys.exit(main(['doctor', *{list(args)!r}]))\n"
    if normal and test_user is not None:
        p: subprocess.CompletedProcess[str] = python_as(test_user, code, timeout=300)
    else:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/"
        )
    return p


@pytest.mark.parametrize("normal", [False, True], ids=["caller", "normal-user"])
def test_doctor_says_which_limits_the_default_spec_gets(test_user: Any, normal: bool) -> None:
    from hermetic.platforms.linux.limits import cgroup_mechanism

    p = _doctor(test_user, normal, "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    mine = data["default_spec"]
    assert mine["runs"] and mine["error"] is None
    assert set(mine["limits"]) == set(ResourceLimits.hermetic().defaulted)
    weak = {name for name, limit in mine["limits"].items() if limit["weakened"] is not None}
    checks = [mine]
    if data["normal_user"] is not None:
        # Root's doctor checks a normal user as well.
        assert mine["uid"] == 0 and data["normal_user"]["checked"], data["normal_user"]
        checks.append(data["normal_user"])
    else:
        assert mine["uid"] != 0 or not normal
    for check in checks:
        assert check["runs"], check
    if mine["uid"] != 0:
        # A normal user's weakened limits are exactly what no cgroup implies
        # (the child's mechanism is probed as the same kind of user).
        report = _child(test_user, True)
        assert weak == (CGROUP_LIMITS if report["no_cgroup"] is not None else set())
    elif cgroup_mechanism()[1] is None:
        assert weak == set()
    text = _doctor(test_user, normal)
    assert text.returncode == 0, text.stderr
    assert "default spec" in text.stdout and "runs (uid" in text.stdout
    v2 = [line for line in text.stdout.splitlines() if line.startswith("cgroup_v2 ")]
    assert len(v2) == 1 and "True" not in v2[0]
    controllers = data["cgroup_v2_controllers"]
    if data["cgroup_v2"] and not {"memory", "pids", "cpu"} & set(controllers):
        # Mounted with controllers limits cannot use (hugetlb here): said so.
        assert ", ".join(controllers) in v2[0] and "unused" in v2[0]


def test_doctor_exits_non_zero_when_the_default_spec_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hermetic.cli import doctor, main
    from hermetic.core.result import Err
    from hermetic.exits import EXIT_SETUP

    class Refusing:
        @staticmethod
        def create(spec: SandboxSpec) -> Err[Any]:
            return Err(UnsupportedError("resource limits", "max_memory_bytes: refused (test)"))

    monkeypatch.setattr(doctor, "HermeticExecutor", Refusing)
    monkeypatch.setattr(doctor, "_normal_user_check", lambda: None)
    assert main(["doctor"]) == EXIT_SETUP
    out = capsys.readouterr().out
    assert "CANNOT RUN" in out and "max_memory_bytes: refused (test)" in out


def test_a_limit_a_spec_file_names_is_hard_even_at_the_presets_value():
    """A file without a ``defaulted`` list (written by hand, or before it
    existed): every limit it names is the caller's, so it fails closed where
    the host cannot enforce it, even when its value equals the preset's."""
    preset = ResourceLimits.hermetic()
    text = json.dumps({"resources": {"max_memory_bytes": preset.max_memory_bytes}})
    limits = SandboxSpec.from_json(text).resources
    assert not limits.is_default("max_memory_bytes")
    assert limits.is_default("max_cpu_time_ms")
    # A file that says which are defaults keeps them (to_json writes it).
    again = SandboxSpec.from_json(SandboxSpec().to_json()).resources
    assert again.is_default("max_memory_bytes") and again.defaulted == preset.defaulted
