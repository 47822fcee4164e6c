"""The chaos runner's pure parts: which targets a scenario missed, and the table it writes."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.__main__ import render_table
from chaos.scenarios import Scenario, met


async def _nothing(_run: Any) -> None:
    return None


def scenario(**targets: Any) -> Scenario:
    return Scenario("9_test", "a test", _nothing, {"echo": 1}, **targets)


def figures(**extra: Any) -> dict[str, Any]:
    return {"failed": {}, "failed_total": 0, **extra}


@pytest.mark.parametrize(
    ("targets", "found", "misses"),
    [
        pytest.param({}, figures(), [], id="nothing-failed"),
        pytest.param(
            {}, figures(failed={"UNAVAILABLE": 2}, failed_total=2),
            ["2 failed calls: {'UNAVAILABLE': 2}"], id="a-failure-misses-zero-failures",
        ),
        pytest.param(
            {"zero_failures": False}, figures(failed={"HTTP 503": 1}, failed_total=1), [],
            id="failures-allowed",
        ),
        pytest.param(
            {"recovery_within_s": 3.0}, figures(recovery_s=2.9), [], id="recovered-in-time"
        ),
        pytest.param(
            {"recovery_within_s": 3.0}, figures(recovery_s=3.5), ["recovery 3.5 s > 3.0 s"],
            id="recovered-late",
        ),
        pytest.param(
            {"recovery_within_s": 3.0}, figures(), ["recovery None s > 3.0 s"],
            id="recovery-not-measured-is-a-miss",
        ),
        pytest.param(
            {"p99_ratio_within": 2.0}, figures(p99_ratio=2.4), ["p99 ratio 2.4 > 2.0"],
            id="p99-too-high",
        ),
        pytest.param(
            {}, figures(events=10, applied=9, applied_twice=1, out_of_order=0),
            ["applied 9 (want 10)", "applied_twice 1 (want 0)"], id="events-lost-and-doubled",
        ),
    ],
)  # fmt: skip
def test_met(targets: dict[str, Any], found: dict[str, Any], misses: list[str]) -> None:
    assert met(scenario(**targets), found) == misses


def test_render_table_lists_each_scenario_and_a_short_soak() -> None:
    window = {"calls": 10, "p50_ms": 1.234, "p99_ms": 9.87}
    results = {
        "1_kill9": {
            "title": "kill -9", "requests": 100, "failed": {}, "before": window,
            "during": {"calls": 0}, "after": window, "recovery_s": 1.2,
            "restarted_after_s": 0.3, "misses": [],
        },
        "8_failing": {
            "title": "failing", "requests": 50, "failed": {"UNAVAILABLE": 1}, "before": window,
            "during": window, "after": window, "misses": ["1 failed calls"],
        },
        "soak": {
            "seconds": 60, "calls": 12000, "failed": {}, "flat": False,
            "processes": {
                "gateway": {
                    "rss": {"start": None, "end": None, "slope_per_min": None, "flat": False,
                            "verdict": "too short"},
                    "fds": {"start": None, "end": None, "flat": False},
                }
            },
        },
        "_meta": {"python": "3.11", "cores": 2, "command": "python -m chaos", "finished": "now"},
    }  # fmt: skip
    table = render_table(results)
    assert (
        "| 1. kill -9 | 100 | 0 | 1.2 / 9.9 | - | 1.2 / 9.9 | 1.2 s | restarted_after_s 0.3 | met |"
        in table
    )
    assert "| 8. failing | 50 | UNAVAILABLE: 1 |" in table
    assert "**missed**: 1 failed calls" in table
    assert "| gateway | - -> - | - | - -> - | too short |" in table
