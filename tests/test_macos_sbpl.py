"""The SBPL generator, tested as text (it runs on macOS; the text is the same everywhere)."""

from __future__ import annotations

import os
import pathlib

import pytest

from hermetic import NetworkPolicy, PathSet, ProcessPolicy, SandboxSpec, UnsupportedError
from hermetic.platforms.macos.sbpl import MAX_PROFILE_BYTES, macos_path, sbpl_profile, sbpl_string

GOLDEN = pathlib.Path(__file__).parent / "golden"

SPECS = {
    "build": SandboxSpec(
        inputs=PathSet(("/usr", "/tmp/ws/src")),
        outputs=PathSet(("/tmp/ws/out",)),
        temps=PathSet(("/tmp/ws/tmp",)),
    ),
    "proxy": SandboxSpec(
        inputs=PathSet(("/usr",)),
        network=NetworkPolicy.allow_hosts(["pypi.org:443"]),
    ),
    "host-network": SandboxSpec(network=NetworkPolicy.host()),
    "empty": SandboxSpec(),
}


def _profile(name: str) -> tuple[str, dict[str, str]]:
    return sbpl_profile(SPECS[name], proxy_port=3128 if name == "proxy" else None)


def _balanced(text: str) -> bool:
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not in_string


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_profiles(name):
    text, params = _profile(name)
    expected = (GOLDEN / f"sbpl-{name}.sb").read_text()
    assert text == expected
    assert _balanced(text)
    lines = text.splitlines()
    assert lines[0] == "(version 1)"
    assert lines[1].startswith("(deny default")  # deny default first
    assert all(v.startswith("/") for v in params.values())
    assert not any(v == "/tmp" or v.startswith("/tmp/") for v in params.values())


def test_paths_travel_as_parameters_so_the_text_is_constant_per_shape():
    a = SandboxSpec(inputs=PathSet(("/opt/a",)), outputs=PathSet(("/opt/out1",)))
    b = SandboxSpec(inputs=PathSet(("/srv/b",)), outputs=PathSet(("/srv/out2",)))
    (ta, pa), (tb, pb) = sbpl_profile(a), sbpl_profile(b)
    assert ta == tb and pa != pb
    assert "/opt/a" not in ta and pa["INPUT_0"] == "/opt/a"


def test_strings_are_escaped_and_control_characters_refused():
    assert sbpl_string('/a "b" \\c') == '"/a \\"b\\" \\\\c"'
    assert _balanced(f"(literal {sbpl_string('/x)(allow default')})")
    with pytest.raises(UnsupportedError, match="control character"):
        sbpl_string("/a\nb")
    spec = SandboxSpec(inputs=PathSet((os.getcwd(),)))  # any existing path works here
    text, params = sbpl_profile(spec)
    assert os.getcwd() not in text


def test_macos_spelling_of_private_paths():
    assert macos_path("/tmp/x") == "/private/tmp/x"
    assert macos_path("/var/folders/y") == "/private/var/folders/y"
    assert macos_path("/etc") == "/private/etc"
    assert macos_path("/tmpfoo") == "/tmpfoo"
    assert macos_path("/private/tmp/x") == "/private/tmp/x"


def test_the_compiled_profile_limit_is_respected():
    many = PathSet(tuple(f"/src/pkg{i:05d}/a-rather-long-directory-name" for i in range(1200)))
    with pytest.raises(UnsupportedError, match="at most 65536 bytes"):
        sbpl_profile(SandboxSpec(inputs=many))
    text, params = sbpl_profile(SandboxSpec(inputs=PathSet(tuple(f"/src/p{i}" for i in range(50)))))
    assert len(text) + sum(len(k) + len(v) for k, v in params.items()) < MAX_PROFILE_BYTES


def test_network_and_process_rules():
    hermetic_text, _ = _profile("empty")
    assert "(allow network" not in hermetic_text
    proxy_text, _ = _profile("proxy")
    deny = proxy_text.index("(deny network*")
    allow = proxy_text.index('(allow network-outbound (remote ip "localhost:3128"))')
    assert deny < allow  # later rules win
    assert "(allow network*)" in _profile("host-network")[0]
    with pytest.raises(UnsupportedError, match="port"):
        sbpl_profile(SPECS["proxy"])
    text, _ = _profile("build")
    assert text.index("(allow file-read* file-write*") < text.index("(deny file-write-setugid")
    assert ProcessPolicy().allow_fork  # fork is allowed by default (no rule needed)


def test_unified_log_denials_are_parsed(monkeypatch):
    import json
    import subprocess

    from hermetic.platforms.macos import backend as macos

    lines = [
        "Filtering the log data using ...",
        json.dumps({"eventMessage": "Sandbox: sh(4242) deny(1) file-write-create /private/tmp/x"}),
        json.dumps({"eventMessage": "Sandbox: sh(4242) deny(1) file-write-create /private/tmp/x"}),
        json.dumps({"eventMessage": "Sandbox: curl(77) deny(1) network-outbound 1.1.1.1:443"}),
        json.dumps({"eventMessage": "unrelated"}),
    ]

    def fake_run(cmd, **kw):
        assert cmd[:2] == ["/usr/bin/log", "show"]
        return subprocess.CompletedProcess(cmd, 0, "\n".join(lines), "")

    monkeypatch.setattr(macos.subprocess, "run", fake_run)
    found = {(v.kind.value, v.attempted, v.observed) for v in macos.sandbox_denials(0.0, 1.0)}
    assert found == {
        ("filesystem", "file-write-create /private/tmp/x", "2 times"),
        ("network", "network-outbound 1.1.1.1:443", None),
    }


def test_an_input_inside_an_output_stays_read_only(tmp_path):
    """Later rules win: the input's denial of writes follows the output's
    allowance, so the innermost declaration decides, as on Linux."""
    (tmp_path / "root" / "in").mkdir(parents=True)
    root = str((tmp_path / "root").resolve())
    spec = SandboxSpec(inputs=PathSet.of(f"{root}/in"), outputs=PathSet.of(root))
    text, params = sbpl_profile(spec)
    allow = text.index("(allow file-read* file-write*")
    deny = text.index('(deny file-write* (subpath (param "READONLY_0"))')
    assert allow < deny < text.index("(deny file-write-setugid")
    assert params["READONLY_0"] == macos_path(f"{root}/in")
    plain, _ = sbpl_profile(SandboxSpec(outputs=PathSet.of(root)))
    assert "READONLY" not in plain
