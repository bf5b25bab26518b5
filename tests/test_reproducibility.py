"""Reproducibility: output manifests, action digests, a deterministic
environment and verify_reproducible, run for real in the sandbox."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
from test_linux_isolation import spec_for

from hermetic import HermeticExecutor, ReproducibilityPolicy, SpecError
from hermetic.core import digest

pytestmark = pytest.mark.linux

HELLO = '#include <stdio.h>\nint main(void){puts("hello");return 0;}\n'


@pytest.fixture
def workspace(scratch):
    src, out, tmp = (os.path.join(scratch, d) for d in ("src", "out", "tmp"))
    for d in (src, out, tmp):
        os.mkdir(d)
    with open(os.path.join(src, "hello.c"), "w") as f:
        f.write(HELLO)
    return src, out, tmp


def _executor(src, out, tmp, **kw):
    spec = spec_for(inputs=[src], outputs=[out], temps=[tmp], workdir=src, **kw)
    env = spec.environment.with_var("TMPDIR", tmp)
    return HermeticExecutor.create(dataclasses.replace(spec, environment=env)).unwrap()


@pytest.mark.root
def test_compiling_c_twice_is_reproducible(workspace):
    src, out, tmp = workspace
    ex = _executor(src, out, tmp)
    report = ex.verify_reproducible(["cc", "-O2", "hello.c", "-o", f"{out}/hello"]).unwrap()
    assert [r.exit_code for r in report.results] == [0, 0], report.results[0].stderr
    assert report.reproducible, report.differences
    assert [e.path for e in report.outputs] == [out, f"{out}/hello"]
    assert report.outputs[1].sha256 is not None
    # The declared outputs were left alone; the fresh copies are gone.
    assert os.listdir(out) == []
    assert not [n for n in os.listdir("/tmp") if n.startswith("hermetic-verify-")]


@pytest.mark.root
def test_time_and_random_bytes_are_found_with_their_offsets(workspace):
    src, out, tmp = workspace
    ex = _executor(src, out, tmp)
    script = (
        f"printf 'header\\nstable\\n' > {out}/stamp; date +%s%N >> {out}/stamp; "
        f"printf 'same' > {out}/same; head -c 32 /dev/urandom > {out}/random.bin"
    )
    report = ex.verify_reproducible(["sh", "-c", script], runs=3).unwrap()
    assert not report.reproducible
    found = {d.path: d for d in report.differences}
    assert set(found) == {f"{out}/stamp", f"{out}/random.bin"}
    stamp = found[f"{out}/stamp"]
    assert stamp.what == "content" and stamp.runs == (2, 3)
    assert stamp.line == 3 and stamp.offset is not None and stamp.offset >= len("header\nstable\n")
    assert found[f"{out}/random.bin"].line is None  # binary: offset only
    assert "stamp: content differs at byte" in stamp.describe()


@pytest.mark.root
def test_verify_cli_exit_status(workspace):
    src, out, tmp = workspace
    cli = [sys.executable, "-m", "hermetic", "verify", "-i", src, "-o", out, "-C", src, "--"]
    # cwd="/": the installed package, not a source tree the tests run from.
    same = subprocess.run(
        [*cli, "sh", "-c", f"echo x > {out}/f"], capture_output=True, text=True, cwd="/"
    )
    assert same.returncode == 0, same.stderr
    assert "reproducible" in same.stdout
    differ = subprocess.run(
        [*cli, "sh", "-c", f"date +%N > {out}/f"], capture_output=True, text=True, cwd="/"
    )
    assert differ.returncode == 1
    assert f"{out}/f: content differs" in differ.stdout


@pytest.mark.root
def test_collect_outputs_lists_files_with_sha256(workspace):
    src, out, tmp = workspace
    ex = _executor(src, out, tmp)
    script = (
        f"mkdir {out}/d && printf abc > {out}/d/f && ln -s d/f {out}/link && chmod 600 {out}/d/f"
    )
    r = ex.execute(["sh", "-c", script], collect_outputs=True).unwrap()
    entries = {e.path: e for e in r.outputs}
    assert entries[f"{out}/d/f"].sha256 == hashlib.sha256(b"abc").hexdigest()
    assert entries[f"{out}/d/f"].mode == 0o600 and entries[f"{out}/d/f"].size == 3
    assert entries[f"{out}/link"].kind == "symlink" and entries[f"{out}/link"].target == "d/f"
    assert entries[f"{out}/d"].kind == "dir"
    assert ex.execute(["true"]).unwrap().outputs == ()  # only when asked


def test_action_digest_follows_content_not_mtime(workspace):
    src, out, tmp = workspace
    ex = _executor(src, out, tmp)
    argv = ["cc", "hello.c"]
    first = ex.action_digest(argv).unwrap()
    assert ex.action_digest(argv).unwrap() == first
    path = os.path.join(src, "hello.c")
    os.utime(path, ns=(1, 1))
    assert ex.action_digest(argv).unwrap() == first
    with open(path, "a") as f:
        f.write("/* changed */\n")
    changed = ex.action_digest(argv).unwrap()
    assert changed != first
    assert ex.action_digest(["cc", "-O2", "hello.c"]).unwrap() != changed
    assert ex.action_digest(argv, cwd="/").unwrap() != changed
    # Equal in another process (no hash order, no cache state involved).
    spec_json = ex.spec.to_json()
    code = (
        "import sys; from hermetic import HermeticExecutor, SandboxSpec; "
        "ex = HermeticExecutor.create(SandboxSpec.from_json(sys.stdin.read())).unwrap(); "
        f"print(ex.action_digest({argv!r}).unwrap())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        input=spec_json,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert other.stdout.strip() == changed


def test_unchanged_trees_are_not_read_again(tmp_path):
    for i in range(50):
        (tmp_path / f"d{i % 5}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 5}" / f"f{i}").write_text(str(i))
    hasher = digest.TreeHasher()
    first = hasher.tree(str(tmp_path))
    assert hasher.reads == 50
    assert hasher.tree(str(tmp_path)) == first and hasher.reads == 50
    (tmp_path / "d3" / "f3").write_text("changed")
    assert hasher.tree(str(tmp_path)) != first and hasher.reads == 51
    (tmp_path / "d3" / "f3").write_text("3")
    assert hasher.tree(str(tmp_path)) == first


def test_changes_anywhere_in_a_larger_tree_are_seen(tmp_path):
    # 12 directories: the re-check takes the snapshots on several threads.
    for i in range(12):
        (tmp_path / f"d{i}" / "deep").mkdir(parents=True)
        (tmp_path / f"d{i}" / "deep" / "f").write_text(str(i))
    hasher = digest.TreeHasher()
    first = hasher.tree(str(tmp_path))
    assert hasher.tree(str(tmp_path)) == first
    (tmp_path / "d7" / "deep" / "f").write_text("changed")
    changed = hasher.tree(str(tmp_path))
    assert changed != first
    (tmp_path / "d3" / "deep" / "new").write_text("")
    assert hasher.tree(str(tmp_path)) not in (first, changed)
    os.unlink(tmp_path / "d3" / "deep" / "new")
    (tmp_path / "d7" / "deep" / "f").write_text("7")
    assert hasher.tree(str(tmp_path)) == first
    assert digest.TreeHasher().tree(str(tmp_path)) == first  # equal to a cold hash


def test_the_c_snapshot_matches_the_portable_one(tmp_path):
    (tmp_path / "b").write_text("x")
    (tmp_path / "a").mkdir()
    os.symlink("b", tmp_path / "c")
    assert digest._snapshot(str(tmp_path), 0) == digest._snapshot_py(str(tmp_path))


@pytest.mark.root
def test_deterministic_environment(workspace):
    src, out, tmp = workspace
    policy = ReproducibilityPolicy(source_date_epoch=1_700_000_000, fresh_clocks=True)
    ex = _executor(src, out, tmp, reproducibility=policy)
    old = os.umask(0o077)
    try:
        r = ex.execute(
            [
                "python3",
                "-c",
                "import json, os, time; m = os.umask(0); "
                "print(json.dumps([oct(m), os.environ.get('TZ'), os.environ['SOURCE_DATE_EPOCH'],"
                " time.monotonic(), float(open('/proc/uptime').read().split()[0]),"
                " os.uname().nodename]))",
            ]
        ).unwrap()
    finally:
        os.umask(old)
    umask, tz, epoch, monotonic, uptime, host = json.loads(r.stdout)
    assert (umask, tz, epoch, host) == ("0o22", "UTC", "1700000000", "localhost")
    assert monotonic < 60 and uptime < 60  # the host's clocks have run far longer


def test_source_date_epoch_set_twice_differently_is_refused():
    spec = dataclasses.replace(
        spec_for(), reproducibility=ReproducibilityPolicy(source_date_epoch=1)
    )
    spec = dataclasses.replace(
        spec, environment=spec.environment.with_var("SOURCE_DATE_EPOCH", "2")
    )
    with pytest.raises(SpecError, match="SOURCE_DATE_EPOCH"):
        spec.validate()


def test_reproducibility_section_round_trips_through_json():
    from hermetic import SandboxSpec

    spec = SandboxSpec.from_json(
        '{"reproducibility": {"source_date_epoch": 5, "fresh_clocks": true}}'
    )
    assert spec.reproducibility == ReproducibilityPolicy(source_date_epoch=5, fresh_clocks=True)
    assert SandboxSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SpecError, match="source_date_epoch"):
        SandboxSpec.from_json('{"reproducibility": {"source_date_epoch": -1}}')
    with pytest.raises(SpecError, match="fresh_clocks"):
        SandboxSpec.from_json('{"reproducibility": {"fresh_clocks": 1}}')


def test_an_output_name_that_is_not_utf8_is_reported_losslessly(workspace):
    import base64

    src, out, tmp = workspace
    cli = [sys.executable, "-m", "hermetic", "verify", "-o", out, "--"]
    script = f"date +%N > \"$(printf '{out}/bad-\\377')\""
    text_mode = subprocess.run([*cli, "sh", "-c", script], capture_output=True, cwd="/")
    assert text_mode.returncode == 1, text_mode.stderr
    assert f"{out}/bad-\\xff: content differs".encode() in text_mode.stdout
    as_json = subprocess.run(
        [*cli[:-1], "--json", "--", "sh", "-c", script], capture_output=True, cwd="/"
    )
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    (difference,) = report["differences"]
    assert base64.b64decode(difference["path_b64"]) == os.fsencode(out) + b"/bad-\xff"
    entry = next(e for e in report["outputs"] if "path_b64" in e)
    assert base64.b64decode(entry["path_b64"]) == os.fsencode(out) + b"/bad-\xff"


#: A caller that verifies an action whose output is a sparse 256 MiB file
#: differing only in its last bytes, and prints its own peak RSS growth.
BIG_DIFFERENCE = """
import dataclasses, json, resource, sys
sys.path.insert(0, sys.argv[1])
from test_linux_isolation import spec_for
from hermetic import HermeticExecutor
out = sys.argv[2]
spec = spec_for(outputs=[out])
ex = HermeticExecutor.create(spec).unwrap()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
script = f"truncate -s 256M {out}/big && head -c 16 /dev/urandom >> {out}/big"
report = ex.verify_reproducible(["sh", "-c", script]).unwrap()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
[d] = [d for d in report.differences if d.path.endswith("/big")]
print(json.dumps({"growth_kib": after - before, "offset": d.offset, "what": d.what}))
"""


def test_finding_a_difference_in_a_large_output_holds_one_chunk_at_a_time(scratch):
    # The offset and line of a difference were found by reading both files
    # whole: an action's 1 GiB output made the caller hold 2 GiB and more.
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    tests = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run(
        [sys.executable, "-c", BIG_DIFFERENCE, tests, out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    assert got["what"] == "content" and got["offset"] >= 256 << 20, got
    assert got["growth_kib"] < 64 * 1024, got
