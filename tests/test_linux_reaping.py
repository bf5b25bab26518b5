"""hermetic's processes are reaped and signalled through pidfds only.

A library in the caller that reaps with ``waitpid(-1)`` (a SIGCHLD handler,
a zombie-reaping thread) must neither take hermetic's pid 1 away from it
nor be disturbed by it; and hermetic must never wait on or kill a pid
number, which another process may have taken since.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.linux

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: The caller: a thread reaps any child with waitpid(-1, WNOHANG) in a loop
#: while actions run (fresh spawns, standbys, a timeout, a setup failure);
#: a child of the caller's own, not hermetic's, must be left alone.
CALLER = textwrap.dedent(
    """
    import json, os, subprocess, threading
    from hermetic import (
        EnvSet, HermeticExecutor, HermeticSpecBuilder, PathSet, ResourceLimits, SandboxSpec,
    )
    stop = threading.Event()
    reaped = []

    def reaper():
        while not stop.is_set():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                continue
            if pid > 0:
                reaped.append(pid)

    mine = subprocess.Popen(["sleep", "600"])
    t = threading.Thread(target=reaper, daemon=True)
    t.start()
    spec = SandboxSpec(
        inputs=PathSet(tuple(HermeticSpecBuilder.toolchain_inputs())),
        environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
        resources=ResourceLimits.defaults(),
    )
    ex = HermeticExecutor.create(spec).unwrap()
    results = []
    for i in range(40):
        r = ex.execute(["sh", "-c", f"exit {i % 7}"]).unwrap()
        results.append([r.exit_code, r.usage.source("cpu_time")])
    slow = ex.execute(["sleep", "60"], timeout=0.5).unwrap()
    missing = ex.execute(["/nonexistent/tool"])
    ex.close()
    stop.set()
    t.join()
    alive = mine.poll() is None and mine.pid not in reaped
    mine.kill()
    mine.wait()
    print(json.dumps({
        "results": results,
        "timed_out": slow.timed_out,
        "missing": str(missing.unwrap_err()) if missing.is_err() else None,
        "reaped": reaped,
        "mine_alive": alive,
    }))
    """
)


def test_a_callers_waitpid_loop_neither_takes_nor_breaks_hermetics_children(runner):
    from conftest import _as_user_cmd, _user_env

    cmd = [sys.executable, "-c", CALLER]
    p = subprocess.run(
        _as_user_cmd(runner.user, cmd) if runner.user is not None else cmd,
        capture_output=True,
        text=True,
        env=_user_env(),
        cwd="/",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    # Every result is right, with the rusage of the reaped pid 1 ...
    assert got["results"] == [[i % 7, "rusage"] for i in range(40)]
    assert got["timed_out"] is True
    assert got["missing"] is not None and "/nonexistent/tool" in got["missing"]
    # ... the caller's loop never saw one of hermetic's processes ...
    assert got["reaped"] == []
    # ... and its own child was left alone.
    assert got["mine_alive"] is True


#: Where a pid number may still be used in C, and why it is safe there.
ALLOWED_C = {
    # pid 1 of a pid namespace: kill(-1) is every process of the namespace.
    ("csrc/linux/init.c", "HM_SYS2(SYS_kill, -1, sig);"),
    # pid 1 reaps its own children: no other thread shares its table.
    ("csrc/linux/init.c", "long pid = HM_SYS4(SYS_wait4, -1, &st, WNOHANG | __WALL, 0);"),
    ("csrc/linux/init.c", "while ((pid = HM_SYS4(SYS_wait4, -1, &st, __WALL, 0)) != -ECHILD) {"),
}

C_BY_NUMBER = re.compile(
    r"(?<![\w.])(kill|killpg|waitpid|wait4|wait3|wait|tkill|tgkill)\s*\("
    r"|\bSYS_(kill|tkill|tgkill|wait4)\b|\bP_(PID|PGID|ALL)\b"
)
PY_BY_NUMBER = {"kill", "killpg", "waitpid", "wait4", "wait3", "wait"}


def _c_code(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//.*", "", text)


def _py_calls(text: str) -> list[str]:
    """os.kill, os.waitpid, ... and os.waitid other than by P_PIDFD."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner, name = node.func.value, node.func.attr
        if not isinstance(owner, ast.Name) or owner.id not in ("os", "signal"):
            continue
        by_pidfd = (
            name == "waitid"
            and bool(node.args)
            and isinstance(node.args[0], ast.Attribute)
            and node.args[0].attr == "P_PIDFD"
        )
        if name in PY_BY_NUMBER or (name == "waitid" and not by_pidfd):
            found.append(f"line {node.lineno}: {owner.id}.{name}")
    return found


def test_no_wait_or_kill_by_pid_number_in_the_linux_backend():
    py = sorted(ROOT.glob("hermetic/platforms/linux/*.py"))
    c = sorted(ROOT.glob("csrc/linux/*.c"))
    assert len(py) > 5 and len(c) > 5
    found = []
    for path in py:
        rel = str(path.relative_to(ROOT))
        found += [f"{rel}: {call}" for call in _py_calls(path.read_text())]
    for path in c:
        rel = str(path.relative_to(ROOT))
        for line in _c_code(path.read_text()).splitlines():
            code = line.strip()
            if C_BY_NUMBER.search(code) and (rel, code) not in ALLOWED_C:
                found.append(f"{rel}: {code}")
    assert found == []
