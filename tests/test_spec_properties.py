"""Properties of the spec's entry points, over arbitrary input.

Whatever ``from_json``, ``from_dict``, the ``SandboxSpec`` constructor,
``validate()``, the builders or ``check_argv`` are given, they answer with a
valid value or a SpecError, never another exception; a spec that is accepted
reads back from its own ``to_json`` unchanged, and that text is UTF-8.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermetic.core.builders import HermeticSpecBuilder, SandboxSpecBuilder
from hermetic.core.errors import SpecError
from hermetic.core.paths import PathSet, is_within
from hermetic.core.spec import SandboxSpec, check_argv, check_cwd

#: Deterministic (CI runs the same examples every time), no example database
#: left in the tree, no per-example deadline on a loaded 2-core machine.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Any code point, surrogates included (Python's str holds them; no file
#: name, argument or environment entry can).
any_char = st.one_of(
    st.characters(exclude_categories=()),
    # Drawn often: a lone surrogate, escaped bytes (os.fsdecode), NUL, newline.
    st.sampled_from(["\ud800", "\udfff", "\udc41", "\udcff", "\udc80", "\0", "\n", "/", "."]),
)
any_text = st.text(any_char, max_size=40)
#: Text that looks like what a spec holds, with the awkward cases nearby.
path_text = st.one_of(
    st.builds(lambda t: "/tmp/hm-prop/" + t, any_text),
    st.sampled_from(
        [
            "/",
            "",
            "relative",
            "/tmp/hm-prop/a\0b",
            "/tmp/hm-prop/\ud800",
            "/tmp/hm-prop/" + os.fsdecode(b"\xff\xfe"),
            "/tmp/hm-prop/" + "x" * 5000,
            "/" + "/".join(["d"] * 3000),
            "/proc/self/cwd",
            "/tmp/hm-prop/../hm-prop/./x//",
        ]
    ),
    any_text,
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def _section(
    keys: dict[str, st.SearchStrategy[Any]], *, noisy: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with some of ``keys``, each value of its own kind, or
    (``noisy``) of any kind, with sometimes an unknown key."""
    if not noisy:
        return st.fixed_dictionaries({}, optional=keys)
    fields = {k: st.one_of(v, json_values) for k, v in keys.items()}
    return st.fixed_dictionaries({}, optional={**fields, "unknown": json_values})


def _documents(noisy: bool) -> st.SearchStrategy[dict[str, Any]]:
    def section(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return _section(keys, noisy=noisy)

    return section(
        {
            "version": st.sampled_from([1, 2, 3, 2.0, "2", None, True] if noisy else [1, 2]),
            "inputs": st.lists(path_text, max_size=3),
            "outputs": st.lists(path_text, max_size=3),
            "temps": st.lists(path_text, max_size=3),
            "workdir": st.one_of(st.none(), path_text),
            "network": section(
                {
                    "is_hermetic": st.booleans(),
                    "allow_http": st.booleans(),
                    "allow_https": st.booleans(),
                    "allow_dns": st.booleans(),
                    "host_network": st.booleans(),
                    "fresh_namespace": st.booleans(),
                    "allowed_hosts": st.lists(
                        st.one_of(
                            st.builds(lambda h, p: f"{h}:{p}", any_text, numbers),
                            st.sampled_from(["example.org:443", "[::1]:80", "a:" + "9" * 5000]),
                            any_text,
                        ),
                        max_size=3,
                    ),
                }
            ),
            "environment": section(
                {
                    "vars": st.dictionaries(any_text, any_text, max_size=4),
                    "inherit_path": st.booleans(),
                    "inherit_home": st.booleans(),
                }
            ),
            "resources": section(
                {
                    "max_memory_bytes": numbers,
                    "max_processes": numbers,
                    "max_open_files": numbers,
                    "best_effort": st.booleans(),
                }
            ),
            "process": section(
                {
                    "max_children": numbers,
                    "allow_fork": st.booleans(),
                    "kill_on_parent_exit": numbers,
                }
            ),
            "reproducibility": section(
                {"source_date_epoch": st.one_of(st.none(), numbers), "fresh_clocks": st.booleans()}
            ),
        }
    )


#: Mostly well-formed documents (so the values inside are reached) and
#: documents with anything anywhere.
spec_documents = st.one_of(_documents(noisy=False), _documents(noisy=True))


def _accepted_or_spec_error(parse: Any, document: Any) -> SandboxSpec | None:
    try:
        spec = parse(document)
    except SpecError as err:
        str(err)  # the message itself must be printable as str
        return None
    assert isinstance(spec, SandboxSpec)
    text = spec.to_json()
    text.encode("utf-8")  # a spec's JSON is always valid UTF-8 text
    again = SandboxSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text and again.digest() == spec.digest()
    assert SandboxSpec.from_json(text.encode("utf-8")) == spec
    try:
        spec.validate()
    except SpecError:
        pass
    return spec


@PROPERTY
@given(spec_documents)
def test_from_json_of_spec_shaped_documents(document: dict[str, Any]) -> None:
    text = json.dumps(document, ensure_ascii=False, allow_nan=True)
    _accepted_or_spec_error(SandboxSpec.from_json, text)
    _accepted_or_spec_error(SandboxSpec.from_json, json.dumps(document))
    _accepted_or_spec_error(SandboxSpec.from_dict, document)


@PROPERTY
@given(json_values)
def test_from_json_of_any_json_value(value: Any) -> None:
    _accepted_or_spec_error(SandboxSpec.from_json, json.dumps(value))
    _accepted_or_spec_error(SandboxSpec.from_dict, value)


@PROPERTY
@given(st.one_of(st.text(any_char), st.binary()))
def test_from_json_of_any_text_or_bytes(data: str | bytes) -> None:
    _accepted_or_spec_error(SandboxSpec.from_json, data)


@PROPERTY
@given(st.integers(min_value=0, max_value=200_000), st.sampled_from(["[]", "{}", '{"a":}']))
def test_from_json_of_any_depth(depth: int, brackets: str) -> None:
    # Objects nest as {"a": {"a": ...}}: a key before each level.
    if brackets == "[]":
        text = "[" * depth + "]" * depth
    else:
        text = '{"a":' * depth + "1" + "}" * depth
    _accepted_or_spec_error(SandboxSpec.from_json, '{"inputs": ' + text + "}")
    _accepted_or_spec_error(SandboxSpec.from_json, text)


python_values = st.one_of(
    json_values,
    st.binary(max_size=8),
    st.tuples(path_text, path_text),
    st.lists(st.one_of(path_text, st.binary(max_size=4), st.integers()), max_size=3),
    st.dictionaries(st.one_of(any_text, st.integers()), st.one_of(any_text, st.none())),
)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": python_values,
            "outputs": st.lists(path_text, max_size=3),
            "temps": python_values,
            "workdir": st.one_of(path_text, python_values),
            "environment": python_values,
            "network": python_values,
            "resources": python_values,
        },
    )
)
def test_the_constructor_and_validate(kwargs: dict[str, Any]) -> None:
    _accepted_or_spec_error(lambda kw: SandboxSpec(**kw), kwargs)


builder_calls = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["input", "output", "temp", "workdir"]), python_values),
        st.tuples(st.sampled_from(["input", "output", "temp", "workdir"]), path_text),
        st.tuples(st.just("env"), st.tuples(any_text, any_text)),
        st.tuples(st.just("env"), st.tuples(python_values, python_values)),
        st.tuples(
            st.sampled_from(["with_environment", "with_network", "with_resources", "with_process"]),
            python_values,
        ),
    ),
    max_size=5,
)


@PROPERTY
@given(builder_calls)
def test_builders_never_raise(calls: list[tuple[str, Any]]) -> None:
    builder = SandboxSpecBuilder.create()
    for name, arg in calls:
        method = getattr(builder, name)
        builder = method(*arg) if name == "env" else method(arg)
    result = builder.build()
    assert result.is_ok() or isinstance(result.unwrap_err(), SpecError)
    if result.is_ok():
        _accepted_or_spec_error(lambda s: s, result.unwrap())


@PROPERTY
@given(python_values, python_values, python_values, python_values)
def test_presets_never_raise(root: Any, sources: Any, out: Any, temp: Any) -> None:
    for result in (
        HermeticSpecBuilder.for_build(root, sources, out, temp),
        HermeticSpecBuilder.for_test(root, out, temp),
    ):
        assert result.is_ok() or isinstance(result.unwrap_err(), SpecError)


@PROPERTY
@given(st.one_of(python_values, st.lists(st.one_of(any_text, python_values), max_size=4)))
def test_check_argv_and_cwd(value: Any) -> None:
    try:
        argv = check_argv(value)
    except SpecError as err:
        assert err.field is not None and err.field.startswith("argv")
    else:
        assert argv and argv[0]
        assert all("\0" not in a and isinstance(os.fsencode(a), bytes) for a in argv)
    try:
        cwd = check_cwd(value)
    except SpecError as err:
        assert err.field == "cwd"
    else:
        assert cwd is None or os.fsencode(cwd).startswith(b"/")


#: Components chosen so that sorting puts tricky neighbours together:
#: "-" and "." sort before "/", "0" right after it.
_component = st.sampled_from(["a", "b", "a-", "a.", "a0", "ab"])
_paths = st.lists(_component, min_size=0, max_size=3).map(lambda c: "/" + "/".join(c))
_path_sets = st.lists(_paths, max_size=6).map(lambda ps: PathSet(tuple(ps)))


@PROPERTY
@given(_path_sets, _path_sets)
def test_overlaps_is_every_pair_one_within_the_other(mine: PathSet, theirs: PathSet) -> None:
    expected = [
        (m, t) for m in mine.paths for t in theirs.paths if is_within(m, t) or is_within(t, m)
    ]
    assert mine.overlaps(theirs) == expected
    assert mine.disjoint(theirs) == (not expected)
