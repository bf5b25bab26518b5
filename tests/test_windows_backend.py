"""The Windows backend: for real on Windows (cibuildwheel's test run), and
its Python logic on any POSIX system with the native layer faked."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import types

import pytest

from hermetic import ResourceLimits, SandboxSpec, UnsupportedError

needs_windows = pytest.mark.skipif(sys.platform != "win32", reason="needs Windows (job objects)")


def _executor(**limits):
    from hermetic import HermeticExecutor, ResourceLimits, SandboxSpec

    spec = SandboxSpec(resources=ResourceLimits(max_file_size=0, max_open_files=0, **limits))
    return HermeticExecutor.create(spec, require_hermetic=False).unwrap()


@pytest.mark.windows
@needs_windows
def test_a_hermetic_spec_is_refused():
    from hermetic import HermeticExecutor, SandboxSpec, UnsupportedError

    err = HermeticExecutor.create(SandboxSpec()).unwrap_err()
    assert isinstance(err, UnsupportedError) and "network" in str(err)


@pytest.mark.windows
@needs_windows
def test_runs_in_a_job_and_says_it_is_not_hermetic():
    r = _executor().execute(["cmd", "/c", "echo hello"]).unwrap()
    assert r.exit_code == 0 and b"hello" in r.stdout
    assert r.hermetic is False and r.isolation == "job-object"
    assert any("network" in layer for layer in r.unenforced_layers)


@pytest.mark.windows
@needs_windows
def test_timeout_kills_the_whole_tree():
    r = (
        _executor()
        .execute(["cmd", "/c", "start /b ping -n 60 127.0.0.1 & ping -n 60 127.0.0.1"], timeout=1)
        .unwrap()
    )
    assert r.timed_out


@pytest.mark.windows
@needs_windows
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


# -- the backend's Python logic, with the native layer faked ----------------
#
# csrc/windows/job.c's calls played by a POSIX child process (msvcrt's
# handles are the descriptors themselves): what is tested is what the
# backend decides (which limits fail closed, which run without and are
# listed, what the job is asked to enforce), not the job object.


class _FakeFFI:
    def new(self, ctype, init=None):
        if ctype == "wchar_t[]":
            return init
        if ctype == "unsigned long *":
            return [0]
        fields = {
            "struct hm_win_limits *": ("memory_bytes", "cpu_time_100ns", "max_processes"),
            "struct hm_win_proc *": ("pid", "breaches"),
            "struct hm_win_usage *": (
                "user_100ns",
                "kernel_100ns",
                "read_bytes",
                "write_bytes",
                "peak_job_memory",
            ),
        }[ctype]
        return types.SimpleNamespace(**dict.fromkeys(fields, 0))

    def cast(self, ctype, value):
        return value


class _FakeLib:
    def __init__(self):
        self.limits = None
        self.children = []

    def hm_win_spawn(self, app, cmdline, block, cwd, std_in, std_out, std_err, lim, proc, err):
        env = dict(entry.split("=", 1) for entry in block.split("\0") if entry)
        child = subprocess.Popen(
            shlex.split(cmdline),
            executable=app,
            stdin=std_in,
            stdout=std_out,
            stderr=std_err,
            env=env,
            cwd=cwd,
        )
        self.children.append(child)
        self.limits = lim
        proc.pid, proc.popen = child.pid, child
        return 0

    def hm_win_wait(self, proc, timeout_ms):
        try:
            proc.popen.wait(timeout_ms / 1000)
        except subprocess.TimeoutExpired:
            return 1
        return 0

    def hm_win_kill(self, proc, exit_code):
        proc.popen.kill()
        return 0

    def hm_win_exit_code(self, proc, code):
        code[0] = proc.popen.returncode
        return 0

    def hm_win_usage(self, proc, usage):
        return 0

    def hm_win_close(self, proc):
        proc.popen.wait()


@pytest.fixture
def faked(monkeypatch):
    """hermetic.platforms.windows.backend with its native layer faked."""
    if os.name != "posix":
        pytest.skip("fakes the job object with a POSIX child process")
    from hermetic.platforms.windows import backend

    native = types.SimpleNamespace(ffi=_FakeFFI(), lib=_FakeLib())
    msvcrt = types.SimpleNamespace(get_osfhandle=lambda fd: fd)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    monkeypatch.setattr(os, "set_handle_inheritable", lambda h, v: None, raising=False)
    monkeypatch.setattr(backend, "_native", lambda: native)
    yield backend, native.lib
    for child in native.lib.children:
        assert child.returncode is not None  # every one was waited for


GiB = 1024**3


def _named(lines):
    return {line.split(":", 1)[0] for line in lines}


def test_faked_a_default_limit_a_job_cannot_enforce_runs_and_is_listed(faked):
    backend, lib = faked
    spec = SandboxSpec()  # ResourceLimits.hermetic(): every limit a default
    assert spec.resources.is_default("max_open_files")
    prepared = backend.prepare(spec, require_hermetic=False)
    r = backend.execute(prepared, ["/bin/sh", "-c", "echo ran"])
    assert (r.exit_code, r.stdout) == (0, b"ran\n")
    assert r.hermetic is False and r.isolation == "job-object"
    # No job limit exists for these: listed, and the action ran.
    for name in ("max_open_files", "max_file_size", "max_disk_io", "max_output_bytes"):
        assert name in _named(r.unenforced_limits), name
    # What the job enforces is not listed, and the job was asked for it.
    assert "max_memory_bytes" not in _named(r.unenforced_limits)
    assert lib.limits.memory_bytes == spec.resources.max_memory_bytes
    assert lib.limits.max_processes == spec.resources.max_processes


@pytest.mark.parametrize(
    "resources",
    [
        # Another value than the preset's: the caller's.
        {"max_open_files": 100},
        # A spec file naming the limit, at the preset's own value: the caller's too.
        {"max_open_files": 512},
    ],
)
def test_faked_the_same_limit_set_by_the_caller_fails_closed_naming_it(faked, resources):
    backend, _ = faked
    spec = SandboxSpec.from_json(json.dumps({"resources": resources}))
    assert not spec.resources.is_default("max_open_files")
    with pytest.raises(UnsupportedError, match="max_open_files") as err:
        backend.prepare(spec, require_hermetic=False)
    # Only the caller's limit is refused; the defaults beside it would run without.
    assert "max_disk_io" not in str(err.value) and "max_file_size" not in str(err.value)
    assert "best_effort=True" in str(err.value)


def test_faked_best_effort_runs_the_callers_limit_unapplied(faked):
    backend, _ = faked
    limits = dataclasses.replace(ResourceLimits.hermetic(), max_open_files=100, best_effort=True)
    assert not limits.is_default("max_open_files")
    prepared = backend.prepare(SandboxSpec(resources=limits), require_hermetic=False)
    r = backend.execute(prepared, ["/bin/sh", "-c", "echo ran"])
    assert (r.exit_code, r.stdout) == (0, b"ran\n")
    assert "max_open_files" in _named(r.unenforced_limits)
    # Limits built directly hold no defaults: each unapplied one needs best_effort.
    direct = ResourceLimits(max_file_size=0)
    with pytest.raises(UnsupportedError, match="max_open_files"):
        backend.prepare(SandboxSpec(resources=direct), require_hermetic=False)
    relaxed = dataclasses.replace(direct, best_effort=True)
    prepared = backend.prepare(SandboxSpec(resources=relaxed), require_hermetic=False)
    assert _named(prepared.unenforced) == {"max_open_files"}
