"""The worker's local CAS cache: bounded, least recently used out first,
safe for exec roots that are staged from it, and fast to stage from.

The farm's CAS is held in memory behind an in-process gRPC server
(tests/memory_cas.py), read by the worker's own CasClient.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading

import pytest
from conftest import IN_CI

pytestmark = pytest.mark.linux

try:
    import buildgrid.common  # noqa: F401
except ImportError as e:  # a skip where the extra is not installed; under CI a failure
    if IN_CI:
        pytest.fail(f"required under CI: the 'remote' extra ({e})", pytrace=False)
    pytest.skip(f"needs the 'remote' extra: {e}", allow_module_level=True)

from memory_cas import MemoryCas, input_root  # noqa: E402
from remote.client import worker_argv  # noqa: E402

from hermetic.remote import execroot  # noqa: E402
from hermetic.remote.cas import (  # noqa: E402
    DEFAULT_CACHE_SIZE,
    LOW_WATER,
    MAX_BATCH_BLOB,
    Cancelled,
    CasClient,
    LocalCache,
    digest_of,
    entry_cost,
    key,
)

#: What one of _fill's 1,000-byte entries counts against the bound.
C = entry_cost(1000)


@pytest.fixture
def cas():
    store = MemoryCas()
    channel = store.channel()
    try:
        yield store, CasClient(channel, "")
    finally:
        channel.close()
        store.close()


def _blob(i: int, size: int = 1000) -> bytes:
    return (f"{i:08}".encode() * (size // 8 + 1))[:size]


def _staged(exec_root, root, cache: LocalCache, client: CasClient):
    """``exec_root`` (a new directory) staged from the input root ``root``."""
    exec_root.mkdir()
    execroot.stage(execroot.fetch_tree(client, root, cache), cache, client, str(exec_root))
    return exec_root


def _fill(cache: LocalCache, n: int, size: int = 1000) -> list:
    keys = []
    for i in range(n):
        data = _blob(i, size)
        k = key(digest_of(data))
        cache.put(k, data, False)
        keys.append(k)
    return keys


def test_a_cache_over_its_size_shrinks_least_recently_used_first(tmp_path, cas):
    store, client = cas
    cache = LocalCache(str(tmp_path / "cas"), max_bytes=10 * C)
    keys = _fill(cache, 10)
    assert cache.size == 10 * C and len(cache) == 10
    # Use the oldest entry again: it becomes the most recently used.
    assert cache.fetch(client, [(keys[0], False)]) == 0
    new = _blob(10)
    cache.put(key(digest_of(new)), new, False)
    # Over the bound: evicted down to LOW_WATER of it, oldest first.
    assert cache.size <= 10 * C * LOW_WATER
    assert cache.has(keys[0], False), "a recently used entry was evicted"
    assert not cache.has(keys[1], False) and not os.path.exists(cache.path(keys[1], False))
    assert cache.has(key(digest_of(new)), False)
    # The directory holds exactly what the index says.
    assert sorted(os.listdir(cache.root)) == sorted(
        cache.name(k, False) for k in [*keys, key(digest_of(new))] if cache.has(k, False)
    )
    cache.close()


def test_the_index_is_read_again_at_start(tmp_path):
    root = str(tmp_path / "cas")
    cache = LocalCache(root, max_bytes=100 * C)
    keys = _fill(cache, 5)
    cache.close()
    # Half a fetch of a worker that was killed, and a stranger's file.
    (tmp_path / "cas" / f"{keys[0][0]}_1000.abc.tmp").write_bytes(b"half")
    again = LocalCache(root, max_bytes=100 * C)
    assert again.size == 5 * C and all(again.has(k, False) for k in keys)
    assert not any(n.endswith(".tmp") for n in os.listdir(root))
    again.close()
    # Restarted with a smaller bound: shrinks at once.
    small = LocalCache(root, max_bytes=2 * C)
    assert small.size <= 2 * C and len(os.listdir(root)) == len(small)
    small.close()


def test_a_staged_exec_root_survives_eviction(tmp_path, cas):
    """Evicting an entry removes the cache's name for its inode; the exec
    root's hard link keeps the inode, its bytes and its read-only mode."""
    store, client = cas
    files = {f"src/f{i}.h": (_blob(i), i % 2 == 0) for i in range(20)}
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"), max_bytes=1 << 20)
    tree = execroot.fetch_tree(client, root, cache)
    exec_root = tmp_path / "root"
    exec_root.mkdir()
    assert execroot.stage(tree, cache, client, str(exec_root)) == len(files)
    cache.max_bytes = 0
    cache.evict()
    assert len(cache) == 0 and cache.size == 0 and os.listdir(cache.root) == []
    for rel, (data, x) in files.items():
        staged = exec_root / rel
        assert staged.read_bytes() == data
        assert os.stat(staged).st_mode & 0o777 == (0o555 if x else 0o444)
        assert os.stat(staged).st_nlink == 1  # the cache's link is gone, the file is not
    cache.close()


def test_pinned_entries_are_not_evicted(tmp_path):
    cache = LocalCache(str(tmp_path / "cas"), max_bytes=5 * C)
    keys = _fill(cache, 5)
    with cache.pinned([(keys[0], False), (keys[1], False)]):
        _fill(cache, 10, size=999)  # other blobs: far over the bound
        assert cache.has(keys[0], False) and cache.has(keys[1], False)
    cache.evict()
    assert cache.size <= 5 * C
    cache.close()


def test_concurrent_leases_stage_from_a_cache_smaller_than_their_inputs(tmp_path, cas):
    """Eight leases at once, each with 50 inputs of its own and 50 shared,
    through a cache that holds a fraction of them: every exec root is
    whole (pinning keeps an entry from its fetch to its link), and the
    cache ends under its bound."""
    store, client = cas
    shared = {f"shared/s{i}": (_blob(10_000 + i), False) for i in range(50)}
    roots = []
    for n in range(8):
        own = {f"own/o{i}": (_blob(n * 100 + i), i % 3 == 0) for i in range(50)}
        roots.append((input_root(store, {**shared, **own}), {**shared, **own}))
    cache = LocalCache(str(tmp_path / "cas"), max_bytes=30 * C)
    errors: list[BaseException] = []

    def lease(n: int) -> None:
        try:
            for round_ in range(3):
                root, files = roots[n]
                exec_root = tmp_path / f"root-{n}-{round_}"
                exec_root.mkdir()
                tree = execroot.fetch_tree(client, root, cache)
                execroot.stage(tree, cache, client, str(exec_root))
                for rel, (data, _) in files.items():
                    assert (exec_root / rel).read_bytes() == data, rel
        except BaseException as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=lease, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.size <= 30 * C and cache.evicted > 0
    # Nothing half-written left, and the disk holds what the index says.
    assert len(os.listdir(cache.root)) == len(cache)
    cache.close()


def test_an_entry_removed_by_hand_is_fetched_again(tmp_path, cas):
    store, client = cas
    files = {"a.txt": (b"alpha", False), "b.txt": (b"beta", True)}
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    tree = execroot.fetch_tree(client, root, cache)
    first = tmp_path / "first"
    first.mkdir()
    execroot.stage(tree, cache, client, str(first))
    os.unlink(cache.path(key(digest_of(b"alpha")), False))
    second = tmp_path / "second"
    second.mkdir()
    assert execroot.stage(tree, cache, client, str(second)) == 1
    assert (second / "a.txt").read_bytes() == b"alpha"
    cache.close()


def _plant_symlink(path: str, tmp_path) -> None:
    host = tmp_path / "host-file"
    host.write_bytes(b"alpha")  # the right size: only the check of the kind stops it
    os.symlink(host, path)


def _plant_wrong_size(path: str, tmp_path) -> None:
    with open(path, "wb") as f:
        f.write(b"alpha, and more")


def _plant_other_owner(path: str, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give the cache a file of another user")
    with open(path, "wb") as f:
        f.write(b"alpha")
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize(
    "plant",
    [_plant_symlink, _plant_wrong_size, _plant_other_owner],
    ids=["symlink", "wrong-size", "other-owner"],
)
def test_an_entry_replaced_behind_the_index_is_fetched_again_never_linked(tmp_path, cas, plant):
    """What stands under an entry's name and is not the file the cache
    wrote (a link out, a file of another size or owner) is
    never linked into an exec root: the entry is fetched again."""
    store, client = cas
    files = {f"f{i:02}": (f"file {i}".encode(), False) for i in range(20)}
    files["m/a.txt"] = (b"alpha", False)
    files["m/b.txt"] = (b"beta", False)
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    tree = execroot.fetch_tree(client, root, cache)
    first = tmp_path / "first"
    first.mkdir()
    execroot.stage(tree, cache, client, str(first))
    entry = cache.path(key(digest_of(b"alpha")), False)
    os.unlink(entry)
    plant(entry, tmp_path)
    planted = os.lstat(entry).st_ino
    second = tmp_path / "second"
    second.mkdir()
    assert execroot.stage(tree, cache, client, str(second)) == 1
    staged = second / "m" / "a.txt"
    assert staged.read_bytes() == b"alpha"
    assert not staged.is_symlink()
    assert os.lstat(staged).st_ino != planted
    assert os.lstat(staged).st_uid == os.geteuid()
    assert (second / "m" / "b.txt").read_bytes() == b"beta"
    assert sorted(os.listdir(second)) == sorted([*(f"f{i:02}" for i in range(20)), "m"])
    cache.close()


def test_an_inode_with_too_many_links_is_copied(tmp_path, cas, monkeypatch):
    """EMLINK, from the kernel (one input staged as often as the
    filesystem allows links): a read-only copy of its own instead of one
    more link; the files after it in its directory are linked as usual.
    Each directory is handed to the C core once, however many of its
    files fail there: a lease of thousands of files past the link limit
    must cost each of them the same, not a walk of all those after it."""
    store, client = cas
    files = {f"d/a{i:03}.txt": (b"alpha", False) for i in range(300)}
    files["d/b.txt"] = (b"beta", False)
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    tree = execroot.fetch_tree(client, root, cache)
    cache.fetch(client, [(key(digest_of(b"alpha")), False), (key(digest_of(b"beta")), False)])
    entry = cache.path(key(digest_of(b"alpha")), False)
    links = tmp_path / "links"
    links.mkdir()
    for i in range(70_000):
        try:
            os.link(entry, links / str(i))
        except OSError as e:
            if e.errno != errno.EMLINK:
                raise
            break
    else:
        pytest.skip(f"{tmp_path}'s filesystem takes over 70,000 links to one inode")
    calls = []
    real = LocalCache.link_all

    def counted(self, dir_fd, entries):
        calls.append(len(entries))
        return real(self, dir_fd, entries)

    monkeypatch.setattr(LocalCache, "link_all", counted)
    exec_root = tmp_path / "root"
    exec_root.mkdir()
    execroot.stage(tree, cache, client, str(exec_root))
    assert calls == [301]
    inodes = set()
    for i in range(300):
        staged = exec_root / "d" / f"a{i:03}.txt"
        assert staged.read_bytes() == b"alpha"
        assert os.stat(staged).st_mode & 0o777 == 0o444
        inodes.add(os.stat(staged).st_ino)
    assert os.stat(entry).st_ino not in inodes
    assert len(inodes) == 300
    b_entry = cache.path(key(digest_of(b"beta")), False)
    assert os.stat(exec_root / "d" / "b.txt").st_ino == os.stat(b_entry).st_ino
    cache.close()
    shutil.rmtree(links)


class _CancelAfter:
    """A cancellation that is set once it has been looked at ``n`` times."""

    def __init__(self, n: int) -> None:
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_staging_stops_at_a_cancellation(tmp_path, cas):
    """A cancelled lease stops staging before its next directory: no input
    root, however large, keeps a worker busy past its cancellation."""
    store, client = cas
    files = {f"d{d:02}/f{f}": (_blob(d * 10 + f), False) for d in range(20) for f in range(5)}
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    tree = execroot.fetch_tree(client, root, cache)
    exec_root = tmp_path / "root"
    exec_root.mkdir()
    with pytest.raises(Cancelled, match="cancelled"):
        execroot.stage(tree, cache, client, str(exec_root), cancel=_CancelAfter(3))
    assert len(os.listdir(exec_root)) < 20
    whole = tmp_path / "whole"
    whole.mkdir()
    execroot.stage(tree, cache, client, str(whole), cancel=_CancelAfter(10_000))
    assert len(os.listdir(whole)) == 20
    cache.close()


def test_fetching_stops_at_a_cancellation(tmp_path, cas):
    """A cold cache fetches blob after blob, and a large one piece after
    piece: a cancellation stops it between two, and leaves no temporary
    file in the cache; a later lease fetches what is missing."""
    store, client = cas
    big = os.urandom(MAX_BATCH_BLOB * 3 + 5)
    files = {f"f{i:03}": (_blob(i), False) for i in range(50)}
    files["big.bin"] = (big, False)
    root = input_root(store, files)
    for looks in (0, 3, 30, 52, 53):
        # A cold cache each time: the blob (or piece) it stops at varies.
        cold = LocalCache(str(tmp_path / f"cas-{looks}"))
        with pytest.raises(Cancelled):
            tree = execroot.fetch_tree(client, root, cold, _CancelAfter(looks))
            exec_root = tmp_path / f"root-{looks}"
            exec_root.mkdir()
            execroot.stage(tree, cold, client, str(exec_root), cancel=_CancelAfter(looks))
        assert not [n for n in os.listdir(cold.root) if n.endswith(".tmp")]
        cold.close()
    cache = LocalCache(str(tmp_path / "cas"))
    whole = _staged(tmp_path / "whole", root, cache, client)
    assert (whole / "big.bin").read_bytes() == big
    assert (whole / "f049").read_bytes() == _blob(49)
    cache.close()


def test_copies_are_bounded_before_they_are_written(tmp_path, cas, monkeypatch):
    """Inputs within an output are copies, bytes on the worker's disk: past
    the lease's bound on output bytes, staging is refused before anything
    is fetched or written."""
    store, client = cas
    monkeypatch.setattr(execroot, "MAX_OUTPUT_BYTES", 5000)
    files = {f"out/f{i}": (_blob(i), False) for i in range(6)}  # 6,000 bytes
    files["src/a"] = (_blob(99), False)
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    tree = execroot.fetch_tree(client, root, cache)
    exec_root = tmp_path / "root"
    exec_root.mkdir()
    reads = store.stats.get("BatchReadBlobs", 0)
    with pytest.raises(execroot.LimitError, match="copy more than 5000 bytes"):
        execroot.stage(tree, cache, client, str(exec_root), ["out"])
    assert os.listdir(exec_root) == []
    assert store.stats.get("BatchReadBlobs", 0) == reads
    # Within the bound, they are staged.
    monkeypatch.setattr(execroot, "MAX_OUTPUT_BYTES", 6000)
    execroot.stage(tree, cache, client, str(exec_root), ["out"])
    assert (exec_root / "out" / "f5").read_bytes() == _blob(5)
    cache.close()


def test_a_large_blob_goes_from_bytestream_to_its_file(tmp_path, cas):
    store, client = cas
    data = os.urandom(MAX_BATCH_BLOB * 3 + 5)
    root = input_root(store, {"big.bin": (data, False), "small": (b"s", False)})
    cache = LocalCache(str(tmp_path / "cas"))
    exec_root = _staged(tmp_path / "root", root, cache, client)
    assert (exec_root / "big.bin").read_bytes() == data
    assert store.stats["Read"] == 1
    cache.close()


def test_a_warm_cache_asks_the_farm_nothing(tmp_path, cas):
    """Directories too come from the cache once fetched: a second lease of
    the same input root makes no call to the CAS."""
    store, client = cas
    files = {f"d{d}/f{f}": (_blob(d * 10 + f), False) for d in range(5) for f in range(10)}
    root = input_root(store, files)
    cache = LocalCache(str(tmp_path / "cas"))
    first = tmp_path / "first"
    first.mkdir()
    assert execroot.stage(execroot.fetch_tree(client, root, cache), cache, client, str(first)) == 50
    calls = sum(store.stats.values())
    tree = execroot.fetch_tree(client, root, cache)
    exec_root = tmp_path / "root"
    exec_root.mkdir()
    assert execroot.stage(tree, cache, client, str(exec_root)) == 0
    assert sum(store.stats.values()) == calls
    assert (exec_root / "d4" / "f9").read_bytes() == _blob(49)
    cache.close()


def test_the_cache_size_option(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "hermetic", "worker", "--help"],
        cwd="/",  # not the checkout: its hermetic/ has no compiled core
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "--cache-size" in out and "10 GiB" in out
    bad = subprocess.run(
        worker_argv("grpc://127.0.0.1:1", "x", str(tmp_path / "w"), "--cache-size", "-1"),
        cwd="/",
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and "--cache-size must be at least 0" in bad.stderr
    assert DEFAULT_CACHE_SIZE == 10 << 30


def test_small_files_count_at_what_they_take_on_disk(tmp_path, monkeypatch):
    """An entry counts its whole blocks and one more (its inode, name and
    index entry), and the cache holds at most MAX_ENTRIES files: many tiny
    blobs cannot fill the disk's inodes under a bound of gigabytes."""
    from hermetic.remote import cas as cas_module

    assert entry_cost(0) == entry_cost(8) - 4096 == 4096
    assert entry_cost(4096) == 8192 and entry_cost(4097) == 12288
    cache = LocalCache(str(tmp_path / "cas"), max_bytes=100 * C)
    _fill(cache, 150, size=8)
    assert cache.size <= 100 * C and len(cache) <= 200 and len(cache) < 150
    monkeypatch.setattr(cas_module, "MAX_ENTRIES", 40)
    _fill(cache, 50, size=9)
    assert len(cache) <= 40 and len(os.listdir(cache.root)) == len(cache)
    cache.close()


def test_within_an_output_is_decided_per_directory():
    """Which inputs are copies: at or below an output, by whole components;
    the exec root itself ('') counts for itself alone.  Asked in any order,
    the answers are the same (each directory's is remembered)."""
    cases = {
        "a/b": True,
        "a/b/x/y": True,
        "a/b/x": True,
        "c/z": True,
        "c": True,
        "": True,
        "a": False,
        "a/bc": False,
        "a/bc/d": False,
        "d/e": False,
        "e": False,
    }
    for order in (list(cases), list(reversed(cases))):
        outs = execroot._Outputs(["a/b", "c", ""])
        assert {p: outs.within(p) for p in order} == cases
