"""Canonical absolute paths and sets of them.

Every decision about what a sandbox may see is made on canonical paths
(lexically normalised, then symlinks resolved), so ``/w/src/../out`` and a
symlink pointing into ``/w/out`` are recognised as the same place.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias, cast

from hermetic.core.errors import SpecError

__all__ = [
    "PathSet",
    "StrPath",
    "canonical",
    "check_encodable",
    "escape_surrogates",
    "is_within",
]

StrPath: TypeAlias = str | os.PathLike[str]


def canonical(path: object, *, field: str | None = None) -> str:
    """Return the canonical form of an absolute path.

    ``..`` and repeated or trailing slashes are removed lexically first, then
    symlinks are resolved (for a path that does not exist yet, the part that
    exists is resolved).  Raises :class:`SpecError` for anything that is not
    a non-empty absolute ``str`` path without NUL bytes; ``field`` names where
    the path came from in that message.
    """
    label = field or "path"
    if isinstance(path, os.PathLike):
        try:
            path = os.fspath(path)
        except TypeError as exc:  # __fspath__ returned neither str nor bytes
            raise SpecError(f"{label}: {exc}", field=field, value=path) from None
    if isinstance(path, bytes):
        raise SpecError(f"{label} must be a str, not bytes: {path!r}", field=field, value=path)
    if not isinstance(path, str):
        raise SpecError(
            f"{label} must be a str or os.PathLike, got {type(path).__name__}: {path!r}",
            field=field,
            value=path,
        )
    if not path:
        raise SpecError(f"{label} must not be empty", field=field, value=path)
    if "\0" in path:
        raise SpecError(f"{label} contains a NUL byte: {path!r}", field=field, value=path)
    if not os.path.isabs(path):
        raise SpecError(f"{label} is not absolute: {path!r}", field=field, value=path)
    check_encodable(path, label, field=field)
    return os.path.realpath(os.path.normpath(path))


def check_encodable(text: str, label: str, *, field: str | None = None, show: bool = True) -> None:
    """SpecError unless ``text`` can become bytes for the kernel (a file
    name, an argument, an environment entry).

    Text decoded from any bytes with ``os.fsdecode`` always can (undecodable
    bytes become the low surrogates U+DC80..U+DCFF, which encode back to
    them); a lone surrogate typed or parsed from a JSON escape cannot, and
    would otherwise fail deep inside setup.  ``show=False`` keeps the text
    out of the message (environment values may be secrets).
    """
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        where = f"{exc.reason} at index {exc.start}"
        shown = f": {text!r}" if show else ""
        raise SpecError(
            f"{label} cannot be encoded for the kernel ({where}){shown}",
            field=field,
            value=text if show else None,
        ) from None


#: A surrogate code point: json.dumps(ensure_ascii=False) copies one as is.
_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(json_text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with every
    surrogate written as a ``\\uXXXX`` escape.

    A file name made of undecodable bytes holds surrogates (``os.fsdecode``);
    as they are, the text cannot be encoded as UTF-8, and writing it fails.
    Escaped, it is valid UTF-8 JSON that reads back as the same name.
    Surrogates only occur inside JSON strings, where an escape means the
    same code point.
    """
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def _ancestors_or_self(path: str) -> Iterator[str]:
    """``/a/b/c``: ``/a/b/c``, ``/a/b``, ``/a``, ``/``."""
    yield path
    while path != "/":
        path = path.rsplit("/", 1)[0] or "/"
        yield path


def is_within(path: str, root: str) -> bool:
    """True when canonical ``path`` equals ``root`` or lies below it.

    Compares whole components: ``/a/bc`` is not within ``/a/b``.
    """
    if path == root or root == "/":
        return True
    return path.startswith(root + "/")


@dataclass(frozen=True)
class PathSet:
    """An immutable, sorted set of canonical absolute paths.

    Members are the declared roots: a path below another member is kept as
    its own entry.  Whether a path is covered is answered by :meth:`contains`.
    """

    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        raw: object = self.paths
        if isinstance(raw, (str, bytes, os.PathLike)):
            # Iterating a str would silently yield one "path" per character.
            raise SpecError(
                f"PathSet takes a sequence of paths, not a single path: {raw!r}"
                " (use PathSet.of(path))",
                field="paths",
                value=raw,
            )
        if not isinstance(raw, Iterable):
            raise SpecError(
                f"PathSet takes a sequence of paths, got {type(raw).__name__}",
                field="paths",
                value=raw,
            )
        object.__setattr__(self, "paths", tuple(sorted({canonical(p) for p in raw})))

    @classmethod
    def of(cls, *paths: StrPath) -> PathSet:
        """``PathSet.of("/a", "/b")``."""
        # __post_init__ turns PathLike entries into canonical str.
        return cls(cast("tuple[str, ...]", paths))

    @classmethod
    def _trusted(cls, paths: Iterable[str]) -> PathSet:
        # For paths that are already canonical: skips re-resolving symlinks,
        # which is both redundant and racy against a changing filesystem.
        new = object.__new__(cls)
        object.__setattr__(new, "paths", tuple(sorted(set(paths))))
        return new

    def contains(self, path: StrPath) -> bool:
        """True when ``path`` (canonicalised) is a member or lies below one.

        Raises :class:`SpecError` for a path :func:`canonical` rejects, so a
        relative path is never silently judged "outside".
        """
        return self._covers(canonical(path))

    def __contains__(self, path: object) -> bool:
        return self._covers(canonical(path))

    def _covers(self, target: str) -> bool:
        return any(is_within(target, root) for root in self.paths)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __bool__(self) -> bool:
        return bool(self.paths)

    def union(self, other: PathSet) -> PathSet:
        """Every member of either set."""
        return PathSet._trusted(self.paths + other.paths)

    def intersection(self, other: PathSet) -> PathSet:
        """The region covered by both sets.

        For each overlapping pair the deeper path is the overlap, since it
        is the part both cover.
        """
        found: set[str] = set()
        for mine, theirs in self.overlaps(other):
            found.add(mine if is_within(mine, theirs) else theirs)
        return PathSet._trusted(found)

    def disjoint(self, other: PathSet) -> bool:
        """True when no path is covered by both sets."""
        return not self.overlaps(other)

    def overlaps(self, other: PathSet) -> list[tuple[str, str]]:
        """Pairs ``(mine, theirs)`` where one path equals or contains the other,
        in the order of ``mine`` then ``theirs``.

        Output-sensitive, not quadratic: a spec may list many thousands of
        paths, and comparing every pair of two such sets would take hours.
        For each of mine, the paths of theirs that contain it are among its
        ancestors (looked up by name), and those it contains form one range
        of the sorted ``theirs`` (everything starting with ``mine + "/"``).
        """
        theirs_set = set(other.paths)
        theirs_sorted = other.paths  # sorted and unique (__post_init__, _trusted)
        pairs: list[tuple[str, str]] = []
        for mine in self.paths:
            found = {a for a in _ancestors_or_self(mine) if a in theirs_set}
            if mine == "/":
                found.update(theirs_sorted)
            else:
                # "0" follows "/" in code point order: [mine/, mine0) is
                # exactly the paths below mine.
                lo = bisect.bisect_left(theirs_sorted, mine + "/")
                hi = bisect.bisect_left(theirs_sorted, mine + "0", lo)
                found.update(theirs_sorted[lo:hi])
            pairs.extend((mine, theirs) for theirs in sorted(found))
        return pairs
