"""A Bazel workspace for the farm's end-to-end test, written into a directory.

What it holds (Bazel 4.2.3, Debian's ``bazel-bootstrap``, offline):

- ``//lib:l000`` ... ``//lib:l099``: 100 ``cc_library`` targets in a binary
  tree (``lNNN`` depends on ``l(2N+1)`` and ``l(2N+2)``), each a tiny .c and
  .h; ``lNNN()`` returns N plus what its dependencies return, so the root's
  value is 0 + 1 + ... + 99 = :data:`TREE_SUM`.
- ``//:main``, a ``cc_binary`` on ``//lib:l000`` that prints
  ``tree sum 4950``; ``//:main_output`` runs it in the farm.
- ``//:gen_dir``, a Starlark rule whose output is a directory
  (``ctx.actions.declare_directory``), and ``//:dir_listing``, an action
  that reads that directory as an input.
- ``//:slow``, a genrule that marks its exec root and sleeps
  :data:`SLOW_SECONDS`: an action a worker is sure to hold when it gets
  SIGTERM.
- ``//:links``, a genrule whose output is a symbolic link (to its other
  output).
- ``//:sandbox_check``, a genrule that checks the sandbox from inside and
  fails the build when it is not hermetic: no network (a connection to the
  farm's own port fails), nothing of the host's it was not given (the
  workspace's sources, the workers' caches, Bazel's output base, /root,
  /home), its input cannot be written or removed, and its environment is
  only what Bazel put in the Command (``PATH`` under
  ``--incompatible_strict_action_env``).  It prints
  :data:`SANDBOX_MARKER` when every check passed.

Debian's rules_cc 0.0.4 loads ``use_cpp_toolchain``, which Bazel 4.2.3
lacks: :func:`write` copies it beside the workspace with the C++ toolchain
type written out, and :func:`bazel_flags` points Bazel at that copy and at
Debian's rules_java (``--override_repository``), so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

RULES_CC = "/usr/share/bazel/rules/cc"
RULES_JAVA = "/usr/share/bazel/rules/java"
LIBRARIES = 100
TREE_SUM = sum(range(LIBRARIES))
MAIN_OUTPUT = f"tree sum {TREE_SUM}"
SANDBOX_MARKER = "HERMETIC-SANDBOX-CHECKS-PASSED"
#: The directory output's files, relative to it, and their contents.
DIR_FILES = {f"f{i}.txt": f"file {i}\n" for i in range(5)} | {"sub/deep.txt": "deep\n"}
#: ``//:slow`` leaves this file at the top of its exec root, then sleeps:
#: the test finds the worker running it by that file.
SLOW_MARKER = "slow-action-running"
SLOW_SECONDS = 8
#: The variables a shell sets by itself, which are not the Command's.
SHELL_OWN = ("PWD", "SHLVL", "_", "OLDPWD")

DIR_RULE = """\
def _gen_dir_impl(ctx):
    out = ctx.actions.declare_directory(ctx.attr.name)
    ctx.actions.run_shell(
        outputs = [out],
        command = " && ".join([
            "mkdir -p $1/sub",
            "for i in 0 1 2 3 4; do echo file $i > $1/f$i.txt; done",
            "echo deep > $1/sub/deep.txt",
        ]),
        arguments = [out.path],
        mnemonic = "GenDir",
    )
    return [DefaultInfo(files = depset([out]))]

gen_dir = rule(implementation = _gen_dir_impl)
"""

CHECK_SCRIPT = r"""#!/bin/bash
# Runs in the farm's sandbox; exits 1 (failing the build) at the first
# sign that the sandbox is not hermetic.
out="$1"; input="$2"
fail() {{ echo "SANDBOX CHECK FAILED: $*" >&2; exit 1; }}
# No network: the farm's own server, listening on the host's loopback.
if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then
    fail "connected to the farm at 127.0.0.1:{port}"
fi
# Nothing of the host's that the action was not given.
for p in {hidden}; do
    if [ -e "$p" ] && [ -n "$(ls -A "$p" 2>/dev/null)" ]; then
        fail "the host's $p is visible"
    fi
done
# Its input is read-only: neither written, nor removed, nor replaced.
[ -f "$input" ] || fail "the input $input is missing"
if (echo changed >> "$input") 2>/dev/null; then fail "wrote to the input $input"; fi
if rm -f "$input" 2>/dev/null && [ ! -e "$input" ]; then fail "removed the input $input"; fi
[ "$(cat "$input")" = "{input_text}" ] || fail "the input $input changed"
# The environment is the Command's alone (the shell adds its own few).
names=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' \
    | grep -vx -e {shell_own} | sort | tr '\n' ' ')
[ "$names" = "{expected_env} " ] || fail "the environment holds: $names"
echo "{marker}" > "$out"
echo "{marker}"
"""


def _library(i: int) -> tuple[str, str, list[int]]:
    deps = [c for c in (2 * i + 1, 2 * i + 2) if c < LIBRARIES]
    name = f"l{i:03d}"
    header = f"#pragma once\nint {name}(void);\n"
    includes = "".join(f'#include "lib/l{d:03d}.h"\n' for d in deps)
    calls = "".join(f" + l{d:03d}()" for d in deps)
    source = f'#include "lib/{name}.h"\n{includes}int {name}(void) {{ return {i}{calls}; }}\n'
    return header, source, deps


def _patched_rules_cc(dest: str) -> None:
    """Debian's rules_cc with ``use_cpp_toolchain()`` (not in Bazel 4.2.3)
    replaced by the toolchain type it stands for."""
    shutil.copytree(RULES_CC, dest, symlinks=True)
    for dirpath, _dirs, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            os.chmod(path, 0o644)
            if not name.endswith(".bzl"):
                continue
            with open(path) as f:
                text = f.read()
            if "use_cpp_toolchain" not in text:
                continue
            text = text.replace(', "use_cpp_toolchain")', ")").replace(
                "use_cpp_toolchain()", '["@bazel_tools//tools/cpp:toolchain_type"]'
            )
            with open(path, "w") as f:
                f.write(text)


def write(
    root: str, *, farm_port: int, hidden: Sequence[str], expected_env: Sequence[str] = ("PATH",)
) -> str:
    """Write the workspace under ``root`` (``root/ws``, and the rules_cc copy
    in ``root/rules_cc``); returns the workspace's path.

    ``farm_port`` is the port the sandbox must not reach; ``hidden`` the
    host paths it must not see (or see empty); ``expected_env`` the names
    of the only variables it may have."""
    ws = os.path.join(root, "ws")
    os.makedirs(os.path.join(ws, "lib"))
    _patched_rules_cc(os.path.join(root, "rules_cc"))

    def put(rel: str, text: str, mode: int = 0o644) -> None:
        path = os.path.join(ws, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    put("WORKSPACE", 'workspace(name = "farm")\n')
    lib_build = ['package(default_visibility = ["//visibility:public"])\n']
    for i in range(LIBRARIES):
        header, source, deps = _library(i)
        put(f"lib/l{i:03d}.h", header)
        put(f"lib/l{i:03d}.c", source)
        dep_list = ", ".join(f'":l{d:03d}"' for d in deps)
        lib_build.append(
            f'cc_library(name = "l{i:03d}", srcs = ["l{i:03d}.c"], hdrs = ["l{i:03d}.h"], '
            f"deps = [{dep_list}])\n"
        )
    put("lib/BUILD", "".join(lib_build))
    put(
        "main.c",
        '#include <stdio.h>\n#include "lib/l000.h"\n'
        'int main(void) { printf("tree sum %d\\n", l000()); return 0; }\n',
    )
    put("gen_dir.bzl", DIR_RULE)
    input_text = "an input the action must not change"
    put("check_input.txt", input_text + "\n")
    put(
        "check_sandbox.sh",
        CHECK_SCRIPT.format(
            port=farm_port,
            hidden=" ".join(f"'{p}'" for p in hidden),
            input_text=input_text,
            shell_own=" -e ".join(SHELL_OWN),
            expected_env=" ".join(sorted(expected_env)),
            marker=SANDBOX_MARKER,
        ),
        0o755,
    )
    put(
        "BUILD",
        'load(":gen_dir.bzl", "gen_dir")\n\n'
        'cc_binary(name = "main", srcs = ["main.c"], deps = ["//lib:l000"])\n\n'
        "genrule(\n"
        '    name = "main_output",\n'
        '    outs = ["main_output.txt"],\n'
        '    srcs = [":main"],\n'
        '    cmd = "$(location :main) > $@",\n'
        ")\n\n"
        'gen_dir(name = "gen_dir")\n\n'
        "genrule(\n"
        '    name = "dir_listing",\n'
        '    srcs = [":gen_dir"],\n'
        '    outs = ["dir_listing.txt"],\n'
        '    cmd = "find $(location :gen_dir) -type f | sort | xargs cat > $@",\n'
        ")\n\n"
        "genrule(\n"
        '    name = "slow",\n'
        '    outs = ["slow.txt"],\n'
        f'    cmd = "touch {SLOW_MARKER} && sleep {SLOW_SECONDS} && echo slept > $@",\n'
        ")\n\n"
        "genrule(\n"
        '    name = "links",\n'
        '    outs = ["link.txt", "real.txt"],\n'
        '    cmd = "echo real > $(location real.txt) && ln -s real.txt $(location link.txt)",\n'
        ")\n\n"
        "genrule(\n"
        '    name = "sandbox_check",\n'
        '    srcs = ["check_input.txt"],\n'
        '    outs = ["sandbox_check.txt"],\n'
        '    tools = ["check_sandbox.sh"],\n'
        '    cmd = "$(location check_sandbox.sh) $@ $(location check_input.txt)",\n'
        ")\n",
    )
    return ws


#: Every target the test builds.
TARGETS = (
    "//:main",
    "//:main_output",
    "//:gen_dir",
    "//:dir_listing",
    "//:links",
    "//:slow",
    "//:sandbox_check",
)


def bazel_flags(
    root: str, *, executor: str, instance: str, platform: Sequence[tuple[str, str]]
) -> list[str]:
    """The ``bazel build`` flags: every action through the farm, none on
    this machine (no local fallback), the platform properties the farm's
    workers match, offline rules."""
    flags = [
        f"--override_repository=rules_cc={os.path.join(root, 'rules_cc')}",
        f"--override_repository=rules_java={RULES_JAVA}",
        f"--remote_executor={executor}",
        f"--remote_instance_name={instance}",
        "--spawn_strategy=remote",
        "--genrule_strategy=remote",
        "--noremote_local_fallback",
        "--incompatible_strict_action_env",
        # Debian's /etc/bazel/bazelrc turns it on; it only adds noise here.
        "--nosandbox_debug",
        "--jobs=8",
    ]
    flags += [f"--remote_default_exec_properties={k}={v}" for k, v in platform]
    return flags
