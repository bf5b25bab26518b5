"""The command line's subcommands refuse alike: one line on stderr with the
documented exit status, and with --json the same refusal as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: A generous bound that proves a command ends.
ENDS_WITHIN = 120


def _hermetic(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    prefix = textwrap.dedent(code) + "from hermetic.cli import main\n"
    return subprocess.run(
        [sys.executable, "-c", f"{prefix}import sys\nsys.exit(main({list(args)!r}))"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=ENDS_WITHIN,
    )


@pytest.mark.parametrize("name", ["run", "verify", "digest"])
def test_a_missing_command_is_refused_alike(name: str) -> None:
    p = _hermetic(name)
    said = f"{name}: no command given (hermetic {name} [options] -- CMD ARGS...)"
    assert p.returncode == 123 and p.stdout == "", p.stderr
    assert p.stderr.startswith("hermetic: ") and p.stderr.count("\n") == 1, p.stderr
    assert said in p.stderr
    if name == "digest":
        return  # runs nothing, so it has no --json
    p = _hermetic(name, "--json")
    error = json.loads(p.stdout)["error"]
    assert p.returncode == 123 and said in p.stderr
    assert error["kind"] == "spec" and error["exit_status"] == 123 and said in error["message"]


#: Imports of the 'remote' extra's packages fail, as where it is not installed.
WITHOUT_THE_EXTRA = """
import sys

class NoExtra:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("grpc", "google", "buildgrid"):
            raise ImportError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoExtra())
for loaded in [m for m in sys.modules if m.partition(".")[0] in ("grpc", "google")]:
    del sys.modules[loaded]
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["runner", "--listen", "unix:/nonexistent/runner.sock"],
        ["worker", "--server", "grpc://127.0.0.1:1", "--instance", "i"],
    ],
    ids=["runner", "worker"],
)
def test_runner_and_worker_without_the_remote_extra_say_how_to_install_it(
    argv: list[str],
) -> None:
    p = _hermetic(*argv, code=WITHOUT_THE_EXTRA)
    assert p.returncode == 125, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(
        f"hermetic: {argv[0]} needs the 'remote' extra: pip install 'hermetic[remote]' (no module"
    ), p.stderr
