"""Landlock rules for a spec: the same semantics as the mount layout.

Two uses (csrc/linux/landlock.c applies the rules in the action, after
``no_new_privs`` and before seccomp):

- **Additional layer** under namespaces: the rules restate the mount
  layout (inputs read and execute, outputs and temps read-write, the
  sandbox's own /dev, /proc and /tmp), so a mistake in one layer is not
  enough to reach what the spec does not declare.  Landlock grants rights
  to whole subtrees and cannot take them back below, so an input under the
  private /tmp (writable as a whole) is protected by its read-only mount
  alone.
- **Landlock-only** where user namespaces are forbidden (inside Docker's
  default seccomp profile, Ubuntu 24.04's AppArmor restriction): there are
  no mounts, the action sees the host's tree at the same paths, and
  Landlock alone decides what it may read, write and execute.  Landlock
  does not hide names (``stat`` of an undeclared path still works; opening
  it gives EACCES), does not cover UDP or Unix-socket connects (seccomp
  refuses ``socket()`` instead), and needs ABI 6 to keep signals and
  abstract Unix sockets inside the sandbox.

Per ABI (``layer_abi``, ``handled_fs``; the kernel reports its own):

- ABI 1 (Linux 5.13-5.18) has no REFER right: every rename or link across
  directories fails with EXDEV under any ruleset, in the outputs too.  Under
  namespaces the mounts already make inputs read-only and hide the rest, so
  there the layer is left out rather than break ``mv out/a out/b/``;
  Landlock-only needs ABI 6 and refuses anything lower.
- ABI 2 adds REFER (granted on outputs and temps), ABI 3 TRUNCATE, ABI 4 TCP
  bind and connect (handled without namespaces), ABI 5 device ioctls, ABI 6
  the signal and abstract-socket scopes.
- ABI 9 (Linux 7.1) adds RESOLVE_UNIX: connecting or sending to a pathname
  Unix socket.  It is granted on outputs and temps only, never on inputs or
  the private /tmp (a socket the action makes there is its own domain's,
  which the kernel allows without a rule).  Before ABI 9 no layer refuses
  connecting to a host process's socket under an input (docs/known-limits.md).

FIFOs: WRITE_FILE covers opening one for writing, and inputs never get it,
but a read-only mount does not refuse it.  Under the private /tmp, whose
rule grants WRITE_FILE to its whole subtree (and under an output or temp
likewise), an input holding a FIFO or a socket is refused when the spec is
prepared (``refuse_ipc_beneath_writable``), as is an input that is itself
a FIFO or a socket (``refuse_ipc_inputs``).  A FIFO a host process makes
there after that is not seen.

``allow_exec=False``: the seccomp filter lets through the execve whose path
pointer is the plan's, which an action can point at another path after its
own exec, so the boundary is here: no rule grants EXECUTE but the ones on
the action's own program and the interpreters the kernel opens to start it
(``exec_files``: a script's ``#!`` interpreter, an ELF's loader).  Without
a usable layer (no Landlock, ABI 1 under namespaces) such a spec fails
closed.  It limits which files the kernel executes, not which code runs: the
loader, given another readable program, maps and runs it, as the action
could by mapping it itself.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from hermetic._native import lib
from hermetic.core import tree
from hermetic.core.errors import SpecError
from hermetic.core.paths import is_within
from hermetic.core.spec import SandboxSpec

# LANDLOCK_ACCESS_FS_* (include/uapi/linux/landlock.h), read from the compiled
# core, and the ABI that introduced each.
EXECUTE: int = lib.HM_LANDLOCK_ACCESS_FS_EXECUTE
WRITE_FILE: int = lib.HM_LANDLOCK_ACCESS_FS_WRITE_FILE
READ_FILE: int = lib.HM_LANDLOCK_ACCESS_FS_READ_FILE
READ_DIR: int = lib.HM_LANDLOCK_ACCESS_FS_READ_DIR
REMOVE_DIR: int = lib.HM_LANDLOCK_ACCESS_FS_REMOVE_DIR
REMOVE_FILE: int = lib.HM_LANDLOCK_ACCESS_FS_REMOVE_FILE
MAKE_CHAR: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_CHAR
MAKE_DIR: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_DIR
MAKE_REG: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_REG
MAKE_SOCK: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_SOCK
MAKE_FIFO: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_FIFO
MAKE_BLOCK: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_BLOCK
MAKE_SYM: int = lib.HM_LANDLOCK_ACCESS_FS_MAKE_SYM
REFER: int = lib.HM_LANDLOCK_ACCESS_FS_REFER  # ABI 2
TRUNCATE: int = lib.HM_LANDLOCK_ACCESS_FS_TRUNCATE  # ABI 3
IOCTL_DEV: int = lib.HM_LANDLOCK_ACCESS_FS_IOCTL_DEV  # ABI 5
# ABI 9: connect()/sendmsg() to a pathname Unix socket
RESOLVE_UNIX: int = lib.HM_LANDLOCK_ACCESS_FS_RESOLVE_UNIX
# LANDLOCK_ACCESS_NET_* (ABI 4) and LANDLOCK_SCOPE_* (ABI 6).
NET_BIND_TCP: int = lib.HM_LANDLOCK_ACCESS_NET_BIND_TCP
NET_CONNECT_TCP: int = lib.HM_LANDLOCK_ACCESS_NET_CONNECT_TCP
SCOPE_ABSTRACT_UNIX_SOCKET: int = lib.HM_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
SCOPE_SIGNAL: int = lib.HM_LANDLOCK_SCOPE_SIGNAL

#: Rights that apply to a file (a rule on a file may hold only these).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
READ_WRITE = (
    READ_ONLY
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
    | RESOLVE_UNIX
)
#: The private /tmp: read-write, but no connecting to sockets an input bound
#: under it holds (the action's own sockets need no rule).
PRIVATE_TMP = READ_WRITE & ~RESOLVE_UNIX
#: capabilities()'s note on a kernel with ABI 1.
ABI1_NOTE = (
    "Landlock ABI 1 cannot grant renames across directories (no REFER): actions with "
    "namespaces run without the Landlock layer, the mounts alone enforcing the spec"
)
#: The first ABI the layer under namespaces uses: ABI 1 would refuse every
#: cross-directory rename and link (no REFER), which the mounts do not.
MIN_ABI_LAYER = 2
#: Landlock-only needs ABI 6: without its scopes an action could signal
#: any process of its user, the caller included.
MIN_ABI_ALONE = 6
#: Devices an action without namespaces may use, and how.
HOST_DEVICES = (
    ("/dev/null", READ_FILE | WRITE_FILE | TRUNCATE),
    ("/dev/zero", READ_FILE | WRITE_FILE | TRUNCATE),
    ("/dev/full", READ_FILE | WRITE_FILE | TRUNCATE),
    ("/dev/random", READ_FILE),
    ("/dev/urandom", READ_FILE),
)


def handled_fs(abi: int) -> int:
    """Every filesystem right the ruleset handles (denies unless granted) at ``abi``."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    if abi >= 9:
        rights |= RESOLVE_UNIX
    return rights


def layer_abi(abi: int, *, namespaces: bool) -> int:
    """The ABI an action's ruleset is built for, 0 for no Landlock at all.

    Under namespaces ABI 1 is left out (see the module docstring); without
    them ``linux.isolation_mode`` has already refused anything below 6."""
    if namespaces and abi < MIN_ABI_LAYER:
        return 0
    return abi


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


@dataclass(frozen=True)
class Rule:
    path: str
    access: int


def _rule(path: str, access: int, dirs: Mapping[str, bool]) -> Rule:
    is_dir = dirs.get(path)
    if is_dir is None:
        is_dir = os.path.isdir(path)
    return Rule(path, access if is_dir else access & FILE_RIGHTS)


def rules(
    spec: SandboxSpec,
    *,
    abi: int,
    namespaces: bool,
    private_tmp: bool = False,
    dirs: Mapping[str, bool] | None = None,
    exec_files: Sequence[str] | None = None,
) -> tuple[Rule, ...]:
    """The rules for ``spec`` at ``abi``: paths as the action sees them,
    each granting only rights that ABI handles.  ``dirs`` says which paths
    are directories where the plan already knows (the mount points it
    makes), saving a look at the host.  ``exec_files`` (allow_exec=False)
    are the only files given EXECUTE; without it inputs, outputs and temps
    are executable."""
    known = dirs or {}
    out = [_rule(p, READ_ONLY, known) for p in spec.inputs]
    out += [_rule(p, READ_WRITE, known) for p in (*spec.outputs, *spec.temps)]
    if namespaces:
        # The sandbox's own root, /dev and /proc: their contents are the
        # plan's (csrc/linux/mounts.c); the mounts keep them read-only.
        out.append(Rule("/", READ_DIR))
        out.append(Rule("/dev", READ_DIR | READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV))
        out.append(Rule("/proc", READ_DIR | READ_FILE | WRITE_FILE))
        if private_tmp:
            out.append(Rule("/tmp", PRIVATE_TMP))
    else:
        out += [Rule(p, a) for p, a in HOST_DEVICES if os.path.exists(p)]
        out.append(Rule("/proc", READ_DIR | READ_FILE))
    if exec_files is not None:
        # allow_exec=False: nothing is executable but the action's own
        # program and its interpreters (``exec_files``).
        out = [Rule(r.path, r.access & ~EXECUTE) for r in out]
        out += [Rule(p, EXECUTE) for p in exec_files]
    handled = handled_fs(abi)
    # A rule granting nothing is refused by the kernel (ENOMSG): left out.
    return _collapse([Rule(r.path, r.access & handled) for r in out if r.access & handled])


#: The kernel follows at most this many interpreters (#! lines) per execve.
MAX_INTERPRETERS = 5


def exec_files(candidates: Sequence[str], visible: Callable[[str], bool]) -> tuple[str, ...]:
    """The files an action's own execve opens for execution: each existing
    candidate for argv[0], resolved (Landlock checks the inode), then the
    interpreter it names (a script's ``#!`` line, an ELF's PT_INTERP
    loader: the kernel opens both for execution, and Landlock checks
    EXECUTE on each; libraries are mapped, not executed, and need none).
    Only files ``visible`` in the sandbox: a rule on a missing one would
    fail setup, and EXECUTE alone reads nothing."""
    found: list[str] = []
    todo = [(c, 0) for c in candidates]
    while todo:
        path, depth = todo.pop(0)
        real = os.path.realpath(path)
        if real in found or not os.path.isfile(real) or not visible(real):
            continue
        found.append(real)
        interp = _interpreter(real)
        if interp is not None and depth < MAX_INTERPRETERS:
            todo.append((interp, depth + 1))
    return tuple(found)


def _interpreter(path: str) -> str | None:
    """The interpreter ``path`` names for execve, if any: a ``#!`` line's, or
    an ELF file's PT_INTERP (its dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            if head.startswith(b"#!"):
                words = head[2:].split(b"\n", 1)[0].split()
                return os.fsdecode(words[0]) if words else None
            if head[:4] != b"\x7fELF" or len(head) < 64:
                return None
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # ELFCLASS64
                (phoff,) = struct.unpack(end + "Q", head[32:40])
                phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            else:
                (phoff,) = struct.unpack(end + "I", head[28:32])
                phentsize, phnum = struct.unpack(end + "HH", head[42:46])
            f.seek(phoff)
            table = f.read(phentsize * min(phnum, 256))
            for i in range(len(table) // max(phentsize, 1)):
                entry = table[i * phentsize : (i + 1) * phentsize]
                if struct.unpack(end + "I", entry[:4])[0] != 3:  # PT_INTERP
                    continue
                if head[4] == 2:
                    (off,) = struct.unpack(end + "Q", entry[8:16])
                    (size,) = struct.unpack(end + "Q", entry[32:40])
                else:
                    (off,) = struct.unpack(end + "I", entry[4:8])
                    (size,) = struct.unpack(end + "I", entry[16:20])
                f.seek(off)
                return os.fsdecode(f.read(min(size, 4096)).split(b"\0", 1)[0]) or None
    except (OSError, struct.error):
        return None
    return None


def refuse_ipc_inputs(inputs: Iterable[str]) -> None:
    """SpecError for an input that is itself a FIFO or a socket: reading it
    is talking to a host process, which no read-only layer refuses."""
    for path in inputs:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # a missing input fails at its bind, naming it
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else None
        if kind is not None:
            raise SpecError(
                f"input {path!r} is a {kind}: a channel to a host process, not a file to read",
                field="inputs",
                value=path,
            )


def refuse_ipc_beneath_writable(inputs: Iterable[str], writable: Iterable[str]) -> None:
    """SpecError naming a FIFO or socket inside an input that lies beneath a
    writable path (an output, a temp, the private /tmp).

    Landlock grants subtrees: the writable path's rule gives everything
    beneath it WRITE_FILE (and, with ABI 9, RESOLVE_UNIX), the input's
    FIFOs and sockets included, and the input's read-only mount refuses
    neither opening a FIFO for writing nor connecting to a socket.  Each
    such input is walked, at any depth and without following links.  A
    directory the caller
    cannot list is refused too: the action may still reach what is in it
    (a directory that can be searched but not read hides its names, not
    its files), so an unlisted one cannot be shown free of them."""
    roots = tuple(writable)
    for top in inputs:
        if not any(top != r and is_within(top, r) for r in roots):
            continue
        _refuse_ipc_in(top)


def _refuse_ipc_in(top: str) -> None:
    """The walk of ``refuse_ipc_beneath_writable`` for one input, at any
    depth, never through a link (hermetic/core/tree.py)."""
    trail = tree.Trail(top)
    where = trail.path

    def unlisted(e: OSError, depth: int, name: str) -> None:
        raise SpecError(
            f"input {top!r} lies beneath a writable path whose rights cover it, and "
            f"{where(depth, name)!r} cannot be listed ({os.strerror(e.errno or 0)}): a FIFO "
            "or socket in it could not be refused (move the input out of the outputs, "
            "temps and /tmp, or make the directory readable)",
            field="inputs",
            value=top,
        )

    try:
        for depth, name, _fd, st in tree.walk(top, unlisted):
            if depth == 0:
                continue
            trail.visit(depth, name, st)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                continue
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else None
            if kind is not None:
                raise SpecError(
                    f"input {top!r} holds a {kind}, {where(depth, name)!r}, and lies beneath "
                    "a writable path whose rights cover it: nothing would refuse writing to "
                    "it (move the input out of the outputs, temps and /tmp)",
                    field="inputs",
                    value=top,
                )
    except FileNotFoundError:
        return  # a missing input is named where it is bound
    except SpecError:
        raise
    except OSError as e:
        raise SpecError(
            f"input {top!r} lies beneath a writable path whose rights cover it and cannot "
            f"be walked ({os.strerror(e.errno or 0)}): a FIFO or socket in it could not be "
            "refused",
            field="inputs",
            value=top,
        ) from None


def _collapse(rules: list[Rule]) -> tuple[Rule, ...]:
    """Without the rules an ancestor rule already covers (each costs three
    system calls per action): /usr/bin under /usr, say."""
    by_path: dict[str, list[int]] = {}
    for r in rules:
        by_path.setdefault(r.path, []).append(r.access)
    kept: list[Rule] = []
    for r in rules:
        covered = False
        up = r.path
        while not covered:
            up = up[: up.rfind("/")] or "/"
            if up == "/" or up == r.path:  # "/" grants too little to cover anything
                break
            covered = any(r.access & ~a == 0 for a in by_path.get(up, ()))
        if not covered and r not in kept:
            kept.append(r)
    return tuple(kept)
