"""The Linux sandbox's filesystem plan: a spec turned into an ordered op list.

Everything the child does to the filesystem is decided here, before clone:
which paths are bound where, read-only or not, which directories and mount
points must be created in the new root's tmpfs, and in what order.  The child
(csrc/linux/mounts.c) only walks the list.

Layout of the sandbox's root (a tmpfs, read-only once set up):

- every input bound read-only (recursively, nosuid, nodev) at its own path;
- every output and temp bound read-write (nosuid, nodev) at its own path;
- /proc of the new pid namespace;
- /dev: a small read-only tmpfs with null, zero, full, random, urandom, tty
  bound read-only from the host, and the fd, stdin, stdout, stderr links;
- /proc/sys, /proc/sysrq-trigger, /proc/irq, /proc/bus, /proc/fs read-only,
  a few /proc files masked (see PROC_MASKED), and /proc/1 (pid 1 shares
  the caller's memory) covered by an empty read-only tmpfs;
- /tmp: a private tmpfs of ``max_tmp_bytes`` (see private_tmp_bytes), unless
  /tmp itself is declared; the directories made on it to hold declared
  paths are read-only (see _seal_tmp_holders), so that a write there fails
  rather than vanishing with the sandbox;
- the host root's top-level symlinks (/bin -> usr/bin on merged-/usr
  systems) when their target is visible;
- the working directory, created empty when nothing declared covers it.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from hermetic._native import lib
from hermetic.core.errors import SpecError
from hermetic.core.paths import is_within
from hermetic.core.spec import SandboxSpec

# Kinds and flags of the op list (enum hm_op_kind, HM_MAX_GRABS, HM_BIND_* in
# hermetic.h) and the kernel's mount flags, read from the compiled core.
OP_MKDIR: int = lib.HM_OP_MKDIR
OP_MKFILE: int = lib.HM_OP_MKFILE
OP_SYMLINK: int = lib.HM_OP_SYMLINK
OP_BIND: int = lib.HM_OP_BIND
OP_TMPFS: int = lib.HM_OP_TMPFS
OP_PROC: int = lib.HM_OP_PROC
OP_REMOUNT_RO: int = lib.HM_OP_REMOUNT_RO
OP_MKNOD: int = lib.HM_OP_MKNOD
OP_GRAB: int = lib.HM_OP_GRAB
OP_PLACE: int = lib.HM_OP_PLACE
#: Ops that mount something at their dst.
_MOUNT_KINDS = (OP_BIND, OP_TMPFS, OP_PROC)
#: HM_MAX_GRABS: copies of mount trees one op list can hold.
MAX_GRABS: int = lib.HM_MAX_GRABS
BIND_RDONLY: int = lib.HM_BIND_RDONLY
BIND_DEVICES: int = lib.HM_BIND_DEVICES
BIND_SYSTEM: int = lib.HM_BIND_SYSTEM

MS_RDONLY: int = lib.HM_MS_RDONLY
MS_NOSUID: int = lib.HM_MS_NOSUID
MS_NODEV: int = lib.HM_MS_NODEV
MS_NOEXEC: int = lib.HM_MS_NOEXEC

#: Host directory the new root's tmpfs is first mounted on (only inside the
#: sandbox's private mount namespace).  pivot_root moves it away again, so
#: declared paths below it stay reachable.
STAGING = "/tmp"
#: Where the host's root sits between pivot_root and its detachment.
OLDROOT = "/.hermetic-oldroot"

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
_RESERVED = ("/proc", "/dev", OLDROOT)
DEV_TMPFS_DATA = "mode=0755,size=65536"
DEV_TMPFS_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
#: /dev when its nodes are made in it (a root caller): device nodes must work.
DEV_TMPFS_FLAGS_NODES = MS_NOSUID | MS_NOEXEC
PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
)
#: The sandbox's pid 1 is a clone of the caller that shares its memory and
#: never execs: its cmdline, environ, auxv, maps, mem, stack, and those of
#: its tasks (/proc/1/task/1/...), are the caller's.  The whole directory
#: is covered with an empty read-only tmpfs, not file by file: a file left
#: out (or one a later kernel adds) would show the caller again.  Being a
#: mount on a non-empty directory of a proc the action cannot unmount (a
#: lower-privileged mount namespace locks it), it also makes the kernel
#: refuse a fresh proc mount inside a nested user namespace, which would
#: show /proc/1 unmasked (mount_too_revealing).  Without namespaces
#: (Landlock-only) there are no mounts: the host's /proc shows pid 1 and
#: the caller, whose command lines stay readable; Landlock refuses their
#: environment, memory and maps (they need ptrace access).
PROC_PID1 = "/proc/1"
PROC_PID1_DATA = "mode=0555,size=4k,nr_inodes=1"
PROC_PID1_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC


#: The private /tmp's inodes: one per 16 KiB of its size, within these
#: bounds.  An inode costs kernel memory that the size does not count.
TMP_INODES_MIN = 1024
TMP_INODES_MAX = 1 << 20


def private_tmp_bytes(spec: SandboxSpec) -> int:
    """The size of the private /tmp: ``max_tmp_bytes``, or ``max_memory_bytes``
    when that is smaller (its pages are the sandbox's memory)."""
    r = spec.resources
    if r.max_memory_bytes and r.max_memory_bytes < r.max_tmp_bytes:
        return r.max_memory_bytes
    return r.max_tmp_bytes


def private_tmp_limit(spec: SandboxSpec) -> str:
    """Which limit sets the private /tmp's size, for a violation record."""
    size, r = private_tmp_bytes(spec), spec.resources
    if size == r.max_tmp_bytes:
        return f"max_tmp_bytes={size}"
    return f"max_memory_bytes={size} (below max_tmp_bytes={r.max_tmp_bytes})"


def _tmp_data(size: int) -> str:
    inodes = min(TMP_INODES_MAX, max(TMP_INODES_MIN, size // 16384))
    return f"mode=1777,size={size},nr_inodes={inodes}"


def private_tmp(spec: SandboxSpec, ops: tuple[Op, ...]) -> int:
    """The size of the private /tmp ``ops`` mount, or 0 when they mount none
    (/tmp declared, or no mounts at all)."""
    if any(op.kind == OP_TMPFS and op.dst == "/tmp" for op in ops):
        return private_tmp_bytes(spec)
    return 0


class Op(NamedTuple):
    """One filesystem step.  ``origin`` says why it exists, for error messages.

    A named tuple: a plan makes dozens per executor, and a tuple is made
    four times faster than a frozen dataclass."""

    kind: int
    dst: str
    src: str | None = None
    flags: int = 0
    mode: int = 0
    data: str | None = None
    origin: str = ""


class _Entry(NamedTuple):
    path: str
    kind: str  # "bind" | "tmpfs" | "proc" | "symlink" | "dir"
    origin: str
    src: str | None = None
    flags: int = 0
    is_dir: bool = True
    data: str | None = None
    mount_flags: int = 0
    mode: int = 0
    #: The host path at ``path`` was seen to exist with type ``is_dir``
    #: as the entry was made (no need to look again for its mount point).
    seen: bool = False


def _depth_key(path: str) -> tuple[str, ...]:
    # Component order puts every directory before what lies below it.
    return tuple(p for p in path.split("/") if p)


def _collapse(paths: list[str]) -> list[str]:
    """Drop paths that lie under another path of the same list."""
    out: list[str] = []
    for p in sorted(paths, key=_depth_key):
        if not any(is_within(p, q) for q in out):
            out.append(p)
    return out


def _declared(spec: SandboxSpec, remap: dict[str, str]) -> list[_Entry]:
    entries: list[_Entry] = []
    for p in _collapse(list(spec.inputs)):
        entries.append(_bind(p, BIND_RDONLY, f"input {p!r}"))
    writable = {p: "output" for p in spec.outputs}
    for p in spec.temps:
        writable.setdefault(p, "temp")
    for p in sorted(writable, key=_depth_key):
        entries.append(_bind(p, 0, f"{writable[p]} {p!r}", remap.get(p, p)))
    for e in entries:
        if e.path == "/":
            raise SpecError(
                f"{e.origin} is the host's whole root: the sandbox's root is its own (with "
                "its /proc, /dev and /tmp); declare the directories the action needs "
                "(HermeticSpecBuilder.toolchain_inputs() lists the system's)",
                field="paths",
                value=e.path,
            )
        for r in _RESERVED:
            if is_within(e.path, r):
                raise SpecError(
                    f"{e.origin} lies in {r}, which the sandbox provides itself",
                    field="paths",
                    value=e.path,
                )
    return entries


def _bind(path: str, flags: int, origin: str, source: str | None = None) -> _Entry:
    """A bind of the host's ``source`` (by default ``path`` itself) at ``path``."""
    source = source or path
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise SpecError(f"{origin} does not exist", field="paths", value=path) from None
    except OSError as e:
        raise SpecError(f"{origin} cannot be used: {e.strerror}", field="paths", value=path) from e
    is_dir = stat.S_ISDIR(st.st_mode)
    return _Entry(
        path, "bind", origin, src=OLDROOT + source, flags=flags, is_dir=is_dir, seen=source == path
    )


def _encode_dev(rdev: int) -> int:
    """A device number as mknodat(2) takes it (the kernel's new encoding)."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


#: _system()'s entries per (make_nodes, /tmp declared), and what of the
#: host's /dev they were made from (see _system).
_SYSTEM: dict[tuple[bool, bool], tuple[tuple[object, ...], tuple[_Entry, ...]]] = {}


def _system(declared: list[_Entry], make_nodes: bool) -> list[_Entry]:
    """What every sandbox gets: /proc (its knobs read-only, a few files
    masked), /dev, a private /tmp unless one is declared.  They depend on
    the host only through which nodes /dev and /proc have, so they are
    made again only when /dev changed (a node added or removed changes its
    mtime; /proc's entries are the kernel's), and, for nodes made with
    mknod (``make_nodes``), when one of the devices changed (its inode,
    mode, number or ctime: a chmod changes only the node's own)."""
    tmp_declared = any(e.path == "/tmp" for e in declared)
    key: tuple[object, ...] | None
    try:
        st = os.stat("/dev")
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if make_nodes:
            key += tuple(_node_key("/dev/" + name) for name in DEVICES)
    except OSError:
        key = None
    kept = _SYSTEM.get((make_nodes, tmp_declared))
    if kept is not None and kept[0] == key:
        return list(kept[1])
    entries = _system_entries(tmp_declared, make_nodes)
    if key is not None:
        _SYSTEM[(make_nodes, tmp_declared)] = (key, tuple(entries))
    return entries


def _node_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mode, st.st_rdev, st.st_ctime_ns)


def _system_entries(tmp_declared: bool, make_nodes: bool) -> list[_Entry]:
    entries = [
        _Entry("/proc", "proc", "the sandbox's /proc"),
        _Entry(
            "/dev",
            "tmpfs",
            "the sandbox's /dev",
            data=DEV_TMPFS_DATA,
            mount_flags=DEV_TMPFS_FLAGS_NODES if make_nodes else DEV_TMPFS_FLAGS,
        ),
    ]
    for name in DEVICES:
        host = "/dev/" + name
        if make_nodes and os.path.exists(host):
            # Made in the sandbox's own /dev, which is read-only once set up:
            # one mknodat instead of a file, a bind and its flags.  Only
            # pid 1 of a root caller may (no user namespace).
            st = os.stat(host)
            entries.append(
                _Entry(
                    host,
                    "mknod",
                    f"device {host}",
                    flags=_encode_dev(st.st_rdev),
                    mode=st.st_mode,
                    is_dir=False,
                )
            )
        elif os.path.exists(host):
            # Read-only binds: reading and writing a device node still work,
            # changing its owner or mode on the host does not.
            entries.append(
                _Entry(
                    host,
                    "bind",
                    f"device {host}",
                    src=OLDROOT + host,
                    flags=BIND_DEVICES | BIND_RDONLY | BIND_SYSTEM,
                    is_dir=False,
                )
            )
    for name, target in DEV_LINKS:
        entries.append(_Entry("/dev/" + name, "symlink", f"link /dev/{name}", src=target))
    # The kernel's knobs under /proc are checked against the host uid, not
    # capabilities: a root caller's sandbox (host uid 0) could otherwise set
    # core_pattern or write sysrq-trigger.  Bound read-only over themselves
    # as Docker and bubblewrap do; a few files are masked with /dev/null.
    for path in PROC_READONLY:
        if os.path.exists(path):
            entries.append(
                _Entry(
                    path,
                    "bind",
                    f"read-only {path}",
                    src=path,
                    flags=BIND_RDONLY | BIND_SYSTEM,
                    is_dir=os.path.isdir(path),
                    seen=True,
                )
            )
    for path in PROC_MASKED:
        if os.path.isfile(path):
            entries.append(
                _Entry(
                    path,
                    "bind",
                    f"masked {path}",
                    src="/dev/null",
                    flags=BIND_RDONLY | BIND_DEVICES | BIND_SYSTEM,
                    is_dir=False,
                    seen=True,
                )
            )
    entries.append(
        _Entry(
            PROC_PID1,
            "tmpfs",
            "the mask over /proc/1 (the caller's memory)",
            data=PROC_PID1_DATA,
            mount_flags=PROC_PID1_FLAGS,
            seen=True,
        )
    )
    if not tmp_declared:
        entries.append(
            _Entry(
                "/tmp",
                "tmpfs",
                "the sandbox's private /tmp",
                data="mode=1777",
                mount_flags=MS_NOSUID | MS_NODEV,
            )
        )
    return entries


#: Per root directory: its (device, inode, mtime) when read, and its
#: top-level symlinks as (path, resolved target, link text).
_ROOT_LINKS: dict[str, tuple[tuple[int, int, int], tuple[tuple[str, str, str], ...]]] = {}


def host_root_links(root: str = "/") -> tuple[tuple[str, str, str], ...]:
    """The top-level symlinks of ``root`` (the host's /), read again only
    when the directory changed: an entry added, removed or renamed over
    changes its mtime.  Every executor created needs them, and reading them
    is about 30 system calls."""
    try:
        st = os.stat(root)
    except OSError:
        return ()
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    kept = _ROOT_LINKS.get(root)
    if kept is not None and kept[0] == key:
        return kept[1]
    links = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return ()
    for name in names:
        path = os.path.join(root, name)
        try:
            text = os.readlink(path)
        except OSError:  # not a symlink
            continue
        links.append(("/" + name, os.path.realpath(path), text))
    found = tuple(links)
    _ROOT_LINKS[root] = (key, found)
    return found


def _root_links(entries: list[_Entry]) -> list[_Entry]:
    """The host root's top-level symlinks whose target the sandbox shows."""
    links: list[_Entry] = []
    # A link is left out when an entry is at or below it (its top-level
    # name is taken), kept when its target lies within a bind or tmpfs.
    taken = {e.path.split("/", 2)[1] for e in entries}
    shown = {e.path for e in entries if e.kind in ("bind", "tmpfs")}
    for path, target, text in host_root_links():
        if path[1:] in taken:
            continue
        up = target
        while up not in shown and up != "/":
            up = _parent(up)
        if up in shown:
            links.append(_Entry(path, "symlink", f"link {path}", src=text))
    return links


def _host_is_dir(path: str) -> bool | None:
    """Whether the host's ``path`` is a directory; None when it is missing."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return None


def _parent(path: str) -> str:
    """os.path.dirname of a canonical absolute path other than /, faster."""
    return path[: path.rfind("/")] or "/"


def build_ops(
    spec: SandboxSpec,
    workdir: str | None = None,
    remap: dict[str, str] | None = None,
    make_nodes: bool = False,
) -> tuple[Op, ...]:
    """The op list for ``spec``; raises SpecError naming the culprit path.

    ``remap`` binds other host paths at some outputs and temps (the fresh
    copies of a reproducibility check).  ``make_nodes``: /dev's devices are
    made with mknod (pid 1 runs as the host's root) instead of bound.
    """
    declared = _declared(spec, remap or {})
    # The system entries are kept across specs; the private /tmp's size is
    # this spec's (a tmpfs is otherwise half of the host's RAM).
    tmp_data = _tmp_data(private_tmp_bytes(spec))
    entries = declared + [
        e._replace(data=tmp_data) if e.kind == "tmpfs" and e.path == "/tmp" else e
        for e in _system(declared, make_nodes)
    ]
    entries += _root_links(entries)
    if workdir and workdir != "/":
        entries.append(_Entry(workdir, "dir", f"working directory {workdir!r}"))
    entries.sort(key=lambda e: _depth_key(e.path))

    ops: list[Op] = []
    made: set[str] = {"/"}
    # The mounts placed so far by path: an entry's cover is the nearest of
    # its ancestors found here (entries come parents first).
    mounts: dict[str, _Entry] = {}
    for e in entries:
        cover = None
        up = e.path
        while up != "/" and cover is None:
            up = _parent(up)
            cover = mounts.get(up)
        if cover is not None and cover.kind != "tmpfs":
            # Under a bind the host's own tree is what the sandbox shows: the
            # mount point must already be there (nothing is created in a
            # host directory, and inputs are read-only anyway).
            if e.kind == "dir" and os.path.isdir(e.path):
                continue
            if e.kind == "symlink":
                continue
            if not e.seen and _host_is_dir(e.path) != e.is_dir:
                raise SpecError(
                    f"{e.origin} needs a mount point inside {cover.origin}, "
                    f"which has no {'directory' if e.is_dir else 'file'} at {e.path!r}",
                    field="paths",
                    value=e.path,
                )
        else:
            parent = os.path.dirname(e.path)
            chain: list[str] = []
            while parent not in made and (cover is None or parent != cover.path):
                chain.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(chain):
                ops.append(Op(OP_MKDIR, d, mode=0o755, origin=f"directory {d!r} for {e.origin}"))
                made.add(d)
            if e.kind == "bind" and not e.is_dir:
                ops.append(Op(OP_MKFILE, e.path, mode=0o644, origin=f"mount point for {e.origin}"))
            elif e.kind in ("bind", "tmpfs", "proc", "dir"):
                ops.append(Op(OP_MKDIR, e.path, mode=0o755, origin=f"mount point for {e.origin}"))
            made.add(e.path)
        if e.kind == "bind":
            ops.append(Op(OP_BIND, e.path, src=e.src, flags=e.flags, origin=e.origin))
        elif e.kind == "tmpfs":
            ops.append(Op(OP_TMPFS, e.path, flags=e.mount_flags, data=e.data, origin=e.origin))
        elif e.kind == "proc":
            ops.append(Op(OP_PROC, e.path, origin=e.origin))
        elif e.kind == "symlink":
            ops.append(Op(OP_SYMLINK, e.path, src=e.src, origin=e.origin))
        elif e.kind == "mknod":
            ops.append(Op(OP_MKNOD, e.path, flags=e.flags, mode=e.mode, origin=e.origin))
        if e.kind in ("bind", "tmpfs", "proc"):
            mounts.setdefault(e.path, e)
    ops = _seal_tmp_holders(ops)
    # /dev is complete: nothing more may be created in it.
    dev_flags = DEV_TMPFS_FLAGS_NODES if make_nodes else DEV_TMPFS_FLAGS
    ops.append(Op(OP_REMOUNT_RO, "/dev", flags=dev_flags, origin="read-only /dev"))
    return tuple(ops)


def read_only_ops(paths: tuple[str, ...]) -> tuple[Op, ...]:
    """One execution's read-only paths (``execute(read_only=...)``), each
    bound onto itself read-only, nosuid and nodev once the root is there.
    The source is the sandbox's own view of the path (the output bound
    there), so the ops serve a root built from the host's and a prepared
    one copied alike; both ends are resolved without symlinks, so a path
    reached through one fails rather than leads elsewhere.  Sorted, so an
    enclosing path comes before the paths within it."""
    return tuple(
        Op(OP_BIND, p, src=p, flags=BIND_RDONLY, origin=f"read-only path {p!r} of this execution")
        for p in sorted(paths)
    )


def _seal_tmp_holders(ops: list[Op]) -> list[Op]:
    """The op list with each directory made on the private /tmp to hold a
    declared path bound read-only onto itself, so that a write there fails
    (EROFS) instead of vanishing with the sandbox's /tmp.

    Only the top-most such directory (a child of /tmp) is bound: what the
    plan makes below it lies on the same tmpfs.  Every directory and file
    made within it moves before the bind, since nothing can be made there
    once it is read-only; every mount within it moves after, so that the
    bind's read-only flag (set recursively) meets no declared mount and
    outputs and temps below stay writable.  A directory that holds no
    declared path (a working directory alone) stays writable, as the rest
    of the private /tmp: the action's scratch space.
    """
    if not any(op.kind == OP_TMPFS and op.dst == "/tmp" for op in ops):
        return ops  # /tmp declared, or no mounts at all: nothing made there
    mounted = {op.dst for op in ops if op.kind in _MOUNT_KINDS}
    holders = {_tmp_top(m) for m in mounted if m.startswith("/tmp/") and _tmp_top(m) != m} - mounted
    if not holders:
        return ops
    made: dict[str, list[Op]] = {d: [] for d in holders}
    later: dict[str, list[Op]] = {d: [] for d in holders}
    out: list[Op] = []
    for op in ops:
        top = _tmp_top(op.dst) if op.dst.startswith("/tmp/") else None
        if top in holders and op.dst != top:
            (made if op.kind in (OP_MKDIR, OP_MKFILE) else later)[top].append(op)
        else:
            out.append(op)
    sealed: list[Op] = []
    placed: set[str] = set()
    for op in out:
        sealed.append(op)
        if op.kind == OP_MKDIR and op.dst in holders:
            d = op.dst
            sealed += made[d]
            sealed.append(
                Op(
                    OP_BIND,
                    d,
                    src=d,
                    flags=BIND_RDONLY | BIND_SYSTEM,
                    origin=f"read-only {d!r} (made on the private /tmp to hold declared paths)",
                )
            )
            sealed += later[d]
            placed.add(d)
    # Each holder was made by the plan (nothing else covers it), so its
    # ops have their place; a plan without it would lose them.
    assert placed == holders, holders - placed
    return sealed


def _tmp_top(path: str) -> str:
    """The child of /tmp that ``path`` (below /tmp) lies in."""
    return "/tmp/" + path[5:].split("/", 1)[0]


def visible(spec: SandboxSpec, path: str) -> bool:
    """Whether ``path`` (canonical) is shown inside the sandbox by a declared path."""
    return any(is_within(path, p) for p in (*spec.inputs, *spec.outputs, *spec.temps))
