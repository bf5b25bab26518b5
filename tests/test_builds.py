"""Real builds through ``hermetic-launch``: zlib with CMake and Ninja, Lua with make.

Both projects are Debian's sources, built with their own build files
(tests/builds/sources.py says exactly which trees).  Each project is built
twice in the same absolute paths, one after the other: plainly, then with
every compile and link through the launcher (Lua with ``make -j8``: eight
launchers at once), and the two must leave byte-identical artifacts: every
ELF file (object files, libraries, executables, debug info included) and
every ``ar`` archive, with the same permission bits
(tests/builds/harness.py, ``artifacts``).  The plain build gets the
environment the sandbox gives its actions, read from inside it.

The spec: the toolchain read-only, zlib's source tree read-only and its
build directory, beside the tree (CMake's out-of-tree layout), writable;
Lua builds in its own tree, so the tree is the output.

Each build runs as root and as the unprivileged test user, with a daemon
of its own (a private HERMETIC_RUNTIME_DIR), which is stopped afterwards
and checked gone; the workspace is removed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from builds import harness, sources
from conftest import _as_user_cmd, process_gone, unavailable

pytestmark = [pytest.mark.linux, pytest.mark.slow]


@pytest.fixture(scope="module")
def tarballs() -> dict[str, str]:
    missing = harness.missing_tools()
    if missing:
        unavailable(f"the build tests need {', '.join(missing)} (.ci/run installs them)")
    try:
        return sources.fetch()
    except sources.Unavailable as e:
        unavailable(f"the sources to build: {e}")
        raise  # unreachable: unavailable() skips or fails


@pytest.fixture(
    params=[
        pytest.param("root", marks=pytest.mark.root),
        pytest.param("unprivileged", marks=pytest.mark.unprivileged),
    ]
)
def ws(request: pytest.FixtureRequest, tarballs: dict[str, str]) -> Iterator[harness.Workspace]:
    """A workspace whose builds run as root or as the test user."""
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the root mode needs the suite to run as root")
        workspace = harness.Workspace.create()
    elif os.geteuid() != 0:
        workspace = harness.Workspace.create()
    else:
        user = request.getfixturevalue("test_user")
        workspace = harness.Workspace.create(user, functools.partial(_as_user_cmd, user))
    try:
        yield workspace
    finally:
        pid = workspace.daemon_pid()
        workspace.remove()
        if pid is not None:
            assert process_gone(pid), f"the daemon {pid} outlived hermetic serve --stop"


def _differences(plain: dict[str, Any], launched: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {plain.get(name)} plainly, {launched.get(name)} through the launcher"
        for name in sorted(set(plain) | set(launched))
        if plain.get(name) != launched.get(name)
    ]


def _check_served(ws: harness.Workspace, at_least: int) -> None:
    """The daemon ran at least ``at_least`` actions (with ``hermetic run``
    standing in for the launcher there is no daemon, and each action was
    a process of its own)."""
    if not harness.native_launcher():
        return
    status = ws.daemon_status()
    assert status is not None, "no daemon answers in the build's runtime directory"
    assert int(status["served"]) >= at_least, status


def test_zlib_with_cmake_and_ninja_through_the_launcher(ws: harness.Workspace) -> None:
    src, build = ws.path("zlib"), ws.path("zlib-build")
    ws.unpack("zlib", "zlib")
    ws.fresh_dir("zlib-build")
    ws.write_spec(inputs=[src], outputs=[build])
    ws.read_action_env()

    harness.build_zlib(ws, src, build)
    plain = harness.artifacts(build)
    expected = (
        "libz.a",
        "libz.so.1.2.13",
        "example",
        "minigzip64",
        "CMakeFiles/zlib.dir/inflate.c.o",
    )
    for name in expected:
        assert name in plain, sorted(plain)

    ws.unpack("zlib", "zlib")
    ws.fresh_dir("zlib-build")
    harness.build_zlib(ws, src, build, launcher=harness.launcher_prefix(ws.spec_file))
    assert _differences(plain, harness.artifacts(build)) == []
    # Every compile and link went through the daemon: 34 objects; the
    # shared library and four programs (libz.a is made by ar).
    compiled = [n for n in plain if n.startswith("CMakeFiles/") and n.endswith(".c.o")]
    assert len(compiled) == 34, compiled
    _check_served(ws, len(compiled) + 5)

    # The source tree was an input: an action of the same spec cannot write it.
    p = ws.run_action(["/bin/sh", "-c", "echo x >> zlib.h"], cwd=src, check=False)
    assert p.returncode != 0 and "Read-only file system" in p.stderr, p


def test_lua_with_make_j8_through_the_launcher(ws: harness.Workspace) -> None:
    tree = ws.path("lua")
    ws.unpack("lua5.4", "lua")
    ws.write_spec(inputs=[], outputs=[tree])
    ws.read_action_env()

    harness.build_lua(ws, tree, jobs=2)
    plain = harness.artifacts(tree)
    for name in ("src/lua", "src/luac", "src/liblua.a", "src/lvm.o"):
        assert name in plain, sorted(plain)

    # Eight launchers at once, each action in its own sandbox of one spec.
    ws.unpack("lua5.4", "lua")
    harness.build_lua(ws, tree, jobs=8, launcher=harness.launcher_prefix(ws.spec_file))
    assert _differences(plain, harness.artifacts(tree)) == []
    objects = [n for n in plain if n.endswith(".o")]
    _check_served(ws, len(objects) + 2)  # and the links of lua and luac

    # What it built runs.
    p = ws.run(
        [os.path.join(tree, "src", "lua"), "-e", "print(_VERSION, 6 * 7)"],
        cwd=tree,
        env=ws.plain_env(),
    )
    assert p.stdout == "Lua 5.4\t42\n", p
