"""Per-client token buckets: each client may send ``burst`` requests at once, then ``rate``/s.

A bucket holds up to ``burst`` tokens and refills continuously at ``rate`` tokens per second;
a request takes one token or is refused with the time until one is there, which the gateway
sends as ``Retry-After`` (:meth:`hms_gateway.errors.GatewayError.rate_limited`).

Memory is bounded: at most ``max_clients`` buckets are kept, least recently used dropped first.
A dropped client simply starts again with a full bucket. That is acceptable because a bucket
idle for ``burst / rate`` seconds is full anyway, so dropping it loses nothing; only a client
evicted while partly drained gains, at most, one extra ``burst``, and only if more than
``max_clients`` other clients were active since its last request. Size ``max_clients`` above
the number of clients active within ``burst / rate`` seconds and eviction never matters.

The limiter is in-process and not thread-safe: the gateway runs it on its event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimit", "RateLimiter"]

# A millionth of a token: absorbs float rounding so that waiting exactly the announced
# retry-after is always enough.
_EPSILON = 1e-6
# Above this a limit is meaningless, and retry-after could round to zero.
_MAX_RATE = 1e9


@dataclass(frozen=True)
class RateLimit:
    """``rate`` tokens per second (> 0), up to ``burst`` (>= 1), for at most ``max_clients``."""

    rate: float
    burst: int
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        if (
            isinstance(self.rate, bool)
            or not isinstance(self.rate, int | float)
            or not math.isfinite(self.rate)
            or not 0 < self.rate <= _MAX_RATE
            or not math.isfinite(1 / self.rate)
        ):
            raise ValueError(
                f"rate must be a number of tokens per second in (0, {_MAX_RATE:g}], "
                f"not {self.rate!r}"
            )
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, not {self.burst!r}")
        if (
            isinstance(self.max_clients, bool)
            or not isinstance(self.max_clients, int)
            or self.max_clients < 1
        ):
            raise ValueError(f"max_clients must be an integer >= 1, not {self.max_clients!r}")


class RateLimiter:
    """Token buckets per client key, with an injected monotonic clock (seconds)."""

    def __init__(self, config: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        # client -> (tokens, time of that count); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def config(self) -> RateLimit:
        return self._config

    def __len__(self) -> int:
        """How many clients have a bucket (at most ``max_clients``)."""
        return len(self._buckets)

    def acquire(self, client: str) -> float | None:
        """Take a token for ``client``: None if allowed, else seconds until one is there (> 0).

        A refusal takes nothing, so a client that retries after the returned delay succeeds.
        """
        now = self._clock()
        tokens, now = self._refilled(client, now)
        if tokens + _EPSILON >= 1:
            self._store(client, max(0.0, tokens - 1), now)
            return None
        self._store(client, tokens, now)
        return (1 - tokens) / self._config.rate

    def available(self, client: str) -> float:
        """The tokens ``client`` has now, in [0, burst]; does not count as use."""
        return self._refilled(client, self._clock())[0]

    def _refilled(self, client: str, now: float) -> tuple[float, float]:
        bucket = self._buckets.get(client)
        if bucket is None:
            return float(self._config.burst), now
        tokens, then = bucket
        # A clock that steps back gives no tokens and does not move the bucket's time back
        # (which would credit the same interval twice).
        now = max(now, then)
        refilled = min(float(self._config.burst), tokens + (now - then) * self._config.rate)
        return refilled, now

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self._config.max_clients:
            self._buckets.popitem(last=False)
