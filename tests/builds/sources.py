"""zlib and Lua 5.4 as Debian ships their sources, for the build tests.

The source packages come from the archives this machine's apt already
uses, turned into ``deb-src`` lines in a private apt configuration (its own
source list, package lists and cache under the cache directory), so the
system's apt configuration is never changed and no other host is named.
``apt-get source --download-only`` checks every file against the signed
index; nothing is unpacked by dpkg-source.

What is built is the upstream tree of each package, its ``.orig`` tarball
unpacked as it is, without Debian's patches: Debian builds zlib with
``configure`` and Lua with a libtool makefile of its own (its
``0001-build-system.patch``), while these tests build the projects' own
CMake and make files.  One file is added to zlib's tree: Debian's repacked
tarball leaves out ``win32/`` (``Files-Excluded`` in debian/copyright),
whose ``zlib1.rc`` zlib's CMakeLists.txt lists as a source on every
platform but MinGW; CMake then refuses to configure.  An empty file stands
in for it; no compiler reads it outside Windows.

Run as a script (``python tests/builds/sources.py [DIR]``), it fetches into
the cache and prints the tarballs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile

#: Where the tarballs are kept between runs (HERMETIC_BUILD_SOURCES changes it).
CACHE = os.environ.get("HERMETIC_BUILD_SOURCES", "/var/tmp/hermetic-build-sources")

#: Source package -> the glob of its upstream tarball in the cache.
PACKAGES = {"zlib": "zlib_*.orig.tar.*", "lua5.4": "lua5.4_*.orig.tar.*"}

#: Files added to an unpacked tree, relative to its top (see the docstring).
STAND_INS = {"zlib": ("win32/zlib1.rc",)}


class Unavailable(Exception):
    """The sources cannot be had here; the message says why."""


def _codename() -> str:
    with open("/etc/os-release") as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            if key == "VERSION_CODENAME":
                return value.strip('"')
    raise Unavailable("/etc/os-release names no VERSION_CODENAME: not a Debian system")


def _deb822_entries(text: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                entries.append(current)
            current = {}
        elif not line.startswith("#") and ":" in line and not line[0].isspace():
            key, _, value = line.partition(":")
            current[key.strip().lower()] = value.strip()
    return entries


def source_lines() -> list[str]:
    """``deb-src`` lines for the Debian archives apt uses here: every
    ``deb`` entry of the system's configuration for this release's own
    suite (``bookworm``).  Its point releases carry the stable updates; the
    security archive is left out, as it need not serve the sources of what
    it once did (its pool answers 404 for superseded versions)."""
    codename = _codename()
    lines: list[str] = []

    def add(uris: str, suites: str, components: str, signed_by: str) -> None:
        for suite in suites.split():
            if suite != codename:
                continue
            if "main" not in components.split():
                continue
            option = f"[signed-by={signed_by}] " if signed_by else ""
            for uri in uris.split():
                lines.append(f"deb-src {option}{uri} {suite} main")

    files = ["/etc/apt/sources.list"]
    files += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    files += sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        if path.endswith(".sources"):
            for e in _deb822_entries(text):
                if "deb" in e.get("types", "").split() and e.get("enabled", "yes") != "no":
                    add(
                        e.get("uris", ""),
                        e.get("suites", ""),
                        e.get("components", ""),
                        e.get("signed-by", ""),
                    )
            continue
        for raw in text.splitlines():
            words = raw.split("#", 1)[0].split()
            if len(words) < 4 or words[0] != "deb":
                continue
            signed_by = ""
            if words[1].startswith("["):
                options = []
                while words and not words[0].endswith("]"):
                    options.append(words.pop(0))
                options.append(words.pop(0))
                for opt in " ".join(options).strip("[]").split():
                    if opt.startswith("signed-by="):
                        signed_by = opt.partition("=")[2]
                words.insert(0, "deb")
            add(words[1], words[2], " ".join(words[3:]), signed_by)
    if not lines:
        raise Unavailable(f"apt here names no Debian archive for {codename!r} with 'main'")
    return lines


def _tarballs(cache: str) -> dict[str, str] | None:
    found = {}
    for package, pattern in PACKAGES.items():
        matches = sorted(glob.glob(os.path.join(cache, "download", pattern)))
        if not matches:
            return None
        found[package] = matches[-1]
    return found


def fetch(cache: str = CACHE) -> dict[str, str]:
    """Each source package's upstream tarball, downloaded into ``cache``
    once; Unavailable when apt cannot get them."""
    found = _tarballs(cache)
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise Unavailable("apt-get is missing: the sources come from Debian's archive")
    etc = os.path.join(cache, "etc")
    parts = os.path.join(etc, "sources.list.d")
    lists = os.path.join(cache, "lists")
    download = os.path.join(cache, "download")
    for d in (parts, os.path.join(lists, "partial"), os.path.join(cache, "apt-cache"), download):
        os.makedirs(d, exist_ok=True)
    source_list = os.path.join(etc, "sources.list")
    with open(source_list, "w") as f:
        f.write("\n".join(source_lines()) + "\n")
    options = [
        "-q",
        "-o", f"Dir::Etc::SourceList={source_list}",
        "-o", f"Dir::Etc::SourceParts={parts}",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={os.path.join(cache, 'apt-cache')}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # The downloads land in a directory of ours: apt's own user need not reach it.
        options += ["-o", "APT::Sandbox::User=root"]
    for argv in (
        ["apt-get", *options, "update"],
        ["apt-get", *options, "source", "--download-only", *PACKAGES],
    ):
        p = subprocess.run(argv, cwd=download, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip()[-600:]
            raise Unavailable(f"{' '.join(argv[:1] + argv[-1:])} failed ({p.returncode}): {tail}")
    found = _tarballs(cache)
    if found is None:
        raise Unavailable(f"apt-get source left no upstream tarball in {download}")
    return found


def unpack(package: str, tarball: str, dest: str) -> str:
    """The tarball's tree moved to ``dest`` (which must not exist), with the
    package's stand-ins added; ``dest``."""
    parent = os.path.dirname(dest)
    staging = os.path.join(parent, f".unpack-{os.path.basename(dest)}")
    os.mkdir(staging)
    try:
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "tar_filter"):  # Python 3.12, and some point releases
                tar.extractall(staging, filter="tar")
            else:
                tar.extractall(staging)  # noqa: S202 (a tarball apt has checked)
        (top,) = os.listdir(staging)
        os.rename(os.path.join(staging, top), dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for rel in STAND_INS.get(package, ()):
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x"):
            pass
    return dest


if __name__ == "__main__":
    try:
        for name, path in fetch(sys.argv[1] if len(sys.argv) > 1 else CACHE).items():
            print(f"{name}\t{path}")
    except Unavailable as e:
        sys.exit(f"sources: {e}")
