"""The Result type and the exception hierarchy."""

from __future__ import annotations

import copy
import errno
import pickle
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from hermetic.core.errors import (
    ActionFailedError,
    ExecutionTimeout,
    HermeticError,
    SandboxError,
    SpecError,
    UnsupportedError,
)
from hermetic.core.result import Err, Ok, Result, capture

# -- Result ------------------------------------------------------------------


def test_ok_behaviour() -> None:
    r: Result[int] = Ok(5)
    assert r.is_ok() and not r.is_err()
    assert r.unwrap() == 5
    assert r.unwrap_or(7) == 5
    assert r == Ok(5) and r != Ok(6)
    assert repr(r) == "Ok(5)"
    with pytest.raises(HermeticError, match="unwrap_err"):
        r.unwrap_err()


def test_err_behaviour() -> None:
    error = SpecError("bad", field="x")
    r: Result[int] = Err(error)
    assert r.is_err() and not r.is_ok()
    assert r.unwrap_or(7) == 7
    assert r.unwrap_err() is error
    with pytest.raises(SpecError) as info:
        r.unwrap()
    assert info.value is error
    assert r == Err(error)
    assert repr(r).startswith("Err(SpecError(")


def test_results_are_immutable() -> None:
    r = Ok(1)
    with pytest.raises(AttributeError):
        r.value = 2  # type: ignore[misc]


def test_capture() -> None:
    assert capture(lambda: 3) == Ok(3)

    def fails() -> int:
        raise SpecError("nope")

    result = capture(fails)
    assert result.is_err() and isinstance(result.unwrap_err(), SpecError)

    def bug() -> int:
        raise KeyError("not a hermetic error")

    with pytest.raises(KeyError):
        capture(bug)


# -- errors ------------------------------------------------------------------


def test_spec_error() -> None:
    err = SpecError("max_processes must be >= 0, got -1", field="max_processes", value=-1)
    assert isinstance(err, HermeticError) and isinstance(err, ValueError)
    assert str(err) == "max_processes must be >= 0, got -1"
    assert err.field == "max_processes" and err.value == -1


def test_sandbox_error_is_an_oserror() -> None:
    err = SandboxError(errno.ENOENT, stage="bind", path="/no/such")
    assert isinstance(err, HermeticError) and isinstance(err, OSError)
    assert err.errno == errno.ENOENT
    assert err.strerror == "No such file or directory"
    assert err.filename == "/no/such" and err.path == "/no/such"
    assert err.stage == "bind" and err.op_index is None
    assert str(err) == (
        "sandbox setup failed at stage 'bind' for '/no/such': [Errno 2] No such file or directory"
    )
    # Not remapped to FileNotFoundError: the class stays ours.
    assert type(err) is SandboxError


def test_sandbox_error_detail_and_no_path() -> None:
    err = SandboxError(errno.EPERM, stage="uid_map", op_index=3, detail="user namespaces off")
    assert err.op_index == 3
    assert str(err) == (
        "sandbox setup failed at stage 'uid_map': [Errno 1] Operation not permitted"
        " (user namespaces off)"
    )


def test_unsupported_error() -> None:
    err = UnsupportedError("seccomp", "kernel built without CONFIG_SECCOMP_FILTER")
    assert isinstance(err, HermeticError) and isinstance(err, OSError)
    assert err.errno == errno.ENOTSUP
    assert err.layer == "seccomp"
    assert str(err) == "cannot apply seccomp: kernel built without CONFIG_SECCOMP_FILTER"


def test_execution_timeout() -> None:
    err = ExecutionTimeout(["sleep", "10"], 1.5, output=b"out", stderr=b"err", result="r")
    assert isinstance(err, HermeticError) and isinstance(err, subprocess.TimeoutExpired)
    assert err.cmd == ["sleep", "10"] and err.timeout == 1.5
    assert err.output == b"out" and err.stdout == b"out" and err.stderr == b"err"
    assert err.result == "r"
    assert "timed out after 1.5 seconds" in str(err)


@dataclass(frozen=True)
class FakeResult:
    """The part of ExecutionResult that ActionFailedError reads."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


FAILED: Any = FakeResult(("false",), 1, b"o", b"e")


def test_action_failed_error() -> None:
    err = ActionFailedError(FAILED)
    assert isinstance(err, HermeticError) and isinstance(err, subprocess.CalledProcessError)
    assert err.returncode == 1 and err.cmd == ["false"]
    assert err.output == b"o" and err.stderr == b"e"
    assert err.result is FAILED
    assert "non-zero exit status 1" in str(err)


@pytest.mark.parametrize(
    "err",
    [
        SpecError("bad field", field="f", value=[1]),
        SandboxError(errno.ENOENT, stage="op", path="/p", op_index=2, detail="d"),
        UnsupportedError("landlock", "ABI too old"),
        ExecutionTimeout(["a"], 2.0, output=b"o", stderr=None, result={"k": 1}),
        ActionFailedError(FAILED),
    ],
)
def test_errors_pickle_and_copy(err: HermeticError) -> None:
    for clone in (pickle.loads(pickle.dumps(err)), copy.copy(err), copy.deepcopy(err)):
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert vars(clone) == vars(err)
        if isinstance(err, OSError):
            assert isinstance(clone, OSError)
            assert (clone.errno, clone.strerror, clone.filename) == (
                err.errno,
                err.strerror,
                err.filename,
            )
