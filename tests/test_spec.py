"""PathSet, the policies and SandboxSpec: canonicalisation, validation, JSON, digest."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hermetic.core.errors import SpecError
from hermetic.core.paths import PathSet, canonical
from hermetic.core.policies import EnvSet, NetworkPolicy, ProcessPolicy, ResourceLimits
from hermetic.core.spec import SandboxSpec

# -- PathSet -----------------------------------------------------------------


def test_canonicalisation_removes_dotdot_trailing_and_double_slashes() -> None:
    assert PathSet.of("/nonexistent-hm/a/b/../c") == PathSet.of("/nonexistent-hm/a/c")
    assert PathSet.of("/nonexistent-hm/a/").paths == ("/nonexistent-hm/a",)
    assert PathSet.of("//nonexistent-hm//x").paths == ("/nonexistent-hm/x",)
    assert canonical("/nonexistent-hm/./x/") == "/nonexistent-hm/x"


def test_paths_are_sorted_and_deduplicated() -> None:
    ps = PathSet.of("/z-hm", "/a-hm", "/z-hm/", "/a-hm/../z-hm")
    assert ps.paths == ("/a-hm", "/z-hm")
    assert len(ps) == 2
    assert list(ps) == ["/a-hm", "/z-hm"]
    assert ps and not PathSet()


def test_nested_members_are_kept() -> None:
    assert PathSet.of("/a-hm", "/a-hm/b").paths == ("/a-hm", "/a-hm/b")


def test_pathlike_accepted(tmp_path: Path) -> None:
    assert PathSet.of(tmp_path).paths == (os.path.realpath(tmp_path),)


def test_relative_path_rejected_naming_it() -> None:
    with pytest.raises(SpecError) as info:
        PathSet.of("relative/dir")
    assert "'relative/dir'" in str(info.value)
    assert "absolute" in str(info.value)


@pytest.mark.parametrize("bad", ["/a\0b", "", b"/bytes"])
def test_invalid_paths_rejected(bad: object) -> None:
    with pytest.raises(SpecError):
        PathSet.of(bad)  # type: ignore[arg-type]


def test_nul_message_names_nul() -> None:
    with pytest.raises(SpecError, match="NUL"):
        canonical("/a\0b")


def test_single_string_is_not_split_into_characters() -> None:
    with pytest.raises(SpecError, match="PathSet.of"):
        PathSet("/usr")  # type: ignore[arg-type]


def test_symlinks_resolved_and_overlap_detected(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    link = tmp_path / "l"
    link.symlink_to(d)
    through_link = PathSet.of(link / "sub")
    direct = PathSet.of(d)
    assert through_link.paths == (str(d.resolve() / "sub"),)
    assert not through_link.disjoint(direct)
    assert through_link.overlaps(direct) == [(str(d.resolve() / "sub"), str(d.resolve()))]
    assert direct.contains(link / "sub" / "deeper")


def test_contains_is_component_wise() -> None:
    ps = PathSet.of("/a-hm/b")
    assert ps.contains("/a-hm/b")
    assert ps.contains("/a-hm/b/c/d")
    assert "/a-hm/b/c" in ps
    assert not ps.contains("/a-hm/bc")
    assert not ps.contains("/a-hm")
    assert PathSet.of("/").contains("/anything/at/all")
    assert not PathSet().contains("/")


def test_contains_rejects_relative() -> None:
    with pytest.raises(SpecError):
        PathSet.of("/a-hm").contains("a-hm")


SET_CASES = [
    (("/a-hm",), ("/a-hm/b",)),
    (("/a-hm/b",), ("/a-hm/bc",)),
    (("/",), ("/x-hm", "/y-hm/z")),
    (("/a-hm", "/c-hm/d"), ("/a-hm/b/c", "/c-hm", "/e-hm")),
    ((), ("/a-hm",)),
    (("/a-hm",), ("/a-hm",)),
]


@pytest.mark.parametrize(("left", "right"), SET_CASES)
def test_set_operations_are_symmetric(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    a, b = PathSet.of(*left), PathSet.of(*right)
    assert a.union(b) == b.union(a)
    assert a.intersection(b) == b.intersection(a)
    assert a.disjoint(b) == b.disjoint(a)
    assert a.disjoint(b) == (not a.intersection(b))
    assert sorted(a.overlaps(b)) == sorted((y, x) for x, y in b.overlaps(a))


def test_set_operation_results() -> None:
    a = PathSet.of("/a-hm", "/c-hm/d")
    b = PathSet.of("/a-hm/b/c", "/c-hm", "/e-hm")
    assert a.union(b).paths == ("/a-hm", "/a-hm/b/c", "/c-hm", "/c-hm/d", "/e-hm")
    assert a.intersection(b).paths == ("/a-hm/b/c", "/c-hm/d")
    assert PathSet.of("/").intersection(PathSet.of("/x-hm")).paths == ("/x-hm",)
    assert PathSet.of("/a-hm/b").disjoint(PathSet.of("/a-hm/bc"))
    assert not PathSet.of("/").disjoint(PathSet.of("/x-hm"))


# -- policies ----------------------------------------------------------------


def test_envset_minimal_and_operations() -> None:
    env = EnvSet.minimal()
    assert env.to_dict() == {"USER": "builder", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    assert [k for k, _ in env.vars] == sorted(k for k, _ in env.vars)
    more = env.with_var("PATH", "/bin")
    assert more.get("PATH") == "/bin" and not env.has("PATH")
    assert more.without("PATH") == env
    assert env.get("MISSING", "dflt") == "dflt"
    assert EnvSet.of({"B": "2", "A": "1"}).vars == (("A", "1"), ("B", "2"))
    assert EnvSet.of([("B", "2"), ("A", "1")]) == EnvSet.of({"A": "1", "B": "2"})
    # The dataclass constructor itself accepts a mapping too.
    assert EnvSet(vars={"A": "1"}) == EnvSet(vars=(("A", "1"),))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["A=B", "A\0B", ""])
def test_envset_rejects_bad_keys_without_leaking_value(key: str) -> None:
    with pytest.raises(SpecError) as info:
        EnvSet.of({key: "s3cr3t"})
    assert "s3cr3t" not in str(info.value)
    assert "s3cr3t" not in repr(info.value)


def test_envset_rejects_nul_in_value_without_leaking_it() -> None:
    with pytest.raises(SpecError) as info:
        EnvSet.minimal().with_var("TOKEN", "s3cr3t\0")
    assert "'TOKEN'" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert info.value.value != "s3cr3t\0"


def test_envset_rejects_non_str_and_duplicates() -> None:
    with pytest.raises(SpecError, match="'N'"):
        EnvSet.of({"N": 1})  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="twice"):
        EnvSet.of((("A", "1"), ("A", "2")))


def test_envset_repr_hides_values() -> None:
    assert "s3cr3t" not in repr(EnvSet.of({"TOKEN": "s3cr3t"}))


def test_resource_limits_presets_and_validation() -> None:
    assert ResourceLimits.defaults() == ResourceLimits()
    h = ResourceLimits.hermetic()
    assert h.max_memory_bytes == 4 * 1024**3
    assert h.max_cpu_time_ms == 3_600_000
    assert h.max_processes == 128
    assert h.max_open_files == 512
    assert h.max_output_bytes == 100 * 1024**2
    assert h.cpu_shares == 1024
    with pytest.raises(SpecError) as info:
        ResourceLimits(max_processes=-1)
    assert info.value.field == "max_processes"
    assert "max_processes" in str(info.value) and "-1" in str(info.value)
    with pytest.raises(SpecError, match="max_open_files"):
        ResourceLimits(max_open_files=True)
    with pytest.raises(SpecError, match="cpu_shares"):
        ResourceLimits(cpu_shares=1.5)  # type: ignore[arg-type]


def test_process_policy_validation() -> None:
    assert ProcessPolicy.hermetic().max_children == 0  # bounded by the resource limits
    with pytest.raises(SpecError, match="allow_fork"):
        ProcessPolicy(allow_fork=1)  # type: ignore[arg-type]


def test_network_allow_hosts() -> None:
    policy = NetworkPolicy.allow_hosts(["Example.com:443", "pypi.org:443", "[::1]:8080"])
    assert not policy.is_hermetic
    assert policy.allow_http and policy.allow_https and policy.allow_dns
    assert policy.allowed_hosts == ("[::1]:8080", "example.com:443", "pypi.org:443")
    assert NetworkPolicy.hermetic() == NetworkPolicy()


@pytest.mark.parametrize(
    "entry",
    [
        "example.com",
        ":443",
        "example.com:0",
        "example.com:65536",
        "example.com:http",
        "a b:80",
        "::1:80",
    ],
)
def test_network_allow_hosts_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(SpecError) as info:
        NetworkPolicy.allow_hosts([entry])
    assert repr(entry) in str(info.value)


def test_network_allow_hosts_needs_a_host() -> None:
    with pytest.raises(SpecError, match="hermetic"):
        NetworkPolicy.allow_hosts([])


# -- SandboxSpec construction and validation ---------------------------------


def test_spec_defaults() -> None:
    spec = SandboxSpec()
    assert spec.network == NetworkPolicy.hermetic()
    assert spec.environment == EnvSet.minimal()
    assert spec.resources == ResourceLimits.hermetic()
    assert spec.process == ProcessPolicy.hermetic()
    assert spec.workdir is None
    spec.validate()


def test_spec_converts_lists_and_type_checks(tmp_path: Path) -> None:
    spec = SandboxSpec(inputs=[str(tmp_path)])  # type: ignore[arg-type]
    assert spec.inputs == PathSet.of(tmp_path)
    with pytest.raises(SpecError) as info:
        SandboxSpec(network="none")  # type: ignore[arg-type]
    assert info.value.field == "network"
    with pytest.raises(SpecError, match="inputs"):
        SandboxSpec(inputs="/usr")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="outputs: path is not absolute: 'out'"):
        SandboxSpec(outputs=["out"])  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="workdir"):
        SandboxSpec(workdir="relative")


def test_spec_workdir_canonicalised() -> None:
    assert SandboxSpec(workdir="/w-hm/a/../b/").workdir == "/w-hm/b"


def test_one_path_both_input_and_output_after_normalisation(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    spec = SandboxSpec(
        inputs=PathSet.of(tmp_path / "a" / ".." / "c"), outputs=PathSet.of(tmp_path / "c")
    )
    with pytest.raises(SpecError) as info:
        spec.validate()
    c = str((tmp_path / "c").resolve())
    assert f"{c!r} is declared both an input (read-only) and output" in str(info.value)
    assert spec.checked().is_err()


def test_one_path_both_ways_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    spec = SandboxSpec(inputs=PathSet.of(real), outputs=PathSet.of(tmp_path / "alias"))
    with pytest.raises(SpecError, match="both an input"):
        spec.validate()


def test_nested_declarations_are_allowed_both_ways(tmp_path: Path) -> None:
    """The innermost declaration decides for its subtree (see
    tests/test_linux_nested_paths.py for the sandbox's side)."""
    (tmp_path / "src" / "out").mkdir(parents=True)
    (tmp_path / "o" / "in").mkdir(parents=True)
    SandboxSpec(
        inputs=PathSet.of(tmp_path / "src"), outputs=PathSet.of(tmp_path / "src/out")
    ).validate()
    SandboxSpec(
        inputs=PathSet.of(tmp_path / "src"), temps=PathSet.of(tmp_path / "src/out")
    ).validate()
    SandboxSpec(inputs=PathSet.of(tmp_path / "o/in"), outputs=PathSet.of(tmp_path / "o")).validate()
    ok = SandboxSpec(outputs=PathSet.of(tmp_path / "o"), temps=PathSet.of(tmp_path / "o" / "t"))
    ok.validate()
    same = SandboxSpec(inputs=PathSet.of(tmp_path / "o"), temps=PathSet.of(tmp_path / "o"))
    with pytest.raises(SpecError, match="temp"):
        same.validate()


def test_hermetic_network_granting_access_rejected() -> None:
    spec = SandboxSpec(network=NetworkPolicy(is_hermetic=True, allowed_hosts=("example.com:443",)))
    with pytest.raises(SpecError, match="hermetic"):
        spec.validate()
    with pytest.raises(SpecError, match="allow_https"):
        SandboxSpec(network=NetworkPolicy(allow_https=True)).validate()
    SandboxSpec(network=NetworkPolicy.allow_hosts(["example.com:443"])).validate()


def test_missing_input_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SpecError) as info:
        SandboxSpec(inputs=PathSet.of(missing)).validate()
    assert str(info.value) == f"input path does not exist: {str(missing.resolve())!r}"


def test_missing_outputs_and_temps_are_fine(tmp_path: Path) -> None:
    SandboxSpec(outputs=PathSet.of(tmp_path / "o"), temps=PathSet.of(tmp_path / "t")).validate()


def test_questions(tmp_path: Path) -> None:
    spec = SandboxSpec(
        inputs=PathSet.of(tmp_path / "in"),
        outputs=PathSet.of(tmp_path / "out"),
        temps=PathSet.of(tmp_path / "tmp"),
    )
    assert spec.can_read(tmp_path / "in" / "f")
    assert not spec.can_write(tmp_path / "in" / "f")
    assert spec.can_write(tmp_path / "out" / "f") and spec.can_read(tmp_path / "out")
    assert spec.can_write(tmp_path / "tmp" / "x")
    assert not spec.can_read(tmp_path / "other")
    assert not spec.can_read(str(tmp_path / "in") + "x")
    assert not spec.can_network()
    assert SandboxSpec(network=NetworkPolicy.allow_hosts(["h:1"])).can_network()
    assert spec.has_env("USER") and not spec.has_env("PATH")


# -- JSON and digest ---------------------------------------------------------


def rich_spec(tmp_path: Path) -> SandboxSpec:
    return SandboxSpec(
        inputs=PathSet.of(tmp_path / "src", tmp_path / "lib", "/usr"),
        outputs=PathSet.of(tmp_path / "out"),
        temps=PathSet.of(tmp_path / "tmp", tmp_path / "out" / "scratch"),
        network=NetworkPolicy.allow_hosts(["pypi.org:443", "[::1]:8080"]),
        environment=EnvSet.of(
            {"PATH": "/usr/bin", "CC": "gcc", "UNICODE": "h\u00e9llo \u2603", "EMPTY": ""},
            inherit_home=True,
        ),
        resources=ResourceLimits(max_memory_bytes=123, max_processes=7, max_output_bytes=2**40),
        process=ProcessPolicy(allow_fork=False, max_children=0, kill_on_parent_exit=False),
        workdir=str(tmp_path / "src"),
    )


def test_json_round_trip_exact(tmp_path: Path) -> None:
    spec = rich_spec(tmp_path)
    text = spec.to_json()
    again = SandboxSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text
    assert SandboxSpec.from_json(spec.to_json(indent=None)) == spec
    assert SandboxSpec.from_json(text.encode("utf-8")) == spec
    assert SandboxSpec.from_dict(spec.to_dict()) == spec
    assert SandboxSpec.from_json(SandboxSpec().to_json()) == SandboxSpec()


def test_json_format(tmp_path: Path) -> None:
    data = json.loads(rich_spec(tmp_path).to_json())
    assert data["version"] == 2
    assert set(data) == {
        "version",
        "inputs",
        "outputs",
        "temps",
        "network",
        "environment",
        "resources",
        "process",
        "reproducibility",
        "workdir",
    }
    assert data["environment"]["vars"]["CC"] == "gcc"
    assert data["network"]["allowed_hosts"] == ["[::1]:8080", "pypi.org:443"]
    assert data["resources"]["max_processes"] == 7


def test_short_document_fills_defaults() -> None:
    spec = SandboxSpec.from_json('{"inputs": ["/usr"]}')
    assert spec == SandboxSpec(inputs=PathSet.of("/usr"))
    partial = SandboxSpec.from_json('{"resources": {"max_processes": 9}, "process": {}}')
    assert partial.resources == dataclasses.replace(ResourceLimits.hermetic(), max_processes=9)
    assert partial.process == ProcessPolicy.hermetic()
    env = SandboxSpec.from_json('{"environment": {"vars": {"A": "1"}}}').environment
    assert env == EnvSet.of({"A": "1"})


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ('{"bogus": 1}', "'bogus'"),
        ('{"network": {"is_hermetic": true, "proxy": "x"}}', "network.proxy"),
        ('{"environment": {"vars": {}, "extra": 1}}', "environment.extra"),
        ('{"resources": {"max_processes": "10"}}', "resources.max_processes"),
        ('{"resources": {"max_processes": 1.0}}', "resources.max_processes"),
        ('{"resources": {"max_processes": true}}', "resources.max_processes"),
        ('{"resources": {"max_processes": -3}}', "resources.max_processes"),
        ('{"process": {"allow_fork": "yes"}}', "process.allow_fork"),
        ('{"network": {"allowed_hosts": "a:1"}}', "network.allowed_hosts"),
        ('{"inputs": "/usr"}', "inputs"),
        ('{"inputs": ["/usr", 3]}', "inputs[1]"),
        ('{"inputs": ["usr"]}', "inputs"),
        ('{"workdir": 5}', "workdir"),
        ('{"environment": {"vars": {"K": 1}}}', "environment.vars.K"),
        ('{"environment": {"inherit_path": 1}}', "environment.inherit_path"),
        ('{"version": 3}', "version"),
        ('{"version": 0}', "version"),
        ('{"version": true}', "version"),
        ('{"network": []}', "network"),
    ],
)
def test_from_json_errors_name_the_key(document: str, key: str) -> None:
    with pytest.raises(SpecError) as info:
        SandboxSpec.from_json(document)
    assert key in str(info.value)


@pytest.mark.parametrize(
    "document", ['{"inputs": [', "", "[]", "null", '{"a": 1, "a": 2}', b"\xff"]
)
def test_from_json_rejects_malformed(document: str | bytes) -> None:
    with pytest.raises(SpecError):
        SandboxSpec.from_json(document)


def test_from_json_env_error_hides_value() -> None:
    with pytest.raises(SpecError) as info:
        SandboxSpec.from_json('{"environment": {"vars": {"A=B": "s3cr3t"}}}')
    assert "'A=B'" in str(info.value) and "s3cr3t" not in str(info.value)


def test_digest_equal_for_equal_specs(tmp_path: Path) -> None:
    a, b = rich_spec(tmp_path), rich_spec(tmp_path)
    assert a is not b and a.digest() == b.digest()
    assert len(a.digest()) == 64
    # Insertion order of the environment does not matter.
    assert (
        SandboxSpec(environment=EnvSet.of({"A": "1", "B": "2"})).digest()
        == SandboxSpec(environment=EnvSet.of([("B", "2"), ("A", "1")])).digest()
    )


def test_digest_changes_with_every_field(tmp_path: Path) -> None:
    base = rich_spec(tmp_path)
    variants = [
        dataclasses.replace(base, inputs=base.inputs.union(PathSet.of("/opt-hm"))),
        dataclasses.replace(base, outputs=PathSet.of(tmp_path / "out2")),
        dataclasses.replace(base, temps=PathSet()),
        dataclasses.replace(base, network=NetworkPolicy.hermetic()),
        dataclasses.replace(base, environment=base.environment.with_var("CC", "clang")),
        dataclasses.replace(base, environment=base.environment.without("EMPTY")),
        dataclasses.replace(base, resources=ResourceLimits.hermetic()),
        dataclasses.replace(base, process=ProcessPolicy()),
        dataclasses.replace(base, workdir=None),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1
    for f in dataclasses.fields(ResourceLimits):
        value = getattr(base.resources, f.name)
        if f.name == "defaulted":
            # The same values, the caller's rather than the preset's.
            preset = ResourceLimits.hermetic()
            explicit = dataclasses.replace(preset, defaulted=())
            assert (
                dataclasses.replace(base, resources=preset).digest()
                != dataclasses.replace(base, resources=explicit).digest()
            )
            continue
        new = (not value) if isinstance(value, bool) else value + 1
        changed = dataclasses.replace(base.resources, **{f.name: new})
        assert dataclasses.replace(base, resources=changed).digest() != base.digest()


def test_digest_stable_across_processes(tmp_path: Path) -> None:
    spec = rich_spec(tmp_path)
    code = (
        "import sys\n"
        "from hermetic.core.spec import SandboxSpec\n"
        "print(SandboxSpec.from_json(sys.stdin.read()).digest())\n"
    )
    digests = set()
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=spec.to_json(),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd="/",  # the installed package, not the checkout's uncompiled one
        )
        digests.add(out.stdout.strip())
    assert digests == {spec.digest()}


def test_digest_handles_undecodable_file_names() -> None:
    name = os.fsdecode(b"/nonexistent-hm/\xff")
    assert SandboxSpec(inputs=PathSet.of(name)).digest() != SandboxSpec().digest()


def test_a_version_1_spec_runs_as_it_did_its_max_children_unset() -> None:
    # Version 1 wrote max_children (32 by default) but never applied it.
    old = SandboxSpec.from_json('{"version": 1, "process": {"max_children": 32}}')
    assert old.process.max_children == 0
    assert SandboxSpec.from_json('{"version": 1}') == SandboxSpec()
    new = SandboxSpec.from_json('{"version": 2, "process": {"max_children": 32}}')
    assert new.process.max_children == 32
