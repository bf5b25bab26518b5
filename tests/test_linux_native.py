"""The C core's own guarantees, checked on the built objects."""

from __future__ import annotations

import ast
import glob
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.linux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_sources() -> list[str]:
    """The files whose code runs after clone: those built on rawsys.h."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "linux", "*.c"))):
        with open(path) as f:
            if '#include "rawsys.h"' in f.read():
                found.append(path)
    return found


def test_code_after_clone_calls_nothing_in_libc(tmp_path):
    """The child's code runs in the caller's memory with the caller's TLS:
    no libc calls.  Its files, linked into one object, need no symbol."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (installed by .ci/run)")
    sys.path.insert(0, ROOT)
    try:
        import build_ffi
    finally:
        sys.path.remove(ROOT)
    sources = _child_sources()
    names = {os.path.basename(s) for s in sources}
    expected = {"child.c", "mounts.c", "creds.c", "landlock.c", "net.c", "action.c", "init.c"}
    assert expected <= names
    objects = []
    for src in sources:
        obj = tmp_path / (os.path.basename(src) + ".o")
        subprocess.run(
            [
                "gcc",
                "-c",
                "-O2",
                "-fPIC",
                "-std=gnu11",
                *build_ffi.WARNINGS,
                *build_ffi.FREESTANDING,
                "-I",
                os.path.join(ROOT, "csrc"),
                src,
                "-o",
                str(obj),
            ],
            check=True,
        )
        objects.append(str(obj))
    linked = tmp_path / "child-side.o"
    subprocess.run(["ld", "-r", *objects, "-o", str(linked)], check=True)
    undefined = subprocess.run(
        ["nm", "-u", str(linked)], capture_output=True, text=True, check=True
    )
    assert undefined.stdout.split() == []


def test_child_functions_are_not_exported():
    """The child's cross-file functions are hidden: called directly, never
    through the PLT, and absent from the module's dynamic symbols."""
    from hermetic import _native

    exported = subprocess.run(
        ["nm", "-D", "--defined-only", _native.__file__], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "hm_spawn" in exported
    assert [name for name in exported if name.startswith("hm__")] == []


def _gcc(tmp_path, source: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Compile ``source`` (C text) as the core is compiled, warnings as errors."""
    sys.path.insert(0, ROOT)
    try:
        import build_ffi
    finally:
        sys.path.remove(ROOT)
    src = tmp_path / "check.c"
    src.write_text(source)
    return subprocess.run(
        [
            "gcc",
            "-c",
            "-std=gnu11",
            *build_ffi.WARNINGS,
            "-Werror",
            "-I",
            os.path.join(ROOT, "csrc"),
            *extra,
            str(src),
            "-o",
            str(tmp_path / "check.o"),
        ],
        capture_output=True,
        text=True,
    )


COMPAT = os.path.join(ROOT, "csrc", "linux", "kernel_compat.h")
#: A fallback: ``#ifndef NAME`` / ``#define NAME value`` / ``#endif``.
_FALLBACK = re.compile(r"^#ifndef (\w+)\n#define \1 (.+)\n#endif$", re.MULTILINE)
#: The kernel's own headers for what kernel_compat.h defines (those this
#: host has), included without libc's, which clash with some of them.
_KERNEL_HEADERS = (
    "linux/fcntl.h",
    "linux/landlock.h",
    "linux/mount.h",
    "linux/openat2.h",
    "linux/pidfd.h",
    "linux/sched.h",
    "linux/seccomp.h",
    "linux/wait.h",
)
#: The HM_ copies, each beside the kernel's definition when the host's
#: headers have it.
_COPIES = """
_Static_assert(HM_P_PIDFD == P_PIDFD, "P_PIDFD");
#ifdef MOUNT_ATTR_SIZE_VER0
_Static_assert(sizeof(struct hm_mount_attr) == sizeof(struct mount_attr), "mount_attr");
_Static_assert(offsetof(struct hm_mount_attr, attr_clr) == offsetof(struct mount_attr, attr_clr),
               "mount_attr.attr_clr");
_Static_assert(HM_MOUNT_ATTR_RDONLY == MOUNT_ATTR_RDONLY, "MOUNT_ATTR_RDONLY");
_Static_assert(HM_MOUNT_ATTR_NOSUID == MOUNT_ATTR_NOSUID, "MOUNT_ATTR_NOSUID");
_Static_assert(HM_MOUNT_ATTR_NODEV == MOUNT_ATTR_NODEV, "MOUNT_ATTR_NODEV");
_Static_assert(HM_OPEN_TREE_CLONE == OPEN_TREE_CLONE, "OPEN_TREE_CLONE");
_Static_assert(HM_MOVE_MOUNT_F_EMPTY_PATH == MOVE_MOUNT_F_EMPTY_PATH, "MOVE_MOUNT_F_EMPTY_PATH");
_Static_assert(HM_MOVE_MOUNT_T_EMPTY_PATH == MOVE_MOUNT_T_EMPTY_PATH, "MOVE_MOUNT_T_EMPTY_PATH");
#endif
_Static_assert(HM_AT_RECURSIVE == AT_RECURSIVE, "AT_RECURSIVE");
_Static_assert(HM_AT_EMPTY_PATH == AT_EMPTY_PATH, "AT_EMPTY_PATH");
#if __has_include(<linux/openat2.h>)
_Static_assert(sizeof(struct hm_open_how) == sizeof(struct open_how), "open_how");
_Static_assert(offsetof(struct hm_open_how, resolve) == offsetof(struct open_how, resolve),
               "open_how.resolve");
_Static_assert(HM_RESOLVE_NO_SYMLINKS == RESOLVE_NO_SYMLINKS, "RESOLVE_NO_SYMLINKS");
#endif
#ifdef CLONE_ARGS_SIZE_VER2
_Static_assert(sizeof(struct hm_clone_args) == CLONE_ARGS_SIZE_VER2, "clone_args");
_Static_assert(offsetof(struct hm_clone_args, cgroup) == offsetof(struct clone_args, cgroup),
               "clone_args.cgroup");
_Static_assert(offsetof(struct hm_clone_args, stack) == offsetof(struct clone_args, stack),
               "clone_args.stack");
_Static_assert(HM_CLONE_INTO_CGROUP == CLONE_INTO_CGROUP, "CLONE_INTO_CGROUP");
#endif
_Static_assert(HM_CLONE_NEWTIME == CLONE_NEWTIME, "CLONE_NEWTIME");
#ifdef PIDFD_SIGNAL_PROCESS_GROUP
_Static_assert(HM_PIDFD_SIGNAL_PROCESS_GROUP == PIDFD_SIGNAL_PROCESS_GROUP,
               "PIDFD_SIGNAL_PROCESS_GROUP");
#endif
#if __has_include(<linux/landlock.h>)
_Static_assert(sizeof(struct hm_path_beneath) == sizeof(struct landlock_path_beneath_attr),
               "landlock_path_beneath_attr");
_Static_assert(offsetof(struct hm_path_beneath, parent_fd) ==
                   offsetof(struct landlock_path_beneath_attr, parent_fd),
               "landlock_path_beneath_attr.parent_fd");
_Static_assert(HM_LANDLOCK_RULE_PATH_BENEATH == LANDLOCK_RULE_PATH_BENEATH,
               "LANDLOCK_RULE_PATH_BENEATH");
#ifdef HOST_LANDLOCK_NET
_Static_assert(offsetof(struct hm_ruleset_attr, handled_access_net) ==
                   offsetof(struct landlock_ruleset_attr, handled_access_net),
               "landlock_ruleset_attr.handled_access_net");
#endif
#ifdef HOST_LANDLOCK_SCOPES
_Static_assert(sizeof(struct hm_ruleset_attr) == sizeof(struct landlock_ruleset_attr),
               "landlock_ruleset_attr");
#endif
#endif
"""


def _compat_check(fallbacks: list[tuple[str, str]]) -> str:
    """C text: the kernel's headers, each fallback's value asserted against
    the kernel's definition where there is one, then kernel_compat.h (which
    must add nothing that clashes) and its HM_ copies asserted likewise."""
    lines = ["#include <stddef.h>", "#include <sys/syscall.h>"]
    for h in _KERNEL_HEADERS:
        lines += [f"#if __has_include(<{h}>)", f"#include <{h}>", "#endif"]
    for name, value in fallbacks:
        lines += [f"#ifdef {name}", f'_Static_assert(({name}) == ({value}), "{name}");', "#endif"]
    # What the host's own headers have, before kernel_compat.h adds to it.
    lines += ["#ifdef LANDLOCK_ACCESS_NET_BIND_TCP", "#define HOST_LANDLOCK_NET 1", "#endif"]
    lines += ["#ifdef LANDLOCK_SCOPE_SIGNAL", "#define HOST_LANDLOCK_SCOPES 1", "#endif"]
    lines.append('#include "linux/kernel_compat.h"')
    return "\n".join(lines) + "\n" + _COPIES


def test_kernel_compat_agrees_with_the_kernel_headers(tmp_path):
    """Every fallback and copy in kernel_compat.h has the kernel's value."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (installed by .ci/run)")
    with open(COMPAT) as f:
        fallbacks = _FALLBACK.findall(f.read())
    assert len(fallbacks) >= 10
    done = _gcc(tmp_path, _compat_check(fallbacks))
    assert done.returncode == 0, done.stderr
    # The check compares for real: this host's headers define some of the
    # names, and a wrong value among them fails to compile.
    probe = "#include <sys/syscall.h>\n#include <linux/seccomp.h>\n"
    macros = subprocess.run(
        ["gcc", "-E", "-dM", "-"], input=probe, capture_output=True, text=True, check=True
    ).stdout
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    compared = [(n, v) for n, v in fallbacks if n in defined]
    assert compared, "no fallback is defined by this host's headers: nothing was compared"
    name, value = compared[0]
    wrong = [(n, f"({v}) + 1" if n == name else v) for n, v in fallbacks]
    done = _gcc(tmp_path, _compat_check(wrong))
    assert done.returncode != 0
    assert name in done.stderr


def test_kernel_fallbacks_live_only_in_kernel_compat():
    """No C file but kernel_compat.h defines a fallback for a kernel name."""
    csrc = os.path.join(ROOT, "csrc")
    guard = re.compile(r"^#ifndef (\w+)\n#define \1\b", re.MULTILINE)
    found = {}
    for folder, _dirs, files in os.walk(os.path.join(csrc, "linux")):
        for name in files:
            path = os.path.join(folder, name)
            if path == COMPAT or not name.endswith((".c", ".h")):
                continue
            with open(path) as f:
                names = [n for n in guard.findall(f.read()) if not n.startswith("HERMETIC_")]
            if names:
                found[os.path.relpath(path, ROOT)] = names
    assert found == {}


def test_every_linux_source_builds_with_werror(tmp_path):
    """The core's C files compile cleanly with the build's flags and -Werror."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (installed by .ci/run)")
    sys.path.insert(0, ROOT)
    try:
        import build_ffi
    finally:
        sys.path.remove(ROOT)
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "linux", "*.c")))
    assert sources
    for src in sources:
        with open(src) as f:
            done = _gcc(
                tmp_path, f.read(), "-O2", *build_ffi.FREESTANDING, "-I", os.path.dirname(src)
            )
        assert done.returncode == 0, f"{src}:\n{done.stderr}"


#: Python's names for constants of the C interface, each with lib's name.
_ALIASES = {
    "plan": {
        **{f"OP_{k}": f"HM_OP_{k}" for k in ("MKDIR", "MKFILE", "SYMLINK", "BIND", "TMPFS")},
        **{f"OP_{k}": f"HM_OP_{k}" for k in ("PROC", "REMOUNT_RO", "MKNOD", "GRAB", "PLACE")},
        "MAX_GRABS": "HM_MAX_GRABS",
        **{f"BIND_{k}": f"HM_BIND_{k}" for k in ("RDONLY", "DEVICES", "SYSTEM")},
        **{f"MS_{k}": f"HM_MS_{k}" for k in ("RDONLY", "NOSUID", "NODEV", "NOEXEC")},
    },
    "landlock": {
        **{
            k: f"HM_LANDLOCK_ACCESS_FS_{k}"
            for k in (
                "EXECUTE WRITE_FILE READ_FILE READ_DIR REMOVE_DIR REMOVE_FILE MAKE_CHAR "
                "MAKE_DIR MAKE_REG MAKE_SOCK MAKE_FIFO MAKE_BLOCK MAKE_SYM REFER TRUNCATE "
                "IOCTL_DEV RESOLVE_UNIX"
            ).split()
        },
        "NET_BIND_TCP": "HM_LANDLOCK_ACCESS_NET_BIND_TCP",
        "NET_CONNECT_TCP": "HM_LANDLOCK_ACCESS_NET_CONNECT_TCP",
        "SCOPE_ABSTRACT_UNIX_SOCKET": "HM_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET",
        "SCOPE_SIGNAL": "HM_LANDLOCK_SCOPE_SIGNAL",
    },
    "probe": {
        **{
            f"CLONE_{k}": f"HM_CLONE_{k}"
            for k in ("NEWNS", "NEWCGROUP", "NEWUTS", "NEWIPC", "NEWUSER", "NEWPID", "NEWNET")
        },
        "CAP_SETFCAP": "HM_CAP_SETFCAP",
    },
}


def _backend_module(concern: str) -> object:
    """hermetic.platforms.linux.<concern>, or linux_<concern> beside it."""
    for name in (f"hermetic.platforms.linux.{concern}", f"hermetic.platforms.linux_{concern}"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"no Linux backend module for {concern!r}")


def test_python_names_for_c_constants_are_lib_values():
    """Each Python name of a C interface constant has the compiled core's value."""
    from hermetic._native import lib

    for concern, aliases in _ALIASES.items():
        module = _backend_module(concern)
        for alias, c_name in aliases.items():
            assert getattr(module, alias) == getattr(lib, c_name), f"{concern}.{alias}"


def _int_literal(node: ast.expr) -> bool:
    """An integer written out: 42, 0x40, 1 << 3, 0x1 | 0x2."""
    if isinstance(node, ast.Constant):
        return type(node.value) is int
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.BitOr)):
        return _int_literal(node.left) and _int_literal(node.right)
    return False


#: Integers the Linux backend writes out that are not the C interface's.
_OWN_NUMBERS = {"TMP_INODES_MAX"}


def test_no_constant_of_the_c_interface_is_typed_in_python():
    """Module-level numbers in the Linux backend: none written as a flag
    (hex, a shift) and none named like a constant of hermetic.h."""
    from hermetic._native import lib

    c_names = [n for n in dir(lib) if n.startswith("HM_") and type(getattr(lib, n)) is int]
    assert "HM_OP_MKDIR" in c_names and "HM_CLONE_NEWNS" in c_names
    pkg = os.path.join(ROOT, "hermetic")
    files = sorted(
        glob.glob(os.path.join(pkg, "platforms", "linux_*.py"))
        + glob.glob(os.path.join(pkg, "platforms", "linux", "**", "*.py"), recursive=True)
        + glob.glob(os.path.join(pkg, "security", "*.py"))
        + glob.glob(os.path.join(pkg, "monitoring", "*.py"))
    )
    assert files
    typed = []
    for path in files:
        with open(path) as f:
            text = f.read()
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name) or not _int_literal(value):
                continue
            name = target.id
            source = ast.get_source_segment(text, value) or ""
            as_flag = "0x" in source or "<<" in source
            as_c_name = any(c in (name, f"HM_{name}") or c.endswith(f"_{name}") for c in c_names)
            if (as_flag or as_c_name) and name not in _OWN_NUMBERS:
                typed.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {name} = {source}")
    assert typed == []
