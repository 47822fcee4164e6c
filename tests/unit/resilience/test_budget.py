"""Retry budget on virtual time: ratio, floor, expiry of deposits and withdrawals, the bound."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.resilience.budget import RetryBudget, RetryBudgetConfig
from mesh.testing import VirtualClock


def drain(budget: RetryBudget, limit: int = 10_000) -> int:
    """Withdraw until refused; how many withdrawals succeeded."""
    taken = 0
    while taken < limit and budget.try_withdraw():
        taken += 1
    return taken


@pytest.mark.parametrize(
    ("settings_", "requests", "allowed"),
    [
        pytest.param({}, 100, 20 + 100, id="defaults-100-requests-buy-20-plus-floor"),
        pytest.param({}, 0, 100, id="defaults-idle-floor-only"),
        pytest.param({"min_per_second": 0.0}, 100, 20, id="no-floor-100-requests"),
        pytest.param({"min_per_second": 0.0}, 4, 0, id="no-floor-four-requests-buy-nothing"),
        pytest.param({"min_per_second": 0.0}, 5, 1, id="no-floor-five-requests-buy-one"),
        pytest.param({"min_per_second": 0.0}, 0, 0, id="no-floor-idle-nothing"),
        pytest.param({"min_per_second": 0.0, "ratio": 0.0}, 1000, 0, id="disabled"),
        pytest.param({"min_per_second": 0.0, "ratio": 0.57}, 100, 57, id="float-rounding"),
        pytest.param({"min_per_second": 0.5, "window": 3.0}, 0, 1, id="fractional-floor"),
        pytest.param({"min_per_second": 0.2, "window": 3.0}, 0, 0, id="floor-below-one"),
        pytest.param({"ratio": 1.0, "min_per_second": 0.0}, 7, 7, id="ratio-one"),
    ],
)
def test_withdrawals_allowed(settings_: dict[str, Any], requests: int, allowed: int) -> None:
    budget = RetryBudget(VirtualClock(0.0), **settings_)
    for _ in range(requests):
        budget.record_request()
    assert drain(budget) == allowed
    assert budget.balance() < 1.0


@pytest.mark.parametrize(
    ("advance", "new_requests", "allowed"),
    [
        # 100 calls and 30 retries (20 bought + a floor of 10) at t=0, then:
        pytest.param(0.0, 0, 0, id="same-instant-spent"),
        pytest.param(9.99, 0, 0, id="still-in-window-spent"),
        pytest.param(10.0, 0, 10, id="window-over-floor-back"),
        pytest.param(1000.0, 0, 10, id="long-after-floor-back"),
        pytest.param(5.0, 100, 20, id="in-window-old-withdrawals-still-count"),
        pytest.param(10.0, 100, 30, id="window-over-withdrawals-expired-too"),
    ],
)
def test_deposits_and_withdrawals_expire_after_the_window(
    advance: float, new_requests: int, allowed: int
) -> None:
    clock = VirtualClock(0.0)
    budget = RetryBudget(clock, min_per_second=1.0)
    for _ in range(100):
        budget.record_request()
    assert drain(budget) == 30
    clock.now += advance
    for _ in range(new_requests):
        budget.record_request()
    assert drain(budget) == allowed


@pytest.mark.parametrize(
    ("deposit_at", "check_at", "allowed"),
    [
        pytest.param(0.5, 9.99, 20, id="same-window-bucket-alive"),
        pytest.param(0.5, 10.0, 0, id="bucket-expires-whole-at-boundary"),
        pytest.param(0.99, 10.0, 0, id="late-in-bucket-expires-with-it"),
        pytest.param(1.0, 10.99, 20, id="next-bucket-alive"),
    ],
)
def test_expiry_is_per_bucket(deposit_at: float, check_at: float, allowed: int) -> None:
    clock = VirtualClock(deposit_at)
    budget = RetryBudget(clock, min_per_second=0.0)  # 10 buckets of 1 s
    for _ in range(100):
        budget.record_request()
    clock.now = check_at
    assert drain(budget) == allowed


def test_idle_client_gets_the_floor_each_window() -> None:
    clock = VirtualClock(0.0)
    budget = RetryBudget(clock, min_per_second=1.0, window=10.0)
    assert drain(budget) == 10
    clock.now = 5.0
    assert drain(budget) == 0
    clock.now = 10.0
    assert drain(budget) == 10


def test_steady_load_buys_ratio_times_rate() -> None:
    clock = VirtualClock(0.0)
    budget = RetryBudget(clock, min_per_second=0.0)  # 10 calls/s -> 2 retries/s
    taken = []
    for second in range(100):
        clock.now = float(second)
        for _ in range(10):
            budget.record_request()
        taken.append(drain(budget))
    assert taken == [2] * 100


def test_refused_withdrawal_takes_nothing() -> None:
    budget = RetryBudget(VirtualClock(0.0), min_per_second=0.0)
    for _ in range(4):
        budget.record_request()
    assert not budget.try_withdraw()
    assert budget.balance() == pytest.approx(0.8)
    budget.record_request()
    assert budget.try_withdraw()


def test_clock_stepping_back_does_not_revive_expired_tokens() -> None:
    clock = VirtualClock(0.0)
    budget = RetryBudget(clock, min_per_second=0.0)
    for _ in range(100):
        budget.record_request()
    clock.now = 20.0
    assert budget.balance() == 0.0
    clock.now = 0.0
    assert budget.balance() == 0.0
    assert not budget.try_withdraw()


def test_config_defaults_and_reserve() -> None:
    budget = RetryBudget(VirtualClock(0.0))
    assert budget.config == RetryBudgetConfig(0.2, 10.0, 10.0, 10)
    assert budget.config.reserve == 100.0
    assert budget.balance() == 100.0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"ratio": -0.1}, "ratio", id="ratio-negative"),
        pytest.param({"ratio": math.nan}, "ratio", id="ratio-nan"),
        pytest.param({"ratio": math.inf}, "ratio", id="ratio-inf"),
        pytest.param({"window": 0.0}, "window", id="window-zero"),
        pytest.param({"window": -1.0}, "window", id="window-negative"),
        pytest.param({"window": math.inf}, "window", id="window-inf"),
        pytest.param({"min_per_second": -1.0}, "min_per_second", id="floor-negative"),
        pytest.param({"min_per_second": math.nan}, "min_per_second", id="floor-nan"),
        pytest.param({"min_per_second": "10"}, "min_per_second", id="floor-string"),
        pytest.param({"buckets": 0}, "buckets", id="buckets-zero"),
        pytest.param({"buckets": 2.5}, "buckets", id="buckets-float"),
        pytest.param({"buckets": True}, "buckets", id="buckets-bool"),
        pytest.param({"buckets": 10_000}, "buckets", id="buckets-too-many"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        RetryBudgetConfig(**fields)
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        RetryBudget(VirtualClock(0.0), **fields)


# Times on a 1/16 s grid and bucket widths that are powers of two: exact float arithmetic, so
# the reference below and the budget agree on which bucket an instant falls in.
configs = st.sampled_from(
    [
        RetryBudgetConfig(ratio=0.2, window=8.0, min_per_second=1.0, buckets=8),
        RetryBudgetConfig(ratio=0.5, window=4.0, min_per_second=0.0, buckets=4),
        RetryBudgetConfig(ratio=0.1, window=2.0, min_per_second=0.5, buckets=2),
        RetryBudgetConfig(ratio=1.0, window=1.0, min_per_second=2.0, buckets=16),
    ]
)
events = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(["request", "retry"]), st.integers(1, 30)),
    max_size=60,
)


@settings(database=None, derandomize=True, max_examples=300)
@given(config=configs, script=events)
def test_withdrawals_in_any_window_are_bounded(
    config: RetryBudgetConfig, script: list[tuple[int, str, int]]
) -> None:
    """In any interval of window - window/buckets, withdrawals <= floor + ratio * deposits made
    from one window before the interval up to its end (see the module docstring)."""
    clock = VirtualClock(0.0)
    budget = RetryBudget(
        clock,
        ratio=config.ratio,
        window=config.window,
        min_per_second=config.min_per_second,
        buckets=config.buckets,
    )
    deposits: list[float] = []
    withdrawals: list[float] = []
    for step, kind, count in script:
        clock.now += step / 16
        for _ in range(count):
            if kind == "request":
                budget.record_request()
                deposits.append(clock.now)
            elif budget.try_withdraw():
                withdrawals.append(clock.now)
    span = config.window - config.window / config.buckets
    for start in withdrawals:  # the worst intervals start at a withdrawal
        end = start + span
        taken = sum(start <= t < end for t in withdrawals)
        funded = sum(start - config.window < t < end for t in deposits)
        assert taken <= config.reserve + config.ratio * funded + 1e-6
    # Whatever happened, an idle window later the floor is back, exactly.
    clock.now += 2 * config.window
    assert budget.balance() == pytest.approx(config.reserve)
