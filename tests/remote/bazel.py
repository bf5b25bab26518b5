"""Bazel as the farm's client: Debian's ``bazel-bootstrap`` (4.2.3), run with
a private ``--output_user_root`` so that its server, caches and outputs are
this test's alone; :meth:`Bazel.close` stops the server (``bazel
shutdown``, then by pid if it lingers) and removes every directory.

Bazel runs as whoever runs the suite (root in CI: Bazel 4.2.3 accepts
that for remote builds; its local ``linux-sandbox`` is not used).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BAZEL = "/usr/bin/bazel"


def _remove(path: str) -> None:
    """Remove a tree in which Bazel left read-only directories."""

    def fix(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(failed), stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
        except OSError:
            pass
        func(failed)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:
        shutil.rmtree(path, onerror=fix)


class Bazel:
    """One Bazel server for one workspace, in ``base`` (created here)."""

    def __init__(self, workspace: str, base: str) -> None:
        self.workspace = workspace
        self.base = base
        self.user_root = os.path.join(base, "user-root")
        self.home = os.path.join(base, "home")
        os.makedirs(self.user_root)
        os.makedirs(self.home)

    def argv(self, command: str, *args: str) -> list[str]:
        # The system rc (/etc/bazel/bazelrc) names Debian's install base and
        # is kept; a user's ~/.bazelrc is not read.  The server's JVM keeps
        # no performance data file (/tmp/hsperfdata_USER, which it would
        # leave behind).
        return [
            BAZEL,
            f"--output_user_root={self.user_root}",
            "--nohome_rc",
            "--host_jvm_args=-XX:-UsePerfData",
            command,
            *args,
        ]

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "USER": os.environ.get("USER", "root"),
        }

    def start(self, command: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        """``bazel COMMAND ARGS`` in the background, its output into ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                self.argv(command, *args),
                cwd=self.workspace,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def run(
        self, command: str, *args: str, timeout: float = 480
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, *args),
            cwd=self.workspace,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def bin(self, *parts: str) -> str:
        """A path under ``bazel-bin`` (the workspace's convenience link)."""
        return os.path.join(self.workspace, "bazel-bin", *parts)

    def server_pids(self) -> list[int]:
        pids = []
        for path in glob.glob(os.path.join(self.user_root, "*", "server", "server.pid.txt")):
            try:
                with open(path) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                continue
        return pids

    def close(self) -> list[int]:
        """Stop the server and remove everything; the pids that had to be
        killed because ``bazel shutdown`` did not stop them (none, normally)."""
        pids = self.server_pids()
        killed = []
        try:
            if pids:
                subprocess.run(
                    self.argv("shutdown"),
                    cwd=self.workspace,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=120,
                )
            for pid in pids:
                if _alive(pid, within=30):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    _alive(pid, within=30)
        finally:
            _remove(self.base)
        return killed


def _alive(pid: int, *, within: float) -> bool:
    """Whether ``pid`` still runs after up to ``within`` seconds (a bound
    proving it ended).  The server is not this process's child: it was
    daemonized by the Bazel client."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True
