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


def test_every_test_the_threat_model_names_exists() -> None:
    text = THREAT_MODEL.read_text()
    files = set(re.findall(r"tests/(test_\w+)\.py", text))
    for name in files:
        assert (ROOT / "tests" / f"{name}.py").is_file(), name
    cited = set(re.findall(r"`(test_\w+)(?:\[[^\]]*\])?`", text))
    assert len(cited) > 40
    missing = sorted(cited - _defined_tests())
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"


# -- links --------------------------------------------------------------------

#: Documents the README links to that are not written yet, each with why.
#: A link to one of them is allowed only while the file is missing; once it
#: exists its links are checked like any other, and the entry should go.
PENDING: dict[str, str] = {}

#: ``[text](target)``, the target without a title; images too.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*```.*?^\s*```\s*$", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def _documents() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _links(text: str) -> list[str]:
    """The link targets of Markdown ``text``, outside code and comments."""
    for pattern in (_FENCE, _COMMENT, _CODE):
        text = pattern.sub("", text)
    return _LINK.findall(text)


def _anchors(path: pathlib.Path) -> set[str]:
    """The anchors GitHub makes for the headings of ``path``."""
    anchors = set()
    text = _FENCE.sub("", path.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_links_are_found_outside_code() -> None:
    text = '[a](x.md) `[b](y.md)` <!-- [c](z.md) -->\n```\n[d](w.md)\n```\n![e](i.png "t")'
    assert _links(text) == ["x.md", "i.png"]
    assert "what-is-reused-between-actions" in _anchors(ROOT / "docs" / "performance.md")


def test_every_relative_link_in_the_docs_points_to_a_file() -> None:
    broken = []
    checked = 0
    for doc in _documents():
        for target in _links(doc.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: (not checked: no network in the suite)
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)}: {target}"
            checked += 1
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                name = resolved.relative_to(ROOT).as_posix()
                if name not in PENDING:
                    broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where} (no such heading)")
    assert checked > 30
    assert not broken, broken
