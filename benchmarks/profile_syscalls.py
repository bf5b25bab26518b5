#!/usr/bin/env python3
"""How many system calls one action makes, and who makes them.

    python benchmarks/profile_syscalls.py [--runs N] [--no-standby | --direct] [-- CMD ...]

Runs CMD (default /bin/true) under the benchmarks' full spec on one reused
executor, traced with ``strace -f``: once with N actions (default 200) and
once with none, and prints the difference per action, split by who made
each call:

- caller: the calling process's own threads (the interpreter, the standby
  thread, the cgroup v1 workers);
- helper: processes the caller's threads clone and wait for (a prepared
  mount namespace's build, a pooled network namespace);
- pid 1: each sandbox's init (its namespaces, mounts, the reaping);
- setup: the action's process before its exec (session, rlimits,
  capabilities, Landlock, seccomp);
- command: CMD itself from its exec on (what running it directly costs).

``--direct`` counts ``os.posix_spawn`` + ``waitpid`` of CMD instead (its
child shows as helper until its exec).

strace slows every call down by an order of magnitude, so this counts
calls; the times are benchmarks/profile_stages.py's and the suite's.
Needs strace (Debian: apt-get install strace).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROLES = ("caller", "helper", "pid 1", "setup", "command")
# "PID name(args" at the start of a line; resumed and signal lines are not calls.
_CALL = re.compile(r"^(\d+)\s+([a-z_0-9]+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. ([a-z_0-9]+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)(?: /\* (\d+) in strace's PID NS \*/)?")
#: Calls that make a process (or a thread: CLONE_THREAD).
_SPAWNING = ("clone", "clone3", "fork", "vfork")


def _run_traced(runs: int, command: list[str], mode: str, out: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    args = [sys.executable, os.path.abspath(__file__), "--child", str(runs)]
    if mode != "standby":
        args.append(f"--{mode}")
    subprocess.run(
        # --pidns-translation: a child's pid as strace sees it, where the
        # clone returns its pid in the sandbox's namespace.
        ["strace", "-f", "-qq", "-s", "0", "--pidns-translation", "-o", out, *args, "--", *command],
        check=True,
        env=env,
    )


def _child(runs: int, command: list[str], mode: str) -> None:
    if mode == "direct":
        for _ in range(20 + runs):
            os.waitpid(os.posix_spawn(command[0], command, {"PATH": "/usr/bin:/bin"}), 0)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest import Scratch, make_spec

    from hermetic import HermeticExecutor
    from hermetic.platforms.linux import prepared as linux

    if mode == "no-standby":
        linux.STANDBY = False
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-syscalls-"))
    try:
        dirs = [os.path.join(scratch, name) for name in ("src", "out", "tmp")]
        for path in dirs:
            os.mkdir(path)
        spec = make_spec(Scratch(scratch, *dirs))
        with HermeticExecutor.create(spec).unwrap() as ex:
            for _ in range(20):  # the pools, the threads and a standby in place
                ex.execute(command).unwrap()
            for _ in range(runs):
                ex.execute(command).unwrap()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def count(trace: str) -> dict[str, collections.Counter[str]]:
    """Calls per role and name in an ``strace -f --pidns-translation`` output file."""
    # One pass for the calls and who made which process, one to assign
    # roles: a child's first calls may come before its parent's clone
    # returns, and some clones never return (a standby's pid 1 killed while
    # its action is being set up).
    events: list[tuple[int, str]] = []
    made: dict[int, tuple[int, str, int]] = {}  # child: (parent, flags text, event index)
    # A child seen before its parent's call returned: the calls pending
    # then, any of which may be its parent (most recent last).
    candidates: dict[int, list[tuple[int, str, int]]] = {}
    resolved: set[tuple[int, int]] = set()  # (parent, event index) of calls that returned
    exec_at: dict[int, int] = {}  # pid: index of its first successful execve
    pending: dict[int, tuple[str, str, int]] = {}  # in the order the calls began
    seen: set[int] = set()

    def finished(pid: int, name: str, text: str, index: int) -> None:
        m = _RESULT.search(text)
        if m is None:
            return
        result = int(m.group(2) or m.group(1))
        if name in _SPAWNING and result > 0:
            flags = text + (" CLONE_VFORK" if name == "vfork" else "")
            made[result] = (pid, flags, index)
            resolved.add((pid, index))
        elif name == "execve" and result == 0:
            exec_at.setdefault(pid, index)

    with open(trace) as f:
        for line in f:
            m = _CALL.match(line)
            if m is not None:
                pid, name, rest = int(m.group(1)), m.group(2), m.group(3)
                if pid not in seen:
                    seen.add(pid)
                    candidates[pid] = [
                        (q, flags + (" CLONE_VFORK" if call == "vfork" else ""), at)
                        for q, (call, flags, at) in pending.items()
                        if call in _SPAWNING
                    ]
                events.append((pid, name))
                if rest.endswith("<unfinished ...>"):
                    pending.pop(pid, None)
                    pending[pid] = (name, rest, len(events) - 1)
                else:
                    finished(pid, name, rest, len(events) - 1)
                continue
            m = _RESUMED.match(line)
            if m is not None:
                pid = int(m.group(1))
                name, start, at = pending.pop(pid, (m.group(2), "", len(events) - 1))
                finished(pid, name, start + m.group(3), at)

    def _guess(calls: list[tuple[int, str, int]]) -> tuple[int, str, int] | None:
        # A call that returned made another process: of the others, the
        # latest (a clone that never returns: pid 1 killed during its
        # action's setup).
        pool = [c for c in calls if (c[0], c[2]) not in resolved] or calls
        return pool[-1] if pool else None

    roles: dict[int, str] = {}

    def role_at(pid: int, index: int) -> str:
        """``pid``'s role at event ``index`` (setup and helpers become
        the command at their exec)."""
        r = role(pid)
        if r in ("setup", "helper") and index > exec_at.get(pid, len(events)):
            return "command"
        return r

    def role(pid: int) -> str:
        if pid not in roles:
            origin = made.get(pid) or _guess(candidates.get(pid, []))
            if origin is None:
                roles[pid] = "caller"  # the traced interpreter
            else:
                parent, flags, at = origin
                mine = role_at(parent, at)
                if "CLONE_THREAD" in flags or mine in ("helper", "command"):
                    roles[pid] = mine
                elif mine == "caller":
                    roles[pid] = "helper" if "CLONE_VFORK" in flags else "pid 1"
                else:  # made by pid 1 (the action), or by the setup
                    roles[pid] = "setup" if mine == "pid 1" else "command"
        return roles[pid]

    calls: dict[str, collections.Counter[str]] = {r: collections.Counter() for r in ROLES}
    for index, (pid, name) in enumerate(events):
        calls[role_at(pid, index)][name] += 1
    return calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--no-standby", action="store_true")
    how.add_argument("--direct", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", default=["/bin/true"])
    ns = parser.parse_args()
    mode = "direct" if ns.direct else "no-standby" if ns.no_standby else "standby"
    if ns.child is not None:
        _child(ns.child, ns.command, mode)
        return 0
    if shutil.which("strace") is None:
        print("needs strace (apt-get install strace)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hermetic-strace-") as d:
        traced = {}
        for runs in (0, ns.runs):
            path = os.path.join(d, f"trace-{runs}")
            _run_traced(runs, ns.command, mode, path)
            traced[runs] = count(path)
    what = {"direct": "posix_spawn", "no-standby": "without standby", "standby": "with standbys"}
    print(f"{' '.join(ns.command)}, {what[mode]}: system calls per action ({ns.runs} actions)")
    total = 0.0
    for r in ROLES:
        diff = traced[ns.runs][r].copy()
        diff.subtract(traced[0][r])
        per = {k: v / ns.runs for k, v in diff.items() if v > 0}
        n = sum(per.values())
        total += n
        top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:8])
        print(f"  {n:6.1f}  {r:8s} {top}")
    print(f"  {total:6.1f}  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
