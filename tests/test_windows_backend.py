"""The Windows backend for real (runs on Windows only: cibuildwheel's test run)."""

from __future__ import annotations

import sys

import pytest

pytestmark = [
    pytest.mark.windows,
    pytest.mark.skipif(sys.platform != "win32", reason="needs Windows (job objects)"),
]


def _executor(**limits):
    from hermetic import HermeticExecutor, ResourceLimits, SandboxSpec

    spec = SandboxSpec(resources=ResourceLimits(max_file_size=0, max_open_files=0, **limits))
    return HermeticExecutor.create(spec, require_hermetic=False).unwrap()


def test_a_hermetic_spec_is_refused():
    from hermetic import HermeticExecutor, SandboxSpec, UnsupportedError

    err = HermeticExecutor.create(SandboxSpec()).unwrap_err()
    assert isinstance(err, UnsupportedError) and "network" in str(err)


def test_runs_in_a_job_and_says_it_is_not_hermetic():
    r = _executor().execute(["cmd", "/c", "echo hello"]).unwrap()
    assert r.exit_code == 0 and b"hello" in r.stdout
    assert r.hermetic is False and r.isolation == "job-object"
    assert any("network" in layer for layer in r.unenforced_layers)


def test_timeout_kills_the_whole_tree():
    r = (
        _executor()
        .execute(["cmd", "/c", "start /b ping -n 60 127.0.0.1 & ping -n 60 127.0.0.1"], timeout=1)
        .unwrap()
    )
    assert r.timed_out


def test_process_limit_of_the_job():
    r = (
        _executor(max_processes=2)
        .execute(
            [
                "cmd",
                "/c",
                "start /b ping -n 2 127.0.0.1 & start /b ping -n 2 127.0.0.1 & ping -n 2 127.0.0.1",
            ]
        )
        .unwrap()
    )
    assert any(v.kind.value == "process" and v.decision == "denied" for v in r.violations)
