"""SandboxSpecBuilder and the HermeticSpecBuilder presets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hermetic.core.builders import HermeticSpecBuilder, SandboxSpecBuilder
from hermetic.core.errors import SpecError
from hermetic.core.paths import PathSet, canonical
from hermetic.core.policies import EnvSet, NetworkPolicy, ProcessPolicy, ResourceLimits
from hermetic.core.spec import SandboxSpec


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "include").mkdir()
    (root / "secret.txt").write_text("undeclared\n")
    (root / "tests").mkdir()
    return root


def resolved(path: Path) -> str:
    return os.path.realpath(path)


# -- SandboxSpecBuilder ------------------------------------------------------


def test_create_matches_hermetic_defaults() -> None:
    spec = SandboxSpecBuilder.create().build().unwrap()
    assert spec == SandboxSpec()
    assert spec.network == NetworkPolicy.hermetic()
    assert spec.environment == EnvSet.minimal()
    assert spec.resources == ResourceLimits.hermetic()
    assert spec.process == ProcessPolicy.hermetic()


def test_builder_is_immutable(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    b1 = SandboxSpecBuilder.create()
    b2 = b1.input(tmp_path / "in")
    b3 = b2.env("A", "1").workdir(tmp_path).output(tmp_path / "o")
    assert b1.build().unwrap().inputs == PathSet()
    assert b2.build().unwrap().inputs == PathSet.of(tmp_path / "in")
    assert not b2.build().unwrap().has_env("A")
    assert b2.build().unwrap().workdir is None
    assert b2.build().unwrap().outputs == PathSet()
    assert b3.build().unwrap().environment.get("A") == "1"
    # Two branches from one builder do not see each other.
    left = b2.temp(tmp_path / "left").build().unwrap()
    right = b2.temp(tmp_path / "right").build().unwrap()
    assert left.temps == PathSet.of(tmp_path / "left")
    assert right.temps == PathSet.of(tmp_path / "right")


def test_builder_sets_every_part(tmp_path: Path) -> None:
    net = NetworkPolicy.allow_hosts(["example.com:443"])
    limits = ResourceLimits(max_processes=3)
    proc = ProcessPolicy(allow_fork=False)
    spec = (
        SandboxSpecBuilder.create()
        .clear_environment()
        .env("K", "v")
        .env("K", "w")
        .with_network(net)
        .with_resources(limits)
        .with_process(proc)
        .workdir(tmp_path)
        .output(tmp_path / "out")
        .temp(tmp_path / "out" / "t")
        .build()
        .unwrap()
    )
    assert spec.environment == EnvSet.of({"K": "w"})
    assert (spec.network, spec.resources, spec.process) == (net, limits, proc)
    assert spec.workdir == resolved(tmp_path)


def test_build_err_when_a_path_is_both_input_and_output(tmp_path: Path) -> None:
    result = SandboxSpecBuilder.create().input(tmp_path).output(tmp_path).build()
    assert result.is_err()
    err = result.unwrap_err()
    assert isinstance(err, SpecError)
    assert "both an input" in str(err) and resolved(tmp_path) in str(err)


def test_build_allows_an_output_nested_in_an_input(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    spec = SandboxSpecBuilder.create().input(tmp_path).output(tmp_path / "out").build().unwrap()
    assert spec.can_write(tmp_path / "out" / "x") and not spec.can_write(tmp_path / "y")


def test_build_returns_construction_errors_as_err() -> None:
    for builder, culprit in [
        (SandboxSpecBuilder.create().input("relative"), "'relative'"),
        (SandboxSpecBuilder.create().temp("/t\0"), "NUL"),
        (SandboxSpecBuilder.create().env("A=B", "s3cr3t"), "'A=B'"),
        (SandboxSpecBuilder.create().workdir("rel/wd"), "'rel/wd'"),
        (SandboxSpecBuilder.create().input("/nonexistent-hm/input"), "/nonexistent-hm/input"),
    ]:
        result = builder.build()
        assert result.is_err()
        err = result.unwrap_err()
        assert isinstance(err, SpecError)
        assert culprit in str(err)
        assert "s3cr3t" not in str(err)


def test_builder_repr_hides_env_values() -> None:
    assert "s3cr3t" not in repr(SandboxSpecBuilder.create().env("TOKEN", "s3cr3t"))


# -- HermeticSpecBuilder.for_build -------------------------------------------


def test_for_build(workspace: Path, tmp_path: Path) -> None:
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    spec = HermeticSpecBuilder.for_build(
        workspace, ["src/main.c", workspace / "include"], out, tmp
    ).unwrap()
    root = resolved(workspace)
    assert resolved(workspace / "src" / "main.c") in spec.inputs.paths
    assert resolved(workspace / "include") in spec.inputs.paths
    assert root not in spec.inputs.paths
    assert not spec.can_read(workspace / "secret.txt")
    assert spec.outputs == PathSet.of(out)
    assert spec.temps == PathSet.of(tmp)
    assert spec.workdir == root
    assert spec.environment.get("PATH") == HermeticSpecBuilder.DEFAULT_PATH
    assert spec.environment.get("TMPDIR") == resolved(tmp)
    assert spec.environment.get("USER") == "builder"
    assert spec.network == NetworkPolicy.hermetic()
    assert spec.resources == ResourceLimits.hermetic()
    assert spec.process == ProcessPolicy.hermetic()


def test_for_build_adds_existing_toolchain_only(workspace: Path, tmp_path: Path) -> None:
    spec = HermeticSpecBuilder.for_build(
        workspace, ["src"], tmp_path / "o", tmp_path / "t"
    ).unwrap()
    existing = [p for p in HermeticSpecBuilder.TOOLCHAIN_INPUTS if os.path.exists(p)]
    assert existing, "a Linux host has at least /usr"
    for path in existing:
        assert canonical(path) in spec.inputs.paths
    for path in HermeticSpecBuilder.TOOLCHAIN_INPUTS:
        if not os.path.exists(path):
            assert not spec.inputs.contains(path)
    assert spec.can_read("/usr/bin")


def test_for_build_errors(workspace: Path, tmp_path: Path) -> None:
    missing = HermeticSpecBuilder.for_build(workspace, ["nope.c"], tmp_path / "o", tmp_path / "t")
    assert "nope.c" in str(missing.unwrap_err())
    (workspace / "src" / "build").mkdir()
    nested = HermeticSpecBuilder.for_build(
        workspace, ["src"], workspace / "src" / "build", tmp_path / "t"
    )
    assert nested.unwrap().can_write(workspace / "src" / "build" / "x.o")
    relative_root = HermeticSpecBuilder.for_build("ws", [], tmp_path / "o", tmp_path / "t")
    assert "workspace_root" in str(relative_root.unwrap_err())
    single = HermeticSpecBuilder.for_build(workspace, "src", tmp_path / "o", tmp_path / "t")
    assert "sources" in str(single.unwrap_err())


# -- HermeticSpecBuilder.for_test --------------------------------------------


def test_for_test(workspace: Path, tmp_path: Path) -> None:
    spec = HermeticSpecBuilder.for_test(workspace, "tests", tmp_path / "tmp").unwrap()
    assert resolved(workspace) in spec.inputs.paths
    assert spec.can_read(workspace / "secret.txt")
    assert not spec.can_write(workspace / "tests")
    assert spec.temps == PathSet.of(tmp_path / "tmp")
    assert spec.outputs == PathSet()
    assert spec.workdir == resolved(workspace / "tests")
    assert spec.environment.get("PATH") == HermeticSpecBuilder.DEFAULT_PATH
    assert spec.environment.get("TMPDIR") == resolved(tmp_path / "tmp")


def test_for_test_temp_inside_workspace_is_writable(workspace: Path) -> None:
    (workspace / "tmp").mkdir()
    spec = HermeticSpecBuilder.for_test(workspace, "tests", workspace / "tmp").unwrap()
    assert spec.can_write(workspace / "tmp" / "x") and not spec.can_write(workspace / "x")


def test_for_test_test_dir_outside_workspace_is_err(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    err = HermeticSpecBuilder.for_test(workspace, outside, tmp_path / "tmp").unwrap_err()
    assert isinstance(err, SpecError)
    assert err.field == "test_dir"
    assert resolved(outside) in str(err) and resolved(workspace) in str(err)
    # A relative test_dir escaping through ".." is caught too.
    escaped = HermeticSpecBuilder.for_test(workspace, "../elsewhere", tmp_path / "tmp")
    assert escaped.is_err()
