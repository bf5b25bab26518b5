"""SBPL profiles for macOS: the spec as a Seatbelt policy.

``sbpl_profile(spec)`` returns ``(text, params)``.  The text is constant for
a policy *shape* (how many inputs, outputs, temps and ancestors, which
network mode): every path of the spec travels as a parameter
(``(param "INPUT_0")``), so profiles of specs that differ only in paths are
the same text, and no path is ever spliced into SBPL.  Paths are given the
spelling the macOS kernel sees (``/tmp`` is ``/private/tmp``, ``/var`` is
``/private/var``, ``/etc`` is ``/private/etc``).

Policy, deny by default:

- processes: fork and exec allowed; signals only inside the sandbox;
- files: the inputs readable; outputs and temps readable and writable; the
  system roots a compiler needs readable; every ancestor of a declared path
  readable as metadata only (so path lookups and ``getcwd`` work);
  ``/dev/null``, ``/dev/zero`` writable, ``/dev/random``, ``/dev/urandom``
  readable; setuid and setgid bits refused (``file-write-setugid``);
- network: none (hermetic), outbound only to the loopback proxy port
  (``allow_hosts``), or everything (``NetworkPolicy.host()``);
- every denial carries a message tag (``hermetic:default``, ...) that the
  unified log shows, for the audit.

Later rules win in SBPL, so the denials that narrow an allow (setugid, the
network around the proxy's port) come after it.

Compiled profiles are limited to 64 KiB by the kernel; ``sbpl_profile``
refuses (UnsupportedError) a spec whose profile would not fit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from hermetic.core.errors import UnsupportedError
from hermetic.core.spec import SandboxSpec

__all__ = ["MAX_PROFILE_BYTES", "SYSTEM_ROOTS", "macos_path", "sbpl_profile", "sbpl_string"]

#: The kernel's limit on a compiled profile; the text is kept well below.
MAX_PROFILE_BYTES = 64 * 1024
#: What a compiler and the dynamic loader read on macOS.
SYSTEM_ROOTS = (
    "/usr/lib",
    "/usr/libexec",
    "/usr/share",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local",
    "/bin",
    "/sbin",
    "/opt/homebrew",
    "/System",
    "/Library/Frameworks",
    "/Library/Developer/CommandLineTools",
    "/Applications/Xcode.app",
    "/private/etc",
    "/private/var/db/timezone",
    "/private/var/db/dyld",
    "/private/var/db/oah",
    "/private/var/select",
)
#: Single files the toolchain shims read (xcode-select's choice).
SYSTEM_FILES = ("/private/var/db/xcode_select_link",)
#: Symlinks and parents that realpath(3) must be able to stat.
SYSTEM_METADATA = (
    "/tmp",
    "/var",
    "/etc",
    "/private",
    "/private/var",
    "/private/var/db",
    "/usr",
    "/Library",
    "/opt",
    "/Applications",
)
#: Services the C library needs (user lookups, preferences).
MACH_SERVICES = ("com.apple.system.opendirectoryd.libinfo", "com.apple.cfprefsd.daemon")
_PRIVATE = ("/tmp", "/var", "/etc")


def macos_path(path: str) -> str:
    """``path`` as the macOS kernel spells it (/tmp is a symlink to /private/tmp)."""
    for top in _PRIVATE:
        if path == top or path.startswith(top + "/"):
            return "/private" + path
    return path


def sbpl_string(text: str) -> str:
    """An SBPL string literal: quoted, backslashes and quotes escaped, no
    control characters (a path with one cannot be expressed and is refused)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UnsupportedError("sbpl", f"a path with a control character: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ancestors(paths: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for p in paths:
        parent = os.path.dirname(p)
        while parent and parent != "/":
            out.add(parent)
            parent = os.path.dirname(parent)
    return sorted(out)


def _filters(kind: str, prefix: str, count: int) -> str:
    return " ".join(f'({kind} (param "{prefix}_{i}"))' for i in range(count))


def _developer_dir() -> str | None:
    """The active developer directory, resolved (the sandbox matches resolved
    paths, and /Applications/Xcode.app is often a symlink); macOS only."""
    if sys.platform != "darwin":
        return None
    link = "/private/var/db/xcode_select_link"
    try:
        return os.path.realpath(link) if os.path.exists(link) else None
    except OSError:
        return None


def sbpl_profile(spec: SandboxSpec, *, proxy_port: int | None = None) -> tuple[str, dict[str, str]]:
    """The profile text and its parameters for ``spec``."""
    inputs = [macos_path(p) for p in spec.inputs]
    writable = [macos_path(p) for p in (*spec.outputs, *spec.temps)]
    ancestors = _ancestors(inputs + writable)
    # Inputs inside an output or temp: read-only islands in a writable tree.
    islands = [macos_path(p) for p in spec.inputs_within_writable()]
    params: dict[str, str] = {}
    groups = (("INPUT", inputs), ("WRITABLE", writable), ("ANCESTOR", ancestors))
    for prefix, paths in (*groups, ("READONLY", islands)):
        for i, p in enumerate(paths):
            sbpl_string(p)  # refuses what SBPL cannot carry, even as a parameter
            params[f"{prefix}_{i}"] = p
    services = " ".join(f"(global-name {sbpl_string(s)})" for s in MACH_SERVICES)
    system = list(SYSTEM_ROOTS)
    developer = _developer_dir()
    if developer and developer not in system:
        system.append(developer)
    roots = " ".join(f"(subpath {sbpl_string(p)})" for p in system)
    files = " ".join(f"(literal {sbpl_string(p)})" for p in SYSTEM_FILES)
    metadata = " ".join(f"(literal {sbpl_string(p)})" for p in SYSTEM_METADATA)
    lines = [
        "(version 1)",
        '(deny default (with message "hermetic:default"))',
        "(allow process-fork)",
        "(allow process-exec)",
        "(allow signal (target same-sandbox))",
        "(allow sysctl-read)",
        f"(allow mach-lookup {services})",
        f'(allow file-read-metadata (literal "/") {metadata})',
        f"(allow file-read* {roots} {files})",
        # Mapping code executable is its own operation: dylibs outside the
        # shared cache, extension modules.
        f"(allow file-map-executable {roots})",
        '(allow file-read* file-write-data (literal "/dev/null") (literal "/dev/zero"))',
        '(allow file-read* (literal "/dev/random") (literal "/dev/urandom"))',
    ]
    if ancestors:
        lines.append(
            f"(allow file-read-metadata {_filters('literal', 'ANCESTOR', len(ancestors))})"
        )
    if inputs:
        lines.append(f"(allow file-read* {_filters('subpath', 'INPUT', len(inputs))})")
        lines.append(f"(allow file-map-executable {_filters('subpath', 'INPUT', len(inputs))})")
    if writable:
        lines.append(
            f"(allow file-read* file-write* {_filters('subpath', 'WRITABLE', len(writable))})"
        )
    if islands:
        # Later rules win: the innermost declaration decides, as on Linux.
        lines.append(
            f"(deny file-write* {_filters('subpath', 'READONLY', len(islands))}"
            ' (with message "hermetic:write"))'
        )
    lines.append('(deny file-write-setugid (with message "hermetic:setugid"))')
    if not spec.process.allow_fork:
        lines.append('(deny process-fork (with message "hermetic:fork"))')
    net = spec.network
    if net.host_network:
        lines.append("(allow system-socket)")
        lines.append("(allow network*)")
    elif net.uses_proxy:
        if proxy_port is None or not 0 < proxy_port < 65536:
            raise UnsupportedError("network", "allowed_hosts need the proxy's port")
        # Later rules win: the denial first, the proxy's port after it.
        lines.append('(deny network* (with message "hermetic:network"))')
        lines.append("(allow system-socket)")
        lines.append(f'(allow network-outbound (remote ip "localhost:{proxy_port}"))')
    else:
        lines.append('(deny network* (with message "hermetic:network"))')
    text = "\n".join(lines) + "\n"
    size = len(text.encode()) + sum(len(k) + len(v.encode()) + 2 for k, v in params.items())
    if size > MAX_PROFILE_BYTES // 2:
        raise UnsupportedError(
            "sbpl",
            f"the profile for {len(params)} paths would be about {size} bytes; macOS compiles "
            f"at most {MAX_PROFILE_BYTES} bytes of profile: declare directories rather than "
            "many files",
        )
    return text, params
