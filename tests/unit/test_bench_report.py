"""The pure parts of the benchmark report: units, percentiles, merging, markers."""

from __future__ import annotations

from typing import Any

import pytest

from bench import (
    BEGIN_MARKER,
    END_MARKER,
    META_KEY,
    check_figures,
    format_value,
    merge_results,
    percentile,
    render_markdown,
    render_text,
    replace_generated,
    unit_of,
)


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        pytest.param("register_to_watch_p50_ms", "ms", id="milliseconds"),
        pytest.param("kill9_to_vanish_ttl2_max_s", "s", id="seconds"),
        pytest.param("calls_per_s", "/s", id="rate-not-seconds"),
        pytest.param("mesh_vs_bare_ratio", "×", id="ratio"),
        pytest.param("register_to_watch_samples", "", id="count"),
        pytest.param("python", "", id="label"),
        pytest.param("ms", "", id="bare-unit-word-is-no-suffix"),
        pytest.param("p50_ms_total", "", id="unit-in-the-middle"),
    ],
)
def test_unit_of(key: str, unit: str) -> None:
    assert unit_of(key) == unit


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([7.0], 99, 7.0, id="one-value"),
        pytest.param([3.0, 1.0, 2.0], 50, 2.0, id="odd-median-unsorted"),
        pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.5, id="even-median-interpolates"),
        pytest.param([float(i) for i in range(1, 101)], 99, 99.01, id="p99-of-100"),
        pytest.param([1.0, 9.0], 0, 1.0, id="p0-is-min"),
        pytest.param([1.0, 9.0], 100, 9.0, id="p100-is-max"),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "q", "message"),
    [
        pytest.param([], 50, "no values", id="empty"),
        pytest.param([1.0], 101, "outside", id="above-100"),
        pytest.param([1.0], -1, "outside", id="below-0"),
    ],
)
def test_percentile_rejects(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(200, "200", id="int-as-is"),
        pytest.param("quick", "quick", id="string-as-is"),
        pytest.param(3456.7, "3,457", id="thousands"),
        pytest.param(123.4, "123", id="hundreds"),
        pytest.param(12.34, "12.3", id="tens"),
        pytest.param(2.0456, "2.05", id="units"),
        pytest.param(0.8754, "0.875", id="below-one"),
        pytest.param(-12.34, "-12.3", id="negative"),
    ],
)
def test_format_value(value: float | int | str, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("figures", "message"),
    [
        pytest.param([("a_ms", 1.0)], "not a dict", id="not-a-dict"),
        pytest.param({"ok_ms": True}, "not a number", id="bool-is-no-figure"),
        pytest.param({"nested": {"a": 1}}, "not a number", id="nested"),
        pytest.param({"none_ms": None}, "not a number", id="none"),
        pytest.param({1: 2.0}, "not a string", id="int-key"),
    ],
)
def test_check_figures_rejects(figures: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        check_figures("demo", figures)


def test_check_figures_accepts_flat_numbers_and_strings() -> None:
    figures = {"a_ms": 1.5, "samples": 200, "mode": "quick"}
    assert check_figures("demo", figures) is figures


META = {"date": "2025-01-02T03:04:05+00:00", "python": "3.11.7", "cores": 2, "command": "c"}
RUN_NEW = {"date": "new", "quick": False, "elapsed_s": 30.0}
RUN_OLD = {"date": "old", "quick": False, "elapsed_s": 10.0}


@pytest.mark.parametrize(
    ("old", "new", "order", "expected"),
    [
        pytest.param(
            {},
            {"registry": {"a_ms": 1.0}},
            ["registry"],
            {"registry": {"a_ms": 1.0}, META_KEY: {**META, "runs": {"registry": RUN_NEW}}},
            id="first-run",
        ),
        pytest.param(
            {
                "registry": {"a_ms": 9.0, "gone_ms": 1.0},
                "client": {"calls_per_s": 3000},
                META_KEY: {"date": "old", "runs": {"registry": RUN_OLD, "client": RUN_OLD}},
            },
            {"registry": {"a_ms": 1.0}},
            ["registry", "client"],
            {
                "registry": {"a_ms": 1.0},  # replaced whole: no stale figure survives
                "client": {"calls_per_s": 3000},
                META_KEY: {**META, "runs": {"registry": RUN_NEW, "client": RUN_OLD}},
            },
            id="only-one-keeps-the-others",
        ),
        pytest.param(
            {"zeta": {"x": 1}, "alpha": {"y": 2}},
            {"registry": {"a_ms": 1.0}},
            ["registry"],
            {
                "registry": {"a_ms": 1.0},
                "alpha": {"y": 2},
                "zeta": {"x": 1},
                META_KEY: {**META, "runs": {"registry": RUN_NEW}},
            },
            id="registry-order-then-unknown-by-name",
        ),
        pytest.param(
            {"client": {"x": 1}, META_KEY: "garbage"},
            {"registry": {"a_ms": 1.0}},
            ["client", "registry"],
            {
                "client": {"x": 1},
                "registry": {"a_ms": 1.0},
                META_KEY: {**META, "runs": {"registry": RUN_NEW}},
            },
            id="malformed-old-meta",
        ),
    ],
)
def test_merge_results(
    old: dict[str, Any], new: dict[str, Any], order: list[str], expected: dict[str, Any]
) -> None:
    merged = merge_results(old, new, {**META, "runs": {n: RUN_NEW for n in new}}, order)
    assert merged == expected
    assert list(merged) == list(expected)  # the file's order is part of the result


INTRO = "# Benchmarks\n\nHand-written <b>intro</b>.\n"
TRAILER = "\n## Notes\n\nHand-written too.\n"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            f"{INTRO}\n{BEGIN_MARKER}\nold table\n{END_MARKER}\n{TRAILER}",
            f"{INTRO}\n{BEGIN_MARKER}\nNEW\n{END_MARKER}\n{TRAILER}",
            id="replaces-between-keeps-around",
        ),
        pytest.param(
            f"{INTRO}{BEGIN_MARKER}{END_MARKER}",
            f"{INTRO}{BEGIN_MARKER}\nNEW\n{END_MARKER}",
            id="empty-section",
        ),
        pytest.param(
            INTRO,
            f"{INTRO}\n{BEGIN_MARKER}\nNEW\n{END_MARKER}\n",
            id="no-markers-appends",
        ),
        pytest.param("", f"{BEGIN_MARKER}\nNEW\n{END_MARKER}\n", id="empty-document"),
    ],
)
def test_replace_generated(document: str, expected: str) -> None:
    assert replace_generated(document, "NEW\n") == expected
    # Running again changes nothing.
    assert replace_generated(expected, "NEW\n") == expected


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(f"{INTRO}{BEGIN_MARKER}\nx\n", "found 1 and 0", id="lone-begin"),
        pytest.param(f"{INTRO}x\n{END_MARKER}\n", "found 0 and 1", id="lone-end"),
        pytest.param(f"{END_MARKER}\nx\n{BEGIN_MARKER}", "comes before", id="reversed"),
        pytest.param(
            f"{BEGIN_MARKER}{END_MARKER}{BEGIN_MARKER}{END_MARKER}", "found 2 and 2", id="twice"
        ),
    ],
)
def test_replace_generated_refuses_to_guess(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace_generated(document, "NEW")


RESULTS: dict[str, Any] = {
    "registry": {"register_to_watch_p50_ms": 1.234, "samples": 200},
    "client": {"calls_per_s": 3456.7, "mesh_vs_bare_ratio": 0.91},
    META_KEY: {**META, "runs": {"registry": {"date": "D", "quick": True, "elapsed_s": 7.5}}},
}


def test_render_markdown_one_table_per_benchmark() -> None:
    text = render_markdown(RESULTS)
    assert text.count("| figure | value | unit |") == 2
    assert "| `register_to_watch_p50_ms` | 1.23 | ms |" in text
    assert "| `samples` | 200 |  |" in text
    assert "| `calls_per_s` | 3,457 | /s |" in text
    assert "| `mesh_vs_bare_ratio` | 0.910 | × |" in text
    assert "Measured D (quick run, 7.50 s)." in text
    assert "3.11.7, 2 cores" in text
    assert BEGIN_MARKER not in text  # the markers are replace_generated's business


@pytest.mark.parametrize(
    ("names", "present", "absent"),
    [
        pytest.param(None, ["registry", "client"], [], id="all"),
        pytest.param(["registry"], ["registry"], ["client", "calls_per_s"], id="only-one"),
    ],
)
def test_render_text(names: list[str] | None, present: list[str], absent: list[str]) -> None:
    text = render_text(RESULTS, names)
    for word in present:
        assert word in text
    for word in absent:
        assert word not in text
    assert META_KEY not in text
