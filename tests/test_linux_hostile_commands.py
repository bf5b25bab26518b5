"""Hostile command lines against a long-lived executor (a farm worker's,
the launcher daemon's): what an action's argv and environment cost must be
bounded before anything is built from them, and what the executor keeps of
them bounded in bytes.

An environment or argument execve would refuse (E2BIG) is refused first,
naming it; a PATH's directories are searched once each and at most
MAX_SEARCH_DIRS of them; a command name longer than any file name is not
multiplied by the PATH; the caches of environments and command names stay
within CACHE_BYTES whatever the actions give.
"""

from __future__ import annotations

import dataclasses
import os
import resource

import pytest
from test_linux_isolation import spec_for

from hermetic import HermeticExecutor, ProcessPolicy, SandboxError, SpecError
from hermetic.platforms.linux import prepared as linux_prepared
from hermetic.platforms.linux.run import MAX_ARG_STRLEN

pytestmark = pytest.mark.linux


@pytest.fixture
def ex(scratch):
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    with HermeticExecutor.create(spec_for(outputs=[out])).unwrap() as executor:
        yield executor


def test_an_environment_execve_would_refuse_is_refused_naming_the_variable(ex):
    secret = "s" * MAX_ARG_STRLEN
    r = ex.execute(["/bin/true"], env={"BIG": secret})
    assert isinstance(r.error, SpecError), r
    assert "'BIG'" in str(r.error) and secret not in str(r.error)
    # Under the bound per variable, over ARG_MAX together.
    many = {
        f"V{i}": "v" * (MAX_ARG_STRLEN - 100)
        for i in range(os.sysconf("SC_ARG_MAX") // MAX_ARG_STRLEN + 2)
    }
    r = ex.execute(["/bin/true"], env=many)
    assert isinstance(r.error, SpecError) and "ARG_MAX" in str(r.error), r
    r = ex.execute(["/bin/echo", "a" * MAX_ARG_STRLEN])
    assert isinstance(r.error, SpecError) and r.error.field == "argv[1]", r
    # Counted in bytes, not characters: a quarter as many 4-byte ones.
    r = ex.execute(["/bin/echo", "\U0001f600" * (MAX_ARG_STRLEN // 4)])
    assert isinstance(r.error, SpecError) and r.error.field == "argv[1]", r
    r = ex.execute(["/bin/true"], env={"WIDE": "\u00e9" * (MAX_ARG_STRLEN // 2)})
    assert isinstance(r.error, SpecError) and "'WIDE'" in str(r.error), r
    # The largest that fits runs.
    ok = ex.execute(["/bin/sh", "-c", "echo ${#BIG}"], env={"BIG": "b" * (MAX_ARG_STRLEN - 6)})
    assert ok.unwrap().stdout == f"{MAX_ARG_STRLEN - 6}\n".encode()


def _exact_size(args: list[str], env: dict[str, str]) -> int:
    """argv and the environment as execve counts them (strings with their
    NULs, and a pointer each), without the program's path."""
    size = sum(len(a.encode()) + 1 + 8 for a in args)
    return size + sum(len(k.encode()) + len(v.encode()) + 2 + 8 for k, v in env.items())


def test_what_is_refused_follows_the_stack_limit_and_execve_counts_the_path(ex):
    """ARG_MAX is a quarter of RLIMIT_STACK, read at each execution: a
    command line within it before the caller lowers its stack limit gets
    the clear error after, not execve's E2BIG.  And execve also counts the
    program's path: a command line that leaves it no room is refused."""
    env = ex._prepared.env
    chunk = "c" * (MAX_ARG_STRLEN - 1)
    args = ["/bin/true", *[chunk] * 4]  # 512 KiB
    assert ex.execute(args).unwrap().exit_code == 0
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, hard))  # ARG_MAX 256 KiB
    try:
        r = ex.execute(args)
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))
    assert isinstance(r.error, SpecError) and "ARG_MAX 262144" in str(r.error), r
    # Fill ARG_MAX exactly, as argv and the environment count alone: the
    # program's path no longer fits.
    arg_max = os.sysconf("SC_ARG_MAX")
    args = ["/bin/true"]
    while _exact_size(args, env) + MAX_ARG_STRLEN + 8 < arg_max:
        args.append(chunk)
    args.append("l" * (arg_max - _exact_size(args, env) - 1 - 8))
    assert _exact_size(args, env) == arg_max
    r = ex.execute(args)
    assert isinstance(r.error, SpecError) and "program's path" in str(r.error), r
    # With room for the path and a pointer, it runs.
    args[-1] = args[-1][: -(4096 + 8)]
    assert ex.execute(args).unwrap().exit_code == 0


def test_a_long_command_name_is_not_multiplied_by_the_path(ex):
    """20,000 empty PATH entries and a 20,000-byte command name were 400 MB
    of candidate paths per action; now one directory is searched once, and
    the name fails as execvp's would."""
    name = "x" * 20_000
    r = ex.execute([name], env={"PATH": ":" * 20_000 + "/usr/bin"})
    assert isinstance(r.error, SandboxError) and r.error.stage == "exec", r
    prepared = ex._prepared
    assert len(prepared.exec_candidates(name, ":" * 20_000 + "/usr/bin")) == 1
    # Repeated directories are searched once; order is kept.
    assert prepared.exec_candidates("true", "/bin::/bin:/usr/bin::") == (
        "/bin/true",
        "./true",
        "/usr/bin/true",
    )


def test_a_path_of_too_many_directories_is_refused(ex):
    dirs = ":".join(f"/d{i}" for i in range(linux_prepared.MAX_SEARCH_DIRS + 1))
    r = ex.execute(["true"], env={"PATH": dirs})
    assert isinstance(r.error, SpecError) and "PATH has" in str(r.error), r
    fits = ":".join(f"/d{i}" for i in range(linux_prepared.MAX_SEARCH_DIRS - 1))
    ok = ex.execute(["true"], env={"PATH": fits + ":/bin"})
    assert ok.unwrap().exit_code == 0


def test_what_an_executor_keeps_of_its_actions_is_bounded_in_bytes(ex, monkeypatch):
    """Each distinct environment is marshalled for C and kept for the next
    action that has it, up to a budget: actions that each bring a new large
    environment do not grow the executor past it."""
    monkeypatch.setattr(linux_prepared, "CACHE_BYTES", 400 << 10)
    prepared = ex._prepared
    for i in range(12):
        env = {"PATH": "/usr/bin:/bin", "N": str(i), "PAD": "p" * (40 << 10)}
        assert ex.execute(["/bin/true"], env=env).unwrap().exit_code == 0
    assert prepared._cache_bytes <= 400 << 10
    kept = [e for e in prepared._c_cache if e[0] == "envp"]
    assert 1 <= len(kept) <= 2, len(kept)
    # An environment larger than one entry's share is never kept.
    before = dict(prepared._c_cache)
    huge = {f"H{i}": "h" * (100 << 10) for i in range(4)}
    assert ex.execute(["/bin/true"], env={"PATH": "/bin", **huge}).unwrap().exit_code == 0
    assert [e for e in prepared._c_cache if e not in before and e[0] == "envp"] == []


def test_many_small_variables_are_counted_at_what_they_take(ex, monkeypatch):
    """Each string costs its object besides its characters: environments of
    many tiny distinct variables are counted at that, not at their length."""
    monkeypatch.setattr(linux_prepared, "CACHE_BYTES", 400 << 10)
    prepared = ex._prepared
    for i in range(8):
        env = {"PATH": "/bin", **{f"V{j}_{i}": "x" for j in range(600)}}
        assert ex.execute(["/bin/true"], env=env).unwrap().exit_code == 0
    assert prepared._cache_bytes <= 400 << 10
    kept = [e for e in prepared._c_cache if e[0] == "envp"]
    assert len(kept) <= 2, len(kept)


def test_a_program_per_command_is_counted_at_its_size(scratch, monkeypatch):
    """Under allow_exec=False each command gets a seccomp program and
    Landlock rules of its own, kept for the next action that runs it: each
    is counted at what it takes (the program's own length, not a 32 KiB
    buffer)."""
    out = os.path.join(scratch, "out")
    os.mkdir(out)
    for i in range(3):
        os.mkdir(os.path.join(out, f"d{i}"))
        os.symlink("/bin/true", os.path.join(out, f"d{i}", "gen"))
    spec = dataclasses.replace(spec_for(outputs=[out]), process=ProcessPolicy(allow_exec=False))
    with HermeticExecutor.create(spec).unwrap() as executor:
        prepared = executor._prepared
        before = prepared._cache_bytes
        for i in range(3):
            r = executor.execute(["./gen"], cwd=os.path.join(out, f"d{i}")).unwrap()
            assert r.exit_code == 0, r.stderr
        entries = [v for k, v in prepared._c_cache.items() if k[0] == "exec+filter"]
        assert len(entries) == 3
        for (_, prog, length, _, _), _mem in entries:
            assert len(bytes(prog)) == 8 * length < 8 * linux_prepared.SECCOMP_MAX
        assert prepared._cache_bytes - before >= sum(m.cost for _, m in entries)
