"""Backoff: delays by attempt, cap and jitter bounds; invalid policies; the stateful helper."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.resilience.backoff import Backoff, BackoffPolicy, backoff_delay

NO_JITTER = BackoffPolicy(base=0.1, cap=1.0, multiplier=2.0, jitter=0.0)
DEFAULT = BackoffPolicy()  # base 0.05, cap 1.0, multiplier 2, jitter 0.2


@pytest.mark.parametrize(
    ("policy", "attempt", "unit_random", "expected"),
    [
        # Growth without jitter: base * multiplier**attempt, then the cap.
        pytest.param(NO_JITTER, 0, 0.5, 0.1, id="first-retry-is-base"),
        pytest.param(NO_JITTER, 1, 0.5, 0.2, id="doubles"),
        pytest.param(NO_JITTER, 2, 0.5, 0.4, id="doubles-again"),
        pytest.param(NO_JITTER, 3, 0.5, 0.8, id="just-below-cap"),
        pytest.param(NO_JITTER, 4, 0.5, 1.0, id="capped"),
        pytest.param(NO_JITTER, 64, 0.5, 1.0, id="capped-at-exponent-limit"),
        pytest.param(NO_JITTER, 10_000, 0.5, 1.0, id="capped-after-many-attempts"),
        pytest.param(NO_JITTER, 3, 0.0, 0.8, id="no-jitter-ignores-random-low"),
        pytest.param(NO_JITTER, 3, 0.999, 0.8, id="no-jitter-ignores-random-high"),
        # Jitter 0.2 spreads the delay over [0.8, 1.2) x, never above the cap.
        pytest.param(DEFAULT, 0, 0.0, 0.04, id="jitter-low-end"),
        pytest.param(DEFAULT, 0, 0.5, 0.05, id="jitter-middle"),
        pytest.param(DEFAULT, 0, 0.999, 0.05 * (1 + 0.2 * 0.998), id="jitter-high-end"),
        pytest.param(DEFAULT, 3, 0.999, 0.4 * (1 + 0.2 * 0.998), id="jitter-grown"),
        pytest.param(DEFAULT, 5, 0.0, 0.8, id="jitter-below-cap"),
        pytest.param(DEFAULT, 5, 0.5, 1.0, id="jitter-middle-at-cap"),
        pytest.param(DEFAULT, 5, 0.999, 1.0, id="jitter-never-above-cap"),
        # Full jitter (1.0) reaches down to zero.
        pytest.param(BackoffPolicy(jitter=1.0), 0, 0.0, 0.0, id="full-jitter-zero"),
        pytest.param(BackoffPolicy(jitter=1.0), 0, 0.75, 0.075, id="full-jitter-up"),
        # Multiplier 1: constant delay.
        pytest.param(BackoffPolicy(0.3, 1.0, 1.0, 0.0), 9, 0.5, 0.3, id="constant"),
        pytest.param(BackoffPolicy(0.5, 0.5, 3.0, 0.0), 0, 0.5, 0.5, id="cap-equals-base"),
    ],
)
def test_delay(policy: BackoffPolicy, attempt: int, unit_random: float, expected: float) -> None:
    assert backoff_delay(policy, attempt, unit_random) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"base": 0}, "base", id="base-zero"),
        pytest.param({"base": -0.1}, "base", id="base-negative"),
        pytest.param({"base": 2.0, "cap": 1.0}, "cap", id="cap-below-base"),
        pytest.param({"cap": 0.01}, "cap", id="cap-below-default-base"),
        pytest.param({"multiplier": 0.5}, "multiplier", id="multiplier-shrinks"),
        pytest.param({"multiplier": 0}, "multiplier", id="multiplier-zero"),
        pytest.param({"jitter": -0.1}, "jitter", id="jitter-negative"),
        pytest.param({"jitter": 1.01}, "jitter", id="jitter-above-one"),
        pytest.param({"jitter": math.nan}, "jitter", id="jitter-nan"),
        pytest.param({"base": math.nan}, "base", id="base-nan"),
        pytest.param({"cap": math.nan}, "cap", id="cap-nan"),
        pytest.param({"multiplier": math.nan}, "multiplier", id="multiplier-nan"),
    ],
)
def test_invalid_policy_raises_value_error_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        BackoffPolicy(**fields)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(DEFAULT, -1, 0.5)


def test_huge_multiplier_is_capped_not_overflowing() -> None:
    policy = BackoffPolicy(base=0.01, cap=5.0, multiplier=1e5, jitter=0.0)
    assert backoff_delay(policy, 64, 0.5) == 5.0


def test_backoff_counts_attempts_and_resets() -> None:
    draws = iter([0.0, 0.5, 0.999, 0.5])
    backoff = Backoff(BackoffPolicy(base=0.1, cap=10.0, jitter=0.5), rand=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([0.05, 0.2, 0.4 * 1.499])
    assert backoff.attempt == 3
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == pytest.approx(0.1)


def test_backoff_defaults() -> None:
    backoff = Backoff()
    assert backoff.policy == BackoffPolicy()
    assert 0.04 <= backoff.next_delay() <= 0.06


@st.composite
def valid_policies(draw: st.DrawFn) -> BackoffPolicy:
    base = draw(st.floats(1e-6, 100.0))
    return BackoffPolicy(
        base=base,
        cap=draw(st.floats(base, 1e6)),
        multiplier=draw(st.floats(1.0, 1000.0)),
        jitter=draw(st.floats(0.0, 1.0)),
    )


@settings(database=None, derandomize=True, max_examples=500)
@given(
    policy=valid_policies(),
    attempt=st.integers(0, 10_000),
    unit_random=st.floats(0.0, 1.0, exclude_max=True),
)
def test_delay_is_always_within_zero_and_cap(
    policy: BackoffPolicy, attempt: int, unit_random: float
) -> None:
    delay = backoff_delay(policy, attempt, unit_random)
    assert 0.0 <= delay <= policy.cap
    # Without jitter, delays never shrink from one attempt to the next.
    plain = BackoffPolicy(policy.base, policy.cap, policy.multiplier, 0.0)
    assert backoff_delay(plain, attempt, 0.5) <= backoff_delay(plain, attempt + 1, 0.5)
