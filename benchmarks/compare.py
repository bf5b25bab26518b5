#!/usr/bin/env python3
"""Print a pytest-benchmark JSON file as Markdown tables, one per group.

    python benchmarks/compare.py /tmp/bench.json

Each row gives the median, the interquartile range and the ratio of the
median to the group's baseline.  The baseline is the entry the benchmark
marked with ``extra_info["baseline"] = True`` (posix_spawn for the ``true``
groups, the direct run for ``gcc`` and ``cat``); for files without that
mark, an entry named ``*posix_spawn*`` or ``*direct*``, else the fastest.

A group named ``<base>-<variant>`` (``true-1GiB``) is also compared row by
row with group ``<base>``, matching entries by ``extra_info["method"]``.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

Bench = dict[str, Any]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _method(b: Bench) -> str:
    method = b.get("extra_info", {}).get("method")
    if method:
        return str(method)
    return str(b["name"])


def _baseline(entries: list[Bench]) -> Bench:
    marked = [b for b in entries if b.get("extra_info", {}).get("baseline")]
    if marked:
        return marked[0]
    for key in ("posix_spawn", "direct"):
        named = [b for b in entries if key in b["name"]]
        if named:
            return named[0]
    return min(entries, key=lambda b: b["stats"]["median"])


def _groups(benchmarks: list[Bench]) -> dict[str, list[Bench]]:
    """Entries by group, groups in the order they first appear (the run order)."""
    groups: dict[str, list[Bench]] = {}
    for b in benchmarks:
        groups.setdefault(b.get("group") or "(no group)", []).append(b)
    return groups


def group_table(name: str, entries: list[Bench]) -> str:
    base = _baseline(entries)
    base_median = base["stats"]["median"]
    rows = sorted(entries, key=lambda b: (b is not base, b["stats"]["median"]))
    lines = [
        f"### {name}",
        "",
        f"Baseline: `{base['name']}`",
        "",
        "| name | median (ms) | IQR (ms) | rounds | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in rows:
        s = b["stats"]
        ratio = s["median"] / base_median if base_median else float("nan")
        lines.append(
            f"| {b['name']} | {_ms(s['median'])} | {_ms(s['iqr'])} | {s['rounds']} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def variant_table(base_name: str, base: list[Bench], name: str, variant: list[Bench]) -> str | None:
    by_method = {_method(b): b for b in base}
    pairs = [(by_method[_method(v)], v) for v in variant if _method(v) in by_method]
    if not pairs:
        return None
    lines = [
        f"### {name} vs {base_name}",
        "",
        f"| method | {base_name} median (ms) | {name} median (ms) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for b, v in pairs:
        bm, vm = b["stats"]["median"], v["stats"]["median"]
        ratio = vm / bm if bm else float("nan")
        lines.append(f"| {_method(v)} | {_ms(bm)} | {_ms(vm)} | {ratio:.2f}x |")
    return "\n".join(lines)


def render(data: dict[str, Any]) -> str:
    groups = _groups(data.get("benchmarks", []))
    if not groups:
        raise ValueError("the file holds no benchmarks (was it written with --benchmark-only?)")
    parts = [group_table(name, entries) for name, entries in groups.items()]
    for name, entries in groups.items():
        prefix = name.rsplit("-", 1)[0] if "-" in name else None
        if prefix and prefix in groups:
            table = variant_table(prefix, groups[prefix], name, entries)
            if table:
                parts.append(table)
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSON written by pytest --benchmark-json=FILE")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
        sys.stdout.write(render(data))
    except (OSError, ValueError, KeyError) as e:
        print(f"compare.py: {args.file}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
