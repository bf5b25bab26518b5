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


# -- execute(argv, env=...) ---------------------------------------------------


def test_action_environment_extends_and_the_sandbox_variables_win() -> None:
    from hermetic.platforms.base import action_environment

    spec = hermetic.SandboxSpec(
        environment=hermetic.EnvSet.of({"A": "spec", "B": "spec"}),
        reproducibility=hermetic.ReproducibilityPolicy(source_date_epoch=7),
    )
    prepared = {**spec.action_environment(), "HTTPS_PROXY": "http://127.0.0.1:1"}
    given = {"B": "action", "C": "action", "SOURCE_DATE_EPOCH": "0", "HTTPS_PROXY": "x"}
    env = action_environment(spec, prepared, given, own=("HTTPS_PROXY",))
    assert env == {
        "A": "spec",
        "B": "action",
        "C": "action",
        "SOURCE_DATE_EPOCH": "7",
        "HTTPS_PROXY": "http://127.0.0.1:1",
    }
    # None and {} both mean the prepared environment.
    assert action_environment(spec, prepared, None) == prepared
    assert action_environment(spec, prepared, {}) == prepared


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"A=B": "x"}, "'A=B'"),
        ({"": "x"}, "empty"),
        ({"K": "se\0cret"}, "'K'"),
        ({"K": 3}, "'K'"),
        ([("K", "v")], "mapping"),
    ],
)
def test_a_bad_env_is_a_spec_error_that_names_no_value(env: Any, named: str) -> None:
    # Limits that need no cgroup: an unprivileged caller has none here.
    spec = hermetic.SandboxSpec(resources=hermetic.ResourceLimits())
    ex = hermetic.HermeticExecutor.create(spec).unwrap()
    try:
        err = ex.execute(["true"], env=env).unwrap_err()
        digest_err = ex.action_digest(["true"], env=env).unwrap_err()
    finally:
        ex.close()
    for e in (err, digest_err):
        assert isinstance(e, SpecError) and e.field == "env"
        assert named in str(e) and "cret" not in str(e) and "se\0" not in repr(e.value)


def test_action_digest_covers_the_actions_own_environment() -> None:
    spec = hermetic.SandboxSpec(
        environment=hermetic.EnvSet.of({"A": "1"}), resources=hermetic.ResourceLimits()
    )
    ex = hermetic.HermeticExecutor.create(spec).unwrap()
    try:
        plain = ex.action_digest(["true"]).unwrap()
        assert ex.action_digest(["true"], env={}).unwrap() == plain
        assert ex.action_digest(["true"], env={"A": "1"}).unwrap() == plain
        assert ex.action_digest(["true"], env={"A": "2"}).unwrap() != plain
        assert ex.action_digest(["true"], env={"B": "1"}).unwrap() != plain
    finally:
        ex.close()


@pytest.mark.linux
def test_execute_env_is_per_action(runner: Any) -> None:
    """Each action gets the spec's environment with its own over it; the
    next action without ``env`` gets the spec's alone (alternating, so that
    reused sandboxes made ahead serve both)."""
    p = _python(
        runner,
        """
        ex = hermetic.HermeticExecutor.create(spec).unwrap()
        show = ["sh", "-c", 'echo "$USER $FOO $PATH"']
        for i in range(3):
            r = ex.execute(show, env={"FOO": f"f{i}", "USER": "u"}).unwrap()
            print(r.stdout.decode().strip())
            print(ex.execute(show).unwrap().stdout.decode().strip())
        r = hermetic.run(show, spec, env={"FOO": "run"})
        print(r.stdout.decode().strip())
        ex.close()
        """,
    )
    assert p.returncode == 0, p.stderr
    plain = "builder  /usr/bin:/bin"
    assert p.stdout.splitlines() == [
        "u f0 /usr/bin:/bin",
        plain,
        "u f1 /usr/bin:/bin",
        plain,
        "u f2 /usr/bin:/bin",
        plain,
        "builder run /usr/bin:/bin",
    ]


@pytest.mark.linux
@pytest.mark.parametrize("allow_exec", [True, False])
def test_execute_env_path_decides_where_argv0_is_found(runner: Any, allow_exec: bool) -> None:
    """argv[0]'s candidates (and, under allow_exec=False, the seccomp
    program and Landlock rules naming them) are cached per PATH: a PATH
    where ``true`` is missing fails, and the next one finds it."""
    p = _python(
        runner,
        f"""
        import dataclasses
        process = dataclasses.replace(spec.process, allow_exec={allow_exec})
        ex = hermetic.HermeticExecutor.create(dataclasses.replace(spec, process=process)).unwrap()
        for path in ("/nowhere", "/usr/bin:/bin", "/nowhere", "/bin"):
            out = ex.execute(["true"], env={{"PATH": path}})
            if out.is_ok():
                print(path, out.unwrap().success)
            else:
                err = out.unwrap_err()
                print(path, err.errno, "searched /nowhere/true" in str(err))
        ex.close()
        """,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "/nowhere 2 True",
        "/usr/bin:/bin True",
        "/nowhere 2 True",
        "/bin True",
    ]


@pytest.mark.linux
def test_execute_env_cannot_replace_the_sandbox_variables(runner: Any) -> None:
    """The egress proxy's variables and the spec's SOURCE_DATE_EPOCH win
    over an action's own."""
    p = _python(
        runner,
        """
        import dataclasses
        spec = dataclasses.replace(
            spec,
            network=hermetic.NetworkPolicy.allow_hosts(["example.com:443"]),
            reproducibility=hermetic.ReproducibilityPolicy(source_date_epoch=7),
        )
        ex = hermetic.HermeticExecutor.create(spec).unwrap()
        given = {"HTTPS_PROXY": "http://elsewhere:1", "SOURCE_DATE_EPOCH": "0", "FOO": "f"}
        show = ["sh", "-c", 'echo "$HTTPS_PROXY $SOURCE_DATE_EPOCH $FOO"']
        print(ex.execute(show, env=given).unwrap().stdout.decode().strip())
        ex.close()
        """,
    )
    assert p.returncode == 0, p.stderr
    proxy, epoch, foo = p.stdout.split()
    assert proxy.startswith("http://127.0.0.1:") and (epoch, foo) == ("7", "f")
