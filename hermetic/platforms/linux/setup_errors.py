"""Setup errors: the C core's {stage, op_index, errno} record, turned into a
SandboxError that names the step, the path and the errno."""

from __future__ import annotations

import errno
import functools
from typing import Any, Protocol

from hermetic.core.errors import SandboxError
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux.landlock import Rule
from hermetic.platforms.linux.memory import native


class Planned(Protocol):
    """What a setup error needs of a prepared spec (linux/prepared.py)."""

    @property
    def spec(self) -> SandboxSpec: ...

    @property
    def action_ops(self) -> tuple[linux_plan.Op, ...]: ...

    @property
    def landlock_rules(self) -> tuple[Rule, ...]: ...

    def exec_candidates(self, arg0: str, search: str | None = None) -> tuple[str, ...]: ...

    def action_landlock_rules(
        self, arg0: str, workdir: str = "/", search: str | None = None
    ) -> tuple[Rule, ...]: ...


@functools.lru_cache(maxsize=1)
def _stage_names() -> dict[int, str]:
    """enum hm_stage (hermetic.h) as the names errors give; read from the
    compiled module, which holds the values."""
    lib = native().lib
    return {
        lib.HM_STAGE_FDS: "fds",
        lib.HM_STAGE_PARENT: "parent",
        lib.HM_STAGE_SETGROUPS: "setgroups",
        lib.HM_STAGE_UID_MAP: "uid_map",
        lib.HM_STAGE_GID_MAP: "gid_map",
        lib.HM_STAGE_MOUNT_PRIVATE: "mount-private",
        lib.HM_STAGE_ROOT_TMPFS: "root-tmpfs",
        lib.HM_STAGE_PIVOT_ROOT: "pivot_root",
        lib.HM_STAGE_OP: "op",
        lib.HM_STAGE_DETACH_OLDROOT: "detach-oldroot",
        lib.HM_STAGE_ROOT_READONLY: "root-readonly",
        lib.HM_STAGE_HOSTNAME: "hostname",
        lib.HM_STAGE_LOOPBACK: "loopback",
        lib.HM_STAGE_SPAWN: "spawn",
        lib.HM_STAGE_SIGNALS: "signals",
        lib.HM_STAGE_SETSID: "setsid",
        lib.HM_STAGE_CHDIR: "chdir",
        lib.HM_STAGE_RLIMIT: "rlimit",
        lib.HM_STAGE_NO_NEW_PRIVS: "no_new_privs",
        lib.HM_STAGE_CAPABILITIES: "capabilities",
        lib.HM_STAGE_SECCOMP: "seccomp",
        lib.HM_STAGE_EXEC: "exec",
        lib.HM_STAGE_CLONE: "clone",
        lib.HM_STAGE_NETNS: "netns",
        lib.HM_STAGE_NOTIFY: "seccomp-listener",
        lib.HM_STAGE_PROXY: "proxy",
        lib.HM_STAGE_LANDLOCK: "landlock",
        lib.HM_STAGE_SUBREAPER: "subreaper",
        lib.HM_STAGE_TIMENS: "time-namespace",
        lib.HM_STAGE_MNTNS: "mount-namespace",
    }


@functools.lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    """enum hm_op_kind (hermetic.h) as the names errors give."""
    lib = native().lib
    return {
        lib.HM_OP_MKDIR: "mkdir",
        lib.HM_OP_MKFILE: "mkfile",
        lib.HM_OP_SYMLINK: "symlink",
        lib.HM_OP_BIND: "bind",
        lib.HM_OP_TMPFS: "tmpfs",
        lib.HM_OP_PROC: "proc",
        lib.HM_OP_REMOUNT_RO: "remount-ro",
        lib.HM_OP_MKNOD: "mknod",
        lib.HM_OP_GRAB: "bind",
        lib.HM_OP_PLACE: "bind",
    }


def setup_error(
    prepared: Planned | None,
    argv: tuple[str, ...],
    cwd: str,
    err: Any,
    ops: tuple[linux_plan.Op, ...] | None = None,
    *,
    search: str | None = None,
) -> SandboxError:
    """The error for a failed setup; ``ops``: the list op_index is in (the
    prepared namespace's, or by default the one pid 1 runs); ``search``:
    the action's own PATH, when it was given one."""
    lib = native().lib
    stage = _stage_names().get(err.stage, f"stage {err.stage}")
    path = None
    detail = None
    idx = err.op_index
    if ops is None:
        ops = prepared.action_ops if prepared is not None else ()
    if err.stage == lib.HM_STAGE_OP and 0 <= idx < len(ops):
        op = ops[idx]
        stage = _op_names().get(op.kind, stage)
        path = op.dst
        detail = op.origin
    elif stage == "exec" and prepared is not None:
        cands = prepared.exec_candidates(argv[0], search)
        path = cands[idx] if 0 <= idx < len(cands) else argv[0]
        if err.err == errno.ENOENT:
            detail = f"{argv[0]!r} not found in the sandbox (searched {':'.join(cands)})"
    elif stage == "landlock" and prepared is not None:
        rules = (
            prepared.action_landlock_rules(argv[0], cwd, search)
            if argv
            else prepared.landlock_rules
        )
        if 0 <= idx < len(rules):
            path = rules[idx].path
            detail = "Landlock rule"
    elif stage == "chdir":
        path = cwd
        detail = "working directory"
    elif stage in ("uid_map", "gid_map", "setgroups"):
        path = f"/proc/self/{stage}"
    limits = prepared.spec.resources if prepared is not None else None
    if err.stage == lib.HM_STAGE_NONE:
        stage = "start"
        if err.err == 0:
            detail = "the sandbox ended before it reported its setup"
            if limits is not None and limits.max_memory_bytes:
                detail += (
                    f": max_memory_bytes={limits.max_memory_bytes} may be too small to start it"
                )
        elif err.err == errno.ETIMEDOUT:
            detail = "no report of its setup in time: the sandbox was ended"
        else:
            detail = "its setup report could not be read: the sandbox was ended"
    if err.err == errno.EMFILE and limits is not None and limits.max_open_files:
        detail = (detail + "; " if detail else "") + (
            f"max_open_files={limits.max_open_files} leaves the setup too few descriptors"
        )
    return SandboxError(
        err.err, stage=stage, path=path, op_index=idx if idx >= 0 else None, detail=detail
    )
