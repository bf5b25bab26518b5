"""create() probes what the plan will use: never an executor whose every action fails.

A caller that is root but lacks CAP_SYS_ADMIN (a container's root, a
service with a bounded capability set) can create user namespaces but not
the namespaces root's own path creates without one (the mount namespace it
prepares, the pooled network namespaces).  create() must either refuse,
naming the layer and why, or build a plan that runs.  Each case runs the
API in a process of its own under a reduced capability set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import FORBID_USERNS, unavailable

pytestmark = [pytest.mark.linux, pytest.mark.root]


def _bounded(caps: str) -> list[str]:
    """Run as root with the capability bounding set ``caps`` (setpriv's syntax)."""
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={caps}", "--"]


NO_SYS_ADMIN = _bounded("-sys_admin")
IN_OWN_USERNS = ["unshare", "--user", "--map-root-user", "--"]

_TRY = """
import json, os, sys
sys.path[:0] = {path!r}
from hermetic import *
with open("/proc/self/status") as f:
    eff = int(next(l for l in f if l.startswith("CapEff:")).split()[1], 16)
out = {{"sys_admin": bool(eff & (1 << 21)), "euid": os.geteuid()}}
spec = SandboxSpec(
    inputs=PathSet(HermeticSpecBuilder.toolchain_inputs()),
    environment=EnvSet.minimal().with_var("PATH", "/usr/bin:/bin"),
    resources=ResourceLimits.defaults(),
    network={network},
)
made = HermeticExecutor.create(spec)
if made.is_err():
    out["create_error"] = str(made.error)
else:
    ex = made.unwrap()
    runs = []
    ACTION = "echo ran; ls /work /root 2>&1; touch /usr/x 2>&1 || echo refused"
    for _ in range(3):  # the first action and the ones the standby prepares
        r = ex.execute(["sh", "-c", ACTION])
        runs.append(
            {{"error": str(r.error)}} if r.is_err()
            else {{"exit": r.unwrap().exit_code, "out": r.unwrap().stdout.decode()}}
        )
    out["runs"] = runs
    ex.close()
print(json.dumps(out))
"""

CASES = {
    "root-without-sys_admin": NO_SYS_ADMIN,
    "root-without-net_admin": _bounded("-net_admin"),
    "root-without-sys_chroot": _bounded("-sys_chroot"),
    "root-without-setpcap": _bounded("-setpcap"),
    "root-without-mknod": _bounded("-mknod"),
    "root-with-sys_admin-only": _bounded("-all,+sys_admin"),
    "root-without-any-capability": _bounded("-all"),
    "root-without-sys_admin-and-setfcap": _bounded("-sys_admin,-setfcap"),
    "root-of-own-userns-without-sys_admin": [*IN_OWN_USERNS, *NO_SYS_ADMIN],
    "root-without-sys_admin-userns-forbidden": [*FORBID_USERNS, *NO_SYS_ADMIN],
}


@pytest.mark.parametrize("network", ["NetworkPolicy()", "NetworkPolicy.host()"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_create_refuses_or_every_action_runs(case: str, network: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping CAP_SYS_ADMIN from root needs the suite to run as root")
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (util-linux) is needed to run without CAP_SYS_ADMIN")
    code = textwrap.dedent(_TRY.format(path=sys.path, network=network))
    p = subprocess.run(
        [*CASES[case], sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["euid"] == 0, out
    if "create_error" in out:
        # Refused up front: the message names the layer and why.
        assert "namespaces" in out["create_error"], out
        return
    for run in out["runs"]:
        assert run.get("exit") == 0, out
        assert run["out"].startswith("ran\n"), out
        # A real sandbox: the host's /work and /root cannot be listed, /usr
        # cannot be written.
        for path in ("/work", "/root"):
            assert (
                f"cannot access '{path}'" in run["out"]
                or f"cannot open directory '{path}'" in run["out"]
            ), out
        assert "cannot touch '/usr/x'" in run["out"] and "refused" in run["out"], out
