"""The macOS backend: for real on macOS (cibuildwheel's test run), and its
Python logic on any POSIX system with the native layer faked."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

import pytest

from hermetic import ResourceLimits, SandboxSpec, UnsupportedError

needs_macos = pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS (sandbox_init)")


@pytest.fixture
def ws():
    root = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-"))
    for d in ("src", "out", "secret"):
        os.mkdir(os.path.join(root, d))
    with open(os.path.join(root, "secret", "key"), "w") as f:
        f.write("s3cr3t")
    return root


def _executor(ws):
    from hermetic import EnvSet, HermeticExecutor, PathSet, ResourceLimits, SandboxSpec

    # The test's own interpreter too (a virtual environment, a framework).
    pythons = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    spec = SandboxSpec(
        inputs=PathSet((f"{ws}/src", *sorted(pythons))),
        outputs=PathSet((f"{ws}/out",)),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits(max_processes=0, best_effort=True),
    )
    return HermeticExecutor.create(spec).unwrap()


@pytest.mark.macos
@needs_macos
def test_outputs_writable_everything_else_refused(ws):
    ex = _executor(ws)
    r = ex.execute(
        [
            "/bin/sh",
            "-c",
            f"echo made > {ws}/out/f; echo x > {ws}/src/g || echo refused-input; "
            f"cat {ws}/secret/key || echo refused-secret",
        ]
    ).unwrap()
    assert r.isolation == "sbpl"
    with open(f"{ws}/out/f") as f:
        assert f.read() == "made\n"
    assert b"refused-input" in r.stdout and b"refused-secret" in r.stdout
    assert b"s3cr3t" not in r.stdout
    assert not os.path.exists(f"{ws}/src/g")


@pytest.mark.macos
@needs_macos
def test_network_is_refused(ws):
    ex = _executor(ws)
    r = ex.execute(
        ["/usr/bin/python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 80), 3)"]
    ).unwrap()
    assert r.exit_code != 0


@pytest.mark.macos
@needs_macos
def test_timeout_ends_the_group(ws):
    ex = _executor(ws)
    r = ex.execute(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout=0.5).unwrap()
    assert r.timed_out


# -- the backend's Python logic, with the native layer faked ----------------
#
# No C entry point, and a sandbox-exec that runs the command without
# applying the profile: what is tested is what the backend decides (which
# limits fail closed, which run weakened and are listed), not the profile.

_FAKE_SANDBOX_EXEC = """#!/bin/sh
# sandbox-exec -p PROFILE [-D KEY=VALUE]... -- ARGV: runs ARGV, no profile.
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""

GiB = 1024**3


@pytest.fixture
def faked(monkeypatch, tmp_path):
    """hermetic.platforms.macos.backend with its native layer faked."""
    if os.name != "posix":
        pytest.skip("fakes sandbox-exec with a POSIX shell script")
    from hermetic.platforms.macos import backend

    fake = tmp_path / "sandbox-exec"
    fake.write_text(_FAKE_SANDBOX_EXEC)
    fake.chmod(0o755)
    monkeypatch.setattr(backend, "_native", lambda: None)
    monkeypatch.setattr(backend, "SANDBOX_EXEC", str(fake))
    backend.capabilities.cache_clear()
    assert backend.capabilities().isolation == "sbpl"
    yield backend
    backend.capabilities.cache_clear()


def _named(lines):
    return {line.split(":", 1)[0] for line in lines}


def test_faked_a_default_limit_macos_cannot_enforce_runs_and_is_listed(faked):
    spec = SandboxSpec()  # ResourceLimits.hermetic(): every limit a default
    assert spec.resources.is_default("max_memory_bytes")
    r = faked.execute(faked.prepare(spec), ["/bin/sh", "-c", "echo ran"])
    assert (r.exit_code, r.stdout) == (0, b"ran\n")
    assert r.isolation == "sbpl"
    # Sampled or per process here: listed, and the action ran.
    for name in ("max_memory_bytes", "max_cpu_time_ms", "max_processes", "max_disk_io"):
        assert name in _named(r.unenforced_limits), name
    # What an rlimit enforces is not listed.
    assert "max_open_files" not in _named(r.unenforced_limits)


@pytest.mark.parametrize(
    "resources",
    [
        # Another value than the preset's: the caller's.
        {"max_memory_bytes": 2 * GiB},
        # A spec file naming the limit, at the preset's own value: the caller's too.
        {"max_memory_bytes": 4 * GiB},
    ],
)
def test_faked_the_same_limit_set_by_the_caller_fails_closed_naming_it(faked, resources):
    import json

    spec = SandboxSpec.from_json(json.dumps({"resources": resources}))
    assert not spec.resources.is_default("max_memory_bytes")
    with pytest.raises(UnsupportedError, match="max_memory_bytes") as err:
        faked.prepare(spec)
    # Only the caller's limit is refused; the defaults beside it would run weakened.
    assert "max_disk_io" not in str(err.value) and "max_cpu_time_ms" not in str(err.value)
    assert "best_effort=True" in str(err.value)


def test_faked_best_effort_runs_the_callers_limit_weakened(faked):
    limits = dataclasses.replace(
        ResourceLimits.hermetic(), max_memory_bytes=2 * GiB, best_effort=True
    )
    assert not limits.is_default("max_memory_bytes")
    r = faked.execute(faked.prepare(SandboxSpec(resources=limits)), ["/bin/sh", "-c", "echo ran"])
    assert (r.exit_code, r.stdout) == (0, b"ran\n")
    assert "max_memory_bytes" in _named(r.unenforced_limits)
    # Limits built directly hold no defaults: each weakened one needs best_effort.
    direct = ResourceLimits(max_memory_bytes=2 * GiB, max_processes=0)
    with pytest.raises(UnsupportedError, match="max_memory_bytes"):
        faked.prepare(SandboxSpec(resources=direct))
    relaxed = dataclasses.replace(direct, best_effort=True)
    assert _named(faked.prepare(SandboxSpec(resources=relaxed)).unenforced) == {"max_memory_bytes"}


def test_faked_a_default_rlimit_above_the_callers_is_lowered_the_callers_fails(faked, monkeypatch):
    import json
    import resource

    real = resource.getrlimit

    def getrlimit(res):
        return (256, 256) if res == resource.RLIMIT_NOFILE else real(res)

    # A normal user whose hard limit of open files is 256, below the preset's 512.
    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    prepared = faked.prepare(SandboxSpec())
    assert (resource.RLIMIT_NOFILE, 256, 256) in prepared.rlimits
    hard = SandboxSpec.from_json(json.dumps({"resources": {"max_open_files": 512}}))
    with pytest.raises(UnsupportedError, match="max_open_files needs a hard limit of 512"):
        faked.prepare(hard)
