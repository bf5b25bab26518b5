"""What the distribution says about itself, and what it ships.

- The LICENSE file is the Apache License 2.0 the metadata names, and the
  installed distribution carries it.
- The classifiers claim only what has run (Linux), and ``Typing :: Typed``.
- Importing hermetic, and one execution on Linux, never need psutil (only
  a live ResourceMonitor snapshot samples with it).
- The wheel is tagged cp310-abi3, like its ``_native.abi3.so``, and
  auditwheel still accepts it for a manylinux tag.
- The sdist holds what its tests read, and a few of them pass when it is
  installed into a fresh virtual environment and run from the unpacked tree.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import pytest
from conftest import unavailable

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
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
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
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr[-2000:]


def _limited_api() -> bool:
    """Whether this interpreter builds the stable-ABI extension (setup.py)."""
    return (
        sys.implementation.name == "cpython"
        and not hasattr(sys, "gettotalrefcount")
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )


def _clean_tree(tmp_path: pathlib.Path) -> str:
    """A copy of the source tree without what builds and runs leave in it:
    a build then starts from the sources alone (a stale egg-info's file
    list would otherwise reach the sdist), and needs no write access to
    the checkout."""
    dst = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        dst,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            ".benchmarks",
            "*.so",
            "*.o",
            "_native.c",
        ),
    )
    return str(dst)


def _auditwheel() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "auditwheel")
    found = shutil.which("auditwheel") or (beside if os.path.exists(beside) else None)
    if found is None:
        unavailable("auditwheel is missing (it is in the [test] extra)")
    assert found is not None
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="manylinux is Linux's")
def test_wheel_is_tagged_abi3_and_auditwheel_accepts_it(tmp_path: pathlib.Path) -> None:
    if not _limited_api():
        pytest.skip("a debug or free-threaded interpreter builds a full-ABI extension")
    auditwheel = _auditwheel()
    tree = _clean_tree(tmp_path)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), tree],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "hermetic-*.whl"))
    assert re.fullmatch(r"hermetic-[^-]+-cp310-abi3-linux_\w+\.whl", os.path.basename(wheel))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        wheel_meta = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert "hermetic/_native.abi3.so" in names
    assert "hermetic/schema/spec.schema.json" in names  # hermetic.spec_schema() reads it
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert re.search(r"^Tag: cp310-abi3-linux_\w+$", wheel_meta, re.MULTILINE), wheel_meta
    show = subprocess.run([auditwheel, "show", wheel], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "manylinux_" in show.stdout, show.stdout


#: What the unpacked sdist's tests read, besides the package's own sources.
SDIST_NEEDS = (
    "LICENSE",
    "README.md",
    "build_ffi.py",
    "csrc/hermetic.h",
    "hermetic/schema/spec.schema.json",
    "docs/threat-model.md",
    "docs/architecture.md",
    "tests/conftest.py",
    "tests/golden/sbpl-build.sb",
    "tests/test_docs.py",
)
#: A few tests to run from the unpacked sdist: the docs check, the golden
#: profiles, the model and its schema (read from the installed package), and
#: one action run through the compiled core.
SDIST_TESTS = (
    "tests/test_docs.py",
    "tests/test_macos_sbpl.py",
    "tests/test_spec.py",
    "tests/test_spec_schema.py",
    "tests/test_linux_executor.py::test_binary_output_is_exact",
)


@pytest.mark.slow
@pytest.mark.linux
def test_sdist_installs_into_a_fresh_venv_and_its_tests_run(tmp_path: pathlib.Path) -> None:
    try:
        import build  # noqa: F401
    except ImportError:
        unavailable("the build package is missing (it is in the [test] extra)")
    clean = _clean_tree(tmp_path)
    made = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path / "dist"), clean],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    (sdist,) = glob.glob(str(tmp_path / "dist" / "hermetic-*.tar.gz"))
    with tarfile.open(sdist) as tf:
        top = os.path.commonpath(tf.getnames())
        members = {os.path.relpath(n, top) for n in tf.getnames()}
        # The "data" filter where this Python has it (3.11.4 and later).
        if hasattr(tarfile, "data_filter"):
            tf.extractall(tmp_path / "src", filter="data")
        else:
            tf.extractall(tmp_path / "src")
    missing = [n for n in SDIST_NEEDS if n not in members]
    assert not missing, missing
    assert not [n for n in members if n.endswith((".so", ".pyc", ".o"))]
    tree = str(tmp_path / "src" / top)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{sdist}[test]"],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    # Run from the unpacked tree, by the fresh venv's pytest: hermetic comes
    # from the venv (the tree has no compiled core), the tests from the tree.
    run = subprocess.run(
        [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", *SDIST_TESTS],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # All of them ran: nothing skipped, nothing deselected.
    assert re.fullmatch(r"\d+ passed in .*", run.stdout.splitlines()[-1]), run.stdout[-3000:]
