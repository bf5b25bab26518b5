"""Hostile actions and hostile requests against the worker's host side.

Each lease is a real REAPI Action run through ``worker.execute_lease`` in
the sandbox, its CAS held in memory behind an in-process gRPC server
(tests/memory_cas.py) and read by the worker's own CasClient.  What the
action does to its exec root is then read by the worker as root (or as
the user running the suite): the worker must never follow what the action
planted, read what it should not, keep unbounded bytes in memory, or make
anything outside the exec root; and a request the API says to refuse
completes the lease with INVALID_ARGUMENT and a message naming why.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import IN_CI

pytestmark = pytest.mark.linux

try:
    import buildgrid.common  # noqa: F401
except ImportError as e:  # a skip where the extra is not installed; under CI a failure
    if IN_CI:
        pytest.fail(f"required under CI: the 'remote' extra ({e})", pytrace=False)
    pytest.skip(f"needs the 'remote' extra: {e}", allow_module_level=True)

from google.protobuf import struct_pb2  # noqa: E402
from memory_cas import MemoryCas, input_root, lease  # noqa: E402

from hermetic.remote import execroot, worker  # noqa: E402
from hermetic.remote.cas import CHUNK, CasClient, LocalCache, digest_of, key  # noqa: E402
from hermetic.remote.protos import code_pb2, re_pb2  # noqa: E402
from hermetic.remote.sandboxes import Sandboxes  # noqa: E402

SH = "/bin/sh"


@dataclass
class Worker:
    store: MemoryCas
    client: CasClient
    cache: LocalCache
    work: str
    #: Reused lease after lease, as ``hermetic worker`` reuses them.
    sandboxes: Sandboxes

    def run(self, the_lease: Any, cancel: threading.Event | None = None) -> Any:
        return worker.execute_lease(
            the_lease,
            cas=self.client,
            cache=self.cache,
            work_dir=self.work,
            bot_id="hostile",
            cancel=cancel or threading.Event(),
            sandboxes=self.sandboxes,
        )

    def sh(self, script: str, files: dict[str, tuple[bytes, bool]] | None = None, **kw: Any) -> Any:
        root = input_root(self.store, files or {}, kw.pop("symlinks", None))
        return self.run(lease(self.store, [SH, "-c", script], root, **kw))

    def tree(self, result: Any, path: str) -> Any:
        (d,) = [d for d in result.output_directories if d.path == path]
        return re_pb2.Tree.FromString(self.store.blobs[key(d.tree_digest)])

    def stdout(self, result: Any) -> bytes:
        return self.store.blobs[key(result.stdout_digest)]


@pytest.fixture
def w(tmp_path):
    store = MemoryCas()
    channel = store.channel()
    work = worker.prepare_work_dir(str(tmp_path / "work"))
    cache = LocalCache(os.path.join(work, "cas"))
    sandboxes = Sandboxes(work)
    try:
        yield Worker(store, CasClient(channel, ""), cache, work, sandboxes)
    finally:
        sandboxes.close()
        cache.close()
        channel.close()
        store.close()


def _ok(outcome: Any) -> Any:
    assert outcome.status.code == code_pb2.OK, outcome.status
    return outcome.result


def _refused(outcome: Any, code: int, *words: str) -> None:
    assert outcome.status.code == code, outcome.status
    for word in words:
        assert word in outcome.status.message, outcome.status.message


# -- symbolic links out of the exec root ------------------------------------------


def test_output_links_to_the_host_the_cache_and_another_exec_root_stay_links(w, tmp_path):
    other = tmp_path / "work" / "exec" / "root-other"
    other.mkdir()
    (other / "secret").write_bytes(b"another lease's output")
    staged = b"a staged input, in the cache"
    cache_file = w.cache.path(key(digest_of(staged)), False)
    script = (
        f"ln -s /etc/shadow shadow; mkdir out; ln -s /etc/shadow out/shadow; "
        f"ln -s {cache_file} out/cache; ln -s {w.cache.root} out/cache_dir; "
        f"ln -s {other} out/other; ln -s {other}/secret secret"
    )
    result = _ok(
        w.sh(script, {"in.txt": (staged, False)}, output_paths=("shadow", "secret", "out"))
    )
    assert result.exit_code == 0
    assert sorted((s.path, s.target) for s in result.output_symlinks) == [
        ("secret", f"{other}/secret"),
        ("shadow", "/etc/shadow"),
    ]
    tree = w.tree(result, "out")
    assert not tree.root.files and not tree.root.directories
    assert sorted((s.name, s.target) for s in tree.root.symlinks) == sorted(
        [
            ("cache", cache_file),
            ("cache_dir", w.cache.root),
            ("other", str(other)),
            ("shadow", "/etc/shadow"),
        ]
    )
    assert b"another lease's output" not in w.store.blobs.values()
    if os.access("/etc/shadow", os.R_OK):
        with open("/etc/shadow", "rb") as f:
            assert f.read() not in w.store.blobs.values()


def test_an_output_through_a_link_is_not_followed(w, tmp_path):
    """``out`` is a link the action made to a host directory: the output
    ``out/f`` beneath it is left out, not read through the link."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "f").write_bytes(b"host file")
    result = _ok(w.sh(f"rm -rf out; ln -s {host} out", output_files=("out/f",)))
    assert list(result.output_files) == []
    assert b"host file" not in w.store.blobs.values()


# -- special files --------------------------------------------------------------------


def test_fifos_sockets_and_device_nodes_in_outputs_are_left_out(w):
    script = (
        "mkdir -p out && echo data > out/file && mkfifo out/fifo && mkfifo fifo_out && "
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('out/sock')\" && "
        "if mknod out/null c 1 3 2>/dev/null; then echo mknod-made; else echo mknod-refused; fi"
    )
    result = _ok(w.sh(script, output_files=("fifo_out",), output_directories=("out",)))
    assert result.exit_code == 0, result
    # The sandbox refuses device nodes (no CAP_MKNOD over the host's devices).
    assert w.stdout(result).strip() == b"mknod-refused"
    tree = w.tree(result, "out")
    assert [f.name for f in tree.root.files] == ["file"]
    assert not tree.root.symlinks and not tree.root.directories
    # A FIFO named as an output file is left out, never opened to block.
    assert list(result.output_files) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a device node on the host")
def test_a_device_node_in_an_output_is_left_out_by_collect(tmp_path):
    """The sandbox cannot make one (above); an exec root that holds one
    anyway (made here as root) still has it left out, never opened."""
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    os.mknod(root / "out" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (root / "out" / "f").write_bytes(b"f")
    got = execroot.collect(re_pb2.Command(output_paths=["out", "out/zero"]), str(root))
    tree = re_pb2.Tree.FromString(got.blobs[key(got.directories[0].tree_digest)])
    assert [f.name for f in tree.root.files] == ["f"]
    assert got.files == []


# -- the cache behind the staged inputs --------------------------------------------------


def test_staged_inputs_cannot_be_written_chmodded_or_hard_linked(w):
    """Every staged input is a hard link to the cache's inode, read-only
    inside the sandbox: an action can neither write nor chmod it, nor make
    a link of its own to it (which would be writable where the output is),
    and the cache's copy stays as it was."""
    top, nested = b"top-level input\n", b"nested input\n"
    files = {"top.txt": (top, False), "src/a.h": (nested, False), "bin/tool": (b"#!x\n", True)}
    ops = []
    for name, path in (("top", "top.txt"), ("nested", "src/a.h"), ("exec", "bin/tool")):
        ops += [
            (f"write-{name}", f"echo x >> {path}"),
            (f"truncate-{name}", f": > {path}"),
            (f"chmod-{name}", f"chmod 666 {path}"),
            (f"link-{name}", f"ln {path} out/{name}-link"),
            (f"rename-{name}", f"mv {path} out/{name}-moved"),
            (f"remove-{name}", f"rm -f {path} && test ! -e {path}"),
        ]
    script = "mkdir -p out; " + "; ".join(
        f"if ({cmd}) 2>/dev/null; then echo '{label} done'; else echo '{label} refused'; fi"
        for label, cmd in ops
    )
    result = _ok(w.sh(script, files, output_directories=("out",)))
    lines = w.stdout(result).decode().splitlines()
    assert lines == [f"{label} refused" for label, _ in ops]
    for data, x in files.values():
        path = w.cache.path(key(digest_of(data)), x)
        with open(path, "rb") as f:
            assert f.read() == data
        assert os.stat(path).st_mode & 0o777 == (0o555 if x else 0o444)
    # mv falls back to copying across mounts before its unlink is refused:
    # such a copy is the action's own file (a new inode), which it may make.
    made = {f.name for f in w.tree(result, "out").root.files}
    assert made <= {"top-moved", "nested-moved", "exec-moved"}


def test_a_hard_link_to_a_cache_file_in_an_output_is_read_not_changed(tmp_path, w):
    """Collecting only reads: an output that shares its inode with a cache
    entry (made here, as the sandbox would not let the action) is uploaded
    as its bytes and the entry is unchanged."""
    data = b"cached bytes"
    k = key(digest_of(data))
    w.cache.put(k, data, False)
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    os.link(w.cache.path(k, False), root / "out" / "linked")
    got = execroot.collect(re_pb2.Command(output_paths=["out"]), str(root))
    tree = re_pb2.Tree.FromString(got.blobs[key(got.directories[0].tree_digest)])
    assert [(f.name, key(f.digest)) for f in tree.root.files] == [("linked", k)]
    with open(w.cache.path(k, False), "rb") as f:
        assert f.read() == data
    assert os.stat(w.cache.path(k, False)).st_mode & 0o777 == 0o444


# -- huge outputs ---------------------------------------------------------------------


def test_a_huge_output_streams_from_disk(w):
    """96 MiB of output file and 8 MiB of stdout: hashed in chunks and
    uploaded through ByteStream in chunks, the worker's Python memory
    staying far below either."""
    size, out_size = 96 << 20, 8 << 20
    script = f"mkdir -p out && head -c {size} /dev/zero > out/big && head -c {out_size} /dev/zero"
    the_lease = lease(
        w.store, [SH, "-c", script], input_root(w.store, {}), output_files=("out/big",)
    )
    tracemalloc.start()
    try:
        outcome = w.run(the_lease)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = _ok(outcome)
    big = re_pb2.Digest(hash=hashlib.sha256(bytes(size)).hexdigest(), size_bytes=size)
    assert [(f.path, key(f.digest)) for f in result.output_files] == [("out/big", key(big))]
    assert w.store.streamed[key(big)] == size
    assert key(result.stdout_digest) == key(digest_of(bytes(out_size)))
    assert w.store.streamed[key(result.stdout_digest)] == out_size
    assert result.stdout_raw == b""
    assert w.store.max_chunk <= CHUNK
    assert peak < 24 << 20, f"the worker held {peak} bytes at once"


# -- paths the action names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("output_paths", ("../escape",), ("leaves the exec root",)),
        ("output_paths", ("a/../../escape",), ("leaves the exec root",)),
        ("output_paths", ("/etc/passwd",), ("must be a relative path",)),
        ("output_files", ("a\0b",), ("must be a relative path",)),
        ("output_directories", ("/tmp",), ("must be a relative path",)),
        ("working_directory", "../..", ("working_directory", "leaves the exec root")),
        ("working_directory", "/etc", ("working_directory", "relative")),
    ],
)
def test_paths_out_of_the_exec_root_are_invalid_arguments(w, field, value, words):
    outcome = w.sh("echo ran", **{field: value})
    _refused(outcome, code_pb2.INVALID_ARGUMENT, *words)


def test_an_output_inside_by_dot_dot_is_collected(w):
    result = _ok(w.sh("mkdir -p a b && echo x > b/f", output_paths=("a/../b/f",)))
    assert [f.path for f in result.output_files] == ["a/../b/f"]


def test_a_working_directory_or_output_parent_through_an_input_link_is_refused(w, tmp_path):
    """The worker makes the working directory and the outputs' parents
    before the action runs, as the worker's user: an input symbolic link on
    the way (to a host directory) is refused, nothing is made through it."""
    host = tmp_path / "host"
    host.mkdir()
    links = {"w": str(host), "o": str(host)}
    outcome = w.sh("echo ran", symlinks=links, working_directory="w/sub")
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "'w' is not a directory of the exec root")
    outcome = w.sh("echo ran", symlinks=links, output_files=("o/made/x.o",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "'o' is not a directory of the exec root")
    assert os.listdir(host) == []


def test_non_utf8_names_in_outputs_are_refused_with_the_name(w):
    outcome = w.sh("mkdir out && echo x > \"out/$(printf 'bad\\377')\"", output_paths=("out",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "not UTF-8", "bad\\xff")
    outcome = w.sh("ln -s \"$(printf '\\377')\" link", output_paths=("link",))
    _refused(outcome, code_pb2.INVALID_ARGUMENT, "not UTF-8")


# -- input roots the API says to refuse --------------------------------------------------


def _directory_lease(w: Worker, directory: Any) -> Any:
    return lease(w.store, [SH, "-c", "echo ran"], w.store.put_message(directory))


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (
            lambda d, x: (d.files.add(name="b", digest=x), d.files.add(name="a", digest=x)),
            ("out of order",),
        ),
        (
            lambda d, x: (d.files.add(name="a", digest=x), d.files.add(name="a", digest=x)),
            ("twice",),
        ),
        (
            lambda d, x: (d.files.add(name="a", digest=x), d.symlinks.add(name="a", target="b")),
            ("twice",),
        ),
        (lambda d, x: d.files.add(name="a/b", digest=x), ("invalid name",)),
        (lambda d, x: d.files.add(name="..", digest=x), ("invalid name",)),
        (lambda d, x: d.symlinks.add(name="", target="x"), ("invalid name",)),
    ],
)
def test_invalid_input_directories_are_refused(w, build, words):
    d = re_pb2.Directory()
    build(d, w.store.put(b"x"))
    _refused(w.run(_directory_lease(w, d)), code_pb2.INVALID_ARGUMENT, *words)


def test_an_unsorted_subdirectory_is_refused_with_its_path(w):
    sub = re_pb2.Directory()
    sub.directories.add(name="z", digest=w.store.put_message(re_pb2.Directory()))
    sub.directories.add(name="y", digest=w.store.put_message(re_pb2.Directory()))
    top = re_pb2.Directory()
    top.directories.add(name="pkg", digest=w.store.put_message(sub))
    _refused(w.run(_directory_lease(w, top)), code_pb2.INVALID_ARGUMENT, "'pkg'", "out of order")


# -- digests that lie -------------------------------------------------------------------


def test_digests_whose_size_lies(w):
    data = b"the real bytes"
    real = w.store.put(data)
    lying = re_pb2.Digest(hash=real.hash, size_bytes=real.size_bytes + 1)
    d = re_pb2.Directory()
    d.files.add(name="a", digest=lying)
    _refused(w.run(_directory_lease(w, d)), code_pb2.FAILED_PRECONDITION)
    # A CAS that answers a digest with other bytes is refused too.
    w.store.blobs[key(lying)] = data
    _refused(w.run(_directory_lease(w, d)), code_pb2.FAILED_PRECONDITION, "does not match")
    assert not w.cache.has(key(lying), False)


def test_a_large_blob_longer_than_its_digest_is_cut_off(w):
    data = os.urandom(3 << 20)
    k = (hashlib.sha256(data[: 2 << 20]).hexdigest(), 2 << 20)
    w.store.blobs[k] = data  # the CAS sends 3 MiB for a 2 MiB digest
    d = re_pb2.Directory()
    d.files.add(name="big", digest=re_pb2.Digest(hash=k[0], size_bytes=k[1]))
    _refused(w.run(_directory_lease(w, d)), code_pb2.FAILED_PRECONDITION, "more than")
    assert not w.cache.has(k, False)
    assert not [n for n in os.listdir(w.cache.root) if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "digest",
    [
        re_pb2.Digest(hash="0" * 64, size_bytes=-1),
        re_pb2.Digest(hash="../../etc/passwd", size_bytes=1),
        re_pb2.Digest(hash="A" * 64, size_bytes=1),
    ],
)
def test_malformed_input_digests_are_invalid_arguments(w, digest):
    d = re_pb2.Directory()
    d.files.add(name="a", digest=digest)
    _refused(w.run(_directory_lease(w, d)), code_pb2.INVALID_ARGUMENT, "invalid digest")
    # Nothing was named after it: the cache holds only the Directory.
    assert os.listdir(w.cache.root) == [w.cache.name(key(digest_of(d.SerializeToString())), False)]


def test_a_command_digest_too_large_to_read_is_refused_unread(w):
    action = re_pb2.Action(
        command_digest=re_pb2.Digest(hash="0" * 64, size_bytes=1 << 40),
        input_root_digest=w.store.put_message(re_pb2.Directory()),
    )
    the_lease = lease(w.store, ["x"], action.input_root_digest)
    the_lease.payload.Pack(action)
    calls = sum(w.store.stats.values())
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "larger than")
    assert sum(w.store.stats.values()) == calls


def test_an_input_root_that_is_not_a_directory_message_is_refused(w):
    not_a_directory = w.store.put(b"\xff\xff\xff not a protobuf message")
    the_lease = lease(w.store, [SH, "-c", "echo ran"], not_a_directory)
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "not a Directory")


def test_a_directory_digest_too_large_to_read_is_refused_unread(w):
    top = re_pb2.Directory()
    top.directories.add(name="huge", digest=re_pb2.Digest(hash="0" * 64, size_bytes=1 << 40))
    the_lease = _directory_lease(w, top)
    reads = w.store.stats["Read"]
    _refused(w.run(the_lease), code_pb2.INVALID_ARGUMENT, "'huge'", "too large")
    assert w.store.stats["Read"] == reads


# -- one slot, lease after lease ----------------------------------------------------

#: What a lease left that the next could see: the exec root's listing, mode
#: and extended attributes.
LOOK = (
    "ls -A; stat -c %a .; "
    "/usr/bin/python3 -c 'import os; print(sorted(os.listxattr(\".\")))'; "
    "echo changed > src/a.h && echo wrote-a.h"
)


def test_the_next_lease_on_a_slot_finds_nothing_of_the_last(w, tmp_path):
    """A slot's exec root is emptied, made 0700 and stripped of extended
    attributes between leases, and the staged inputs are read-only only for
    the lease that staged them; the slot (its executor) is reused."""
    first = w.sh(
        "mkdir -p d/e && echo x > d/e/f && chmod 000 d/e d; mkfifo fifo; "
        "ln src/a.h hard 2>/dev/null; echo ln=$?; chmod 777 .; "
        '/usr/bin/python3 -c \'import os; os.setxattr(".", "user.left", b"1")\'; echo xattr=$?; '
        "echo changed > src/a.h; echo write=$?",
        {"src/a.h": (b"#define A\n", False)},
    )
    assert _ok(first).exit_code == 0
    # The staged input was read-only for the first lease: its write failed,
    # and so did a hard link to it (its inode is the cache's) in a writable
    # place (EXDEV: the link would cross the read-only mount).  Extended
    # attributes are refused by the sandbox's filter (the slot strips any
    # left on its exec root all the same).
    assert w.stdout(_ok(first)).decode().split() == ["ln=1", "xattr=1", "write=2"]
    second = _ok(w.sh(LOOK, output_paths=("src/a.h",)))
    assert second.exit_code == 0, w.stdout(second)
    # Nothing of the first lease; the second may write src/a.h, an output now.
    assert w.stdout(second).decode().split() == ["src", "700", "[]", "wrote-a.h"]
    assert len(os.listdir(tmp_path / "work" / "exec")) == 1  # one slot, reused
    with open(w.cache.path(key(digest_of(b"#define A\n")), False), "rb") as f:
        assert f.read() == b"#define A\n"


def test_leases_at_once_get_slots_of_their_own(w, tmp_path):
    """Two leases running together are in two slots, neither seeing the
    other's exec root; afterwards both slots wait for the next leases."""
    slots = tmp_path / "work" / "exec"
    cancel = threading.Event()
    outcomes: list[Any] = []
    the_lease = lease(
        w.store,
        [SH, "-c", "echo first > mine; sleep 60"],
        input_root(w.store, {}),
        output_paths=("mine",),
    )

    def run_first() -> None:
        outcomes.append(w.run(the_lease, cancel))

    first = threading.Thread(target=run_first)
    first.start()
    try:
        for _ in range(1200):  # until the first lease's action runs
            mine = [s / "mine" for s in slots.iterdir() if (s / "mine").exists()]
            if mine:
                break
            cancel.wait(0.05)
        assert mine
        second = _ok(w.sh("ls -A; ls -A ..", output_paths=("x",)))
    finally:
        cancel.set()  # the first lease's action is killed
        first.join()
    assert outcomes[0].status.code == code_pb2.CANCELLED, outcomes[0].status
    assert "mine" not in w.stdout(second).decode()
    assert len(os.listdir(slots)) == 2
    assert [os.listdir(s) for s in slots.iterdir()] == [[], []]


def test_a_lease_cancelled_while_staging_ends_cancelled_and_runs_nothing(w, tmp_path):
    """Staging looks at the cancellation before each directory: a lease
    cancelled meanwhile ends CANCELLED without its action, and its slot is
    emptied for the next lease."""
    cancel = threading.Event()
    cancel.set()
    files = {f"d{d}/f": (b"x", False) for d in range(10)}
    the_lease = lease(
        w.store,
        [SH, "-c", "echo ran > mine"],
        input_root(w.store, files),
        output_paths=("mine",),
    )
    _refused(w.run(the_lease, cancel), code_pb2.CANCELLED, "staged")
    slots = tmp_path / "work" / "exec"
    assert [os.listdir(s) for s in slots.iterdir()] == [[]]
    _ok(w.sh("true", files))


def test_a_slot_that_cannot_be_emptied_is_not_reused(w, tmp_path, monkeypatch):
    """Where the exec root cannot be emptied (a file system error), the
    slot's executor is closed and the next lease gets a new slot.  (The
    failure is injected: an action cannot make its exec root unremovable.)"""
    from hermetic.remote import sandboxes

    real = sandboxes._empty
    calls = []

    def failing(path: str, private: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "Input/output error", path)
        real(path, private)

    monkeypatch.setattr(sandboxes, "_empty", failing)
    assert _ok(w.sh("echo one > f", output_paths=("f",))).exit_code == 0
    assert _ok(w.sh("ls -A", output_paths=("f",))).exit_code == 0
    # Two slots were used, and only the second is left.
    assert len(calls) == 2 and calls[0] != calls[1]
    assert os.listdir(tmp_path / "work" / "exec") == [os.path.basename(calls[1])]


# -- what the sandbox stopped ---------------------------------------------------------


def _aux(result: Any) -> Any:
    (aux,) = result.execution_metadata.auxiliary_metadata
    usage = struct_pb2.Struct()
    assert aux.Unpack(usage)
    return usage


def test_a_lease_s_violations_are_in_its_result_and_the_audit_log(tmp_path, monkeypatch):
    """Every write the sandbox refused is recorded: in the result's
    auxiliary metadata (up to a bound, with the total) and, given
    --audit-log, in the audit log, naming the staged input."""
    store = MemoryCas()
    channel = store.channel()
    work = worker.prepare_work_dir(str(tmp_path / "work"))
    cache = LocalCache(os.path.join(work, "cas"))
    log = tmp_path / "audit.jsonl"
    sandboxes = Sandboxes(work, audit_log=str(log))
    w = Worker(store, CasClient(channel, ""), cache, work, sandboxes)
    monkeypatch.setattr(worker, "MAX_REPORTED_VIOLATIONS", 2)
    try:
        files = {f"src/{n}.h": (b"#define X\n", False) for n in "abc"}
        script = "for f in src/*.h; do echo x >> $f; done 2>/dev/null; echo made > out.txt"
        result = _ok(w.sh(script, files, output_paths=("out.txt",)))
    finally:
        sandboxes.close()
        cache.close()
        channel.close()
        store.close()
    usage = _aux(result)
    reported = [v["attempted"] for v in usage["hermetic_violations"]]
    assert len(reported) == 2 and usage["hermetic_violations_total"] == 3, usage
    assert all("src/" in a for a in reported), reported
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["attempted"].rsplit("/", 2)[-2:][1] for r in records) == [
        "a.h",
        "b.h",
        "c.h",
    ], records
