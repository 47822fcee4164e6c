"""Peak EWMA on virtual time: peaks, blending by elapsed time, read-time decay, cost, penalty."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.resilience.ewma import EwmaConfig, PeakEwma
from mesh.testing import VirtualClock

E = math.exp(-1.0)  # the weight left after one decay time constant


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # steps: (seconds to advance, rtt to observe or None); expected: estimate at the end.
        pytest.param([], 0.030, id="seed-before-any-answer"),
        pytest.param([(0.0, 0.5)], 0.5, id="peak-replaces-at-once"),
        pytest.param([(0.0, 0.030)], 0.030, id="equal-to-estimate-blends-to-same"),
        pytest.param([(0.0, 0.010)], 0.030, id="faster-answer-without-elapsed-time-has-no-weight"),
        pytest.param([(10.0, 0.010)], 0.030 * E + 0.010 * (1 - E), id="blend-after-one-tau"),
        pytest.param([(0.0, 1.0), (1000.0, 0.020)], 0.020, id="blend-after-long-gap-forgets"),
        pytest.param(
            [(0.0, 1.0), (5.0, 0.1)],
            1.0 * math.exp(-0.5) + 0.1 * (1 - math.exp(-0.5)),
            id="recent-peak-survives-fast-answer",
        ),
        pytest.param(
            [(0.0, 1.0), *[(0.001, 0.001)] * 100],
            pytest.approx(1.0 * math.exp(-0.01) + 0.001 * (1 - math.exp(-0.01))),
            id="a-burst-of-fast-answers-cannot-wipe-a-peak",
        ),
        # Reads decay toward zero: no observation for one tau leaves 1/e of the estimate.
        pytest.param([(10.0, None)], 0.030 * E, id="read-decays-seed"),
        pytest.param([(0.0, 0.2), (20.0, None)], 0.2 * E * E, id="read-decays-peak"),
        pytest.param([(0.0, 0.2), (-5.0, None)], 0.2, id="clock-stepping-back-counts-as-zero"),
    ],
)
def test_estimate(steps: list[tuple[float, float | None]], expected: Any) -> None:
    clock = VirtualClock(100.0)
    ewma = PeakEwma(clock)
    for advance, rtt in steps:
        clock.now += advance
        if rtt is not None:
            ewma.observe(rtt)
    assert ewma.estimate() == pytest.approx(expected)


def test_reads_do_not_change_state() -> None:
    clock = VirtualClock(100.0)
    read, unread = PeakEwma(clock), PeakEwma(clock)
    for ewma in (read, unread):
        ewma.observe(0.5)
    for _ in range(5):
        clock.now += 2.0
        read.cost(3)
    unread_estimate_before = unread.estimate()
    read.observe(0.1)
    unread.observe(0.1)
    assert read.estimate() == unread.estimate()
    assert unread_estimate_before == pytest.approx(0.5 * E)


@pytest.mark.parametrize(
    ("outstanding", "expected"),
    [
        pytest.param(0, 0.030, id="idle"),
        pytest.param(1, 0.060, id="one-in-flight"),
        pytest.param(9, 0.300, id="nine-in-flight"),
    ],
)
def test_cost_scales_with_outstanding(outstanding: int, expected: float) -> None:
    assert PeakEwma(VirtualClock(100.0)).cost(outstanding) == pytest.approx(expected)


def test_cost_uses_decayed_estimate() -> None:
    clock = VirtualClock(100.0)
    ewma = PeakEwma(clock)
    ewma.observe(0.4)
    clock.now += 10.0
    assert ewma.cost(1) == pytest.approx(0.4 * E * 2)


def test_penalized_instance_becomes_attractive_again_when_left_alone() -> None:
    clock = VirtualClock(100.0)
    penalized, healthy = PeakEwma(clock), PeakEwma(clock)
    penalized.penalize()
    healthy.observe(0.030)
    assert penalized.estimate() == 1.0
    assert penalized.cost(0) > healthy.cost(5)
    clock.now += 60.0  # nobody calls the penalized instance; healthy keeps answering
    healthy.observe(0.030)
    assert penalized.cost(0) < healthy.cost(0)


def test_custom_penalty_seed_and_decay() -> None:
    clock = VirtualClock(100.0)
    ewma = PeakEwma(clock, seed=0.1, decay=2.0, penalty=3.0)
    assert ewma.config == EwmaConfig(seed=0.1, decay=2.0, penalty=3.0)
    assert ewma.estimate() == pytest.approx(0.1)
    ewma.penalize()
    clock.now += 2.0
    assert ewma.estimate() == pytest.approx(3.0 * E)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"seed": -0.001}, "seed", id="seed-negative"),
        pytest.param({"seed": math.nan}, "seed", id="seed-nan"),
        pytest.param({"seed": math.inf}, "seed", id="seed-inf"),
        pytest.param({"seed": "0.03"}, "seed", id="seed-string"),
        pytest.param({"decay": 0.0}, "decay", id="decay-zero"),
        pytest.param({"decay": -1.0}, "decay", id="decay-negative"),
        pytest.param({"decay": math.inf}, "decay", id="decay-inf"),
        pytest.param({"decay": math.nan}, "decay", id="decay-nan"),
        pytest.param({"penalty": 0.0}, "penalty", id="penalty-zero"),
        pytest.param({"penalty": -math.inf}, "penalty", id="penalty-minus-inf"),
        pytest.param({"penalty": True}, "penalty", id="penalty-bool"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        EwmaConfig(**fields)
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        PeakEwma(VirtualClock(100.0), **fields)


@pytest.mark.parametrize(
    "rtt",
    [
        pytest.param(-0.001, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(None, id="none"),
        pytest.param(True, id="bool"),
    ],
)
def test_invalid_rtt_is_refused_and_changes_nothing(rtt: Any) -> None:
    ewma = PeakEwma(VirtualClock(100.0))
    with pytest.raises(ValueError, match="rtt"):
        ewma.observe(rtt)
    assert ewma.estimate() == 0.030


@pytest.mark.parametrize(
    "outstanding",
    [pytest.param(-1, id="negative"), pytest.param(1.5, id="float"), pytest.param(None, id="none")],
)
def test_invalid_outstanding_is_refused(outstanding: Any) -> None:
    with pytest.raises(ValueError, match="outstanding"):
        PeakEwma(VirtualClock(100.0)).cost(outstanding)


steps = st.lists(st.tuples(st.floats(0.0, 1000.0), st.none() | st.floats(0.0, 100.0)), max_size=50)


@settings(database=None, derandomize=True, max_examples=300)
@given(steps=steps, outstanding=st.integers(0, 1000))
def test_estimate_bounds(steps: list[tuple[float, float | None]], outstanding: int) -> None:
    clock = VirtualClock(100.0)
    ewma = PeakEwma(clock)
    highest = 0.030
    for advance, rtt in steps:
        clock.now += advance
        if rtt is None:
            continue
        ewma.observe(rtt)
        after = ewma.estimate()
        highest = max(highest, rtt)
        # Right after an answer, the estimate is at least that answer (peak or blend).
        assert after >= rtt * (1 - 1e-12)
        # And never above the highest answer (or the seed) seen so far.
        assert after <= max(rtt, highest) * (1 + 1e-12)
    assert 0.0 <= ewma.estimate() <= highest * (1 + 1e-12)
    # Cost grows with outstanding calls and shrinks (or stays) as time passes unobserved.
    assert ewma.cost(outstanding) <= ewma.cost(outstanding + 1)
    now_cost = ewma.cost(outstanding)
    clock.now += 1.0
    assert ewma.cost(outstanding) <= now_cost
