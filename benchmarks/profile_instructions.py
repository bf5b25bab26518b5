#!/usr/bin/env python3
"""Instructions an executor's creation costs, stage by stage (callgrind).

    python benchmarks/profile_instructions.py [--runs N]

Counts, with ``valgrind --tool=callgrind``, the instructions of each stage
of planning a sandbox for the benchmarks' full spec, the part of
``create()`` that runs in the calling process before any sandbox exists:

- the op list (``linux.plan.build_ops``: the mounts, links and nodes);
- the Landlock rules (``linux.prepared._landlock_plan``);
- the seccomp program (``Prepared._filter``, built in C);
- all of ``Prepared`` (the above, the prepared namespace's plan, the
  marshalling for C), without building the namespace.

Each stage runs N times (default 50) in one process and not at all in
another (both after one warm-up call); the difference over N is its cost
per call: the same on a quiet and on a busy machine, unlike a timing.
Sandboxes themselves cannot run under valgrind (pid 1 shares the caller's
memory), so the capabilities are probed before, outside it.  Needs
valgrind (Debian: apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

STAGES = ("op list", "Landlock rules", "seccomp program", "Prepared, in all")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _stages(spec: Any) -> dict[str, Callable[[], object]]:
    from hermetic.platforms import linux
    from hermetic.platforms.linux import memory as linux_memory
    from hermetic.platforms.linux import plan as linux_plan
    from hermetic.platforms.linux import prepared as linux_prepared

    def prepared() -> None:
        linux.prepare(spec).close()

    p = linux.prepare(spec)
    caps = linux.capabilities()
    return {
        "op list": lambda: linux_plan.build_ops(spec, spec.workdir, make_nodes=not p.userns),
        "Landlock rules": lambda: linux_prepared._landlock_plan(
            spec, caps, True, linux_memory.CMemory(), p.ops
        ),
        "seccomp program": lambda: p._filter(()),
        "Prepared, in all": prepared,
    }


def _child(stage: str, runs: int, caps_file: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest import Scratch, make_spec

    from hermetic.platforms.linux import prepared as linux

    with open(caps_file, "rb") as f:
        caps = pickle.load(f)
    linux.capabilities = lambda: caps  # probed outside valgrind
    linux.PRIME_TEMPLATE = False  # a helper process: not under valgrind
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-callgrind-"))
    try:
        dirs = [os.path.join(scratch, name) for name in ("src", "out", "tmp")]
        for path in dirs:
            os.mkdir(path)
        run = _stages(make_spec(Scratch(scratch, *dirs)))[stage]
        run()
        for _ in range(runs):
            run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _instructions(stage: str, runs: int, caps_file: str) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            stage,
            str(runs),
            caps_file,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child is not None:
        _child(ns.child[0], int(ns.child[1]), ns.child[2])
        return 0
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    from hermetic.platforms import linux

    with tempfile.TemporaryDirectory(prefix="hermetic-callgrind-") as d:
        caps_file = os.path.join(d, "caps")
        with open(caps_file, "wb") as f:
            pickle.dump(linux.capabilities(), f)
        print(f"instructions per call, planning the benchmarks' full spec ({ns.runs} calls)")
        for stage in STAGES:
            n = _instructions(stage, ns.runs, caps_file) - _instructions(stage, 0, caps_file)
            print(f"  {n / ns.runs / 1e6:7.2f} M  {stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
