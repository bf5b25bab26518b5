"""``hermetic doctor``: what this host can enforce, and whether the default
spec runs here (for root: as a normal user too)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from hermetic.cli.output import _say
from hermetic.cli.spec_args import _default_spec
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import HermeticError
from hermetic.core.policies import ResourceLimits
from hermetic.executor import HermeticExecutor
from hermetic.exits import EXIT_SETUP

#: The cgroup controllers resource limits use, per version.
_V1_USED = ("memory", "pids", "cpuacct", "cpu")
_V2_USED = ("memory", "pids", "cpu")
#: Keys of doctor's data printed in their own form (or not at all) as text.
_DOCTOR_OWN_LINES = ("notes", "default_spec", "normal_user", "cgroup_v2", "cgroup_v2_controllers")
#: The account ``hermetic doctor`` run by root tries the default spec as.
_NORMAL_USER = "nobody"


def add(sub: Subcommands) -> None:
    """Add ``hermetic doctor``'s parser, and its command, to ``sub``."""
    doctor = sub.add_parser(
        "doctor",
        help="show what this host can enforce, and whether the default spec runs here "
        "(as root: for a normal user too); exit 125 when it cannot",
        description=_describe(
            "Show what this host can enforce (namespaces, seccomp, Landlock, cgroups), "
            "whether the default spec runs here, and which of its limits are weakened. Run "
            f"by root, it checks a normal user ({_NORMAL_USER}) too.",
            "Exit status: 0 when the default spec runs here (run by root: as a normal user "
            "too), 125 when it cannot.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=_cmd_doctor, cmd_parser=doctor)


def _controllers(names: Sequence[str], used: Sequence[str], mounted: bool = True) -> str:
    """The controllers of one cgroup version, and whether limits can use any."""
    if not mounted:
        return "not mounted"
    if not any(c in names for c in used):
        return f"{', '.join(names) or 'no controllers'} (none of {', '.join(used)}: unused)"
    return ", ".join(names)


def _default_spec_check() -> dict[str, Any]:
    """Whether the default spec (the toolchain read-only, ResourceLimits.hermetic()
    as SandboxSpec and the builders give it) runs ``true`` for this user,
    and how each of its limits is enforced here."""
    spec = dataclasses.replace(_default_spec(True), resources=ResourceLimits.hermetic())
    report: dict[str, Any] = {"uid": os.geteuid(), "runs": False, "error": None, "limits": {}}
    try:
        executor = HermeticExecutor.create(spec).unwrap()
        try:
            result = executor.execute(["true"], timeout=60).unwrap()
        finally:
            executor.close()
    except HermeticError as e:
        report["error"] = str(e)
        return report
    if result.exit_code != 0:
        report["error"] = f"'true' ended with status {result.shell_status()}"
        return report
    report["runs"] = True
    weak = {w.partition(":")[0]: w.partition(": ")[2] for w in result.unenforced_limits}
    for name in spec.resources.defaulted:
        value = getattr(spec.resources, name)
        report["limits"][name] = {"value": value, "weakened": weak.get(name)}
    return report


def _normal_user_check() -> dict[str, Any] | None:
    """Root's doctor: the default spec's check run as a normal user (None
    when there is no such account to run as)."""
    import pwd
    import subprocess

    try:
        user = pwd.getpwnam(_NORMAL_USER)
    except KeyError:
        return None
    argv = [sys.executable, "-m", "hermetic", "doctor", "--json"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    try:
        p = subprocess.run(
            argv,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            env=env,
            cwd="/",
            timeout=300,
            check=False,
        )
        found: dict[str, Any] = json.loads(p.stdout)["default_spec"]
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as e:
        why = getattr(e, "strerror", None) or str(e)
        return {"user": _NORMAL_USER, "checked": False, "error": f"could not check: {why}"}
    return {"user": _NORMAL_USER, "checked": True, **found}


def _say_check(title: str, check: dict[str, Any]) -> None:
    if not check.get("runs"):
        _say(f"{title:24} CANNOT RUN: {check.get('error')}")
        return
    _say(f"{title:24} runs (uid {check['uid']})")
    for name, limit in check["limits"].items():
        how = "enforced" if limit["weakened"] is None else f"weakened: {limit['weakened']}"
        _say(f"  {name:22} {limit['value']:>12}  {how}")


def _launcher_note() -> str | None:
    """Why hermetic-launch cannot work here, if it cannot: Yama's ptrace
    scope 2 or 3 refuses the write that proves a caller to its daemon."""
    from hermetic.serve.peer import yama_scope

    scope = yama_scope()
    if scope is None or scope < 2:
        return None
    return (
        f"kernel.yama.ptrace_scope is {scope}: no caller can prove itself to the daemon, "
        "so every launch fails with 125 (docs/launch-protocol.md)"
    )


def _cmd_doctor(ns: argparse.Namespace) -> int:
    from hermetic.platforms import current

    caps = current().capabilities()
    data: dict[str, Any] = caps.to_dict()
    mine = _default_spec_check()
    data["default_spec"] = mine
    other = _normal_user_check() if os.geteuid() == 0 else None
    data["normal_user"] = other
    if ns.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if key in _DOCTOR_OWN_LINES:
                continue
            if key == "cgroup_v1_controllers":
                key, value = "cgroup_v1", _controllers(value, _V1_USED, bool(value))
            elif isinstance(value, (list, tuple)):
                value = ", ".join(value) or "-"
            _say(f"{key:24} {value}")
            if key == "cgroup_v1":
                v2 = _controllers(caps.cgroup_v2_controllers, _V2_USED, caps.cgroup_v2)
                _say(f"{'cgroup_v2':24} {v2}")
        for key, note in caps.notes:
            _say(f"note: {key}: {note}")
        launcher = _launcher_note()
        if launcher is not None:
            _say(f"note: hermetic-launch: {launcher}")
        _say_check("default spec", mine)
        if other is not None and not other["checked"]:
            _say(f"{'as ' + other['user']:24} {other['error']}")
        elif other is not None:
            _say_check(f"as {other['user']}", other)
    # A normal user's failure counts only when it could be checked at all.
    normal_fails = other is not None and other["checked"] and not other["runs"]
    return 0 if caps.can_sandbox() and mine["runs"] and not normal_fails else EXIT_SETUP
