"""Landlock rules for a spec: the same semantics as the mount layout.

Two uses (csrc/linux/child.c applies the rules in the action, after
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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hermetic.core.spec import SandboxSpec

# LANDLOCK_ACCESS_FS_* (include/uapi/linux/landlock.h) and the ABI that
# introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
# LANDLOCK_ACCESS_NET_* (ABI 4) and LANDLOCK_SCOPE_* (ABI 6).
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

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
)
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
    return rights


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
    namespaces: bool,
    private_tmp: bool = False,
    dirs: Mapping[str, bool] | None = None,
) -> tuple[Rule, ...]:
    """The rules for ``spec``: paths as the action sees them.  ``dirs``
    says which paths are directories where the plan already knows (the
    mount points it makes), saving a look at the host."""
    known = dirs or {}
    out = [_rule(p, READ_ONLY, known) for p in spec.inputs]
    out += [_rule(p, READ_WRITE, known) for p in (*spec.outputs, *spec.temps)]
    if namespaces:
        # The sandbox's own root, /dev and /proc: their contents are the
        # plan's (csrc/linux/child.c); the mounts keep them read-only.
        out.append(Rule("/", READ_DIR))
        out.append(Rule("/dev", READ_DIR | READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV))
        out.append(Rule("/proc", READ_DIR | READ_FILE | WRITE_FILE))
        if private_tmp:
            out.append(Rule("/tmp", READ_WRITE))
    else:
        out += [Rule(p, a) for p, a in HOST_DEVICES if os.path.exists(p)]
        out.append(Rule("/proc", READ_DIR | READ_FILE))
    return _collapse(out)


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
