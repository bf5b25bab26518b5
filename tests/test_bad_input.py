"""Bad input to the library: every entry point answers with a SpecError naming the culprit.

Deeply nested JSON, lone surrogates (text no file name or environment can
hold), NUL bytes, wrong types and out-of-range numbers reach the spec, the
builders and ``execute`` from outside; none of them may escape as another
exception.  File names that came from undecodable bytes (surrogate-escaped,
as ``os.fsdecode`` makes them) are valid and must work end to end.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import hermetic
from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    NetworkPolicy,
    PathSet,
    ResourceLimits,
    SandboxSpec,
    SandboxSpecBuilder,
    SpecError,
)
from hermetic.core.paths import canonical
from hermetic.core.spec import check_argv, check_cwd

#: Not a file name on any POSIX system: a high surrogate alone cannot be
#: encoded (os.fsencode raises), unlike the low surrogates U+DC80..U+DCFF
#: that os.fsdecode makes of undecodable bytes.
LONE = "\ud800"
#: What os.fsdecode(b"\xff") gives: a valid file name.
ESCAPED = os.fsdecode(b"\xff")

DEEP = 100_000


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


# -- from_json / from_dict --------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        deep_json(),
        deep_json().encode(),
        '{"inputs": ' + deep_json() + "}",
        '{"network": {"allowed_hosts": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}}",
    ],
    ids=["array", "bytes", "in-inputs", "in-network"],
)
def test_deeply_nested_json_is_a_spec_error(document: str | bytes) -> None:
    with pytest.raises(SpecError, match="nest"):
        SandboxSpec.from_json(document)


@pytest.mark.parametrize("value", [5, None, 1.5, ["{}"], {"a": 1}])
def test_from_json_of_a_non_text_names_the_type(value: Any) -> None:
    with pytest.raises(SpecError, match=type(value).__name__):
        SandboxSpec.from_json(value)


@pytest.mark.parametrize("field", ["inputs", "outputs", "temps"])
def test_a_lone_surrogate_in_a_path_is_refused_naming_the_field(field: str) -> None:
    document = json.dumps({field: ["/tmp/hm-" + LONE]})
    with pytest.raises(SpecError) as info:
        SandboxSpec.from_json(document)
    assert info.value.field is not None and info.value.field.startswith(field)
    assert str(info.value).startswith(field) and "encode" in str(info.value)
    with pytest.raises(SpecError, match=field):
        SandboxSpec(**{field: ["/tmp/hm-" + LONE]})  # type: ignore[arg-type]


def test_a_lone_surrogate_in_workdir_is_refused_naming_it() -> None:
    with pytest.raises(SpecError) as info:
        SandboxSpec(workdir="/tmp/" + LONE)
    assert info.value.field == "workdir" and "workdir" in str(info.value)
    with pytest.raises(SpecError) as info:
        SandboxSpec.from_json(json.dumps({"workdir": "/tmp/" + LONE}))
    assert info.value.field == "workdir" and "workdir" in str(info.value)


def test_canonical_and_pathset_refuse_lone_surrogates() -> None:
    with pytest.raises(SpecError, match="encode"):
        canonical("/" + LONE)
    with pytest.raises(SpecError, match="encode"):
        PathSet.of("/a" + LONE)
    with pytest.raises(SpecError, match="encode"):
        PathSet.of("/a").contains("/a/" + LONE)


@pytest.mark.parametrize(
    ("vars_", "key"),
    [({"A": "x" + LONE}, "A"), ({"B" + LONE: "x"}, "B" + LONE)],
    ids=["value", "key"],
)
def test_environment_must_be_encodable_and_the_value_is_never_shown(
    vars_: dict[str, str], key: str
) -> None:
    makers = (
        lambda: EnvSet.of(vars_),
        lambda: SandboxSpec(environment=vars_),  # type: ignore[arg-type]
        lambda: SandboxSpec.from_json(json.dumps({"environment": {"vars": vars_}})),
        lambda: EnvSet.minimal().with_var(*next(iter(vars_.items()))),
    )
    for make in makers:
        with pytest.raises(SpecError) as info:
            make()
        assert "encode" in str(info.value)
        assert "x" + LONE not in str(info.value) and "x" + LONE != info.value.value


def test_escaped_bytes_are_valid_names_and_values_and_round_trip() -> None:
    spec = SandboxSpec(
        outputs=PathSet.of("/tmp/hm-out-" + ESCAPED),
        environment={"V" + ESCAPED: "v" + ESCAPED},  # type: ignore[arg-type]
        workdir="/tmp/hm-out-" + ESCAPED,
    )
    text = spec.to_json()
    text.encode("utf-8")  # the JSON itself is valid UTF-8 text...
    assert SandboxSpec.from_json(text) == spec  # ...and reads back as the same spec
    assert SandboxSpec.from_json(text.encode()) == spec
    assert spec.digest() == SandboxSpec.from_json(text).digest()


def test_a_port_with_thousands_of_digits_is_a_spec_error() -> None:
    entry = "example.org:" + "9" * 5000
    with pytest.raises(SpecError, match="port"):
        NetworkPolicy.allow_hosts([entry])
    document = json.dumps(
        {"network": {"is_hermetic": False, "allow_http": True, "allowed_hosts": [entry]}}
    )
    with pytest.raises(SpecError, match="network"):
        SandboxSpec.from_json(document)


# -- builders ----------------------------------------------------------------


def test_builders_return_err_for_bad_arguments(tmp_path: Path) -> None:
    root = str(tmp_path)
    cases: dict[str, Any] = {
        "inputs": SandboxSpecBuilder.create().input("/tmp/" + LONE).build(),
        "workdir": SandboxSpecBuilder.create().workdir(5).build(),  # type: ignore[arg-type]
        "vars": SandboxSpecBuilder.create().env("A", LONE).build(),
        "environment": SandboxSpecBuilder.create().with_environment(5).build(),  # type: ignore[arg-type]
        "sources": HermeticSpecBuilder.for_build(root, 5, "out", "tmp"),  # type: ignore[arg-type]
        "sources ": HermeticSpecBuilder.for_build(root, [LONE], "out", "tmp"),
        "output_dir": HermeticSpecBuilder.for_build(root, [], "o" + LONE, "tmp"),
        "test_dir": HermeticSpecBuilder.for_test(root, LONE, "/tmp"),
        "workspace_root": HermeticSpecBuilder.for_test("/" + LONE, "t", "/tmp"),
    }
    for name, result in cases.items():
        assert not result.is_ok(), name
        err = result.unwrap_err()
        assert isinstance(err, SpecError), (name, err)
        assert name.strip() in str(err) or name.strip() == err.field, (name, str(err))


# -- execute: argv and cwd ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["true", "a" + LONE], "argv[1]"),
        (["true" + LONE], "argv[0]"),
        (["true", "a\0b"], "argv[1]"),
        (["true", 5], "argv[1]"),
        (["true", b"x"], "argv[1]"),
        ("true", "argv"),
        ([], "argv"),
        (None, "argv"),
    ],
)
def test_bad_argv_is_a_spec_error_naming_the_entry(argv: Any, culprit: str) -> None:
    with pytest.raises(SpecError) as info:
        check_argv(argv)
    assert culprit in str(info.value)


@pytest.mark.linux
@pytest.mark.root
@pytest.mark.parametrize(
    ("kw", "culprit"),
    [
        ({"argv": ["true", LONE]}, "argv[1]"),
        ({"argv": ["true", 3]}, "argv[1]"),
        ({"cwd": "/" + LONE}, "cwd"),
        ({"cwd": 5}, "cwd"),
        ({"cwd": b"/"}, "cwd"),
        ({"cwd": "relative"}, "cwd"),
        ({"cwd": "/a\0b"}, "cwd"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"stdin": "text"}, "stdin"),
        ({"monitor": 5}, "monitor"),
    ],
)
def test_execute_refuses_bad_arguments_with_a_spec_error(kw: dict[str, Any], culprit: str) -> None:
    argv = kw.pop("argv", ["true"])
    spec = SandboxSpec(inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()))
    with HermeticExecutor.create(spec).unwrap() as ex:
        result = ex.execute(argv, **kw)
        assert not result.is_ok()
        assert isinstance(result.unwrap_err(), SpecError) and culprit in str(result.unwrap_err())
        digest = ex.action_digest(argv, cwd=kw.get("cwd"))
        if "argv" in culprit or "cwd" in culprit:
            assert culprit in str(digest.unwrap_err())
    if "monitor" not in kw:
        with pytest.raises(SpecError, match=culprit.replace("[", r"\[")):
            hermetic.run(argv, spec, **kw)


@pytest.mark.linux
@pytest.mark.root
@pytest.mark.parametrize("log", [5, "", "/tmp/a\0b", "/tmp/hm-" + LONE, b"/tmp/log"])
def test_a_bad_audit_log_path_is_refused_before_anything_runs(log: Any) -> None:
    result = HermeticExecutor.create(SandboxSpec(), audit_log=log)
    assert not result.is_ok()
    err = result.unwrap_err()
    assert isinstance(err, SpecError) and err.field == "audit_log", err


# -- from inside the sandbox -------------------------------------------------


PROBE = r"""
printf '%s' "$1" > "$2/arg"
printf '%s' "$V" > "$2/env"
pwd > "$2/cwd"
"""


@pytest.mark.linux
def test_escaped_file_names_work_end_to_end(fs_runner: Any, scratch: str) -> None:
    """An output directory and a workdir whose names are not UTF-8, an
    argument and an environment value holding such bytes: the action sees
    exactly the bytes, in every mode (the unprivileged and Landlock modes
    carry the spec through a JSON file and the command line)."""
    raw = os.fsencode(scratch) + b"/out-\xff\xfe"
    os.mkdir(raw)
    fs_runner.own(raw.decode("utf-8", "surrogateescape"))
    out = os.fsdecode(raw)
    assert out.endswith(os.fsdecode(b"\xff\xfe"))
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet.of(out),
        environment={"V": os.fsdecode(b"v\xfd")},  # type: ignore[arg-type]
        resources=ResourceLimits.defaults(),
        workdir=out,
    )
    o = fs_runner.run(spec, ["sh", "-c", PROBE, "sh", os.fsdecode(b"a\xfc"), out])
    assert o.error is None and o.exit_code == 0, (o.error, o.stderr)
    with open(raw + b"/arg", "rb") as f:
        assert f.read() == b"a\xfc"
    with open(raw + b"/env", "rb") as f:
        assert f.read() == b"v\xfd"
    with open(raw + b"/cwd", "rb") as f:
        assert f.read() == raw + b"\n"


@pytest.mark.linux
def test_a_spec_file_with_a_lone_surrogate_is_one_line_exit_123(runner: Any, scratch: str) -> None:
    """The spec file says "\\ud800" (valid JSON, no valid file name): the
    command line, as root and as the test user, refuses it on one line."""
    spec_file = os.path.join(scratch, "spec.json")
    with open(spec_file, "w") as f:
        f.write('{"outputs": ["/tmp/hm-\\ud800"]}')
    os.chmod(spec_file, 0o644)
    cmd = [sys.executable, "-m", "hermetic", "run", "--spec", spec_file, "--", "true"]
    if runner.user is not None:
        cmd = [
            "setpriv",
            f"--reuid={runner.user.pw_uid}",
            f"--regid={runner.user.pw_gid}",
            "--clear-groups",
            "--",
            *cmd,
        ]
    p = subprocess.run(cmd, capture_output=True, cwd="/", timeout=60)
    assert p.returncode == 123, p.stderr
    assert p.stderr.count(b"\n") == 1 and b"Traceback" not in p.stderr, p.stderr
    assert b"outputs" in p.stderr and b"encode" in p.stderr


@pytest.mark.linux
def test_a_refused_write_to_an_undecodable_name_is_recorded(runner: Any, scratch: str) -> None:
    """The action picks the names it is refused; one that is not UTF-8 must
    not make the audit record unwritable (it made execute raise, the
    violation unrecorded)."""
    log = os.path.join(scratch, "audit.jsonl")
    open(log, "w").close()
    runner.own(log)
    script = 'echo x > "/usr/$(printf "\\377")"; echo "rc=$?"'
    argv = [sys.executable, "-m", "hermetic", "run", "--audit-log", log, "--", "sh", "-c", script]
    if runner.user is not None:
        argv = [
            "setpriv",
            f"--reuid={runner.user.pw_uid}",
            f"--regid={runner.user.pw_gid}",
            "--clear-groups",
            "--",
            *argv,
        ]
    p = subprocess.run(argv, capture_output=True, cwd="/", timeout=60)
    assert p.returncode == 0 and p.stdout == b"rc=2\n", p.stderr
    assert b"Traceback" not in p.stderr
    from hermetic.security.audit import read

    records = list(read(log))
    # Lossless: the bad byte escaped in the text, the exact bytes in base64.
    assert [r["attempted"] for r in records] == ["/usr/\\xff"], records
    assert base64.b64decode(records[0]["attempted_b64"]) == b"/usr/\xff"
    assert records[0]["decision"] == "refused"


@pytest.mark.linux
@pytest.mark.root
def test_refused_input_leaves_nothing_behind(scratch: str) -> None:
    """Refusals happen before anything is made: no descriptor, process,
    mount or temporary directory is left, however often they repeat."""
    import psutil

    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet.of(scratch),
        resources=ResourceLimits.defaults(),
    )

    def state() -> tuple[set[str], int, int, set[str]]:
        with open("/proc/self/mountinfo") as f:
            mounts = len(f.readlines())
        temps = {p for p in os.listdir("/tmp") if p.startswith("hermetic")}
        return set(os.listdir("/proc/self/fd")), len(psutil.Process().children()), mounts, temps

    def refusals(ex: HermeticExecutor) -> None:
        for kw in ({"cwd": "/" + LONE}, {"cwd": 5}, {"timeout": -1}, {"stdin": "x"}):
            assert isinstance(ex.execute(["true"], **kw).unwrap_err(), SpecError)
        assert isinstance(ex.execute(["true", LONE]).unwrap_err(), SpecError)
        assert isinstance(ex.verify_reproducible(["true"], 1).unwrap_err(), SpecError)
        assert isinstance(ex.verify_reproducible(["true"], cwd=LONE).unwrap_err(), SpecError)
        missing = SandboxSpec(inputs=PathSet.of(scratch + "/missing"))
        assert isinstance(HermeticExecutor.create(missing).unwrap_err(), SpecError)
        assert isinstance(HermeticExecutor.create(spec, audit_log=LONE).unwrap_err(), SpecError)

    with HermeticExecutor.create(spec).unwrap() as ex:
        # Once first, and one action that runs: what an executor makes
        # once (a standby process, its descriptors) exists from now on.
        assert ex.execute(["true"]).unwrap().exit_code == 0
        refusals(ex)
        before = state()
        for _ in range(20):
            refusals(ex)
        assert state() == before


def test_a_host_with_a_surrogate_is_refused() -> None:
    for entry in ("\ud800x.org:80", ("ex\udcffample.org", 443)):
        with pytest.raises(SpecError, match="invalid host"):
            NetworkPolicy.allow_hosts([entry])


def test_a_pathlike_that_is_no_path_is_a_spec_error() -> None:
    class Bad:
        def __fspath__(self) -> int:
            return 5

    with pytest.raises(SpecError, match="workdir"):
        SandboxSpec(workdir=Bad())  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="cwd"):
        check_cwd(Bad())
    with pytest.raises(SpecError):
        PathSet.of(Bad())  # type: ignore[arg-type]
