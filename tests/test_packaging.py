"""What the distribution says about itself, and what it ships.

- The LICENSE file is the Apache License 2.0 the metadata names, and the
  installed distribution carries it.
- The classifiers claim only what has run (Linux), and ``Typing :: Typed``.
- Importing hermetic, and one execution on Linux, never need psutil (only
  a live ResourceMonitor snapshot samples with it).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Debian ships the license's text here (base-files).
DEBIAN_APACHE = "/usr/share/common-licenses/Apache-2.0"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_license_file_is_the_apache_2_0_text() -> None:
    text = _read(os.path.join(ROOT, "LICENSE"))
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    if os.path.exists(DEBIAN_APACHE):
        assert text == _read(DEBIAN_APACHE)


def test_installed_metadata_names_the_license_and_carries_it() -> None:
    dist = importlib.metadata.distribution("hermetic")
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    assert dist.metadata.get_all("License-File") == ["LICENSE"]
    assert dist.read_text("licenses/LICENSE") == _read(os.path.join(ROOT, "LICENSE"))


def test_classifiers_claim_only_what_has_run() -> None:
    classifiers = importlib.metadata.metadata("hermetic").get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    systems = [c for c in classifiers if c.startswith("Operating System ::")]
    # The macOS and Windows backends have never run on their systems.
    assert systems == ["Operating System :: POSIX :: Linux"], systems
    # The SPDX expression replaces a License classifier (setuptools refuses both).
    assert not [c for c in classifiers if c.startswith("License ::")]


_WITHOUT_PSUTIL = """
import importlib, pkgutil, sys

class NoPsutil:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "psutil":
            raise ImportError("psutil is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, NoPsutil())
sys.modules.pop("psutil", None)
import hermetic
for info in pkgutil.walk_packages(hermetic.__path__, "hermetic."):
    if info.name != "hermetic.__main__":  # runs the command line
        importlib.import_module(info.name)
assert "psutil" not in sys.modules
"""


def test_no_module_imports_psutil() -> None:
    code = _WITHOUT_PSUTIL
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.linux
def test_an_execution_on_linux_never_needs_psutil() -> None:
    code = _WITHOUT_PSUTIL + textwrap.dedent(
        """
        from hermetic.cli import main
        code = main(["run", "--", "sh", "-c", "echo ran"])
        assert "psutil" not in sys.modules
        sys.exit(code)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr[-2000:]
