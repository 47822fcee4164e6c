"""Benchmarks of the mesh: `python -m bench [--only NAME ...] [--quick]` (or `make bench`).

Every module named in `BENCHMARKS` exposes

    NAME: str
    async def run(quick: bool) -> dict[str, float | int | str]   # flat figures

and the runner (`bench.__main__`) merges the figures into `bench/results.json` and the
generated section of `docs/benchmarks.md`. A figure's unit comes from its key's suffix
(`_ms`, `_s`, `_per_s`, `_ratio`; anything else is a count or a label).

This module holds the registry of benchmarks and the pure parts of the report (merging,
units, formatting, rewriting between markers), so that they are tested without running any.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

__all__ = [
    "BEGIN_MARKER",
    "BENCHMARKS",
    "END_MARKER",
    "META_KEY",
    "BenchmarkFailed",
    "Figures",
    "check_figures",
    "format_value",
    "merge_results",
    "percentile",
    "render_markdown",
    "render_text",
    "replace_generated",
    "split_entries",
    "unit_of",
]

#: Modules run by `python -m bench`, in this order; later benchmarks append theirs.
BENCHMARKS: tuple[str, ...] = (
    "bench.registry",
    "bench.mesh_vs_bare",
    "bench.events",
    "bench.gateway",
    "bench.scaling",
)

Figures: TypeAlias = dict[str, float | int | str]

META_KEY = "_meta"
BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"

# Longest suffix first: "_per_s" also ends with "_s".
_UNITS = (("_per_s", "/s"), ("_ratio", "×"), ("_ms", "ms"), ("_s", "s"))


class BenchmarkFailed(RuntimeError):
    """A benchmark could not measure what it set out to (a wait timed out, a process died)."""


def unit_of(key: str) -> str:
    """The unit a figure's key declares by its suffix; "" for counts and labels."""
    for suffix, unit in _UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default), so p50 of an even count is the mean of the middle two."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def check_figures(name: str, figures: object) -> Figures:
    """The figures of benchmark `name`, or TypeError saying what is not flat."""
    if not isinstance(figures, dict):
        raise TypeError(f"{name}: run() returned {type(figures).__name__}, not a dict")
    for key, value in figures.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: figure key {key!r} is not a string")
        # bool is an int subclass, but True is no figure.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"{name}: figure {key} = {value!r} is not a number or a string")
    return figures


def split_entries(name: str, figures: Figures) -> dict[str, Figures]:
    """One benchmark's figures as results entries: a key ``other.figure`` goes to the entry
    ``other`` (one run can feed two comparisons), every other key to ``name``.

    >>> split_entries("a_vs_b", {"ratio_c1": 1.0, "a_vs_c.ratio_c1": 2.0})
    {'a_vs_b': {'ratio_c1': 1.0}, 'a_vs_c': {'ratio_c1': 2.0}}
    """
    entries: dict[str, Figures] = {name: {}}
    for key, value in figures.items():
        entry, dot, figure = key.rpartition(".")
        if not dot:
            entry, figure = name, key
        if not entry or not figure:
            raise ValueError(f"{name}: figure key {key!r} is not 'figure' or 'entry.figure'")
        entries.setdefault(entry, {})[figure] = value
    return entries


def merge_results(
    old: Mapping[str, Any],
    new: Mapping[str, Figures],
    meta: Mapping[str, Any],
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """Results after a run: `new` replaces the entries it names, every other benchmark keeps
    its earlier figures, and `_meta` describes this run (its `runs` map, name -> when and how
    each entry was measured, is merged the same way). Entries follow `order` (the registry),
    then any others by name, then `_meta`."""
    entries: dict[str, Any] = {k: v for k, v in old.items() if k != META_KEY}
    entries.update(new)
    old_meta = old.get(META_KEY)
    old_runs = old_meta.get("runs", {}) if isinstance(old_meta, Mapping) else {}
    runs = {k: v for k, v in old_runs.items() if k in entries}
    runs.update(meta.get("runs", {}))
    ranked = [n for n in order if n in entries]
    ranked += sorted(n for n in entries if n not in ranked)
    merged: dict[str, Any] = {name: dict(entries[name]) for name in ranked}
    merged[META_KEY] = {**meta, "runs": {n: runs[n] for n in ranked if n in runs}}
    return merged


def format_value(value: float | int | str) -> str:
    """A figure for a table: integers as they are, floats to about three significant digits."""
    if isinstance(value, str | int):
        return str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _benchmarks(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(k, v) for k, v in results.items() if k != META_KEY and isinstance(v, Mapping)]


def _run_note(run: Mapping[str, Any]) -> str:
    mode = "quick run" if run.get("quick") else "full run"
    elapsed = run.get("elapsed_s")
    took = f", {format_value(elapsed)} s" if isinstance(elapsed, int | float) else ""
    return f"Measured {run.get('date', '?')} ({mode}{took})."


def render_markdown(results: Mapping[str, Any]) -> str:
    """The generated section of docs/benchmarks.md: one table per benchmark."""
    meta = results.get(META_KEY, {})
    runs = meta.get("runs", {})
    lines = [
        "<!-- Generated by `python -m bench`; edits between the markers are overwritten. -->",
        "",
        f"Python {meta.get('python', '?')}, {meta.get('cores', '?')} cores; "
        f"last command: `{meta.get('command', '?')}`.",
    ]
    for name, figures in _benchmarks(results):
        lines += ["", f"### {name}", ""]
        if name in runs:
            lines += [_run_note(runs[name]), ""]
        lines += ["| figure | value | unit |", "|---|---:|---|"]
        lines += [f"| `{k}` | {format_value(v)} | {unit_of(k)} |" for k, v in figures.items()]
    return "\n".join(lines) + "\n"


def render_text(results: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """A plain table for the terminal, of `names` (default: every benchmark)."""
    rows: list[tuple[str, str, str]] = []
    for name, figures in _benchmarks(results):
        if names is not None and name not in names:
            continue
        rows.append((name, "", ""))
        rows += [(f"  {k}", format_value(v), unit_of(k)) for k, v in figures.items()]
    if not rows:
        return ""
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>{value_width}}  {c}".rstrip() for a, b, c in rows) + "\n"


def replace_generated(
    document: str, generated: str, *, begin: str = BEGIN_MARKER, end: str = END_MARKER
) -> str:
    """`document` with the text between the markers (the bench markers unless told) replaced
    by `generated`; the hand-written text around them is kept as it is. Markers missing
    altogether are appended; a lone or misordered marker is an error (rewriting would guess
    at what is hand-written)."""
    begins, ends = document.count(begin), document.count(end)
    block = f"{begin}\n{generated.rstrip()}\n{end}"
    if begins == ends == 0:
        return f"{document.rstrip()}\n\n{block}\n" if document.strip() else f"{block}\n"
    start, stop = document.find(begin), document.find(end)
    if begins != 1 or ends != 1:
        raise ValueError(f"expected one {begin} and one {end}, found {begins} and {ends}")
    if stop < start:
        raise ValueError(f"{end} comes before {begin}")
    return document[:start] + block + document[stop + len(end) :]
