"""The audit log: records of violations, appended safely, summarised by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from hermetic import (
    EnvSet,
    HermeticExecutor,
    HermeticSpecBuilder,
    PathSet,
    ResourceLimits,
    SandboxSpec,
    SpecError,
)
from hermetic.core.outcome import Violation, ViolationKind
from hermetic.security.audit import AuditLog, read, record, summarize

pytestmark = pytest.mark.linux


#: A denied call (the seccomp filter answers EPERM and the listener records
#: it), then output beyond the limit (a resource record).
DENIED_CALL = """
import errno, socket, sys
try:
    socket.sethostname("elsewhere")
except OSError as e:
    sys.stdout.write(errno.errorcode[e.errno] + " and more output than eight bytes")
"""


@pytest.mark.root
def test_fifty_concurrent_executions_from_eight_threads_write_intact_lines(scratch):
    log = os.path.join(scratch, "audit.jsonl")
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        environment=EnvSet.minimal().with_var("SECRET_TOKEN", "do-not-log-me"),
        resources=ResourceLimits(max_output_bytes=8),
    )
    ex = HermeticExecutor.create(spec, audit_log=log).unwrap()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        for _ in range(7 if n < 7 else 1):  # 7 threads x 7 + 1 = 50 executions
            try:
                r = ex.execute(["python3", "-c", DENIED_CALL]).unwrap()
                assert r.stdout.startswith(b"EPERM"), r.stderr
            except BaseException as e:  # noqa: BLE001 - collected for the assert below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open(log, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) >= 50
    recs = [json.loads(line) for line in lines]  # every line intact JSON
    assert len({r["execution_id"] for r in recs}) == 50
    assert {r["kind"] for r in recs} == {"syscall", "resource"}
    calls = [r for r in recs if r["kind"] == "syscall"]
    assert len(calls) == 50
    assert all(r["attempted"].startswith("sethostname(") for r in calls)
    assert {r["decision"] for r in calls} == {"denied"}
    assert {r["spec_digest"] for r in recs} == {spec.digest()}
    assert "do-not-log-me" not in "".join(lines)


def test_records_and_summary(scratch):
    log = os.path.join(scratch, "a.jsonl")
    audit = AuditLog(log)
    v = Violation(ViolationKind.TIMEOUT, attempted="ran longer than 1 s", decision="killed")
    w = Violation(
        ViolationKind.PROCESS, attempted="fork", decision="denied", limit="max_processes=1"
    )
    assert (
        audit.append(
            [
                record(v, execution_id="e1", spec_digest="d"),
                record(w, execution_id="e2", spec_digest="d"),
            ]
        )
        == 2
    )
    assert [r["kind"] for r in read(log)] == ["timeout", "process"]
    s = summarize(log)
    assert s["records"] == 2 and s["executions"] == 2
    assert s["by_kind"] == {"timeout": 1, "process": 1}
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "audit", log, "--json"], capture_output=True, cwd="/"
    )
    assert p.returncode == 0 and json.loads(p.stdout)["records"] == 2
    with open(log, "a") as f:
        f.write("not json\n")
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "audit", log], capture_output=True, cwd="/"
    )
    assert p.returncode == 123 and b":3:" in p.stderr and b"Traceback" not in p.stderr


def test_execution_ids_are_random_uuids():
    import uuid

    from hermetic.core.outcome import new_execution_id

    ids = {new_execution_id() for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        u = uuid.UUID(hex=i)
        assert u.hex == i and u.version == 4 and u.variant == uuid.RFC_4122


# --- The log is opened once, never by a path an action can change -----------

#: Replaces the audit log (reachable at ``{out}/audit.jsonl``) with a symlink
#: to ``{target}``, then breaks a rule so that the caller writes a record
#: naming a path that is shell code.
SWAP = """
import os, socket
os.unlink("{out}/audit.jsonl")
os.symlink("{target}", "{out}/audit.jsonl")
try:
    open("/$(touch {out}/PWNED)", "w")
except OSError:
    pass
try:
    socket.sethostname("elsewhere")
except OSError:
    pass
"""


def test_an_action_swapping_the_log_for_a_symlink_reaches_nothing(scratch):
    """The log is reachable by the action through a second mount of its output
    (which no path comparison can see): the record still goes to the file
    opened at create, never to the symlink's target."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace with a bind mount")
    out, alias = os.path.join(scratch, "out"), os.path.join(scratch, "alias")
    target = os.path.join(scratch, "profile")
    for d in (out, alias):
        os.mkdir(d)
    with open(target, "w") as f:
        f.write("caller's file\n")
    open(os.path.join(out, "audit.jsonl"), "w").close()
    code = f"""
import json, os, subprocess, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_linux_isolation import spec_for
from hermetic import HermeticExecutor
subprocess.run(["mount", "--bind", {out!r}, {alias!r}], check=True)
ex = HermeticExecutor.create(spec_for(outputs=[{out!r}]), audit_log={alias!r} + "/audit.jsonl")
ex = ex.unwrap()
r = ex.execute(["python3", "-c", {SWAP.format(out=out, target=target)!r}]).unwrap()
ex.close()
print(json.dumps([r.stderr.decode(), [v.to_dict() for v in r.violations]]))
"""
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    stderr, violations = json.loads(p.stdout)
    kinds = {v["kind"] for v in violations}
    assert {"syscall", "filesystem"} <= kinds, stderr
    with open(target) as f:
        assert f.read() == "caller's file\n"
    assert os.path.islink(os.path.join(out, "audit.jsonl"))
    assert not os.path.exists(os.path.join(out, "PWNED"))


def test_the_log_is_written_through_the_descriptor_opened_first(scratch):
    log, target = os.path.join(scratch, "a.jsonl"), os.path.join(scratch, "target")
    with open(target, "w") as f:
        f.write("untouched")
    audit = AuditLog(log)
    try:
        os.rename(log, log + ".moved")
        os.symlink(target, log)
        v = Violation(ViolationKind.SYSCALL, attempted="sethostname()", decision="denied")
        assert audit.append([record(v, execution_id="e", spec_digest="d")]) == 1
    finally:
        audit.close()
    with open(target) as f:
        assert f.read() == "untouched"
    assert [r["attempted"] for r in read(log + ".moved")] == ["sethostname()"]


@pytest.mark.parametrize("where", ["below an output", "the output", "above an output", "temp"])
def test_a_log_the_action_could_write_is_refused(scratch, where):
    out, tmp = os.path.join(scratch, "out"), os.path.join(scratch, "tmp")
    os.mkdir(out)
    os.mkdir(tmp)
    spec = SandboxSpec(outputs=PathSet.of(out), temps=PathSet.of(tmp))
    log = {
        "below an output": f"{out}/sub/../audit.jsonl",
        "the output": out,
        "above an output": scratch,
        "temp": f"{tmp}/audit.jsonl",
    }[where]
    err = HermeticExecutor.create(spec, audit_log=log).unwrap_err()
    assert isinstance(err, SpecError) and err.field == "audit_log", err
    assert "audit_log" in str(err)
    assert os.listdir(out) == [] and os.listdir(tmp) == []


def test_a_log_reached_through_a_symlink_into_an_output_is_refused(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    os.symlink(out, os.path.join(scratch, "innocent"))
    spec = SandboxSpec(outputs=PathSet.of(out))
    err = HermeticExecutor.create(spec, audit_log=f"{scratch}/innocent/a.jsonl").unwrap_err()
    assert isinstance(err, SpecError) and err.field == "audit_log"
    assert f"{out}/a.jsonl" in str(err)


def test_a_log_that_is_a_symlink_or_not_a_file_is_refused(scratch):
    target = os.path.join(scratch, "target")
    with open(target, "w") as f:
        f.write("x")
    os.symlink(target, os.path.join(scratch, "link"))
    os.mkfifo(os.path.join(scratch, "fifo"))
    for name in ("link", "fifo"):
        err = HermeticExecutor.create(SandboxSpec(), audit_log=f"{scratch}/{name}").unwrap_err()
        assert isinstance(err, SpecError) and err.field == "audit_log", err
        assert name in str(err)
    with open(target) as f:
        assert f.read() == "x"


@pytest.mark.unprivileged
def test_the_cli_refuses_a_log_in_an_output_as_the_test_user(scratch, test_user):
    from conftest import _as_user_cmd, _user_env

    out = os.path.join(scratch, "out")
    os.mkdir(out)
    cmd = [sys.executable, "-m", "hermetic", "run", "-o", out, "--audit-log", f"{out}/a.jsonl"]
    argv = [*cmd, "--", "true"]
    if test_user is not None:
        os.chown(out, test_user.pw_uid, test_user.pw_gid)
        argv = _as_user_cmd(test_user, argv)
    p = subprocess.run(argv, capture_output=True, text=True, env=_user_env(), cwd="/", timeout=120)
    assert p.returncode == 123, p.stderr
    assert "audit_log" in p.stderr and f"{out}/a.jsonl" in p.stderr
    assert os.listdir(out) == []


# --- Paths that are not UTF-8 -------------------------------------------------

#: A refused write to a path that is not UTF-8, and one to a plain path.
BAD_PATHS = """
import errno
for p in (b"/bad-\\xff-name", b"/plain-name"):
    try:
        open(p, "w")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""


def _check_bad_path_records(recs) -> None:
    import base64

    fs = {r["attempted"]: r for r in recs if r["kind"] == "filesystem"}
    assert "/plain-name" in fs and "attempted_b64" not in fs["/plain-name"]
    bad = fs["/bad-\\xff-name"]
    assert base64.b64decode(bad["attempted_b64"]) == b"/bad-\xff-name"


def test_a_path_that_is_not_utf8_is_recorded_losslessly(scratch, runner):
    from test_linux_isolation import spec_for

    log = os.path.join(scratch, "audit.jsonl")
    spec = spec_for()
    if runner.via_cli:
        runner.own(scratch)
        from conftest import _as_user_cmd, _user_env

        spec_file = os.path.join(scratch, "spec.json")
        with open(spec_file, "w") as f:
            f.write(spec.to_json())
        cmd = [sys.executable, "-m", "hermetic", "run", "--spec", spec_file, "--json"]
        cmd += ["--audit-log", log, "--", "python3", "-c", BAD_PATHS]
        p = subprocess.run(
            _as_user_cmd(runner.user, cmd) if runner.user else cmd,
            capture_output=True,
            env=_user_env(),
            cwd="/",
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        result = json.loads(p.stdout)
        assert result["stdout"].split() == ["EROFS", "EROFS"]
        _check_bad_path_records(result["violations"])
    else:
        ex = HermeticExecutor.create(spec, audit_log=log).unwrap()
        r = ex.execute(["python3", "-c", BAD_PATHS]).unwrap()
        ex.close()
        assert r.stdout.split() == [b"EROFS", b"EROFS"]
        assert b"/bad-\xff-name" in {os.fsencode(v.attempted) for v in r.violations}
        _check_bad_path_records(json.loads(json.dumps(r.to_dict()))["violations"])
    _check_bad_path_records(list(read(log)))
    p = subprocess.run(
        [sys.executable, "-m", "hermetic", "audit", log, "--json"], capture_output=True, cwd="/"
    )
    assert p.returncode == 0 and json.loads(p.stdout)["by_kind"]["filesystem"] >= 2


def test_one_record_that_cannot_be_encoded_does_not_stop_the_others(scratch):
    log = os.path.join(scratch, "a.jsonl")
    audit = AuditLog(log)
    try:
        bad = {"kind": "x", "attempted": "\ud800 lone surrogate", "odd": object()}
        assert audit.append([bad, {"kind": "y", "attempted": "fine"}]) == 2
    finally:
        audit.close()
    recs = list(read(log))
    assert [r["kind"] for r in recs] == ["x", "y"]


def test_a_failed_audit_write_keeps_the_result_and_says_why(scratch):
    """The log cannot grow (RLIMIT_FSIZE): the action's result still comes
    back whole, with the reason its records are missing."""
    log = os.path.join(scratch, "full.jsonl")
    with open(log, "w") as f:
        f.write("{}\n")
    code = f"""
import json, resource, signal, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_linux_isolation import spec_for
from hermetic import HermeticExecutor
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
ex = HermeticExecutor.create(spec_for(), audit_log={log!r}).unwrap()
resource.setrlimit(resource.RLIMIT_FSIZE, (3, resource.RLIM_INFINITY))
r = ex.execute(["python3", "-c", {DENIED_CALL!r}]).unwrap()
ex.close()
print(json.dumps(r.to_dict()))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["stdout"].startswith("EPERM")
    assert any(v["attempted"].startswith("sethostname(") for v in result["violations"])
    assert log in result["audit_error"] and "File too large" in result["audit_error"]
    with open(log) as f:
        assert f.read() == "{}\n"


def test_an_executor_closed_with_its_log_refuses_to_run(scratch):
    from test_linux_isolation import spec_for

    ex = HermeticExecutor.create(spec_for(), audit_log=os.path.join(scratch, "a.jsonl")).unwrap()
    ex.close()
    err = ex.execute(["true"]).unwrap_err()
    assert isinstance(err, SpecError) and err.field == "audit_log"
