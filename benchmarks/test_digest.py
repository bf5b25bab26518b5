"""Action digests: hashing a 10,000-file input tree cold, then unchanged.

The cold run reads and hashes every file (a fresh TreeHasher each round);
the unchanged run re-checks the tree through one directory snapshot per
directory (one fstatat per entry, in C) and reads nothing.  The cold run
is each group's baseline.  Files are 16 KiB (a typical source file) in
``digest-10k-16KiB``, 4 KiB in ``digest-10k-4KiB`` and 256 bytes in
``digest-10k-256B``, where reading costs least and the ratio is at its
worst: one fstatat per entry is the floor of the unchanged check (about
1.1 us for a distinct entry on the 2-core VM of the README's numbers),
taken on a few threads for a tree seen before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hermetic.core.digest import TreeHasher

FILES = 10_000


def _make_tree(file_size: int) -> str:
    root = tempfile.mkdtemp(prefix="hermetic-bench-tree-")
    for i in range(FILES):
        sub = os.path.join(root, f"d{i // 100:03d}")
        os.makedirs(sub, exist_ok=True)
        line = f"int f{i}(void) {{ return {i}; }}\n".encode()
        with open(os.path.join(sub, f"f{i:05d}.c"), "wb") as f:
            f.write((line * (file_size // len(line) + 1))[:file_size])
    return root


_SIZES = {"16KiB": 16384, "4KiB": 4096, "256B": 256}


@pytest.fixture(scope="module", params=list(_SIZES))
def tree(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    root = _make_tree(_SIZES[request.param])
    yield root, f"digest-10k-{request.param}"
    shutil.rmtree(root)


def test_digest_cold(benchmark: Any, tree: tuple[str, str]) -> None:
    root, benchmark.group = tree
    benchmark.extra_info["baseline"] = True
    benchmark.pedantic(lambda h: h.tree(root), setup=lambda: ((TreeHasher(),), {}), rounds=5)


def test_digest_unchanged(benchmark: Any, tree: tuple[str, str]) -> None:
    root, benchmark.group = tree
    hasher = TreeHasher()
    first = hasher.tree(root)
    reads = hasher.reads
    assert benchmark.pedantic(hasher.tree, args=(root,), rounds=5) == first
    assert hasher.reads == reads  # nothing was read again
