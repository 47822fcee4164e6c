"""hms_gateway.ratelimit: token buckets per client on a fake clock, bounded by an LRU."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_gateway.errors import GatewayError
from hms_gateway.ratelimit import RateLimit, RateLimiter
from mesh.testing import VirtualClock


def _limiter(
    rate: float = 2.0, burst: int = 3, max_clients: int = 100
) -> tuple[RateLimiter, VirtualClock]:
    clock = VirtualClock()
    return RateLimiter(RateLimit(rate=rate, burst=burst, max_clients=max_clients), clock), clock


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        pytest.param({"rate": 0}, "rate", id="zero-rate"),
        pytest.param({"rate": -1.0}, "rate", id="negative-rate"),
        pytest.param({"rate": float("inf")}, "rate", id="infinite-rate"),
        pytest.param({"rate": float("nan")}, "rate", id="nan-rate"),
        pytest.param({"rate": 5e-324}, "rate", id="subnormal-rate"),
        pytest.param({"rate": 1e10}, "rate", id="absurd-rate"),
        pytest.param({"rate": True}, "rate", id="bool-rate"),
        pytest.param({"rate": "1"}, "rate", id="str-rate"),
        pytest.param({"burst": 0}, "burst", id="zero-burst"),
        pytest.param({"burst": 1.5}, "burst", id="fractional-burst"),
        pytest.param({"burst": True}, "burst", id="bool-burst"),
        pytest.param({"max_clients": 0}, "max_clients", id="zero-clients"),
        pytest.param({"max_clients": 2.0}, "max_clients", id="float-clients"),
    ],
)
def test_config_refused(settings: dict[str, Any], problem: str) -> None:
    values: dict[str, Any] = {"rate": 1.0, "burst": 1, "max_clients": 10} | settings
    with pytest.raises(ValueError, match=problem):
        RateLimit(**values)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(1.0, 1, id="one-per-second"),
        pytest.param(2.0, 3, id="burst-3"),
        pytest.param(0.1, 5, id="slow"),
        pytest.param(1000.0, 50, id="fast"),
    ],
)
def test_burst_then_refuse(rate: float, burst: int) -> None:
    limiter, _ = _limiter(rate=rate, burst=burst)
    assert [limiter.acquire("c") for _ in range(burst)] == [None] * burst
    retry_after = limiter.acquire("c")
    assert retry_after == pytest.approx(1 / rate)


@pytest.mark.parametrize(
    ("elapsed", "allowed"),
    [
        pytest.param(0.0, 0, id="no-time"),
        pytest.param(0.49, 0, id="just-under-one-token"),
        pytest.param(0.5, 1, id="one-token"),
        pytest.param(1.0, 2, id="two-tokens"),
        pytest.param(1.4, 2, id="two-and-a-bit"),
        pytest.param(60.0, 3, id="capped-at-burst"),
    ],
)
def test_refill_at_rate(elapsed: float, allowed: int) -> None:
    limiter, clock = _limiter(rate=2.0, burst=3)
    for _ in range(3):
        assert limiter.acquire("c") is None
    clock.advance(elapsed)
    outcomes = [limiter.acquire("c") for _ in range(allowed + 1)]
    assert outcomes[:allowed] == [None] * allowed
    assert outcomes[allowed] is not None


@pytest.mark.parametrize(
    ("rate", "drained_for", "expected"),
    [
        pytest.param(2.0, 0.0, 0.5, id="empty-bucket"),
        pytest.param(2.0, 0.2, 0.3, id="part-refilled"),
        pytest.param(0.25, 0.0, 4.0, id="slow-rate"),
        pytest.param(0.25, 3.0, 1.0, id="slow-rate-part-refilled"),
    ],
)
def test_retry_after_value(rate: float, drained_for: float, expected: float) -> None:
    limiter, clock = _limiter(rate=rate, burst=1)
    assert limiter.acquire("c") is None
    clock.advance(drained_for)
    retry_after = limiter.acquire("c")
    assert retry_after == pytest.approx(expected)
    # A refusal takes nothing: waiting a bit less is still too early, the full delay is enough.
    assert retry_after is not None
    clock.advance(retry_after * 0.9)
    assert limiter.acquire("c") is not None
    clock.advance(retry_after * 0.1)
    assert limiter.acquire("c") is None


def test_retry_after_header() -> None:
    limiter, _ = _limiter(rate=0.4, burst=1)
    limiter.acquire("c")
    retry_after = limiter.acquire("c")
    assert retry_after is not None
    assert GatewayError.rate_limited(retry_after).headers == (("retry-after", "3"),)


def test_clients_are_independent() -> None:
    limiter, _ = _limiter(rate=1.0, burst=2)
    assert [limiter.acquire("a") for _ in range(2)] == [None, None]
    assert limiter.acquire("a") is not None
    assert [limiter.acquire("b") for _ in range(2)] == [None, None]
    assert limiter.acquire("b") is not None
    assert limiter.available("c") == 2


def test_clock_stepping_back_gives_nothing() -> None:
    limiter, clock = _limiter(rate=1.0, burst=2)
    limiter.acquire("c")
    limiter.acquire("c")
    clock.advance(-10)
    assert limiter.acquire("c") == pytest.approx(1.0)
    clock.advance(10)  # back to where it was: still no time has passed for the bucket
    assert limiter.acquire("c") == pytest.approx(1.0)


def test_eviction_bound_and_lru_order() -> None:
    limiter, _ = _limiter(rate=1.0, burst=1, max_clients=3)
    for client in ("a", "b", "c"):
        assert limiter.acquire(client) is None
    assert limiter.acquire("a") is not None  # "a" is now the most recently used
    assert limiter.acquire("d") is None  # over the bound: "b", least recently used, goes
    assert len(limiter) == 3
    assert limiter.acquire("a") is not None  # "a" kept its drained bucket
    assert limiter.acquire("c") is not None
    assert limiter.acquire("b") is None  # "b" was dropped: it starts full again
    assert len(limiter) == 3


def test_many_clients_stay_bounded() -> None:
    limiter, _ = _limiter(max_clients=50)
    for index in range(1000):
        limiter.acquire(f"client-{index}")
    assert len(limiter) == 50


def test_available_does_not_use_a_token() -> None:
    limiter, _ = _limiter(rate=1.0, burst=2)
    assert limiter.available("c") == 2
    assert len(limiter) == 0
    limiter.acquire("c")
    assert limiter.available("c") == 1
    assert limiter.available("c") == 1


# -- hypothesis -----------------------------------------------------------------------------

_STEPS = st.lists(
    st.tuples(st.floats(min_value=0, max_value=100), st.sampled_from("abcde")), max_size=60
)


@given(
    rate=st.floats(min_value=1e-3, max_value=1e4),
    burst=st.integers(min_value=1, max_value=20),
    max_clients=st.integers(min_value=1, max_value=4),
    steps=_STEPS,
)
def test_bucket_invariants(
    rate: float, burst: int, max_clients: int, steps: list[tuple[float, str]]
) -> None:
    limiter, clock = _limiter(rate=rate, burst=burst, max_clients=max_clients)
    for elapsed, client in steps:
        clock.advance(elapsed)
        retry_after = limiter.acquire(client)
        if retry_after is not None:
            assert retry_after > 0
            assert math.isfinite(retry_after)
            assert retry_after <= 1 / rate * (1 + 1e-9)
            # The announced delay is always enough.
            clock.advance(retry_after)
            assert limiter.acquire(client) is None
        tokens = limiter.available(client)
        assert 0 <= tokens <= burst
        assert len(limiter) <= max_clients


@given(
    rate=st.floats(min_value=1e-6, max_value=1e9),
    burst=st.integers(min_value=1, max_value=1000),
    elapsed=st.lists(st.floats(min_value=0, max_value=1e6), max_size=30),
)
def test_retry_after_always_positive_and_finite(
    rate: float, burst: int, elapsed: list[float]
) -> None:
    limiter, clock = _limiter(rate=rate, burst=burst)
    for seconds in elapsed:
        clock.advance(seconds)
        for _ in range(3):
            retry_after = limiter.acquire("c")
            assert retry_after is None or (retry_after > 0 and math.isfinite(retry_after))
            assert 0 <= limiter.available("c") <= burst
