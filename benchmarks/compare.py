#!/usr/bin/env python3
"""Print a pytest-benchmark JSON file as Markdown tables, one per group.

    python benchmarks/compare.py /tmp/bench.json [--png chart.png]

Each row gives the median, the interquartile range and the ratio of the
median to the group's baseline; in a group whose rows were timed in turn
(``test_paired.py``, the worker's and the builds' groups) also the
``paired_ratio`` each row keeps: the median of its rounds' ratios to the
same rounds of the baseline, the figure to read there.  The baseline is
the entry the benchmark marked with ``extra_info["baseline"] = True``
(posix_spawn for the ``true`` groups, the direct run for ``gcc`` and
``cat``); for files without that mark, an entry named ``*posix_spawn*`` or
``*direct*``, else the fastest.

A group named ``<base>-<variant>`` (``true-1GiB``) is also compared row by
row with group ``<base>``, matching entries by ``extra_info["method"]``.

Only the standard library is used, except for ``--png``, which draws the
ratios of every group as a bar chart with matplotlib (installed for that
command only: ``pip install matplotlib``).
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
    paired = any("paired_ratio" in b.get("extra_info", {}) for b in entries)
    lines = [
        f"### {name}",
        "",
        f"Baseline: `{base['name']}`",
        "",
        "| name | median (ms) | IQR (ms) | rounds | ratio |" + (" paired |" if paired else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if paired else ""),
    ]
    for b in rows:
        s = b["stats"]
        ratio = s["median"] / base_median if base_median else float("nan")
        median, iqr = _ms(s["median"]), _ms(s["iqr"])
        line = f"| {b['name']} | {median} | {iqr} | {s['rounds']} | {ratio:.2f}x |"
        if paired:
            value = b.get("extra_info", {}).get("paired_ratio")
            line += f" {value:.3f}x |" if isinstance(value, (int, float)) else " |"
        lines.append(line)
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


def chart(data: dict[str, Any], path: str) -> None:
    """One panel per group: each row's median as a ratio of the baseline's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--png needs matplotlib: pip install matplotlib") from None
    groups = _groups(data.get("benchmarks", []))
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, 1.1 + 0.45 * sum(map(len, groups.values())))
    )
    axes = axes if len(groups) > 1 else [axes]
    for ax, (name, entries) in zip(axes, groups.items(), strict=True):
        base = _baseline(entries)["stats"]["median"]
        rows = sorted(entries, key=lambda b: b["stats"]["median"])
        labels = [_method(b) if _method(b) != b["name"] else b["name"] for b in rows]
        ratios = [b["stats"]["median"] / base for b in rows]
        bars = ax.barh(labels, ratios, color=["#888" if r == 1 else "#3a7" for r in ratios])
        ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], padding=3, fontsize=8)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{name} (x of baseline, median {base * 1e3:.2f} ms)", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSON written by pytest --benchmark-json=FILE")
    parser.add_argument("--png", metavar="FILE", help="also draw the ratios into FILE")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
        sys.stdout.write(render(data))
        if args.png:
            chart(data, args.png)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare.py: {args.file}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
