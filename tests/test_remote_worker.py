"""``hermetic worker``: its pure parts over real protobuf messages, then end to
end against a real BuildGrid 0.9.1 (PostgreSQL behind it) on this machine,
with BuildGrid's own ``bgd execute command`` as the client.

The farm (tests/remote/farm.py) needs Python 3.13 and PostgreSQL 15: without
them these tests skip with the reason, and under CI=true fail.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import FORBID_USERNS, IN_CI, TEST_USER, _as_user_cmd, _user_env, unavailable
from google.protobuf import struct_pb2

try:
    import buildgrid.common  # noqa: F401
except ImportError as e:  # a skip where the extra is not installed; under CI a failure
    if IN_CI:
        pytest.fail(f"required under CI: the 'remote' extra ({e})", pytrace=False)
    pytest.skip(f"needs the 'remote' extra: {e}", allow_module_level=True)

from remote.client import Worker, blob, execute, execute_response, worker_argv  # noqa: E402
from remote.farm import INSTANCE, Farm, FarmUnavailable  # noqa: E402

from hermetic.remote import execroot, worker  # noqa: E402
from hermetic.remote.cas import (
    MAX_BATCH_BLOB,
    MAX_BATCH_BYTES,
    LocalCache,
    _batches,
    digest_of,
    digest_of_message,
    key,
)  # noqa: E402
from hermetic.remote.protos import code_pb2, re_pb2  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


# -- the pure parts --------------------------------------------------------------


def test_remote_imports_only_the_public_api():
    """hermetic.remote sits above the facade: it imports ``hermetic`` (the
    public API) and its own modules, nothing from below but the one walk
    and removal of trees an action wrote (hermetic.core.tree), reused
    rather than written twice."""
    below = set()
    for path in (ROOT / "hermetic" / "remote").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("hermetic.") and not name.startswith(
                    ("hermetic.remote", "hermetic.core.tree")
                ):
                    below.add((path.name, name))
    assert below == set()


def test_a_worker_without_user_namespaces_refuses_to_start(tmp_path):
    """With Landlock alone the staged inputs could not be kept read-only:
    the worker says so and exits instead of failing every lease."""
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is needed to forbid user namespaces")
    cmd = [*FORBID_USERNS, *worker_argv("grpc://127.0.0.1:1", "x", str(tmp_path / "work"))]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)
    assert p.returncode == 123, (p.returncode, p.stderr)
    assert "needs mount namespaces" in p.stderr and "read-only" in p.stderr, p.stderr
    assert not (tmp_path / "work").exists()


def test_an_audit_log_the_worker_cannot_use_is_said_before_any_lease(tmp_path):
    p = subprocess.run(
        worker_argv("grpc://127.0.0.1:1", "x", str(tmp_path / "work"), "--audit-log", "/tmp"),
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert p.returncode == 123, (p.returncode, p.stderr)
    assert "audit" in p.stderr and "/tmp" in p.stderr, p.stderr
    assert os.listdir(tmp_path / "work" / "exec") == []


@pytest.mark.parametrize("bad", ["/etc/passwd", "..", "../x", "a/../../x", "a\0b"])
def test_paths_that_leave_the_exec_root_are_refused(bad):
    with pytest.raises(execroot.ExecRootError):
        execroot.relative(bad, what="an output path")


def test_output_locations_are_relative_to_the_working_directory():
    old = re_pb2.Command(working_directory="pkg", output_files=["a.o"], output_directories=["gen"])
    assert execroot.output_locations(old) == ["pkg/a.o", "pkg/gen"]
    v21 = re_pb2.Command(output_paths=["x/y", "z"], output_files=["ignored"])
    assert execroot.output_locations(v21) == ["x/y", "z"]
    with pytest.raises(execroot.ExecRootError):
        execroot.output_locations(re_pb2.Command(working_directory="a", output_paths=["../../x"]))


def _tree(cache: LocalCache) -> execroot.InputTree:
    """src/{a.c, sub/b.h}, bin/tool (executable), out/in.txt, a link."""
    tree = execroot.InputTree()
    tree.dirs = ["src", "bin", "out", "src/sub"]
    for rel, data, x in (
        ("src/a.c", b"int a;", False),
        ("src/sub/b.h", b"#define B", False),
        ("bin/tool", b"#!/bin/sh\necho tool\n", True),
        ("out/in.txt", b"input beside outputs", False),
    ):
        k = key(digest_of(data))
        cache.put(k, data, x)
        tree.files.append((rel, k, x))
    tree.symlinks.append(("link", "src/a.c"))
    return tree


def test_staging_hard_links_the_cache_and_keeps_modes(tmp_path):
    cache = LocalCache(str(tmp_path / "cas"))
    tree = _tree(cache)
    root = tmp_path / "root"
    root.mkdir()
    assert execroot.stage(tree, cache, None, str(root)) == 0  # all cached: no CAS call
    tool = root / "bin" / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.stat(tool).st_mode & 0o777 == 0o555
    assert os.stat(root / "src" / "a.c").st_mode & 0o777 == 0o444
    k = key(digest_of(b"int a;"))
    assert os.stat(root / "src" / "a.c").st_ino == os.stat(cache.path(k, False)).st_ino
    assert os.readlink(root / "link") == "src/a.c"
    assert os.stat(tmp_path / "cas").st_mode & 0o777 == 0o700


def test_inputs_are_declared_read_only_with_few_mounts(tmp_path):
    cache = LocalCache(str(tmp_path / "cas"))
    tree = _tree(cache)
    root = str(tmp_path / "root")
    ro = execroot.read_only_paths(tree, ["out/result.txt"], root)
    # src and bin hold no output: one declaration each; out holds one, so
    # its input file is declared alone and out/ itself stays writable.
    assert ro == [f"{root}/bin", f"{root}/out/in.txt", f"{root}/src"]
    # An output directory inside src: src is opened, its files declared.
    ro = execroot.read_only_paths(tree, ["src/gen"], root)
    assert f"{root}/src/a.c" in ro and f"{root}/src/sub" in ro and f"{root}/src" not in ro


def test_an_input_within_an_output_is_a_writable_copy(tmp_path):
    cache = LocalCache(str(tmp_path / "cas"))
    tree = _tree(cache)
    root = tmp_path / "root"
    root.mkdir()
    execroot.stage(tree, cache, None, str(root), ["out"])
    staged = root / "out" / "in.txt"
    k = key(digest_of(b"input beside outputs"))
    assert os.stat(staged).st_ino != os.stat(cache.path(k, False)).st_ino
    staged.write_bytes(b"replaced")  # the action's own copy
    with open(cache.path(k, False), "rb") as f:
        assert f.read() == b"input beside outputs"
    ro = execroot.read_only_paths(tree, ["out"], str(root))
    assert ro == [f"{root}/bin", f"{root}/src"]


def test_collecting_follows_no_link_the_action_planted(tmp_path):
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    (root / "out" / "f.txt").write_bytes(b"made")
    os.chmod(root / "out" / "f.txt", 0o755)
    (root / "out" / "sub").mkdir()
    (root / "out" / "sub" / "g").write_bytes(b"g")
    os.symlink("/etc/passwd", root / "out" / "passwd")
    os.symlink("/etc", root / "etc_dir")
    os.mkfifo(root / "out" / "fifo")
    command = re_pb2.Command(output_paths=["out", "etc_dir", "etc_dir/passwd", "missing"])
    got = execroot.collect(command, str(root))
    passwd = pathlib.Path("/etc/passwd").read_bytes()
    assert passwd not in got.blobs.values()
    assert [(s.path, s.target) for s in got.symlinks] == [("etc_dir", "/etc")]
    assert [d.path for d in got.directories] == ["out"]
    tree = re_pb2.Tree.FromString(got.blobs[key(got.directories[0].tree_digest)])
    assert [f.name for f in tree.root.files] == ["f.txt"]
    assert tree.root.files[0].is_executable
    assert [(s.name, s.target) for s in tree.root.symlinks] == [("passwd", "/etc/passwd")]
    assert [d.name for d in tree.root.directories] == ["sub"]
    sub_digest = tree.root.directories[0].digest
    assert [digest_of_message(c)[0] for c in tree.children] == [sub_digest]
    assert got.blobs[key(tree.root.files[0].digest)] == b"made"


def test_batches_stay_under_the_message_limit():
    keys = [(f"{i:064x}", size) for i, size in enumerate([10, MAX_BATCH_BYTES - 10, 5, 7, 0])]
    batches = list(_batches(keys))
    assert [k for b in batches for k in b] == keys
    assert all(sum(s for _, s in b) <= MAX_BATCH_BYTES for b in batches)
    assert len(batches) == 2


def test_worker_options():
    assert worker.WorkerConfig("grpc://h:1", "i", "/w").target() == "h:1"
    assert worker.WorkerConfig("unix:/s", "i", "/w").target() == "unix:/s"
    with pytest.raises(ValueError):
        worker.WorkerConfig("grpcs://h:1", "i", "/w").target()
    props = dict(worker.parse_platform(["pool=a", "ISA=arm"]))
    assert props["pool"] == "a" and props["ISA"] == "arm" and props["OSFamily"] == "linux"
    with pytest.raises(ValueError):
        worker.parse_platform(["novalue"])


def test_a_work_dir_of_other_files_is_refused(tmp_path):
    (tmp_path / "precious").write_bytes(b"keep")
    with pytest.raises(ValueError, match="not a hermetic worker's directory"):
        worker.prepare_work_dir(str(tmp_path))
    assert (tmp_path / "precious").read_bytes() == b"keep"
    fresh = tmp_path / "w"
    assert worker.prepare_work_dir(str(fresh)) == str(fresh)
    (fresh / "exec" / "stale").mkdir()
    worker.prepare_work_dir(str(fresh))  # its own: reused, leftovers removed
    assert os.listdir(fresh / "exec") == []
    assert os.stat(fresh).st_mode & 0o777 == 0o700


def test_a_work_dir_others_could_replace_is_refused(tmp_path):
    """Whoever could rename an entry on the way to the work directory could
    put a directory (or a link) of theirs where the worker writes as its
    user: a parent writable by others and not sticky is refused, and so is a
    work directory that is a link.  Nothing is made in either."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ValueError, match="writable by others"):
        worker.prepare_work_dir(str(shared / "w"))
    assert os.listdir(shared) == []
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot rename what is not theirs
    assert worker.prepare_work_dir(str(shared / "w")) == str(shared / "w")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="a link is refused"):
        worker.prepare_work_dir(str(tmp_path / "link"))
    assert os.listdir(tmp_path / "real") == []


@pytest.mark.root
def test_a_work_dir_or_cache_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root, to make directories of another user")
    nobody = 65534
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody, nobody)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        worker.prepare_work_dir(str(theirs))
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    os.chown(parent, nobody, nobody)
    with pytest.raises(ValueError, match="owned by uid 65534, neither root nor this user"):
        worker.prepare_work_dir(str(parent / "w"))
    assert os.listdir(parent) == []
    work = worker.prepare_work_dir(str(tmp_path / "w"))
    cas = os.path.join(work, "cas")
    os.mkdir(cas)
    os.chown(cas, nobody, nobody)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        LocalCache(cas)
    os.rmdir(cas)
    os.symlink(str(theirs), cas)
    with pytest.raises(OSError):  # ELOOP: never through a link
        LocalCache(cas)
    assert os.stat(theirs).st_mode & 0o777 == 0o755


def test_the_command_line_says_what_is_missing():
    done = subprocess.run(
        [sys.executable, "-m", "hermetic", "worker", "--server", "grpc://127.0.0.1:1"],
        capture_output=True,
        text=True,
        cwd="/",  # not the checkout, whose hermetic/ has no compiled core
    )
    assert done.returncode == 123 and "--instance" in done.stderr


# -- a real farm -----------------------------------------------------------------


@pytest.fixture(scope="module")
def farm():
    try:
        f = Farm()
    except FarmUnavailable as e:
        unavailable(str(e))
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def work():
    path = tempfile.mkdtemp(prefix="hermetic-workers-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def root_worker(farm, work):
    w = Worker(
        farm.url,
        INSTANCE,
        os.path.join(work, "root"),
        bot_id="hermetic-root",
        platform=["pool=root"],
        concurrency=2,
    )
    try:
        w.wait_for("bot(s) for instance")  # its work directory is ready
        yield w
    finally:
        assert w.terminate() == 0, w.text()
        # Nothing of any lease is left behind.
        assert os.listdir(os.path.join(w.work_dir, "exec")) == []
        assert os.listdir(os.path.join(w.work_dir, "leases")) == []


def _bgd(farm, tmp_path, argv, *, outputs=(), pool="root", files=None):
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    for name, data in (files or {"a.txt": b"hello\n"}).items():
        (inputs / name).write_bytes(data)
    out = tmp_path / "out"
    done = farm.execute(
        str(inputs), ["-p", "pool", pool, "--", *argv], outputs=outputs, out_dir=str(out)
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:], farm.log())
    return execute_response(done.stdout), out


def _stream(farm, result, name):
    data = blob(farm.target, INSTANCE, getattr(result, f"{name}_digest"))
    raw = getattr(result, f"{name}_raw")
    assert raw in (b"", data)
    return data


def test_a_command_s_output_and_an_output_file_come_back(farm, root_worker, tmp_path):
    response, out = _bgd(
        farm,
        tmp_path,
        ["sh", "-c", "cat a.txt; echo to-stderr >&2; mkdir -p gen; cat a.txt a.txt > gen/copy"],
        outputs=["gen/copy"],
    )
    assert response.status.code == code_pb2.OK, response
    result = response.result
    assert result.exit_code == 0
    assert _stream(farm, result, "stdout") == b"hello\n"
    assert _stream(farm, result, "stderr") == b"to-stderr\n"
    assert (out / "gen" / "copy").read_bytes() == b"hello\nhello\n"
    meta = result.execution_metadata
    assert meta.worker.startswith("hermetic-root-")
    stages = [
        meta.worker_start_timestamp,
        meta.input_fetch_start_timestamp,
        meta.input_fetch_completed_timestamp,
        meta.execution_start_timestamp,
        meta.execution_completed_timestamp,
        meta.output_upload_start_timestamp,
        meta.output_upload_completed_timestamp,
        meta.worker_completed_timestamp,
    ]
    times = [t.ToNanoseconds() for t in stages]
    assert all(times) and times == sorted(times), meta
    (aux,) = meta.auxiliary_metadata
    usage = struct_pb2.Struct()
    assert aux.Unpack(usage)
    assert usage["hermetic_usage"]["wall_time"] > 0
    worker_ms = (times[-1] - times[0]) / 1e6
    assert 0 < usage["hermetic_worker_cpu_ms"] <= worker_ms, (usage, worker_ms)


def test_a_failing_command_s_exit_code_comes_back(farm, root_worker, tmp_path):
    response, _ = _bgd(farm, tmp_path, ["sh", "-c", "echo failing; exit 42"])
    assert response.status.code == code_pb2.OK
    assert response.result.exit_code == 42
    assert _stream(farm, response.result, "stdout") == b"failing\n"


def test_a_command_that_cannot_be_executed_is_an_invalid_argument(farm, root_worker, tmp_path):
    response, _ = _bgd(farm, tmp_path, ["no-such-command-here"])
    assert response.status.code == code_pb2.INVALID_ARGUMENT, response
    assert "no-such-command-here" in response.status.message


def test_an_output_directory_comes_back_as_a_tree(farm, root_worker, tmp_path):
    response, _ = _bgd(
        farm,
        tmp_path,
        ["sh", "-c", "mkdir -p d/e && echo 1 > d/one && echo 2 > d/e/two && chmod +x d/one"],
        outputs=["d"],
    )
    assert response.result.exit_code == 0, response
    (directory,) = response.result.output_directories
    assert directory.path == "d"
    tree = re_pb2.Tree.FromString(blob(farm.target, INSTANCE, directory.tree_digest))
    assert [(f.name, f.is_executable) for f in tree.root.files] == [("one", True)]
    (child,) = tree.children
    assert [f.name for f in child.files] == ["two"]
    assert blob(farm.target, INSTANCE, child.files[0].digest) == b"2\n"


def test_large_blobs_go_through_bytestream_both_ways(farm, root_worker, tmp_path):
    big = os.urandom(MAX_BATCH_BLOB * 2 + 123)
    response, out = _bgd(
        farm,
        tmp_path,
        ["sh", "-c", "cat big.bin big.bin > twice.bin && sha256sum big.bin"],
        outputs=["twice.bin"],
        files={"big.bin": big},
    )
    assert response.result.exit_code == 0, response
    assert (out / "twice.bin").read_bytes() == big + big
    stdout = _stream(farm, response.result, "stdout").decode()
    assert stdout.split()[0] == hashlib.sha256(big).hexdigest()


def test_a_timeout_completes_with_deadline_exceeded(farm, root_worker):
    # bgd cannot set Action.timeout: this Execute comes from the suite's own
    # client, over the same farm and worker.
    response = execute(
        farm.target, INSTANCE, ["sleep", "600"], timeout_s=2, platform={"pool": "root"}
    )
    assert response.status.code == code_pb2.DEADLINE_EXCEEDED, response
    assert response.result.exit_code != 0


LINKS = "mkdir d && echo real > real && ln -s real link && ln -s d dlink && ln -s /etc abs"


def test_output_symlinks_for_a_v2_0_client(farm, root_worker):
    """A Command naming output_files and output_directories (a v2.0 client,
    such as Bazel 4.2.3) gets its symlinks in output_file_symlinks and
    output_directory_symlinks, the only fields it reads."""
    response = execute(
        farm.target,
        INSTANCE,
        ["sh", "-c", LINKS],
        platform={"pool": "root"},
        output_files=["real", "link", "abs"],
        output_directories=["dlink"],
    )
    result = response.result
    assert response.status.code == code_pb2.OK and result.exit_code == 0, response
    assert [f.path for f in result.output_files] == ["real"]
    assert [(s.path, s.target) for s in result.output_file_symlinks] == [
        ("link", "real"),
        ("abs", "/etc"),
    ]
    assert [(s.path, s.target) for s in result.output_directory_symlinks] == [("dlink", "d")]
    assert list(result.output_symlinks) == []


def test_output_symlinks_for_a_v2_1_client(farm, root_worker):
    response = execute(
        farm.target,
        INSTANCE,
        ["sh", "-c", LINKS],
        platform={"pool": "root"},
        output_paths=["real", "link", "dlink"],
    )
    result = response.result
    assert response.status.code == code_pb2.OK and result.exit_code == 0, response
    assert [(s.path, s.target) for s in result.output_symlinks] == [
        ("link", "real"),
        ("dlink", "d"),
    ]
    assert list(result.output_file_symlinks) == list(result.output_directory_symlinks) == []


def _roots(w: Worker) -> list[str]:
    return sorted(os.listdir(os.path.join(w.work_dir, "exec")))


def _wait(predicate, what, limit=120):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def test_an_action_sees_neither_the_cache_nor_another_s_exec_root(farm, root_worker, tmp_path):
    """Two actions at once on one worker: the second cannot see the first's
    exec root, nor the cache; it cannot change its own inputs (which are
    the cache's inodes).  Cancelling the first (bgd's SIGINT sends
    CancelOperation) kills its sandbox."""
    first_in = tmp_path / "first"
    first_in.mkdir()
    (first_in / "x").write_bytes(b"x")
    first = subprocess.Popen(
        [
            os.path.join(farm.bin, "bgd"),
            "execute",
            "--remote",
            f"http://{farm.target}",
            "--instance-name",
            INSTANCE,
            "command",
            "--output-directory",
            str(tmp_path / "first-out"),
            str(first_in),
            "-p",
            "pool",
            "root",
            "--",
            "sh",
            "-c",
            "echo secret > mine; exec sleep 600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        work = root_worker.work_dir

        def mine() -> str | None:
            for r in _roots(root_worker):
                if os.path.exists(os.path.join(work, "exec", r, "mine")):
                    return os.path.join(work, "exec", r)
            return None

        _wait(lambda: mine() is not None, "the first action started")
        other = mine()
        script = f"""
ls -a {work}/exec | tr '\\n' ' '; echo
ls {work}/cas 2>&1 | head -1
cat {other}/mine 2>&1
echo changed > a.txt 2>&1 || echo write-refused
rm a.txt 2>&1 || echo unlink-refused
cat a.txt
"""
        response, _ = _bgd(farm, tmp_path, ["sh", "-c", script])
        lines = _stream(farm, response.result, "stdout").decode().splitlines()
        listing = lines[0].split()
        # Only ".", ".." and its own exec root, though the first's exists.
        assert len(listing) == 3 and os.path.basename(other) not in listing, lines
        assert "No such file" in lines[1], lines
        assert "No such file" in lines[2], lines
        assert "write-refused" in lines and "unlink-refused" in lines, lines
        assert lines[-1] == "hello", lines
        digest = hashlib.sha256(b"hello\n").hexdigest()
        cached = os.path.join(work, "cas", f"{digest}_6")
        with open(cached, "rb") as f:
            assert f.read() == b"hello\n"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    _wait(
        lambda: not os.listdir(other),
        "the cancelled action's exec root was emptied",
    )
    assert "cancelled" in root_worker.text()


def test_sigterm_hands_a_running_lease_back(farm, work, tmp_path):
    leaving = Worker(
        farm.url, INSTANCE, os.path.join(work, "leaving"), bot_id="leaving", platform=["pool=h"]
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    bgd = subprocess.Popen(
        [
            os.path.join(farm.bin, "bgd"),
            "execute",
            "--remote",
            f"http://{farm.target}",
            "--instance-name",
            INSTANCE,
            "command",
            "--output-directory",
            str(tmp_path / "out"),
            str(inputs),
            "-p",
            "pool",
            "h",
            "--",
            "sh",
            "-c",
            "sleep 2; echo finished",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    staying = None
    try:
        leaving.wait_for(": lease ")
        assert leaving.terminate() == 0, leaving.text()
        assert "handed back" in leaving.text() and "signed off" in leaving.text()
        assert os.listdir(os.path.join(leaving.work_dir, "exec")) == []
        staying = Worker(
            farm.url, INSTANCE, os.path.join(work, "staying"), bot_id="staying", platform=["pool=h"]
        )
        stdout, _ = bgd.communicate(timeout=300)
        response = execute_response(stdout)
        assert response.status.code == code_pb2.OK, stdout
        assert response.result.execution_metadata.worker == "staying"
        assert _stream(farm, response.result, "stdout") == b"finished\n"
    finally:
        if bgd.poll() is None:
            bgd.kill()
            bgd.wait()
        if staying is not None:
            assert staying.terminate() == 0, staying.text()


def test_a_worker_run_by_a_normal_user(farm, work, tmp_path, test_user):
    if test_user is None:
        pytest.skip("the suite runs as a normal user already: every worker here is one")
    user = pwd.getpwnam(TEST_USER)
    home = os.path.join(work, "user")
    os.mkdir(home, 0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    w = Worker(
        farm.url,
        INSTANCE,
        os.path.join(home, "w"),
        bot_id="as-user",
        platform=["pool=user"],
        wrap=_as_user_cmd(user, []),
        env={**_user_env(), "HOME": home},
    )
    try:
        response, out = _bgd(
            farm,
            tmp_path,
            ["sh", "-c", "cat a.txt > r.txt; echo ok"],
            outputs=["r.txt"],
            pool="user",
        )
        assert response.result.exit_code == 0, response
        assert response.result.execution_metadata.worker == "as-user"
        assert (out / "r.txt").read_bytes() == b"hello\n"
        with open(f"/proc/{w.proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(user.pw_uid)}
    finally:
        assert w.terminate() == 0, w.text()


def test_a_worker_reconnects_after_the_server_restarts(farm, root_worker, tmp_path):
    farm.restart()
    response, _ = _bgd(farm, tmp_path, ["sh", "-c", "echo again"])
    assert _stream(farm, response.result, "stdout") == b"again\n"
    assert root_worker.proc.poll() is None
