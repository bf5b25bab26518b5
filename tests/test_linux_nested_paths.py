"""Nested declarations, from inside the sandbox: the innermost one decides.

Real build trees need both ways: a writable build directory inside a
read-only source tree (CMake's build/ under the source), and read-only
inputs inside a writable directory (the exec root of Bazel and remote
execution, where outputs are written next to the inputs).  One path
declared both ways is refused.  Run as root, as a normal user, and with
Landlock alone (which cannot carve a read-only input out of a writable
tree, so that layout fails closed there).
"""

from __future__ import annotations

import os

import pytest
from test_linux_isolation import ERRNO, probe, spec_for

from hermetic import HermeticExecutor, PathSet, SandboxSpec, SpecError

pytestmark = pytest.mark.linux


def _tree(scratch: str, runner, *, owned: tuple[str, ...]) -> dict[str, str]:
    """src/{main.c, build/}, root/{in/lib.h, out/}; ``owned`` are given to
    the user the sandbox runs as (the writable ones)."""
    paths = {
        "src": os.path.join(scratch, "src"),
        "build": os.path.join(scratch, "src", "build"),
        "root": os.path.join(scratch, "root"),
        "in": os.path.join(scratch, "root", "in"),
    }
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    for name, text in (("src/main.c", "int main;"), ("root/in/lib.h", "#define X 1")):
        with open(os.path.join(scratch, name), "w") as f:
            f.write(text)
    for name in owned:
        runner.own(paths[name])
    return paths


def test_a_build_directory_inside_a_read_only_source_tree(fs_runner, scratch):
    runner = fs_runner
    p = _tree(scratch, runner, owned=("build",))
    out = probe(
        runner,
        spec_for(inputs=[p["src"]], outputs=[p["build"]]),
        ERRNO
        + f"""
source = open({p["src"] + "/main.c"!r}).read()
print(attempt(lambda: open({p["build"] + "/main.o"!r}, "w").write(source)))
print(attempt(lambda: open({p["src"] + "/main.c"!r}, "w").write("changed")))
print(attempt(lambda: open({p["src"] + "/stray.o"!r}, "w")))
""",
    )
    assert out.text.split() == ["ok", runner.refused, runner.refused], out.text
    with open(os.path.join(p["build"], "main.o")) as f:
        assert f.read() == "int main;"
    with open(os.path.join(p["src"], "main.c")) as f:
        assert f.read() == "int main;"
    assert sorted(os.listdir(p["src"])) == ["build", "main.c"]


def test_read_only_inputs_inside_a_writable_exec_root(fs_runner, scratch):
    runner = fs_runner
    p = _tree(scratch, runner, owned=("root",))
    spec = spec_for(inputs=[p["in"]], outputs=[p["root"]])
    code = (
        ERRNO
        + f"""
header = open({p["in"] + "/lib.h"!r}).read()
print(attempt(lambda: open({p["root"] + "/out.txt"!r}, "w").write(header)))
print(attempt(lambda: open({p["in"] + "/lib.h"!r}, "w").write("changed")))
print(attempt(lambda: open({p["in"] + "/new.h"!r}, "w")))
print(attempt(os.rename, {p["in"]!r}, {p["root"] + "/moved"!r}))
"""
    )
    if runner.landlock:
        # Landlock only adds rights: without a mount namespace the input
        # could not be kept read-only, so the spec is refused, naming it.
        out = runner.run(spec, ["/usr/bin/python3", "-c", code])
        assert out.error is not None and p["in"] in out.error and "Landlock" in out.error
        assert os.listdir(p["root"]) == ["in"]
        return
    out = probe(runner, spec, code)
    assert out.text.split() == ["ok", runner.refused, runner.refused, "EBUSY"], out.text
    with open(os.path.join(p["root"], "out.txt")) as f:
        assert f.read() == "#define X 1"
    with open(os.path.join(p["in"], "lib.h")) as f:
        assert f.read() == "#define X 1"
    assert os.listdir(p["in"]) == ["lib.h"]


def test_a_reproducibility_check_over_a_nested_input(scratch):
    root = os.path.join(scratch, "root")
    inp = os.path.join(root, "in")
    os.makedirs(inp)
    with open(os.path.join(inp, "data"), "w") as f:
        f.write("same")
    spec = spec_for(inputs=[inp], outputs=[root])
    with HermeticExecutor.create(spec).unwrap() as ex:
        report = ex.verify_reproducible(["sh", "-c", f"cat {inp}/data > {root}/copy"]).unwrap()
    assert report.reproducible, report.differences
    assert [e.path for e in report.outputs] == [root, os.path.join(root, "copy")]
    assert os.listdir(root) == ["in"]  # the runs wrote into fresh copies


def test_one_path_declared_both_ways_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    for kind in ("outputs", "temps"):
        spec = SandboxSpec(inputs=PathSet.of(tmp_path / "d"), **{kind: PathSet.of(tmp_path / "d")})
        with pytest.raises(SpecError, match="both an input") as info:
            spec.validate()
        assert info.value.field == kind


def test_the_innermost_declaration_decides(tmp_path):
    for d in ("src/build/gen", "root/in/sub"):
        (tmp_path / d).mkdir(parents=True)
    t = str(tmp_path.resolve())
    spec = SandboxSpec(
        inputs=PathSet.of(tmp_path / "src", tmp_path / "root/in"),
        outputs=PathSet.of(tmp_path / "src/build", tmp_path / "root"),
    )
    spec.validate()
    assert not spec.can_write(f"{t}/src/main.c")
    assert spec.can_write(f"{t}/src/build/gen/x.o")
    assert spec.can_write(f"{t}/root/out.txt")
    assert not spec.can_write(f"{t}/root/in/sub/lib.h")
    assert spec.can_read(f"{t}/root/in/sub/lib.h")
    assert spec.inputs_within_writable() == (f"{t}/root/in",)
