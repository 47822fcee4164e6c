"""Retry budget (Finagle's `RetryBudget`, Linkerd's retry budget): retries cannot multiply load.

Every original call deposits; every retry or hedge withdraws one token. Over a sliding window,
the budget allows

    min_per_second * window  +  ratio * deposits  -  withdrawals  >=  1

so with the defaults (ratio 0.2, window 10 s, floor 10/s) 100 calls in the window buy 20 retries
on top of a floor of 100 retries per window that keeps a quiet client able to retry at all.
Both deposits and withdrawals expire after the window, so a past outage stops costing retries
once it is a window old.

The window is cut into `buckets` time slots (10 by default); a slot expires as a whole, so the
window the budget sees spans between `window - window/buckets` and `window` seconds. What that
guarantees: in any interval of `window - window/buckets` seconds, successful withdrawals are at
most ``min_per_second * window + ratio * D``, where D counts deposits made from `window` seconds
before the interval up to its end. (Tokens deposited early in a window may be spent late in it,
so the interval's own deposits alone do not bound it; that is the point of a budget.)

The clock is injected, so tests run on virtual time. A budget is shared by every call of a
client to one service; it is decision logic only and does not sleep.

Example::

    budget = RetryBudget(time.monotonic)
    budget.record_request()            # on every original call
    if policy_says_retry and budget.try_withdraw():
        ...                            # retry; otherwise fail with the last status
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryBudget", "RetryBudgetConfig"]

# Float slack for `ratio * deposits`: 0.1 * 30 is 3.0000000000000004, not 3.
_EPSILON = 1e-9


@dataclass(frozen=True)
class RetryBudgetConfig:
    """Settings of a retry budget; see the module docstring for the rule."""

    ratio: float = 0.2
    window: float = 10.0
    min_per_second: float = 10.0
    buckets: int = 10

    def __post_init__(self) -> None:
        for name in ("ratio", "window", "min_per_second"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"retry budget {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"retry budget {name} must be a finite number, got {value}")
        if self.ratio < 0:
            raise ValueError(f"retry budget ratio must be >= 0, got {self.ratio}")
        if self.window <= 0:
            raise ValueError(f"retry budget window must be > 0, got {self.window}")
        if self.min_per_second < 0:
            raise ValueError(f"retry budget min_per_second must be >= 0, got {self.min_per_second}")
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int):
            raise ValueError(f"retry budget buckets must be an int, got {self.buckets!r}")
        if not 1 <= self.buckets <= 1000:
            raise ValueError(f"retry budget buckets must be within [1, 1000], got {self.buckets}")

    @property
    def reserve(self) -> float:
        """The floor: retries allowed per window with no deposits at all."""
        return self.min_per_second * self.window


class _Slot:
    """Counters of one time slot; `index` says which slot of time it currently holds."""

    __slots__ = ("deposits", "index", "withdrawals")

    def __init__(self) -> None:
        self.index = -1
        self.deposits = 0
        self.withdrawals = 0


class RetryBudget:
    """Time-bucketed deposits and withdrawals; see the module docstring."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ratio: float = 0.2,
        window: float = 10.0,
        min_per_second: float = 10.0,
        buckets: int = 10,
    ) -> None:
        self.config = RetryBudgetConfig(
            ratio=ratio, window=window, min_per_second=min_per_second, buckets=buckets
        )
        self._clock = clock
        self._width = self.config.window / self.config.buckets
        self._slots = [_Slot() for _ in range(self.config.buckets)]
        self._last_index = -1

    def _index(self) -> int:
        """The slot index of now; never moves backwards, even if the clock does."""
        index = math.floor(self._clock() / self._width)
        self._last_index = max(self._last_index, index)
        return self._last_index

    def _current(self, index: int) -> _Slot:
        slot = self._slots[index % len(self._slots)]
        if slot.index != index:  # the slot held an expired stretch of time: start it over
            slot.index, slot.deposits, slot.withdrawals = index, 0, 0
        return slot

    def _totals(self, index: int) -> tuple[int, int]:
        oldest = index - len(self._slots) + 1
        live = [slot for slot in self._slots if oldest <= slot.index <= index]
        return sum(s.deposits for s in live), sum(s.withdrawals for s in live)

    def record_request(self) -> None:
        """Deposit for one original call (not for retries or hedges)."""
        self._current(self._index()).deposits += 1

    def balance(self) -> float:
        """Tokens left in the window now (floor + ratio x deposits - withdrawals); may be < 1."""
        deposits, withdrawals = self._totals(self._index())
        return self.config.reserve + self.config.ratio * deposits - withdrawals

    def try_withdraw(self) -> bool:
        """Take one token for a retry or hedge; False (and nothing taken) if none is left."""
        index = self._index()
        deposits, withdrawals = self._totals(index)
        if self.config.reserve + self.config.ratio * deposits - withdrawals < 1.0 - _EPSILON:
            return False
        self._current(index).withdrawals += 1
        return True

    def __repr__(self) -> str:
        deposits, withdrawals = self._totals(self._last_index)
        return f"RetryBudget(deposits={deposits}, withdrawals={withdrawals})"
