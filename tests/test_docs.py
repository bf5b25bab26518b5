"""The threat model's claims point at tests that exist.

docs/threat-model.md names, for each claim, the test that holds it (a test
function, or a test file as ``tests/NAME.py``).  A renamed or removed test
would leave a claim without its proof: this fails instead.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
THREAT_MODEL = ROOT / "docs" / "threat-model.md"


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_the_threat_model_names_exists():
    text = THREAT_MODEL.read_text()
    files = set(re.findall(r"tests/(test_\w+)\.py", text))
    for name in files:
        assert (ROOT / "tests" / f"{name}.py").is_file(), name
    cited = set(re.findall(r"`(test_\w+)(?:\[[^\]]*\])?`", text))
    assert len(cited) > 40
    missing = sorted(cited - _defined_tests())
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"
