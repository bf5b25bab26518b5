"""Building zlib (CMake + Ninja) and Lua (make) plainly and through the launcher.

Shared by tests/test_builds.py and benchmarks/test_build_times.py.  A build is
described by a ``Workspace``: the directory both builds of a comparison use
one after the other (same absolute paths, so debug info and every path
the compiler records can match), the launcher's spec file and its private
runtime directory.  Every command can run as another user through
``wrap`` (the tests' ``_as_user_cmd``).

What a comparison compares, ``artifacts()``: every ELF file (object files,
shared libraries, executables) and every ``ar`` archive in the tree, by
path, content digest and permission bits.  CMake's and Ninja's own files
(which name the launcher, or hold timings) are not artifacts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from builds import sources

#: The environment's bin/, where pip installs hermetic, hermetic-launch,
#: and the cmake and ninja of the test extra.
BIN = os.path.dirname(sys.executable)
LAUNCH = os.path.join(BIN, "hermetic-launch")
HERMETIC = os.path.join(BIN, "hermetic")
CMAKE = os.path.join(BIN, "cmake")
NINJA = os.path.join(BIN, "ninja")
MAKE = "/usr/bin/make"
GCC = "/usr/bin/gcc"
#: PATH inside the sandbox (the toolchain's directories).
SANDBOX_PATH = "/usr/bin:/bin"

#: Upstream's CC for Lua (src/Makefile), kept so both builds compile the same way.
LUA_CC = "gcc -std=gnu99"
#: -g on top of upstream's -O2: debug info, which records paths, must match too.
LUA_MAKE_VARS = ("MYCFLAGS=-g",)
#: zlib: debug info too; CMake 4 needs the policy floor for zlib 1.2's
#: ``cmake_minimum_required(VERSION 2.4.4)`` (CMake 3 ignores it).
ZLIB_CMAKE_ARGS = (
    "-G",
    "Ninja",
    "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
    "-DCMAKE_POLICY_VERSION_MINIMUM=3.5",
)

Wrap = Callable[[Sequence[str]], list[str]]


def _no_wrap(argv: Sequence[str]) -> list[str]:
    return list(argv)


def missing_tools() -> list[str]:
    """The tools a build needs that this environment lacks."""
    return [p for p in (CMAKE, NINJA, MAKE, GCC) if not os.access(p, os.X_OK)]


#: The native launcher's sources in this checkout: where they are, the
#: package's build installs ``hermetic-launch`` beside ``hermetic``.
LAUNCH_SOURCES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "csrc", "launch"
)


def native_launcher() -> bool:
    """Whether builds go through ``hermetic-launch`` (and so a daemon).

    Without it in the checkout, ``hermetic run --spec FILE --`` stands in
    (the same semantics, an interpreter per action).  With it, a missing
    ``hermetic-launch`` is an installation that went wrong, never a reason
    to fall back."""
    if os.access(LAUNCH, os.X_OK):
        return True
    if os.path.isdir(LAUNCH_SOURCES):
        raise AssertionError(
            f"{LAUNCH} is missing, though the package builds it from {LAUNCH_SOURCES}"
        )
    return False


def launcher_prefix(spec_file: str) -> list[str]:
    """The words a build puts before a compiler command."""
    if native_launcher():
        return [LAUNCH]
    return [HERMETIC, "run", "--spec", spec_file, "--"]


@dataclasses.dataclass
class Workspace:
    """One comparison's directory, owned by the user the builds run as."""

    root: str
    uid: int
    gid: int
    wrap: Wrap = _no_wrap
    #: A private runtime directory for the launcher's daemon (mode 0700).
    runtime: str = ""
    spec_file: str = ""
    outputs: list[str] = dataclasses.field(default_factory=list)
    #: The environment of the sandbox's actions, read from inside it.
    action_env: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, user: Any = None, wrap: Wrap = _no_wrap) -> Workspace:
        root = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-builds-"))
        os.chmod(root, 0o755)
        uid = user.pw_uid if user is not None else os.geteuid()
        gid = user.pw_gid if user is not None else os.getegid()
        os.chown(root, uid, gid)
        ws = cls(root, uid, gid, wrap)
        ws.runtime = os.path.join(root, "runtime")
        os.mkdir(ws.runtime, 0o700)
        os.chown(ws.runtime, uid, gid)
        return ws

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def give(self, top: str) -> None:
        """``top`` and everything in it to the build's user.  Also for root:
        a tarball's files keep their packer's owner, and the sandbox's root
        has no capability to write into another user's directory."""
        os.chown(top, self.uid, self.gid, follow_symlinks=False)
        for base, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(base, name), self.uid, self.gid, follow_symlinks=False)

    def unpack(self, package: str, name: str) -> str:
        """A fresh tree of ``package`` at ``name`` (an earlier one removed)."""
        dest = self.path(name)
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        sources.unpack(package, sources.fetch()[package], dest)
        self.give(dest)
        return dest

    def fresh_dir(self, name: str) -> str:
        dest = self.path(name)
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        os.mkdir(dest, 0o755)
        self.give(dest)
        return dest

    def write_spec(self, inputs: Sequence[str], outputs: Sequence[str]) -> str:
        """The launcher's spec: the toolchain and ``inputs`` read-only,
        ``outputs`` writable, the library's default environment and limits."""
        from hermetic import HermeticSpecBuilder, PathSet, SandboxSpec

        spec = SandboxSpec(
            inputs=PathSet((*HermeticSpecBuilder.toolchain_inputs(), *inputs)),
            outputs=PathSet(tuple(outputs)),
        )
        env = spec.environment.with_var("PATH", SANDBOX_PATH)
        spec = dataclasses.replace(spec, environment=env)
        self.outputs = list(outputs)
        self.spec_file = self.path("spec.json")
        with open(self.spec_file, "w") as f:
            f.write(spec.to_json())
        os.chmod(self.spec_file, 0o644)
        return self.spec_file

    # -- running ------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: dict[str, str],
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as the build's user with umask 022 (as in the sandbox);
        with ``check``, a failure raises with the output's tail."""
        p = subprocess.run(
            self.wrap(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            umask=0o022,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {cwd} exited {p.returncode}:\n"
                f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            )
        return p

    def launcher_env(self) -> dict[str, str]:
        """The environment of a build through the launcher: the plain
        build's, plus the spec and the daemon's runtime directory."""
        base = self.plain_env() if self.action_env else {"PATH": f"{BIN}:/usr/bin:/bin"}
        return {**base, "HERMETIC_SPEC": self.spec_file, "HERMETIC_RUNTIME_DIR": self.runtime}

    def run_action(
        self, argv: Sequence[str], *, cwd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """One action through the launcher, with the spec."""
        prefix = launcher_prefix(self.spec_file)
        return self.run([*prefix, *argv], cwd=cwd, env=self.launcher_env(), check=check)

    def read_action_env(self) -> dict[str, str]:
        """The environment the sandbox gives an action, read from inside
        (``env -0`` through the launcher, in the first output: the daemon
        runs an action only in a directory the sandbox shows)."""
        p = self.run_action(["/usr/bin/env", "-0"], cwd=self.outputs[0])
        pairs = (item.partition("=") for item in p.stdout.split("\0") if item)
        self.action_env = {k: v for k, _, v in pairs}
        assert self.action_env.get("PATH") == SANDBOX_PATH, self.action_env
        return self.action_env

    def plain_env(self) -> dict[str, str]:
        """The environment of a plain build: the one the sandbox gives its
        actions (so the compilers see the same), with this environment's
        bin/ in front of PATH for cmake and ninja."""
        assert self.action_env, "read_action_env() first"
        return {**self.action_env, "PATH": f"{BIN}:{self.action_env['PATH']}"}

    def daemon_pid(self) -> int | None:
        """The pid of the runtime directory's daemon, if one ever started."""
        try:
            with open(os.path.join(self.runtime, "serve.lock")) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def stop_daemon(self) -> None:
        """Stop the runtime directory's daemon, if one runs, and wait for it."""
        if not os.path.exists(os.path.join(self.runtime, "serve.sock")):
            return
        env = {"PATH": "/usr/bin:/bin", "HERMETIC_RUNTIME_DIR": self.runtime}
        subprocess.run(
            self.wrap([HERMETIC, "serve", "--stop"]),
            env=env,
            cwd="/",
            capture_output=True,
            timeout=120,
        )

    def daemon_status(self) -> dict[str, Any] | None:
        env = {"PATH": "/usr/bin:/bin", "HERMETIC_RUNTIME_DIR": self.runtime}
        p = subprocess.run(
            self.wrap([HERMETIC, "serve", "--status"]),
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
        )
        if p.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(p.stdout)
        return status

    def remove(self) -> None:
        self.stop_daemon()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the two builds ---------------------------------------------------------


def build_zlib(ws: Workspace, src: str, build: str, *, launcher: Sequence[str] = ()) -> None:
    """Configure ``src`` into ``build`` with CMake for Ninja, then build it;
    with ``launcher``, every compile and link goes through it
    (``CMAKE_C_COMPILER_LAUNCHER``, and ``CMAKE_C_LINKER_LAUNCHER`` for the
    links; ``ar`` is no compiler and runs plainly)."""
    args = [CMAKE, "-S", src, "-B", build, *ZLIB_CMAKE_ARGS]
    env = ws.plain_env()
    if launcher:
        words = ";".join(launcher)
        args += [f"-DCMAKE_C_COMPILER_LAUNCHER={words}", f"-DCMAKE_C_LINKER_LAUNCHER={words}"]
        env = ws.launcher_env()
    ws.run(args, cwd=build, env=env)
    ws.run([NINJA, "-C", build], cwd=build, env=env)


def build_lua(ws: Workspace, tree: str, *, jobs: int, launcher: Sequence[str] = ()) -> None:
    """Lua's own makefile, in its tree (``make linux``), with ``jobs`` jobs;
    with ``launcher``, ``CC`` starts with it."""
    cc = " ".join([*launcher, LUA_CC])
    env = ws.launcher_env() if launcher else ws.plain_env()
    ws.run(
        [MAKE, f"-j{jobs}", "linux", f"CC={cc}", *LUA_MAKE_VARS],
        cwd=tree,
        env=env,
    )


# -- what is compared --------------------------------------------------------

_MAGICS = (b"\x7fELF", b"!<arch>\n")


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def artifacts(tree: str) -> dict[str, tuple[str, int]]:
    """Every ELF file and ``ar`` archive under ``tree`` (relative path ->
    sha256, permission bits), links not followed."""
    found: dict[str, tuple[str, int]] = {}
    for base, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            with open(path, "rb") as f:
                if not f.read(8).startswith(_MAGICS):
                    continue
            found[os.path.relpath(path, tree)] = (_digest(path), stat.S_IMODE(st.st_mode))
    return found


def tree_manifest(tree: str) -> dict[str, tuple[str, int]]:
    """Every regular file under ``tree`` with its digest and mode: to show a
    read-only input was left as it was."""
    found: dict[str, tuple[str, int]] = {}
    for base, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(path, tree)] = (_digest(path), stat.S_IMODE(st.st_mode))
    return found
