"""Outlier detection on virtual time: streaks, ejection times, the single probe, the share cap."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.resilience.outlier import HealthState, InstanceHealth, OutlierConfig, OutlierDetector

ACTIVE, EJECTED, PROBING = HealthState.ACTIVE, HealthState.EJECTED, HealthState.PROBING
CONFIG = OutlierConfig()  # 5 failures, 30 s growing to 300 s, 10 %, probe timeout 30 s


def detector_of(n: int, config: OutlierConfig = CONFIG) -> OutlierDetector:
    detector = OutlierDetector(config)
    for i in range(n):
        detector.add(f"i{i}")
    return detector


def fail(detector: OutlierDetector, key: str, now: float, times: int) -> list[bool]:
    return [detector.on_failure(key, now) for _ in range(times)]


# --- InstanceHealth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "asks", "state"),
    [
        # events: "f" failure, "s" success, "c" connection failure; asks: the last return value.
        pytest.param("ffff", False, ACTIVE, id="n-minus-1-failures-stay-active"),
        pytest.param("fffff", True, ACTIVE, id="nth-failure-asks"),
        pytest.param("ffffff", True, ACTIVE, id="refused-ejection-keeps-asking"),
        pytest.param("ffffsffff", False, ACTIVE, id="success-resets-streak"),
        pytest.param("ffffsfffff", True, ACTIVE, id="new-streak-of-n-asks"),
        pytest.param("c", True, ACTIVE, id="connection-failure-asks-at-once"),
        pytest.param("ffffc", True, ACTIVE, id="connection-failure-after-streak"),
    ],
)
def test_streaks(events: str, asks: bool, state: HealthState) -> None:
    health = InstanceHealth(CONFIG)
    result = None
    for event in events:
        if event == "s":
            health.record_success(0.0)
        elif event == "f":
            result = health.record_failure(0.0)
        else:
            result = health.connection_failure(0.0)
    assert result is asks
    assert health.state is state


def test_ejection_times_grow_by_base_and_cap() -> None:
    health = InstanceHealth(CONFIG)
    now = 0.0
    durations = []
    for _ in range(12):
        health.eject(now)
        durations.append(health.ejected_until - now)
        now = health.ejected_until
        assert health.available(now)  # the probe
        assert health.record_failure(now)  # ... fails: eject again, longer
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    assert health.ejections == 12


@pytest.mark.parametrize(
    ("at", "available", "state"),
    [
        pytest.param(0.0, False, EJECTED, id="just-ejected"),
        pytest.param(29.999, False, EJECTED, id="just-before-the-end"),
        pytest.param(30.0, True, PROBING, id="at-the-end-one-probe"),
        pytest.param(500.0, True, PROBING, id="long-after-one-probe"),
    ],
)
def test_available_after_ejection(at: float, available: bool, state: HealthState) -> None:
    health = InstanceHealth(CONFIG)
    health.eject(0.0)
    assert health.eligible(at) is available
    assert health.available(at) is available
    assert health.state is state


def test_exactly_one_probe_until_its_outcome() -> None:
    health = InstanceHealth(CONFIG)
    health.eject(0.0)
    grants = [health.available(30.0 + i * 0.1) for i in range(10)]
    assert grants == [True] + [False] * 9
    assert not health.eligible(31.0)
    health.record_success(31.0)
    assert health.state is ACTIVE
    assert all(health.available(31.0 + i) for i in range(3))


def test_probe_success_readmits_and_keeps_the_count() -> None:
    health = InstanceHealth(CONFIG)
    for _ in range(4):
        health.record_failure(0.0)
    health.eject(0.0)
    health.available(30.0)
    health.record_success(30.0)
    assert (health.state, health.consecutive_failures, health.ejections) == (ACTIVE, 0, 1)
    health.eject(31.0)  # flaps at once: the second ejection is longer
    assert health.ejected_until == 31.0 + 60.0


@pytest.mark.parametrize(
    ("healthy_for", "next_ejection"),
    [
        pytest.param(0.0, 90.0, id="flaps-at-once-third-ejection"),
        pytest.param(29.9, 90.0, id="less-than-one-base"),
        pytest.param(30.0, 60.0, id="one-base-takes-one-off"),
        pytest.param(60.0, 30.0, id="two-bases-back-to-first"),
        pytest.param(10_000.0, 30.0, id="long-healthy-starts-over"),
    ],
)
def test_ejection_count_decays_while_active(healthy_for: float, next_ejection: float) -> None:
    health = InstanceHealth(CONFIG)
    health.eject(0.0)
    health.available(30.0)
    assert health.record_failure(30.0)  # probe failed: second ejection, 60 s
    health.eject(30.0)
    health.available(90.0)
    health.record_success(90.0)
    now = 90.0 + healthy_for
    health.eject(now)
    assert health.ejected_until - now == next_ejection


def test_probe_failure_reejects_longer() -> None:
    health = InstanceHealth(CONFIG)
    health.eject(0.0)
    assert health.available(30.0)
    assert health.record_failure(30.0)
    health.eject(30.0)
    assert (health.state, health.ejected_until) == (EJECTED, 90.0)
    assert not health.available(89.0)
    assert health.available(90.0)


def test_lost_probe_is_given_up_after_the_probe_timeout() -> None:
    health = InstanceHealth(OutlierConfig(probe_timeout=5.0))
    health.eject(0.0)
    assert health.available(30.0)
    assert not health.available(34.9)
    assert health.available(35.0)  # the first probe never reported: a new one
    assert not health.available(35.0)


@pytest.mark.parametrize(
    "event",
    [pytest.param("s", id="late-success"), pytest.param("f", id="late-failure")],
)
def test_results_while_ejected_are_ignored(event: str) -> None:
    health = InstanceHealth(CONFIG)
    health.eject(0.0)
    if event == "s":
        health.record_success(1.0)
    else:
        assert not health.record_failure(1.0)
    assert not health.connection_failure(1.0)
    assert (health.state, health.ejected_until, health.ejections) == (EJECTED, 30.0, 1)


# --- OutlierDetector ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "percent", "ejectable"),
    [
        pytest.param(1, 10.0, 0, id="one-never"),
        pytest.param(2, 10.0, 1, id="two-at-most-one"),
        pytest.param(3, 10.0, 1, id="three-one"),
        pytest.param(10, 10.0, 1, id="ten-one"),
        pytest.param(20, 10.0, 2, id="twenty-two"),
        pytest.param(29, 10.0, 2, id="twenty-nine-rounds-down"),
        pytest.param(1, 100.0, 0, id="one-never-even-at-100"),
        pytest.param(2, 100.0, 1, id="two-never-the-last"),
        pytest.param(3, 100.0, 2, id="three-all-but-one"),
        pytest.param(10, 50.0, 5, id="ten-half"),
        pytest.param(5, 50.0, 2, id="five-half-rounds-down"),
    ],
)
def test_share_cap(instances: int, percent: float, ejectable: int) -> None:
    detector = detector_of(instances, OutlierConfig(max_ejection_percent=percent))
    ejected = [any(fail(detector, f"i{i}", 0.0, 5)) for i in range(instances)]
    assert sum(ejected) == ejectable
    assert detector.ejections_total == ejectable
    assert detector.counts(0.0)[EJECTED] == ejectable
    assert detector.counts(0.0)[ACTIVE] == instances - ejectable
    assert not detector.may_eject(0.0)


def test_refused_instance_stays_active_and_is_ejected_once_allowed() -> None:
    detector = detector_of(3)
    assert fail(detector, "i0", 0.0, 5) == [False] * 4 + [True]
    assert fail(detector, "i1", 1.0, 7) == [False] * 7  # cap reached: counted, not ejected
    assert detector.available("i1", 1.0)
    assert detector.health("i1").consecutive_failures == 7
    assert detector.available("i0", 30.0)  # i0's probe...
    detector.on_success("i0", 30.0)  # ... succeeds: room again
    assert detector.on_failure("i1", 31.0)  # the very next failure ejects i1
    assert detector.counts(31.0) == {ACTIVE: 2, EJECTED: 1, PROBING: 0}


def test_failed_probe_reejects_even_at_the_cap() -> None:
    detector = detector_of(2)
    fail(detector, "i0", 0.0, 5)
    assert not detector.may_eject(0.0)
    assert detector.available("i0", 30.0)
    assert detector.on_failure("i0", 30.0)
    assert detector.health("i0").ejected_until == 90.0
    assert detector.ejections_total == 2


@pytest.mark.parametrize(
    ("instances", "ejected"),
    [
        pytest.param(1, False, id="single-instance-never"),
        pytest.param(2, True, id="two-instances-at-once"),
        pytest.param(10, True, id="ten-instances-at-once"),
    ],
)
def test_connection_failure_ejects_at_once_when_allowed(instances: int, ejected: bool) -> None:
    detector = detector_of(instances)
    assert detector.on_failure("i0", 0.0, connection=True) is ejected
    assert detector.available("i0", 0.0) is not ejected


def test_never_the_last_instance_after_removals() -> None:
    detector = detector_of(3, OutlierConfig(max_ejection_percent=100.0))
    assert detector.on_failure("i0", 0.0, connection=True)
    detector.remove("i2")
    assert not detector.on_failure("i1", 0.0, connection=True)
    assert detector.available("i1", 0.0)


def test_unknown_keys() -> None:
    detector = detector_of(2)
    assert not detector.on_failure("gone", 0.0, connection=True)
    detector.on_success("gone", 0.0)
    assert detector.available("gone", 0.0)
    assert detector.eligible("gone", 0.0)
    assert len(detector) == 2
    with pytest.raises(KeyError):
        detector.health("gone")


def test_add_keeps_history_and_remove_forgets() -> None:
    detector = detector_of(2)
    fail(detector, "i0", 0.0, 3)
    detector.add("i0")
    assert detector.health("i0").consecutive_failures == 3
    detector.remove("i0")
    detector.remove("i0")
    detector.add("i0")
    assert detector.health("i0").consecutive_failures == 0


def test_eligible_does_not_claim_the_probe() -> None:
    detector = detector_of(2)
    detector.on_failure("i0", 0.0, connection=True)
    assert [detector.eligible("i0", 30.0) for _ in range(3)] == [True] * 3
    assert detector.available("i0", 30.0)
    assert not detector.eligible("i0", 30.0)


def test_counts_report_expired_ejections_as_probing() -> None:
    detector = detector_of(20)
    detector.on_failure("i0", 0.0, connection=True)
    detector.on_failure("i1", 0.0, connection=True)
    assert detector.counts(10.0) == {ACTIVE: 18, EJECTED: 2, PROBING: 0}
    assert detector.counts(30.0) == {ACTIVE: 18, EJECTED: 0, PROBING: 2}
    assert detector.available("i0", 30.0)
    assert detector.counts(30.0) == {ACTIVE: 18, EJECTED: 0, PROBING: 2}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"consecutive_failures": 0}, "consecutive_failures", id="failures-zero"),
        pytest.param({"consecutive_failures": 2.0}, "consecutive_failures", id="failures-float"),
        pytest.param({"consecutive_failures": True}, "consecutive_failures", id="failures-bool"),
        pytest.param({"base_ejection": 0.0}, "base_ejection", id="base-zero"),
        pytest.param({"base_ejection": math.nan}, "base_ejection", id="base-nan"),
        pytest.param({"max_ejection": 10.0}, "max_ejection", id="max-below-base"),
        pytest.param({"max_ejection": math.inf}, "max_ejection", id="max-inf"),
        pytest.param({"max_ejection_percent": 0.0}, "max_ejection_percent", id="percent-zero"),
        pytest.param({"max_ejection_percent": 101}, "max_ejection_percent", id="percent-over"),
        pytest.param({"max_ejection_percent": math.nan}, "max_ejection_percent", id="pct-nan"),
        pytest.param({"probe_timeout": 0.0}, "probe_timeout", id="probe-timeout-zero"),
        pytest.param({"probe_timeout": "5"}, "probe_timeout", id="probe-timeout-string"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        OutlierConfig(**fields)


operations = st.lists(
    st.tuples(
        st.sampled_from(["fail", "conn", "ok", "pick", "add", "remove"]),
        st.integers(0, 7),
        st.floats(0.0, 100.0),
    ),
    max_size=200,
)


@settings(database=None, derandomize=True, max_examples=300)
@given(
    percent=st.sampled_from([1.0, 10.0, 50.0, 100.0]),
    start=st.integers(0, 8),
    ops=operations,
)
def test_cap_holds_under_any_sequence(
    percent: float, start: int, ops: list[tuple[str, int, float]]
) -> None:
    detector = detector_of(start, OutlierConfig(max_ejection_percent=percent))
    now = 0.0
    for op, i, advance in ops:
        now += advance
        key = f"i{i}"
        before = detector.counts(now)
        out_before = before[EJECTED] + before[PROBING]
        if op == "fail":
            ejected = detector.on_failure(key, now)
        elif op == "conn":
            ejected = detector.on_failure(key, now, connection=True)
        else:
            ejected = False
            if op == "ok":
                detector.on_success(key, now)
            elif op == "pick":
                detector.available(key, now)
            elif op == "add":
                detector.add(key)
            else:
                detector.remove(key)
        counts = detector.counts(now)
        out = counts[EJECTED] + counts[PROBING]
        assert sum(counts.values()) == len(detector)
        if ejected:  # a new ejection never breaks the cap; a re-ejected probe adds nobody
            cap = max(1, math.floor(len(detector) * percent / 100))
            assert out <= max(cap, out_before)
            assert out < len(detector) or out == out_before
            assert detector.health(key).state is EJECTED
