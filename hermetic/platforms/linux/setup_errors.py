"""Setup errors: the C core's {stage, op_index, errno} record, turned into a
SandboxError that names the step, the path and the errno."""

from __future__ import annotations

from typing import Any, Protocol

from hermetic.core.errors import SandboxError
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.linux import plan as linux_plan
from hermetic.platforms.linux.landlock import Rule


class Planned(Protocol):
    """What a setup error needs of a prepared spec (linux/prepared.py)."""

    @property
    def spec(self) -> SandboxSpec: ...

    @property
    def action_ops(self) -> tuple[linux_plan.Op, ...]: ...

    @property
    def landlock_rules(self) -> tuple[Rule, ...]: ...

    def exec_candidates(self, arg0: str) -> tuple[str, ...]: ...

    def action_landlock_rules(self, arg0: str, workdir: str = "/") -> tuple[Rule, ...]: ...


_STAGES = {
    1: "fds",
    2: "parent",
    3: "setgroups",
    4: "uid_map",
    5: "gid_map",
    6: "mount-private",
    7: "root-tmpfs",
    8: "pivot_root",
    9: "op",
    10: "detach-oldroot",
    11: "root-readonly",
    12: "hostname",
    13: "loopback",
    14: "spawn",
    15: "signals",
    16: "setsid",
    17: "chdir",
    18: "rlimit",
    19: "no_new_privs",
    20: "capabilities",
    21: "seccomp",
    22: "exec",
    23: "clone",
    24: "netns",
    25: "seccomp-listener",
    26: "proxy",
    27: "landlock",
    28: "subreaper",
    29: "time-namespace",
    30: "mount-namespace",
}
_OP_STAGES = {
    linux_plan.OP_MKDIR: "mkdir",
    linux_plan.OP_MKFILE: "mkfile",
    linux_plan.OP_SYMLINK: "symlink",
    linux_plan.OP_BIND: "bind",
    linux_plan.OP_TMPFS: "tmpfs",
    linux_plan.OP_PROC: "proc",
    linux_plan.OP_REMOUNT_RO: "remount-ro",
    linux_plan.OP_MKNOD: "mknod",
    linux_plan.OP_GRAB: "bind",
    linux_plan.OP_PLACE: "bind",
}


def setup_error(
    prepared: Planned | None,
    argv: tuple[str, ...],
    cwd: str,
    err: Any,
    ops: tuple[linux_plan.Op, ...] | None = None,
) -> SandboxError:
    """The error for a failed setup; ``ops``: the list op_index is in (the
    prepared namespace's, or by default the one pid 1 runs)."""
    stage = _STAGES.get(err.stage, f"stage {err.stage}")
    path = None
    detail = None
    idx = err.op_index
    if ops is None:
        ops = prepared.action_ops if prepared is not None else ()
    if err.stage == 9 and 0 <= idx < len(ops):
        op = ops[idx]
        stage = _OP_STAGES.get(op.kind, stage)
        path = op.dst
        detail = op.origin
    elif stage == "exec" and prepared is not None:
        cands = prepared.exec_candidates(argv[0])
        path = cands[idx] if 0 <= idx < len(cands) else argv[0]
        if err.err == 2:
            detail = f"{argv[0]!r} not found in the sandbox (searched {':'.join(cands)})"
    elif stage == "landlock" and prepared is not None:
        rules = prepared.action_landlock_rules(argv[0], cwd) if argv else prepared.landlock_rules
        if 0 <= idx < len(rules):
            path = rules[idx].path
            detail = "Landlock rule"
    elif stage == "chdir":
        path = cwd
        detail = "working directory"
    elif stage in ("uid_map", "gid_map", "setgroups"):
        path = f"/proc/self/{stage}"
    limits = prepared.spec.resources if prepared is not None else None
    if err.stage == 0:
        stage = "start"
        if err.err == 0:
            detail = "the sandbox ended before it reported its setup"
            if limits is not None and limits.max_memory_bytes:
                detail += (
                    f": max_memory_bytes={limits.max_memory_bytes} may be too small to start it"
                )
        elif err.err == 110:  # ETIMEDOUT
            detail = "no report of its setup in time: the sandbox was ended"
        else:
            detail = "its setup report could not be read: the sandbox was ended"
    if err.err == 24 and limits is not None and limits.max_open_files:  # EMFILE
        detail = (detail + "; " if detail else "") + (
            f"max_open_files={limits.max_open_files} leaves the setup too few descriptors"
        )
    return SandboxError(
        err.err, stage=stage, path=path, op_index=idx if idx >= 0 else None, detail=detail
    )
