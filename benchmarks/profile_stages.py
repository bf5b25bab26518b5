#!/usr/bin/env python3
"""Where one action's time goes, stage by stage.

    python benchmarks/profile_stages.py [--runs N] [-- CMD ...]

Runs CMD (default /bin/true) N times (default 300) under the benchmarks'
full spec (toolchain read-only, an output and a temp, every namespace,
/proc, /dev, private /tmp, seccomp, Landlock, default limits) with pid 1
stamping its stages (enum hm_stamp in csrc/hermetic.h), and prints the
median of each stage next to posix_spawn of the same command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from hermetic import EnvSet, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec
from hermetic.platforms import linux
from hermetic.platforms.linux import run as linux_run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("command", nargs="*", default=["/bin/true"])
    ns = parser.parse_args()
    root = tempfile.mkdtemp(prefix="hermetic-profile-")
    out, tmp = os.path.join(root, "out"), os.path.join(root, "tmp")
    os.mkdir(out)
    os.mkdir(tmp)
    spec = SandboxSpec(
        inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
        outputs=PathSet((out,)),
        temps=PathSet((tmp,)),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    prepared = linux.prepare(spec)
    stages: dict[str, list[float]] = {name: [] for name in linux_run.STAGES}
    totals = []
    for i in range(ns.runs + 20):
        profile: dict[str, float] = {}
        start = time.perf_counter()
        linux.execute(prepared, ns.command, profile=profile)
        total = time.perf_counter() - start
        if i >= 20:  # warm-up
            totals.append(total)
            for name, seconds in profile.items():
                stages[name].append(seconds)
    direct = []
    for _ in range(ns.runs):
        start = time.perf_counter()
        pid = os.posix_spawn(ns.command[0], ns.command, {"PATH": "/usr/bin:/bin"})
        os.waitpid(pid, 0)
        direct.append(time.perf_counter() - start)
    print(f"{' '.join(ns.command)}: medians of {ns.runs} runs (us)")
    for name, values in stages.items():
        print(f"  {statistics.median(values) * 1e6:8.0f}  {name}")
    print(f"  {statistics.median(totals) * 1e6:8.0f}  total, execute() from Python")
    print(f"  {statistics.median(direct) * 1e6:8.0f}  posix_spawn + waitpid of the same command")
    os.rmdir(out)
    os.rmdir(tmp)
    os.rmdir(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
