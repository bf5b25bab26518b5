"""Every backend exports the same function set; the unimplemented ones refuse."""

from __future__ import annotations

import inspect

import pytest

from hermetic import SandboxSpec, UnsupportedError
from hermetic.platforms import linux, macos, unsupported, windows

BACKENDS = [linux, macos, windows, unsupported]


def _public(module):
    return sorted(module.__all__)


def test_backends_export_identical_names():
    names = {m.__name__: _public(m) for m in BACKENDS}
    assert len({tuple(v) for v in names.values()}) == 1, names
    for m in BACKENDS:
        for name in m.__all__:
            assert hasattr(m, name), (m.__name__, name)


def test_backend_signatures_match():
    for fn in ("capabilities", "prepare", "execute"):
        sigs = {str(inspect.signature(getattr(m, fn))) for m in BACKENDS}
        assert len(sigs) == 1, (fn, sigs)


@pytest.mark.parametrize("backend", [macos, windows, unsupported])
def test_unimplemented_backends_fail_closed(backend):
    with pytest.raises(UnsupportedError, match="not implemented"):
        backend.prepare(SandboxSpec())
    caps = backend.capabilities()
    assert not caps.can_sandbox()
    assert dict(caps.notes)["sandbox"]
