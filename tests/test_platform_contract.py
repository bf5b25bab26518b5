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


def test_every_prepared_spec_can_be_closed():
    for m in (linux, macos, windows):
        assert callable(getattr(m.Prepared, "close", None)), m.__name__


def test_an_unknown_os_fails_closed():
    with pytest.raises(UnsupportedError, match="not implemented"):
        unsupported.prepare(SandboxSpec())
    caps = unsupported.capabilities()
    assert not caps.can_sandbox()
    assert dict(caps.notes)["sandbox"]


def test_windows_refuses_a_hermetic_spec_naming_the_layers():
    # Job objects isolate neither files nor the network: fail closed.
    with pytest.raises(UnsupportedError, match="filesystem and network isolation"):
        windows.prepare(SandboxSpec())
    notes = dict(windows.capabilities().notes)
    assert "network" in notes["not isolated"] and "files" in notes["not isolated"]


def test_windows_runs_non_hermetically_only_when_asked():
    from hermetic import ResourceLimits

    spec = SandboxSpec(resources=ResourceLimits(max_file_size=0, max_open_files=0))
    prepared = windows.prepare(spec, require_hermetic=False)
    assert prepared.unenforced == ()
    with pytest.raises(UnsupportedError, match="fork or exec"):
        from hermetic import ProcessPolicy

        windows.prepare(
            SandboxSpec(process=ProcessPolicy(allow_exec=False)), require_hermetic=False
        )


@pytest.mark.skipif(__import__("sys").platform == "darwin", reason="macOS has the sandbox")
def test_macos_backend_elsewhere_fails_closed():
    # No sandbox_init and no sandbox-exec on this OS: nothing runs.
    assert macos.capabilities().isolation == "none"
    with pytest.raises(UnsupportedError, match="filesystem isolation"):
        macos.prepare(SandboxSpec())
