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

    from hermetic.security.audit import new_execution_id

    ids = {new_execution_id() for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        u = uuid.UUID(hex=i)
        assert u.hex == i and u.version == 4 and u.variant == uuid.RFC_4122
