"""The published JSON Schema of the spec file (hermetic.spec_schema()) agrees
with the code that reads and writes the file.

- Every document ``to_json`` writes, and every document ``from_json``
  accepts, validates against the schema (the documents of
  tests/test_spec_properties.py's strategies, and specs with every field
  set).
- The schema's properties are exactly the keys ``from_json`` accepts, each
  section's the fields of its dataclass, and its defaults those of
  ``SandboxSpec()``.
- What ``from_json`` refuses for a wrong type, an unknown key, a limit out
  of range, a relative path, a bad host or variable name, the schema
  refuses too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_spec_properties import PROPERTY, spec_documents

import hermetic
from hermetic import (
    EnvSet,
    NetworkPolicy,
    PathSet,
    ProcessPolicy,
    ReproducibilityPolicy,
    ResourceLimits,
    SandboxSpec,
    SpecError,
)

SCHEMA = hermetic.spec_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

#: Each section of the file and the dataclass its fields come from.
SECTIONS: dict[str, type] = {
    "network": NetworkPolicy,
    "environment": EnvSet,
    "resources": ResourceLimits,
    "process": ProcessPolicy,
    "reproducibility": ReproducibilityPolicy,
}
DEFAULT = SandboxSpec()
DEFAULT_DOC: dict[str, Any] = json.loads(DEFAULT.to_json())


def _schema_accepts(document: object) -> bool:
    return VALIDATOR.is_valid(document)


def _code_accepts(document: object) -> bool:
    try:
        SandboxSpec.from_json(json.dumps(document))
    except SpecError:
        return False
    return True


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_ships_in_the_package() -> None:
    path = os.path.join(os.path.dirname(hermetic.__file__), "schema", "spec.schema.json")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == SCHEMA
    # A fresh dict each call: a caller changing it changes nobody else's.
    assert hermetic.spec_schema() is not SCHEMA


# -- (a) what the code writes and accepts, the schema accepts ----------------


def _full_spec(root: str) -> SandboxSpec:
    """A spec with every field away from its default (not a consistent one)."""
    return SandboxSpec(
        inputs=PathSet((f"{root}/src", f"{root}/src2")),
        outputs=PathSet((f"{root}/out",)),
        temps=PathSet((f"{root}/tmp",)),
        network=NetworkPolicy(
            is_hermetic=False,
            allow_http=True,
            allow_https=True,
            allow_dns=True,
            allowed_hosts=("Example.org:443", "[::1]:8080", ("10.0.0.1", 80)),
            fresh_namespace=True,
            # Inconsistent with allowed_hosts (validate() refuses the pair),
            # but a value to_json writes all the same.
            host_network=True,
        ),
        environment=EnvSet.of(
            {"PATH": "/usr/bin", "EMPTY": "", "LINES": "a\nb"}, inherit_path=True, inherit_home=True
        ),
        resources=ResourceLimits(
            max_memory_bytes=1,
            max_cpu_time_ms=2,
            max_processes=3,
            max_file_size=0,
            cpu_shares=2048,
            max_disk_io=2**63 - 1,
            max_network_io=5,
            max_open_files=6,
            max_output_bytes=7,
            max_tmp_bytes=1,
            best_effort=True,
        ),
        process=ProcessPolicy(
            allow_fork=False, allow_exec=False, max_children=4, kill_on_parent_exit=False
        ),
        workdir=f"{root}/src",
        reproducibility=ReproducibilityPolicy(source_date_epoch=0, fresh_clocks=True),
    )


def _written(spec: SandboxSpec) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(spec.to_json())
    return document


def test_what_to_json_writes_validates(tmp_path: Any) -> None:
    full = _full_spec(str(tmp_path))
    specs = [
        DEFAULT,
        full,
        SandboxSpec(resources=ResourceLimits.defaults()),
        SandboxSpec(network=NetworkPolicy.host()),
        SandboxSpec(network=NetworkPolicy.allow_hosts(["pypi.org:443"])),
        SandboxSpec(inputs=PathSet(("/", "/tmp/" + os.fsdecode(b"\xff\xfe name")))),
        # Some limits still the preset's, one the caller's.
        SandboxSpec(resources=dataclasses.replace(ResourceLimits.hermetic(), max_processes=7)),
    ]
    for spec in specs:
        document = _written(spec)
        errors = [e.message for e in VALIDATOR.iter_errors(document)]
        assert not errors, (spec, errors)
        # Every section and every field of each section is written.
        assert set(document) == set(SCHEMA["properties"])
        for name in SECTIONS:
            assert set(document[name]) == set(SCHEMA["properties"][name]["properties"]), name
    # The full spec wrote no field at its default.
    for name, value in _written(full).items():
        if name in SECTIONS:
            for key, field_value in value.items():
                assert field_value != DEFAULT_DOC[name][key], (name, key)
        elif name != "version":
            assert value != DEFAULT_DOC[name], name


@PROPERTY
@given(spec_documents)
def test_every_document_from_json_accepts_validates(document: dict[str, Any]) -> None:
    try:
        spec = SandboxSpec.from_json(json.dumps(document))
    except SpecError:
        return
    # Never stricter than the code: what it reads, the schema accepts...
    assert _schema_accepts(document), [e.message for e in VALIDATOR.iter_errors(document)]
    # ...and what it writes back.
    assert _schema_accepts(_written(spec))


#: Text without surrogates (the one thing of text the schema cannot tell),
#: with the characters the rules are about drawn often.
_char = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(list("=\0:/@[] \t\n.") + ["\x1c", "\x85", "\u00a0", "\u2003", "\ufeff"]),
)
_text = st.text(_char, max_size=12)
_ints = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.sampled_from([-1, 0, 1, 2**63 - 1, 2**63]),
)
_paths = st.one_of(st.builds(lambda t: "/" + t, _text), _text)
_ports = st.one_of(
    st.integers(min_value=0, max_value=70_000).map(str),
    st.sampled_from(["00080", "000080", "65535", "65536", "", "8a", "\uff18"]),
)
_hosts = st.one_of(
    st.builds("{}:{}".format, _text, _ports),
    st.builds("[{}]:{}".format, _text, _ports),
    _text,
)
#: The strategy of a field, by the field: its default's type, or its own.
_SPECIAL: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("network", "allowed_hosts"): st.lists(_hosts, max_size=3),
    ("environment", "vars"): st.dictionaries(_text, _text, max_size=3),
    ("resources", "defaulted"): st.lists(
        st.sampled_from([*ResourceLimits.hermetic().defaulted, "max_memory", ""]), max_size=3
    ),
    ("reproducibility", "source_date_epoch"): st.one_of(st.none(), _ints),
}


def _field_strategy(section: str, key: str, default: object) -> st.SearchStrategy[Any]:
    if (section, key) in _SPECIAL:
        return _SPECIAL[section, key]
    if isinstance(default, bool):
        return st.booleans()
    assert isinstance(default, int), (section, key)
    return _ints


def _typed_documents() -> st.SearchStrategy[dict[str, Any]]:
    """Documents whose every value has its field's type: each one from_json
    refuses, it refuses for a rule of the value, never for its type."""
    top: dict[str, st.SearchStrategy[Any]] = {
        "version": st.sampled_from([0, 1, 2, 3]),
        "workdir": st.one_of(st.none(), _paths),
        **{name: st.lists(_paths, max_size=3) for name in ("inputs", "outputs", "temps")},
    }
    for name in SECTIONS:
        fields = {
            key: _field_strategy(name, key, value) for key, value in DEFAULT_DOC[name].items()
        }
        top[name] = st.fixed_dictionaries({}, optional=fields)
    assert set(top) == set(DEFAULT_DOC)
    return st.fixed_dictionaries({}, optional=top)


@PROPERTY
@given(_typed_documents())
def test_the_schema_and_from_json_agree_on_typed_documents(document: dict[str, Any]) -> None:
    # Not stricter and, for values of the right type without surrogates,
    # not looser either: the schema states every rule from_json applies.
    assert _schema_accepts(document) == _code_accepts(document), (
        [e.message for e in VALIDATOR.iter_errors(document)],
        _code_accepts(document),
    )


# -- (b) the schema's properties are the fields from_json accepts ------------


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_properties_are_exactly_the_fields_from_json_accepts() -> None:
    # The top level: the spec's fields, plus the format's version.
    top = _fields(SandboxSpec) | {"version"}
    assert set(SCHEMA["properties"]) == top
    assert SCHEMA["additionalProperties"] is False
    # The sections: the spec's fields holding a policy dataclass (not a PathSet).
    policies = {
        f.name: type(getattr(DEFAULT, f.name))
        for f in dataclasses.fields(SandboxSpec)
        if dataclasses.is_dataclass(getattr(DEFAULT, f.name))
        and not isinstance(getattr(DEFAULT, f.name), PathSet)
    }
    assert policies == SECTIONS
    for name in top:
        # Each alone, at the default spec's value, is read...
        assert _code_accepts({name: DEFAULT_DOC[name]}), name
        assert _schema_accepts({name: DEFAULT_DOC[name]}), name
    for name, cls in SECTIONS.items():
        section = SCHEMA["properties"][name]
        assert section["additionalProperties"] is False, name
        assert set(section["properties"]) == _fields(cls), name
        for key in _fields(cls):
            value = DEFAULT_DOC[name][key]
            assert _code_accepts({name: {key: value}}), (name, key)
            assert _schema_accepts({name: {key: value}}), (name, key)
    # ...and a key beside them is refused by both, at every level.
    for where in [None, *SECTIONS]:
        document: dict[str, Any] = {"unknown": 1} if where is None else {where: {"unknown": 1}}
        assert not _code_accepts(document), where
        assert not _schema_accepts(document), where


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def test_each_field_has_the_type_and_default_of_the_code() -> None:
    props = SCHEMA["properties"]
    for name, value in DEFAULT_DOC.items():
        if name in SECTIONS:
            for key, field_value in value.items():
                prop = props[name]["properties"][key]
                types = prop["type"]
                if field_value is None:
                    assert "null" in types, (name, key)
                else:
                    assert _json_type(field_value) in types, (name, key)
                if key != "defaulted":  # absent: the limits the file does not name
                    assert prop["default"] == field_value, (name, key)
        else:
            assert props[name]["default"] == value, name
    # defaulted names exactly the limits (every one the preset holds).
    limits = props["resources"]["properties"]["defaulted"]["items"]["enum"]
    assert sorted(limits) == sorted(ResourceLimits.hermetic().defaulted)


def test_the_versions_are_those_from_json_reads() -> None:
    for version in [0, 1, 2, 3, -1, True, None, "2"]:
        document = {"version": version}
        assert _schema_accepts(document) == _code_accepts(document), version
    assert SCHEMA["properties"]["version"]["default"] == DEFAULT_DOC["version"]


# -- (c) what from_json refuses, the schema refuses where it can say so ------


#: Values of another JSON type, for a field of each type (1.0 is no wrong
#: value for an integer: the schema cannot tell it from 1).
WRONG: dict[str, list[object]] = {
    "boolean": [1, "true", None, []],
    "integer": ["1", True, 1.5, None, []],
    "array": ["/abs", 1, {}, None],
    "object": [[], "x", 1, None, True],
    "string": [1, True, [], None],
}


def test_a_wrong_type_anywhere_is_refused_by_both() -> None:
    cases: list[dict[str, Any]] = []
    for name, value in DEFAULT_DOC.items():
        if name == "version":
            continue
        if name in SECTIONS:
            cases += [{name: bad} for bad in WRONG["object"]]
            for key, field_value in value.items():
                if field_value is None:  # an integer or null
                    wrong = [b for b in WRONG["integer"] if b is not None]
                else:
                    wrong = WRONG[_json_type(field_value)]
                cases += [{name: {key: bad}} for bad in wrong]
        elif value is None:  # workdir: a string or null
            cases += [{name: bad} for bad in WRONG["string"] if bad is not None]
        else:
            cases += [{name: bad} for bad in WRONG[_json_type(value)]]
    assert len(cases) > 100
    for document in cases:
        assert not _code_accepts(document), document
        assert not _schema_accepts(document), document


LIMIT_FIELDS = [
    (section, key)
    for section in ("resources", "process", "reproducibility")
    for key, value in DEFAULT_DOC[section].items()
    if key not in ("best_effort", "defaulted") and not isinstance(value, bool)
]


@pytest.mark.parametrize(("section", "key"), LIMIT_FIELDS)
def test_a_limit_out_of_range_is_refused_by_both(section: str, key: str) -> None:
    for bad in (-1, 2**63):
        document = {section: {key: bad}}
        assert not _code_accepts(document), document
        assert not _schema_accepts(document), document
    for good in (1, 2**63 - 1):
        document = {section: {key: good}}
        assert _code_accepts(document) and _schema_accepts(document), document


REFUSED: list[dict[str, Any]] = [
    {"inputs": ["relative/path"]},
    {"inputs": [""]},
    {"outputs": ["/a\0b"]},
    {"temps": [1]},
    {"workdir": "relative"},
    {"workdir": ""},
    {"resources": {"max_tmp_bytes": 0}},
    {"resources": {"defaulted": ["max_memory"]}},
    {"resources": {"defaulted": "max_processes"}},
    {"environment": {"vars": {"A=B": "x"}}},
    {"environment": {"vars": {"": "x"}}},
    {"environment": {"vars": {"A": "x\0y"}}},
    {"environment": {"vars": {"A": 1}}},
    {"environment": {"vars": ["A=x"]}},
    {"network": {"allowed_hosts": ["example.org"]}},
    {"network": {"allowed_hosts": ["example.org:0"]}},
    {"network": {"allowed_hosts": ["example.org:65536"]}},
    {"network": {"allowed_hosts": ["example.org:123456"]}},
    {"network": {"allowed_hosts": ["example.org:http"]}},
    {"network": {"allowed_hosts": [":443"]}},
    {"network": {"allowed_hosts": ["::1:443"]}},
    {"network": {"allowed_hosts": ["[]:443"]}},
    {"network": {"allowed_hosts": ["[::1]443"]}},
    {"network": {"allowed_hosts": ["user@example.org:443"]}},
    {"network": {"allowed_hosts": ["exa mple.org:443"]}},
    {"network": {"allowed_hosts": ["example.org/x:443"]}},
    {"network": {"allowed_hosts": [["example.org", 443]]}},
    {"network": {"allowed_hosts": "example.org:443"}},
    {"version": 3},
]

ACCEPTED: list[dict[str, Any]] = [
    {"network": {"allowed_hosts": ["example.org:1", "EXAMPLE.org:65535", "[::1]:00443"]}},
    {"network": {"allowed_hosts": ["10.0.0.1:8080", "[fe80::1%eth0]:80"]}},
    {"environment": {"vars": {}}},
    {"environment": {"vars": {"A": "", "B": "x=y\nz"}}},
    {"inputs": ["/", "/a/../b//c/"], "workdir": None},
    {"resources": {"defaulted": [], "max_tmp_bytes": 1}},
    {"reproducibility": {"source_date_epoch": None}},
]


@pytest.mark.parametrize("document", REFUSED, ids=lambda d: json.dumps(d)[:60])
def test_invalid_documents_are_refused_by_both(document: dict[str, Any]) -> None:
    assert not _code_accepts(document)
    assert not _schema_accepts(document)


@pytest.mark.parametrize("document", ACCEPTED, ids=lambda d: json.dumps(d)[:60])
def test_their_valid_neighbours_are_accepted_by_both(document: dict[str, Any]) -> None:
    assert _code_accepts(document)
    assert _schema_accepts(document)


# -- docs/spec.md ------------------------------------------------------------

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "spec.md"


def test_the_documented_example_reads_and_validates() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks
    for block in blocks:
        document = json.loads(block)
        assert _schema_accepts(document), [e.message for e in VALIDATOR.iter_errors(document)]
        spec = SandboxSpec.from_json(block)
        assert _schema_accepts(_written(spec))
        # Consistent, but for inputs that exist on the machine it was written for.
        dataclasses.replace(spec, inputs=PathSet()).validate()


def test_every_field_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, prop in SCHEMA["properties"].items():
        assert f"| `{name}` |" in text, name
        for key in prop.get("properties", {}):
            assert f"| `{key}` |" in text, (name, key)


def test_a_version_1_file_with_an_impossible_max_children_is_refused_by_both():
    """Version 1 files have max_children read as unset, but a value no
    version allows is refused by from_json as by the schema."""
    doc = {"version": 1, "process": {"max_children": -1}}
    with pytest.raises(SpecError, match="max_children"):
        SandboxSpec.from_json(json.dumps(doc))
    assert not _schema_accepts(doc) and not _code_accepts(doc)
    fine = {"version": 1, "process": {"max_children": 32}}
    assert _schema_accepts(fine) and _code_accepts(fine)
