"""Peak-EWMA latency estimate of one instance, the load metric of a power-of-two-choices picker.

The estimator follows Finagle's `PeakEwma` and Linkerd's (tower's) `PeakEwma`:

* A response slower than the estimate replaces it at once (the *peak*): a slow instance is
  noticed on its first slow answer, not after many.
* A response no slower than the estimate is blended in with an exponential weight that depends
  on the time since the last observation, not on the number of observations:
  ``w = exp(-elapsed / decay)``, ``estimate = estimate * w + rtt * (1 - w)``. A burst of fast
  answers therefore cannot wipe out a recent peak within a few milliseconds.
* Between observations the estimate decays toward zero with the same time constant when it is
  *read* (``estimate()``, ``cost()``), as both models do. Without this, an instance penalized
  once (say with 1 s for RESOURCE_EXHAUSTED) would never be picked again at low load, so it could
  never report that it recovered; with it, an instance left alone becomes attractive again and
  its next answer sets a fresh estimate. Reads do not change the state (unlike Finagle, which
  folds the read-time decay in): how often the picker looks does not change the estimate.

``cost(outstanding)`` is the decayed estimate times ``outstanding + 1``: the expected wait for
one more call, given the calls already in flight on that instance.

Time comes from an injected monotonic clock, so tests run on virtual time.

Example::

    ewma = PeakEwma(time.monotonic)
    ewma.observe(0.012)          # a response took 12 ms
    ewma.cost(outstanding=3)     # compare with other instances; lowest wins
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EwmaConfig", "PeakEwma"]


@dataclass(frozen=True)
class EwmaConfig:
    """Settings of a peak-EWMA estimator, all in seconds.

    seed: the estimate before any response (a guess at a typical round trip).
    decay: the time constant; after `decay` seconds an old value keeps weight 1/e.
    penalty: the latency a RESOURCE_EXHAUSTED answer counts as (`PeakEwma.penalize`).
    """

    seed: float = 0.030
    decay: float = 10.0
    penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("seed", "decay", "penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"ewma {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"ewma {name} must be a finite number, got {value}")
        if self.seed < 0:
            raise ValueError(f"ewma seed must be >= 0, got {self.seed}")
        if self.decay <= 0:
            raise ValueError(f"ewma decay must be > 0, got {self.decay}")
        if self.penalty <= 0:
            raise ValueError(f"ewma penalty must be > 0, got {self.penalty}")


class PeakEwma:
    """The peak-EWMA round-trip estimate of one instance (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        seed: float = 0.030,
        decay: float = 10.0,
        penalty: float = 1.0,
    ) -> None:
        self.config = EwmaConfig(seed=seed, decay=decay, penalty=penalty)
        self._clock = clock
        self._estimate = float(seed)
        self._stamp = clock()

    def _weight(self, now: float) -> float:
        """The weight left on the stored estimate after the time since it was stored."""
        elapsed = max(0.0, now - self._stamp)  # a clock that steps back counts as no time
        return math.exp(-elapsed / self.config.decay)

    def estimate(self) -> float:
        """The round-trip estimate in seconds, decayed toward zero up to now (state unchanged)."""
        return self._estimate * self._weight(self._clock())

    def observe(self, rtt: float) -> None:
        """Fold in one response time (seconds): a peak replaces the estimate, else it blends."""
        if isinstance(rtt, bool) or not isinstance(rtt, int | float) or not math.isfinite(rtt):
            raise ValueError(f"rtt must be a finite number of seconds, got {rtt!r}")
        if rtt < 0:
            raise ValueError(f"rtt must be >= 0, got {rtt}")
        now = self._clock()
        if rtt > self._estimate:
            self._estimate = float(rtt)
        else:
            w = self._weight(now)
            self._estimate = self._estimate * w + rtt * (1.0 - w)
        # Keep the latest stamp, so that a clock stepping back cannot un-decay the estimate.
        self._stamp = max(self._stamp, now)

    def penalize(self) -> None:
        """Count a RESOURCE_EXHAUSTED answer as a response that took `config.penalty` seconds."""
        self.observe(self.config.penalty)

    def cost(self, outstanding: int) -> float:
        """Decayed estimate x (outstanding + 1): the expected wait of one more call."""
        if isinstance(outstanding, bool) or not isinstance(outstanding, int) or outstanding < 0:
            raise ValueError(f"outstanding must be an int >= 0, got {outstanding!r}")
        return self.estimate() * (outstanding + 1)

    def __repr__(self) -> str:
        return f"PeakEwma(estimate={self._estimate:.6f}, stamp={self._stamp:.3f})"
