"""Hostile requests and actions against the worker's host side: digests
used as names, cache entries swapped behind the index, deep and large
output trees, outputs past the worker's bounds, inputs that would need a
mount each.

Each lease runs through ``worker.execute_lease`` as in
tests/test_remote_hostile.py (whose harness this reuses): a bound the
worker keeps completes the lease with a status the farm does not retry
(RESOURCE_EXHAUSTED or INVALID_ARGUMENT, never INTERNAL or UNAVAILABLE,
which BuildGrid runs again).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

# First: it skips (or, under CI, fails) where the 'remote' extra is missing.
import test_remote_hostile  # isort: skip
from test_remote_hostile import SH, Worker, _ok, _refused  # isort: skip

from memory_cas import lease

from hermetic.remote import execroot, worker
from hermetic.remote.cas import MAX_BLOB, LocalCache, digest_of, key
from hermetic.remote.protos import code_pb2, re_pb2

pytestmark = pytest.mark.linux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A worker of an in-memory CAS, the fixture of that file.
w = test_remote_hostile.w


def _exec_roots(w: Worker) -> list[str]:
    """What the slots' exec roots still hold (emptied after each lease)."""
    top = os.path.join(w.work, "exec")
    return [f"{s}/{e}" for s in os.listdir(top) for e in os.listdir(os.path.join(top, s))]


# -- W1: digests are checked where they enter, cache entries before use --------------


@pytest.mark.parametrize(
    "digest",
    [
        re_pb2.Digest(hash="../" * 12 + "etc/s", size_bytes=0),
        re_pb2.Digest(hash="a" * 63, size_bytes=1),
        re_pb2.Digest(hash="a" * 65, size_bytes=1),
        re_pb2.Digest(hash="g" * 64, size_bytes=1),
        re_pb2.Digest(hash="0" * 64, size_bytes=MAX_BLOB + 1),
    ],
)
@pytest.mark.parametrize("inside_output", [False, True])
def test_a_file_digest_that_is_no_sha256_is_refused_naming_the_node(w, digest, inside_output):
    """Nested, and within an output (where the input is copied): the node is
    named, nothing is fetched, nothing is named after the hash."""
    sub = re_pb2.Directory()
    sub.files.add(name="f", digest=digest)
    top = re_pb2.Directory()
    top.directories.add(name="pkg", digest=w.store.put_message(sub))
    outputs = {"output_directories": ("pkg",)} if inside_output else {}
    calls = w.store.stats["BatchReadBlobs"]
    the_lease = lease(w.store, [SH, "-c", "echo ran"], w.store.put_message(top), **outputs)
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "'pkg/f'", "invalid digest")
    # The Command and the two Directory messages, nothing else.
    assert w.store.stats["BatchReadBlobs"] - calls == 3
    assert all(n.split("_")[0] != digest.hash for n in os.listdir(w.cache.root))


def test_an_action_or_command_digest_that_is_no_sha256_is_refused(w):
    root = w.store.put_message(re_pb2.Directory())
    the_lease = lease(w.store, [SH, "-c", "echo ran"], root)
    action = re_pb2.Action(command_digest=re_pb2.Digest(hash="../x", size_bytes=3))
    action.input_root_digest.CopyFrom(root)
    the_lease.payload.Pack(action)
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "invalid digest")
    the_lease.payload.Pack(re_pb2.Digest(hash="F" * 64, size_bytes=3))
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "invalid digest")


@pytest.mark.parametrize("swap", ["link", "other size"])
@pytest.mark.parametrize("inside_output", [False, True])
def test_a_cache_entry_swapped_behind_the_index_is_never_used(w, tmp_path, inside_output, swap):
    """The entry is checked (lstat: a regular file of the worker's, of its
    size) before it is linked or copied: a link put in its place (as a
    local account able to write there could), or a file of another size,
    is dropped and the blob fetched again; the link's target is neither
    staged nor chmodded."""
    data = b"the real input\n"
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * len(data))
    victim.chmod(0o600)
    files = {"out/in.txt" if inside_output else "in.txt": (data, False)}
    outputs = {"output_directories": ("out",)} if inside_output else {}
    _ok(w.sh("true", files, **outputs))
    entry = w.cache.path(key(digest_of(data)), False)
    os.unlink(entry)
    if swap == "link":
        os.symlink(victim, entry)
    else:
        with open(entry, "wb") as f:
            f.write(b"other bytes, another size\n")
    path = "out/in.txt" if inside_output else "in.txt"
    result = _ok(w.sh(f"cat {path}", files, **outputs))
    assert w.stdout(result) == data
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_bytes() == b"x" * len(data)
    assert stat.S_ISREG(os.lstat(entry).st_mode)
    with open(entry, "rb") as f:
        assert f.read() == data


def test_entries_a_cache_did_not_write_are_dropped_when_it_starts(w, tmp_path):
    """Named like entries but a link, or of another size than the name says:
    a new LocalCache over the directory neither lists nor keeps them."""
    good = b"a good entry"
    k = key(digest_of(good))
    w.cache.put(k, good, False)
    lying = key(digest_of(b"twelve bytes"))
    with open(w.cache.path(lying, False), "wb") as f:
        f.write(b"not twelve bytes at all")
    linked = key(digest_of(b"linked"))
    os.symlink("/etc/passwd", w.cache.path(linked, False))
    again = LocalCache(w.cache.root)
    try:
        assert again.has(k, False)
        assert not again.has(lying, False) and not again.has(linked, False)
        assert sorted(os.listdir(w.cache.root)) == [w.cache.name(k, False)]
    finally:
        again.close()


# -- W2: directories the worker makes ---------------------------------------------------


def test_a_nested_input_link_on_the_way_to_an_output_or_workdir_is_refused(w, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    files = {"pkg/keep.txt": (b"k", False)}
    links = {"pkg/l": str(host)}
    outcome = w.sh("true", files, symlinks=links, output_paths=("pkg/l/made/x.o",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "'pkg/l' is not a directory")
    outcome = w.sh("true", files, symlinks=links, working_directory="pkg/l/sub")
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "'pkg/l' is not a directory")
    assert os.listdir(host) == []


# -- W3: deep output trees ---------------------------------------------------------------


def _deep(levels: int) -> str:
    return f"i=0; while [ $i -lt {levels} ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; : > f"


def test_an_output_tree_deeper_than_python_recursion_is_collected(w):
    depth = execroot.MAX_OUTPUT_DEPTH - 1  # below the bound, far past the recursion limit
    result = _ok(w.sh(f"mkdir out && cd out && {_deep(depth)}", output_directories=("out",)))
    tree = w.tree(result, "out")
    assert len(tree.children) == depth
    assert sum(len(c.files) for c in tree.children) == 1
    assert _exec_roots(w) == []


def test_an_output_tree_past_the_depth_bound_is_refused_and_removed(w):
    outcome = w.sh(f"mkdir out && cd out && {_deep(3000)}", output_directories=("out",))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "deeper than", str(execroot.MAX_OUTPUT_DEPTH))
    assert _exec_roots(w) == []


def test_outputs_with_more_entries_than_the_bound_are_refused(w, monkeypatch):
    monkeypatch.setattr(execroot, "MAX_OUTPUT_ENTRIES", 50)
    _ok(w.sh("mkdir out && for i in $(seq 40); do : > out/$i; done", output_paths=("out",)))
    outcome = w.sh("mkdir out && for i in $(seq 60); do : > out/$i; done", output_paths=("out",))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "more than 50 entries")
    assert _exec_roots(w) == []


def test_a_restarted_worker_removes_a_deep_tree_a_killed_one_left(tmp_path):
    work = worker.prepare_work_dir(str(tmp_path / "work"))
    fd = os.open(os.path.join(work, "exec"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):
            os.mkdir("d", 0o700, dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        os.chmod(fd, 0o500)  # as an action may leave it
    finally:
        os.close(fd)
    assert worker.prepare_work_dir(work) == work
    assert os.listdir(os.path.join(work, "exec")) == []


# -- W4: the bytes of the outputs -------------------------------------------------------


def test_outputs_larger_than_the_bound_are_refused_before_they_are_read(w, monkeypatch):
    monkeypatch.setattr(execroot, "MAX_OUTPUT_BYTES", 1 << 20)
    _ok(w.sh("head -c 1000 /dev/zero > a; head -c 1000 /dev/zero", output_paths=("a",)))
    reads = w.store.stats["Write"]
    outcome = w.sh("truncate -s 1G big", output_paths=("big",))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "larger than 1048576 bytes", "'big'")
    outcome = w.sh(
        "mkdir o; head -c 700000 /dev/zero > o/a; head -c 700000 /dev/zero > o/b",
        output_paths=("o",),
    )
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "larger than 1048576 bytes")
    outcome = w.sh("head -c 2000000 /dev/zero")
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "larger than 1048576 bytes", "'stdout'")
    assert w.store.stats["Write"] == reads
    assert _exec_roots(w) == []


SPARSE = """
import os, resource, sys, threading
sys.path.insert(0, {tests!r})
from memory_cas import MemoryCas, input_root, lease
from hermetic.remote import worker
from hermetic.remote.cas import CasClient, LocalCache
store = MemoryCas()
channel = store.channel()
work = worker.prepare_work_dir({work!r})
cache = LocalCache(os.path.join(work, "cas"))
the_lease = lease(store, ["/bin/sh", "-c", "truncate -s 1G big.o"], input_root(store, {{}}),
                  output_paths=("big.o",))
outcome = worker.execute_lease(the_lease, cas=CasClient(channel, ""), cache=cache,
                               work_dir=work, bot_id="sparse", cancel=threading.Event())
print(outcome.status.code, [(f.path, f.digest.size_bytes) for f in outcome.result.output_files],
      store.streamed.get((outcome.result.output_files[0].digest.hash, 1 << 30)),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_a_sparse_gigabyte_output_keeps_the_worker_small(tmp_path):
    """The whole worker process (gRPC, the in-memory CAS that keeps only
    the digest of a streamed blob) peaks far below the output's size."""
    script = SPARSE.format(tests=os.path.join(ROOT, "tests"), work=str(tmp_path / "work"))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd="/",  # not the checkout: its hermetic/ has no compiled core
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fields = done.stdout.split()
    assert int(fields[0]) == code_pb2.OK, done.stdout
    assert f"('big.o', {1 << 30})" in done.stdout
    assert int(fields[-2]) == 1 << 30  # streamed through ByteStream, whole
    assert int(fields[-1]) < 300 * 1024, f"the worker peaked at {fields[-1]} KiB"


# -- W5: mounts for inputs beside outputs --------------------------------------------------


def test_inputs_beside_an_output_past_the_mount_bound_are_refused(w, monkeypatch):
    monkeypatch.setattr(execroot, "MAX_INPUT_MOUNTS", 20)
    files = {f"in{i}.txt": (b"%d" % i, False) for i in range(30)}
    # In a directory that holds no output: one mount for the directory.
    nested = {f"src/{n}": v for n, v in files.items()}
    result = _ok(w.sh("cat src/in7.txt > out.txt", nested, output_paths=("out.txt",)))
    assert result.exit_code == 0
    outcome = w.sh("cat in7.txt > out.txt", files, output_paths=("out.txt",))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "30 inputs", "at most 20")
    assert _exec_roots(w) == []


def test_inputs_beside_an_output_stay_read_only_up_to_the_bound(w):
    files = {f"in{i}.txt": (b"%d" % i, False) for i in range(50)}
    script = (
        "for f in in*.txt; do if (echo x >> $f) 2>/dev/null || (rm -f $f) 2>/dev/null; "
        "then echo changed $f; fi; done; echo made > out.txt"
    )
    result = _ok(w.sh(script, files, output_paths=("out.txt",)))
    assert w.stdout(result) == b""
    assert [f.path for f in result.output_files] == ["out.txt"]


# -- a lease without Action.timeout ----------------------------------------------------------


def test_an_action_without_a_timeout_gets_the_default(w, monkeypatch):
    monkeypatch.setattr(worker, "DEFAULT_TIMEOUT", 1.0)
    outcome = w.sh("sleep 600")
    assert outcome.status.code == code_pb2.DEADLINE_EXCEEDED, outcome.status
    assert "1.0 s" in outcome.status.message


def test_a_name_longer_than_the_kernel_takes_is_refused(w):
    """An input, working directory or output with one name over NAME_MAX
    (255 bytes): INVALID_ARGUMENT naming it, not INTERNAL (which a farm
    retries); a name of 255 bytes is staged."""
    long = "n" * 256
    outcome = w.sh("true", {f"d/{long}": (b"x", False)})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "'d' holds", "256 bytes", "at most 255")
    outcome = w.sh("true", {f"{long}/f": (b"x", False)})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "256 bytes", "at most 255")
    # Refused as its Directory is read, before a path is made of it: a
    # name of a megabyte above 300 files was 300 MB of paths.
    outcome = w.sh("true", {f"{'h' * (1 << 20)}/f{i}": (b"x", False) for i in range(300)})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, f"{1 << 20} bytes", "at most 255")
    wide = "\u00e9" * 128  # 256 bytes in UTF-8
    outcome = w.sh("true", {f"d/{wide}": (b"x", False)})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "256 bytes", "at most 255")
    outcome = w.sh("true", working_directory=long)
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "working directory", "256 bytes")
    outcome = w.sh("true", output_paths=(f"o/{long}",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "output", "256 bytes")
    assert _exec_roots(w) == []
    fits = "m" * 255
    assert _ok(w.sh(f"cat d/{fits}", {f"d/{fits}": (b"ok", False)})).exit_code == 0
    # A symbolic link's target is a path: 1 to 4,095 bytes.
    for target in ("", "t" * 4096):
        outcome = w.sh("true", symlinks={"l": target})
        _refused(outcome, code_pb2.INVALID_ARGUMENT, "symbolic link", f"{len(target)} bytes")
    assert _exec_roots(w) == []


def test_an_input_root_that_expands_past_its_bounds_is_refused(w, monkeypatch):
    """A Directory may name one child many times: a few hundred KiB can
    stand for millions of paths.  The tree is counted as it is expanded,
    each distinct Directory parsed once: past the bound on entries (or on
    their paths' bytes), RESOURCE_EXHAUSTED, before anything is staged."""
    monkeypatch.setattr(execroot, "MAX_INPUT_ENTRIES", 1000)
    # 40 directories with the same 40 files: one digest, named 40 times.
    same = {f"d{i:02}/f{j:02}": (b"same", False) for i in range(40) for j in range(40)}
    outcome = w.sh("true", same)
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "more than 1000 entries")
    assert _exec_roots(w) == []
    monkeypatch.setattr(execroot, "MAX_INPUT_ENTRIES", 1_000_000)
    monkeypatch.setattr(execroot, "MAX_INPUT_PATH_BYTES", 10_000)
    outcome = w.sh("true", same)
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "10000 bytes of paths")
    monkeypatch.setattr(execroot, "MAX_INPUT_PATH_BYTES", 100_000)
    assert _ok(w.sh("cat d39/f39", same)).exit_code == 0
    # A symbolic link's target is held too, each time its Directory is.
    links = {f"d{i:02}/l": "t" * 4000 for i in range(40)}
    outcome = w.sh("true", {"f": (b"x", False)}, symlinks=links)
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "100000 bytes of paths")


def test_outputs_past_their_bounds_are_refused_before_anything_is_made(w, monkeypatch):
    """Every component of an output's path is a directory the worker may
    make: their number is bounded, as is the outputs' (RESOURCE_EXHAUSTED
    before the exec root is touched)."""
    monkeypatch.setattr(execroot, "MAX_OUTPUT_COMPONENTS", 100)
    deep = "/".join(["a"] * 60)
    outcome = w.sh("true", output_paths=(f"x/{deep}/o", f"y/{deep}/o"))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "124 path components", "at most 100")
    assert _exec_roots(w) == []
    monkeypatch.setattr(execroot, "MAX_OUTPUTS", 3)
    outcome = w.sh("true", output_paths=("a", "b", "c", "d"))
    _refused(outcome, code_pb2.RESOURCE_EXHAUSTED, "4 outputs", "at most 3")
    result = _ok(w.sh(f"mkdir -p {deep} && echo x > x/{deep}/o", output_paths=(f"x/{deep}/o",)))
    assert [f.path for f in result.output_files] == [f"x/{deep}/o"]


def test_a_missing_digest_the_cas_was_not_asked_about_is_ignored(w):
    """FindMissingBlobs answering with a digest it was not asked about (a
    path-like hash among them) sends nothing for it and fails nothing."""
    find = w.client._cas.FindMissingBlobs

    def lying(request, **kw):
        reply = find(request, **kw)
        reply.missing_blob_digests.add(hash="../" * 8 + "etc/passwd", size_bytes=5)
        reply.missing_blob_digests.add(hash="0" * 64, size_bytes=2 << 20)
        return reply

    w.client._cas.FindMissingBlobs = lying
    result = _ok(w.sh("echo out > out.txt", output_paths=("out.txt",)))
    assert [f.path for f in result.output_files] == ["out.txt"]
    assert ("0" * 64, 2 << 20) not in w.store.streamed


def test_an_input_path_longer_than_the_kernel_takes_is_refused(w):
    """No retry could stage it: INVALID_ARGUMENT naming it, not INTERNAL
    (which a farm retries)."""
    deep = "/".join(["d" * 200] * 21) + "/f"  # 4,221 bytes
    outcome = w.sh("true", {deep: (b"x", False)})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "longer than a path can be")
    assert _exec_roots(w) == []
    # So is a working directory or an output that long (no chdir or collection
    # could reach it).
    far = "/".join(["w" * 200] * 21)
    outcome = w.sh("true", working_directory=far)
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "working directory", "longer than a path")
    outcome = w.sh("true", output_paths=(far + "/o",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "output", "longer than a path")
    assert _exec_roots(w) == []
    # Just within the bound, relative to the exec root, it is staged.
    room = 4095 - len(os.fsencode(os.path.join(w.work, "exec", "slot-xxxxxxxx"))) - 1
    fits = "/".join(["e" * 200] * (room // 201)) + "/f"
    assert _ok(w.sh(f"cat {fits}", {fits: (b"ok", False)})).exit_code == 0
