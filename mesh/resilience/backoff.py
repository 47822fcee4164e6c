"""Exponential backoff with jitter: a pure function and a small stateful helper.

Randomness is passed in, so tests are deterministic and need no sleeps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff", "BackoffPolicy", "backoff_delay"]


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry n is min(cap, base * multiplier**n), spread by +/- jitter."""

    base: float = 0.05
    cap: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("base", "cap", "multiplier", "jitter"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(
                    f"backoff {name} must be a finite number, got {getattr(self, name)}"
                )
        if self.base <= 0:
            raise ValueError(f"backoff base must be > 0, got {self.base}")
        if self.cap < self.base:
            raise ValueError(f"backoff cap {self.cap} is below its base {self.base}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")


def backoff_delay(policy: BackoffPolicy, attempt: int, unit_random: float) -> float:
    """The delay before retry number `attempt` (0-based); `unit_random` is in [0, 1).

    Jitter spreads clients that failed together so they do not return together.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # Work in logarithms: multiplier**attempt overflows a float long before attempts run out.
    log_raw = math.log(policy.base) + attempt * math.log(policy.multiplier)
    delay = policy.cap if log_raw >= math.log(policy.cap) else math.exp(log_raw)
    spread = 1.0 + policy.jitter * (2.0 * unit_random - 1.0)
    return max(0.0, min(policy.cap, delay * spread))


class Backoff:
    """Counts consecutive failures and hands out the next delay; `reset()` after a success."""

    def __init__(
        self, policy: BackoffPolicy | None = None, rand: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self._rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.policy, self.attempt, self._rand())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
