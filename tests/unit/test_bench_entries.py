"""bench.split_entries: figures keyed 'figure' or 'entry.figure' into results entries."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench import split_entries


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        pytest.param({}, {"run": {}}, id="no-figures-keeps-own-entry"),
        pytest.param(
            {"calls_per_s": 10.0, "label": "x"},
            {"run": {"calls_per_s": 10.0, "label": "x"}},
            id="plain-keys",
        ),
        pytest.param(
            {"other.ratio": 2.0},
            {"run": {}, "other": {"ratio": 2.0}},
            id="dotted-only-own-entry-empty",
        ),
        pytest.param(
            {"ratio_c1": 1.0, "a_vs_c.ratio_c1": 2.0},
            {"run": {"ratio_c1": 1.0}, "a_vs_c": {"ratio_c1": 2.0}},
            id="same-figure-two-entries",
        ),
        pytest.param(
            {"a.x": 1, "b.y": 2, "a.z": 3, "w": 4},
            {"run": {"w": 4}, "a": {"x": 1, "z": 3}, "b": {"y": 2}},
            id="several-entries",
        ),
        pytest.param(
            {"run.x": 1, "y": 2},
            {"run": {"x": 1, "y": 2}},
            id="own-name-dotted-merges",
        ),
        pytest.param({"a.b.c": 1}, {"run": {}, "a.b": {"c": 1}}, id="last-dot-splits"),
        pytest.param({"x": 1, "run.x": 2}, {"run": {"x": 2}}, id="later-key-wins"),
    ],
)
def test_split_entries(figures: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    result = split_entries("run", figures)
    assert result == expected
    assert next(iter(result)) == "run"  # the benchmark's own entry comes first


def test_split_entries_keeps_order_within_entry() -> None:
    result = split_entries("run", {"b": 1, "o.z": 2, "a": 3, "o.y": 4})
    assert list(result["run"]) == ["b", "a"]
    assert list(result["o"]) == ["z", "y"]


def test_split_entries_does_not_mutate_input() -> None:
    figures: dict[str, Any] = {"a.x": 1, "y": 2}
    split_entries("run", figures)
    assert figures == {"a.x": 1, "y": 2}


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(".x", id="empty-entry"),
        pytest.param("a.", id="empty-figure"),
        pytest.param(".", id="only-dot"),
        pytest.param("a.b.", id="nested-empty-figure"),
        pytest.param("", id="empty-key"),
    ],
)
def test_split_entries_bad_key(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"run: figure key {key!r}")):
        split_entries("run", {"fine": 1, key: 2})
