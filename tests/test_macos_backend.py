"""The macOS backend for real (runs on macOS only: cibuildwheel's test run)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS (sandbox_init)"),
]


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


def test_network_is_refused(ws):
    ex = _executor(ws)
    r = ex.execute(
        ["/usr/bin/python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 80), 3)"]
    ).unwrap()
    assert r.exit_code != 0


def test_timeout_ends_the_group(ws):
    ex = _executor(ws)
    r = ex.execute(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout=0.5).unwrap()
    assert r.timed_out
