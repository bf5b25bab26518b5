"""The command line's options: the spec's limits and network set from flags
(and applied, from inside the sandbox), options a subcommand would ignore
refused, help text that reads as text, and the one-line refusal of a limit
a normal user's host cannot enforce."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from hermetic import NetworkPolicy, ResourceLimits, SandboxSpec
from hermetic.cli import _parser
from hermetic.cli.failures import _host_refusal
from hermetic.cli.spec_args import _spec_from_args
from hermetic.core.errors import SpecError, UnsupportedError
from hermetic.platforms.linux.limits import plan_limits

pytestmark = pytest.mark.linux

#: A generous bound that proves a command ends; none needs a fraction of it.
ENDS_WITHIN = 120


def hermetic_cli(
    *args: str, env: dict[str, str] | None = None, user: Any = None
) -> subprocess.CompletedProcess[str]:
    """``hermetic ARGS`` from the installed package, as this user or ``user``."""
    argv = [sys.executable, "-m", "hermetic", *args]
    if user is not None:
        from conftest import _as_user_cmd, _user_env

        argv = _as_user_cmd(user, argv)
        env = {**_user_env(), **(env or {})}
    return subprocess.run(
        argv, capture_output=True, text=True, cwd="/", env=env, timeout=ENDS_WITHIN
    )


def parsed(*args: str) -> argparse.Namespace:
    ns, unknown = _parser().parse_known_args(["run", *args])
    assert unknown == []
    return ns


def spec_of(*args: str) -> SandboxSpec:
    return _spec_from_args(parsed(*args, "--", "true"))


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("hermetic"), p.stderr
    return p.stderr


@pytest.fixture
def spec_file(scratch: str) -> Iterator[Any]:
    """Writes a spec document to a file the test user can read: its path."""

    def write(document: dict[str, Any]) -> str:
        path = os.path.join(scratch, "spec.json")
        with open(path, "w") as f:
            json.dump(document, f)
        os.chmod(path, 0o644)
        return path

    yield write


# -- values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("1048576", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30), ("64k", 64 << 10),
     ("1GiB", 1 << 30), ("3MB", 3 << 20), ("0", 0)],
)  # fmt: skip
def test_memory_sizes(text: str, value: int) -> None:
    limits = spec_of("--memory", text).resources
    assert limits.max_memory_bytes == value


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--memory", "12Q"), "--memory"),
        (("--memory", "-1"), "--memory"),
        (("--memory", "99999999999T"), "--memory"),
        (("--cpu-time", "soon"), "--cpu-time"),
        (("--cpu-time", "-1"), "--cpu-time"),
        (("--cpu-time", "nan"), "--cpu-time"),
        (("--processes", "1.5"), "--processes"),
        (("--processes", "-3"), "--processes"),
        (("--network", "host"), "--network"),
        (("--allow-host", "example.org"), "--allow-host"),
        (("--allow-host", "example.org:99999"), "--allow-host"),
        (("--env-pass", "A=b"), "--env-pass"),
        (("--env-pass", ""), "--env-pass"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_option(args: Sequence[str], named: str) -> None:
    p = hermetic_cli("run", *args, "--", "true")
    assert p.returncode == 123
    assert f"argument {named}" in one_line_error(p) and "Traceback" not in p.stderr


def test_cpu_time_is_whole_milliseconds_rounded_up() -> None:
    assert spec_of("--cpu-time", "2").resources.max_cpu_time_ms == 2000
    assert spec_of("--cpu-time", "0.0001").resources.max_cpu_time_ms == 1
    assert spec_of("--processes", "7").resources.max_processes == 7


def test_a_limit_given_as_a_flag_is_hard_even_at_the_presets_value(spec_file: Any) -> None:
    preset = ResourceLimits.hermetic()
    # A file that keeps the preset's defaults (as to_json writes them).
    path = spec_file(json.loads(SandboxSpec().to_json()))
    limits = _spec_from_args(
        parsed(
            "--spec", path, "--processes", str(preset.max_processes),
            "--memory", str(preset.max_memory_bytes), "--", "true",
        )
    ).resources  # fmt: skip
    assert not limits.is_default("max_processes") and not limits.is_default("max_memory_bytes")
    assert limits.is_default("max_cpu_time_ms") and not limits.best_effort
    assert _spec_from_args(parsed("--spec", path, "--", "true")).resources == preset
    relaxed = _spec_from_args(parsed("--spec", path, "--best-effort", "--", "true")).resources
    assert relaxed.best_effort and relaxed.defaulted == preset.defaulted
    # Without a cgroup the flag's limit fails closed, unless --best-effort.
    with pytest.raises(UnsupportedError) as caught:
        plan_limits(limits, "no delegation (test)")
    # (root's max_processes needs one too: RLIMIT_NPROC exempts root)
    assert "max_memory_bytes" in caught.value.limits
    assert "max_cpu_time_ms" not in caught.value.limits
    best = _spec_from_args(
        parsed("--spec", path, "--memory", "1G", "--best-effort", "--", "true")
    ).resources
    weak = plan_limits(best, "no delegation (test)").unenforced
    assert any(entry.startswith("max_memory_bytes:") for entry in weak)


def test_flags_override_a_spec_file(spec_file: Any) -> None:
    path = spec_file(
        {
            "resources": {"max_memory_bytes": 1 << 30, "max_processes": 50},
            "network": SandboxSpec(network=NetworkPolicy.allow_hosts(["a.example:443"])).to_dict()[
                "network"
            ],
            "environment": {"vars": {"KEEP": "1", "X": "file"}},
        }
    )
    spec = spec_of("--spec", path, "--memory", "64M", "--allow-host", "b.example:80")
    assert spec.resources.max_memory_bytes == 64 << 20 and spec.resources.max_processes == 50
    # --allow-host adds to the file's endpoints, with the file's policy.
    assert spec.network.allowed_hosts == ("a.example:443", "b.example:80")
    assert spec.network.uses_proxy
    # --network none drops what the file allows.
    assert spec_of("--spec", path, "--network", "none").network == NetworkPolicy.hermetic()
    assert spec_of("--spec", path, "--network", "loopback").network == NetworkPolicy.hermetic()
    # --env and --env-pass win over the file's values; the rest stays.
    os.environ["HERMETIC_TEST_PASSED"] = "from-here"
    try:
        spec = spec_of("--spec", path, "--env-pass", "HERMETIC_TEST_PASSED", "-e", "X=flag")
    finally:
        del os.environ["HERMETIC_TEST_PASSED"]
    env = spec.environment.to_dict()
    assert env == {"KEEP": "1", "X": "flag", "HERMETIC_TEST_PASSED": "from-here"}


def test_allow_host_without_a_spec_file_is_the_proxy_for_those_alone() -> None:
    net = spec_of("--allow-host", "Example.org:443", "--allow-host", "[::1]:8080").network
    assert net == NetworkPolicy.allow_hosts(["example.org:443", "[::1]:8080"])
    assert spec_of().network == NetworkPolicy.hermetic()


# -- options a subcommand would ignore are refused -----------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("digest", "--json", "--", "true"),
        ("digest", "--timeout", "5", "--", "true"),
        ("digest", "--stdin", "--", "true"),
        ("digest", "--audit-log", "/dev/null", "--", "true"),
        ("digest", "--collect-outputs", "--", "true"),
        ("verify", "--collect-outputs", "--json", "--", "true"),
        ("run", "--collect-outputs", "--", "true"),
        ("run", "--runs", "3", "--", "true"),
        ("run", "--spec", "/dev/null", "--no-toolchain", "--", "true"),
        ("run", "--network", "none", "--allow-host", "a.example:80", "--", "true"),
        ("doctor", "--timeout", "5"),
        ("audit", "--stdin", "/dev/null"),
        ("spec", "--json", "/dev/null"),
    ],
)
def test_an_option_the_subcommand_would_ignore_is_refused(args: Sequence[str]) -> None:
    p = hermetic_cli(*args)
    assert p.returncode == 123, p.stderr
    # Said by the subcommand, pointing to its own help.
    assert f"'hermetic {args[0]} --help'" in one_line_error(p)


def test_digest_takes_the_spec_options() -> None:
    plain = hermetic_cli("digest", "--", "true")
    limited = hermetic_cli("digest", "--processes", "9", "--allow-host", "a.ex:80", "--", "true")
    assert plain.returncode == 0 and limited.returncode == 0, limited.stderr
    assert len(plain.stdout.strip()) == 64 and plain.stdout != limited.stdout


# -- help --------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_and_option_has_help_without_markup() -> None:
    parser = _parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "run",
        "verify",
        "digest",
        "doctor",
        "audit",
        "serve",
        "spec",
        "runner",
        "worker",
    }
    texts = [parser.format_help()]
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
        texts.append(sub.format_help())
    for text in texts:
        assert "``" not in text and "`" not in text
    p = hermetic_cli("run", "--help")
    assert p.returncode == 0 and "`" not in p.stdout
    assert "hermetic run" in p.stdout and "127  the command was not found" in p.stdout
    assert "124" not in hermetic_cli("digest", "--help").stdout  # digest runs nothing


# -- the flags, applied ----------------------------------------------------------

MEMORY_HOG = "b = bytearray(256 << 20); print('alive')"
CPU_LOOP = "while True: pass"
#: Forks children that wait, until a fork is refused; prints how many it made.
FORKS = """
import os
r, w = os.pipe()
made = 0
for _ in range(64):
    try:
        pid = os.fork()
    except OSError as e:
        print(made, e.errno)
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # until the parent ends
        os._exit(0)
    made += 1
else:
    print(made, 0)
"""


def run_json(*args: str, user: Any = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    p = hermetic_cli("run", "--json", *args, user=user, env=env)
    assert p.stdout, p.stderr
    data: dict[str, Any] = json.loads(p.stdout)
    data["cli_stderr"] = p.stderr
    return data


@pytest.mark.root
@pytest.mark.cgroup
def test_memory_flag_is_applied() -> None:
    if os.geteuid() != 0:
        pytest.skip("a cgroup for the whole sandbox: root's here (the normal user's: below)")
    data = run_json("--memory", "64M", "--", "python3", "-c", MEMORY_HOG)
    assert data["signal_name"] == "SIGKILL" and "alive" not in data["stdout"]
    assert [v["limit"] for v in data["violations"]] == [f"max_memory_bytes={64 << 20}"]
    assert data["unenforced_limits"] == []
    roomy = run_json("--memory", "1G", "--", "python3", "-c", MEMORY_HOG)
    assert roomy["exit_code"] == 0 and roomy["stdout"] == "alive\n"


@pytest.mark.root
@pytest.mark.cgroup
def test_cpu_time_flag_is_applied() -> None:
    if os.geteuid() != 0:
        pytest.skip("a cgroup for the whole sandbox: root's here")
    data = run_json("--cpu-time", "1", "--", "python3", "-c", CPU_LOOP)
    assert not data["success"] and not data["timed_out"]
    assert any(v["limit"].startswith("max_cpu_time_ms=1000") for v in data["violations"])


@pytest.mark.parametrize("normal", [False, True], ids=["caller", "normal-user"])
def test_processes_flag_bounds_forks(test_user: Any, normal: bool) -> None:
    user = test_user if normal else None
    few = run_json("--processes", "4", "--", "python3", "-c", FORKS, user=user)
    many = run_json("--processes", "100", "--", "python3", "-c", FORKS, user=user)
    # The action and 3 children; the 4th fork gets EAGAIN.
    assert few["stdout"].split() == ["3", "11"], few
    assert many["stdout"].split() == ["64", "0"], many


def test_network_loopback_has_lo_up_and_nothing_outside() -> None:
    code = (
        "import socket\n"
        "s = socket.create_server(('127.0.0.1', 0)); port = s.getsockname()[1]\n"
        "c = socket.create_connection(('127.0.0.1', port), timeout=10); c.close()\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
        "    print('outside reached')\n"
        "except OSError:\n"
        "    print('loopback only')\n"
    )
    for mode in ("loopback", "none"):
        data = run_json("--network", mode, "--", "python3", "-c", code)
        assert data["exit_code"] == 0 and data["stdout"] == "loopback only\n", data


FETCH = """
import json, socket, sys, urllib.request, urllib.error
def get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except OSError as e:
        return type(e).__name__
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
listed, unlisted = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps([get(listed), get(unlisted), direct(listed)]))
"""


@pytest.mark.parametrize("normal", [False, True], ids=["caller", "normal-user"])
def test_allow_host_reaches_a_local_server_only_through_the_proxy(
    test_user: Any, normal: bool, servers: tuple[int, int]
) -> None:
    listed, unlisted = servers
    data = run_json(
        "--allow-host", f"127.0.0.1:{listed}",
        "--", "python3", "-c", FETCH, str(listed), str(unlisted),
        user=test_user if normal else None,
    )  # fmt: skip
    assert data["exit_code"] == 0, data
    # Through the proxy: the listed endpoint; the other refused (and
    # recorded); directly, only the sandbox's own loopback, with no server.
    assert json.loads(data["stdout"]) == [
        f"hello from {listed} /",
        "HTTP 403",
        "ConnectionRefusedError",
    ]
    refused = [v["attempted"] for v in data["violations"] if v["kind"] == "network"]
    assert refused == [f"127.0.0.1:{unlisted}"]


def test_env_pass_passes_a_value_and_skips_an_unset_name_with_a_warning() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HM_GIVEN": "secret-value"}
    show = "import os; print(os.environ.get('HM_GIVEN'), os.environ.get('HM_UNSET'))"
    data = run_json(
        "--env-pass", "HM_GIVEN", "--env-pass", "HM_UNSET", "--", "python3", "-c", show, env=env
    )
    assert data["exit_code"] == 0 and data["stdout"] == "secret-value None\n"
    warnings = [line for line in data["cli_stderr"].splitlines() if "--env-pass" in line]
    assert warnings == ["hermetic: --env-pass HM_UNSET: not set here, so not set in the sandbox"]
    assert "secret-value" not in data["cli_stderr"]


# -- a limit this host cannot enforce: one short line ----------------------------


def test_the_refusal_names_its_parts() -> None:
    limits = ResourceLimits(max_memory_bytes=1 << 28, max_cpu_time_ms=1000, max_processes=0)
    with pytest.raises(UnsupportedError) as caught:
        plan_limits(limits, "a long story of hierarchies and groups (test)")
    err = caught.value
    assert err.limits == ("max_cpu_time_ms", "max_memory_bytes") and err.cause
    # The library's message keeps the details and the Python advice.
    assert "a long story" in str(err) and "best_effort=True" in str(err)
    line = _host_refusal(err, str(err))
    assert "a long story" not in line and "best_effort" not in line
    assert "max_cpu_time_ms, max_memory_bytes" in line and "--best-effort" in line
    assert "'hermetic doctor'" in line
    # Other refusals are said as the library says them.
    other = UnsupportedError("fresh clocks", "time namespaces are unavailable here")
    assert _host_refusal(other, str(other)) == str(other)
    with pytest.raises(SpecError):
        spec_of("--env", "noequals")


def _has_cgroup(user: Any) -> bool:
    """Whether ``user`` (None: this process's) has a cgroup limits can use."""
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}\n"
        "from hermetic.platforms.linux.limits import cgroup_mechanism\n"
        "print(cgroup_mechanism()[1] is None)\n"
    )
    if user is not None:
        from conftest import python_as

        p = python_as(user, code)
    else:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return bool(p.stdout.strip() == "True")


@pytest.mark.unprivileged
def test_a_normal_users_refused_limit_is_one_short_line(test_user: Any, spec_file: Any) -> None:
    toolchain = ["/usr", "/bin", "/lib", "/lib64"]
    path = spec_file({"inputs": toolchain, "resources": {"max_memory_bytes": 268435456}})
    p = hermetic_cli("run", "--spec", path, "--", "/bin/true", user=test_user)
    if os.geteuid() == 0 and test_user is None or _has_cgroup(test_user):
        # A user with a delegated cgroup: the limit holds, nothing to refuse.
        assert p.returncode == 0, p.stderr
        return
    line = one_line_error(p)
    assert p.returncode == 125 and len(line) < 200, line
    assert line.count("max_memory_bytes") == 1 and line.count("cgroup") == 1
    assert "--best-effort" in line and "hermetic doctor" in line
    assert "ResourceLimits" not in line
    # As the line says: --best-effort runs it, weakened and said so.
    best = hermetic_cli("run", "--spec", path, "--best-effort", "--", "/bin/true", user=test_user)
    assert best.returncode == 0, best.stderr
    weakened = [line for line in best.stderr.splitlines() if "limits weakened here" in line]
    assert len(weakened) == 1 and "max_memory_bytes:" in weakened[0]
    flag = hermetic_cli("run", "--memory", "256M", "--", "/bin/true", user=test_user)
    assert flag.returncode == 125 and one_line_error(flag) == line
