"""The Python API reads like subprocess: results, run(), the executor's life.

Each test that runs an action runs it as root and as the unprivileged test
user (the ``runner`` fixture): the code runs in a fresh interpreter, as that
user, and prints what the test asserts on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from conftest import python_as

import hermetic
from hermetic import ActionFailedError, ExecutionResult, HermeticError, SpecError

#: The spec the scripts below run under: the toolchain, a PATH, and limits
#: that need no cgroup (the unprivileged user has none here).
SPEC = """
import hermetic
spec = hermetic.SandboxSpec(
    inputs=hermetic.PathSet(hermetic.HermeticSpecBuilder.toolchain_inputs()),
    environment=hermetic.EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
    resources=hermetic.ResourceLimits(),
)
"""


def _python(runner: Any, code: str, head: str = "") -> subprocess.CompletedProcess[str]:
    """``head``, SPEC, then ``code``, in a fresh interpreter, as the runner's user."""
    script = textwrap.dedent(head) + SPEC + textwrap.dedent(code)
    if runner.user is not None:
        p: subprocess.CompletedProcess[str] = python_as(runner.user, script)
        return p
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120
    )


def _result(**kw: Any) -> ExecutionResult:
    fields: dict[str, Any] = {
        "argv": ("cc", "-c", "x.c"),
        "exit_code": 0,
        "signal": None,
        "stdout": b"o",
        "stderr": b"e",
        "duration": 0.1,
    }
    fields.update(kw)
    return ExecutionResult(**fields)


# -- ExecutionResult reads like CompletedProcess ------------------------------


def test_success_is_a_bool_that_a_failure_makes_false() -> None:
    ok, failed = _result(), _result(exit_code=1)
    assert ok.success is True and failed.success is False
    # The trap this replaces: a bound method is always true.
    assert not failed.success
    assert _result(exit_code=None, signal=9).success is False
    assert _result(timed_out=True).success is False


def test_success_in_the_dict_is_the_attribute() -> None:
    for r in (_result(), _result(exit_code=3)):
        assert r.to_dict()["success"] is r.success
        assert json.loads(json.dumps(r.to_dict()))["success"] is r.success


def test_args_returncode_stdout_stderr_as_completed_process() -> None:
    r = _result(exit_code=2)
    assert r.args == ("cc", "-c", "x.c") == r.argv
    assert r.returncode == 2 and r.stdout == b"o" and r.stderr == b"e"
    assert _result(exit_code=None, signal=9).returncode == -9


def test_check_returncode_returns_on_success() -> None:
    r = _result()
    r.check_returncode()  # raises nothing
    assert r.success and r.returncode == 0


@pytest.mark.parametrize(
    ("kw", "code"),
    [({"exit_code": 1}, 1), ({"exit_code": None, "signal": 15}, -15)],
)
def test_check_returncode_raises_action_failed(kw: dict[str, Any], code: int) -> None:
    r = _result(**kw)
    with pytest.raises(ActionFailedError) as raised:
        r.check_returncode()
    err = raised.value
    assert isinstance(err, subprocess.CalledProcessError) and isinstance(err, HermeticError)
    assert err.returncode == code and err.cmd == ["cc", "-c", "x.c"]
    assert err.result is r and err.stdout == b"o" and err.stderr == b"e"


def test_check_returncode_raises_on_a_timed_out_run() -> None:
    # Exit status 0 in the grace period still is not a success.
    with pytest.raises(ActionFailedError):
        _result(timed_out=True).check_returncode()


# -- hermetic.run(..., input=) ------------------------------------------------


def test_run_input_and_stdin_may_not_both_be_given() -> None:
    with pytest.raises(SpecError, match="stdin and input"):
        hermetic.run(["cat"], hermetic.SandboxSpec(), stdin=b"a", input=b"b")


@pytest.mark.linux
def test_run_takes_input_as_subprocess_run_does(runner: Any) -> None:
    p = _python(
        runner,
        """
        r = hermetic.run(["cat"], spec, input=b"via input")
        print(r.stdout.decode(), r.success)
        r = hermetic.run(["cat"], spec, stdin=b"via stdin")
        print(r.stdout.decode(), r.success)
        try:
            hermetic.run(["sh", "-c", "exit 3"], spec, input=b"", check=True)
        except hermetic.ActionFailedError as e:
            print("failed", e.returncode)
        """,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["via input True", "via stdin True", "failed 3"]


# -- the executor's life ------------------------------------------------------


@pytest.mark.linux
def test_close_from_atexit_registered_before_the_first_execute(runner: Any) -> None:
    """atexit handlers run last-registered first.  A close registered before
    the process's first ``weakref.finalize`` (the executor's prepared mount
    namespace, as root, makes one) runs after the finalizer's exit hook has
    closed the namespace: close() must then neither fail nor close its
    descriptor number a second time."""
    p = _python(
        runner,
        """
        ex = hermetic.HermeticExecutor.create(spec).unwrap()
        executors.append(ex)
        print(ex.execute(["true"]).unwrap().success)
        """,
        head="""
        import atexit, weakref
        executors = []
        # Registered first, so it runs last; and the finalizers' hook is
        # not there yet, so it runs before this one.
        print(weakref.finalize._registered_with_atexit)
        atexit.register(lambda: [ex.close() for ex in executors] and print("closed"))
        """,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    assert p.stdout.splitlines() == ["False", "True", "closed"]


# -- a source tree nobody built -----------------------------------------------


def test_import_from_an_unbuilt_source_tree_says_how_to_build(tmp_path: Any) -> None:
    tree = tmp_path / "src"
    package = os.path.dirname(hermetic.__file__)
    shutil.copytree(
        package,
        tree / "hermetic",
        ignore=shutil.ignore_patterns("_native*", "__pycache__"),
    )
    # -S: without site-packages, where an installed hermetic (an editable
    # one's import hook) would be found first.
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import hermetic"
    p = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: hermetic's C core (hermetic._native) is not built")
    assert "pip install -e ." in last and str(tree) in last
