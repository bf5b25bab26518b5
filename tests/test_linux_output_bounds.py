"""The caller's memory stays bounded whatever the action does to its output.

An action's stdout and stderr are memory files the caller reads once the
action has ended.  An action can make them look huge for free (ftruncate
leaves a hole) or fill them for real; the caller keeps at most the cap of
each stream (``max_output_bytes``, or a default when the spec sets none)
and reports the cut as a violation naming the stream.

Each case runs the API in a process of its own, as root and as the
unprivileged test user: ``ru_maxrss`` is the peak of a process's life.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from hermetic.platforms.linux.violations import DEFAULT_STREAM_CAP

pytestmark = [pytest.mark.linux]

#: Address space allowed to the measuring process: far below what reading
#: the holes would need (8 GiB), so a regression fails with MemoryError
#: instead of taking the host's memory.
_AS_LIMIT = 3 << 30

_MEASURE = """
import json, resource, sys
sys.path[:0] = {path!r}
resource.setrlimit(resource.RLIMIT_AS, ({as_limit}, {as_limit}))
from hermetic import *
spec = SandboxSpec(
    inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
    environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
    resources=ResourceLimits(max_file_size=0, max_output_bytes={cap}),
)
ex = HermeticExecutor.create(spec).unwrap()
ex.execute(["true"]).unwrap()  # the first action's one-time costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = ex.execute({argv!r}, timeout=120).unwrap()
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{
    "exit": r.exit_code, "signal": r.signal, "stdout": len(r.stdout), "stderr": len(r.stderr),
    "head": r.stdout[:6].decode("latin-1"),
    "violations": [v.to_dict() for v in r.violations], "grown_kib": grown,
}}))
"""

#: Both streams grown to 4 GiB each by ftruncate: a hole, free for the action.
SPARSE = ["sh", "-c", "printf hello; truncate -s 4G /dev/stdout; truncate -s 4G /dev/stderr"]
#: 160 MiB really written to stdout, 8 MiB to stderr.
WRITTEN = ["sh", "-c", "head -c 167772160 /dev/zero; head -c 8388608 /dev/zero >&2"]


def _measure(mode: str, test_user: Any, argv: list[str], cap: int = 0) -> dict[str, Any]:
    code = textwrap.dedent(_MEASURE.format(path=sys.path, as_limit=_AS_LIMIT, cap=cap, argv=argv))
    if mode == "root":
        if os.geteuid() != 0:
            pytest.skip("the root mode needs the suite to run as root")
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/"
        )
    else:
        from conftest import python_as

        if test_user is None:
            p = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
            )
        else:
            p = python_as(test_user, code, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    result: dict[str, Any] = json.loads(p.stdout)
    return result


@pytest.fixture(
    params=[pytest.param(m, marks=getattr(pytest.mark, m)) for m in ("root", "unprivileged")]
)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def user(mode: str, request: pytest.FixtureRequest) -> Any:
    if mode == "unprivileged" and os.geteuid() == 0:
        return request.getfixturevalue("test_user")
    return None


def _cuts(violations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The output cuts reported, by stream."""
    out = {}
    for v in violations:
        if v["decision"] == "truncated":
            for stream in ("stdout", "stderr"):
                if v["attempted"].startswith(f"{stream} "):
                    out[stream] = v
    return out


def test_sparse_streams_are_read_to_the_default_cap_only(mode: str, user: Any) -> None:
    r = _measure(mode, user, SPARSE)
    assert r["exit"] == 0, r
    assert r["head"] == "hello\0"
    # The cap of each stream, no more: the holes beyond were never read.
    assert (r["stdout"], r["stderr"]) == (DEFAULT_STREAM_CAP, DEFAULT_STREAM_CAP)
    cuts = _cuts(r["violations"])
    assert set(cuts) == {"stdout", "stderr"}, r["violations"]
    for v in cuts.values():
        assert v["kind"] == "resource"
        assert "output_truncated" in v["attempted"]
        assert str(DEFAULT_STREAM_CAP) in v["limit"]
        assert str(4 << 30) in v["observed"]
    # ru_maxrss is in KiB: the two kept caps and room for the interpreter,
    # nowhere near the 8 GiB the holes look like.
    assert r["grown_kib"] < (2 * DEFAULT_STREAM_CAP + (64 << 20)) >> 10, r


def test_written_streams_are_kept_to_the_default_cap(mode: str, user: Any) -> None:
    r = _measure(mode, user, WRITTEN)
    assert r["exit"] == 0, r
    assert r["stdout"] == DEFAULT_STREAM_CAP
    assert r["stderr"] == 8 << 20  # under the cap: whole, and not reported
    cuts = _cuts(r["violations"])
    assert set(cuts) == {"stdout"}, r["violations"]
    assert str(160 << 20) in cuts["stdout"]["observed"]
    assert r["grown_kib"] < (2 * DEFAULT_STREAM_CAP + (64 << 20)) >> 10, r


def test_an_explicit_cap_bounds_sparse_streams_and_names_them(mode: str, user: Any) -> None:
    r = _measure(mode, user, SPARSE, cap=4096)
    assert (r["stdout"], r["stderr"]) == (4096, 0)
    [v] = r["violations"]
    assert v["kind"] == "resource" and v["decision"] in ("truncated", "killed")
    assert "max_output_bytes=4096" in v["limit"]
    assert r["grown_kib"] < (64 << 20) >> 10, r


FLOOD = """
import socket
for _ in range({calls}):
    try:
        socket.sethostname("elsewhere")
    except OSError:
        pass
refused = 0
for i in range({paths}):
    try:
        open(f"/usr/hermetic-flood-{{i}}", "w")
    except OSError:
        refused += 1
print(refused)
"""


def test_a_flood_of_denials_is_held_as_a_bounded_number_of_records(runner: Any) -> None:
    from hermetic import EnvSet, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec
    from hermetic.security.syscalls import MAX_RECORDS

    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    paths, calls = 3 * MAX_RECORDS, 100_000
    r = runner.run(spec, ["python3", "-c", FLOOD.format(paths=paths, calls=calls)], timeout=300)
    assert r.error is None and r.exit_code == 0, r
    assert r.text.strip() == str(paths)
    violations = r.raw["violations"]
    # Every distinct record up to the bound, then one that counts the rest;
    # a call already recorded is counted in its record.
    assert len(violations) == MAX_RECORDS + 1
    [rest] = [v for v in violations if v["attempted"].endswith("more calls")]
    refused_paths = sum(1 for v in violations if v["kind"] == "filesystem")
    assert int(rest["attempted"].split()[0]) == paths - refused_paths
    [hostname] = [v for v in violations if v["attempted"].startswith("sethostname(")]
    assert hostname["observed"] == f"{calls} times"


PROXY_FLOOD = """
import socket
refused = 0
for port in range(1, {n} + 1):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(f"CONNECT 192.0.2.1:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
    if b" 403 " in s.recv(4096).split(b"\\r\\n")[0]:
        refused += 1
    s.close()
print(refused)
"""


def test_a_flood_of_refused_endpoints_is_held_as_a_bounded_number_of_records(
    runner: Any,
) -> None:
    from hermetic import (
        EnvSet,
        HermeticSpecBuilder,
        NetworkPolicy,
        PathSet,
        ResourceLimits,
        SandboxSpec,
    )
    from hermetic.security.proxy import MAX_RECORDS

    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
        network=NetworkPolicy.allow_hosts(["127.0.0.1:9"]),
    )
    n = MAX_RECORDS + 100
    r = runner.run(spec, ["python3", "-c", PROXY_FLOOD.format(n=n)], timeout=300)
    assert r.error is None and r.exit_code == 0, r
    assert r.text.strip() == str(n)
    violations = [v for v in r.raw["violations"] if v["kind"] == "network"]
    assert len(violations) == MAX_RECORDS + 1
    assert violations[-1]["attempted"] == "100 more requests"
