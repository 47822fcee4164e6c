"""Outlier detection per instance: eject after consecutive failures, probe once, readmit.

Envoy's "consecutive 5xx" and Linkerd's "consecutive failures" rules, as a pure state machine
driven by a `now` argument (monotonic seconds)::

    ACTIVE --N consecutive failures, or a connection failure, and the share allows--> EJECTED
    EJECTED --available(now) once the ejection time is over: grants ONE probe call--> PROBING
    PROBING --probe succeeds--> ACTIVE        PROBING --probe fails--> EJECTED (longer)

* Ejection k lasts ``min(base_ejection * k, max_ejection)``: 30, 60, 90 ... 300 s by default.
* The ejection count is kept when a probe succeeds, so an instance that flaps is ejected for
  longer each time. Like Envoy (which lowers its multiplier on every healthy interval), it decays:
  each `base_ejection` seconds spent ACTIVE since the last readmission take one off the count,
  applied at the next ejection. Linkerd instead forgets the count on readmission.
* A probe whose outcome never comes (the caller cancelled it) is given up after
  `probe_timeout` seconds: the instance then grants one new probe.
* Results arriving while EJECTED come from calls sent before the ejection: they are ignored.
* `OutlierDetector` holds the instances of one service and caps the share ejected at once:
  ``max(1, floor(n * max_ejection_percent / 100))`` and never the last instance not ejected
  (1 instance: never ejected; 2: at most 1). An instance whose ejection the cap refuses stays
  ACTIVE and keeps counting failures, so it is ejected as soon as the cap allows. An instance
  in PROBING is already out of the rotation, so a failed probe re-ejects it regardless of the cap.
  DESIGN.md's bar is "never more than half"; the default 10 % is stricter, 50 gives exactly that.
* If every instance is unavailable, the picker decides what to do (e.g. try one anyway).

Example::

    detector = OutlierDetector(OutlierConfig())
    detector.add("10.0.0.1:50051")
    if detector.available("10.0.0.1:50051", now):
        ...  # call it, then detector.on_success(key, now) or detector.on_failure(key, now)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["HealthState", "InstanceHealth", "OutlierConfig", "OutlierDetector"]


class HealthState(enum.Enum):
    ACTIVE = "active"
    EJECTED = "ejected"
    PROBING = "probing"  # half-open: one trial call in flight


@dataclass(frozen=True)
class OutlierConfig:
    """When to eject an instance and for how long (seconds); see the module docstring."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 10.0
    probe_timeout: float = 30.0

    def __post_init__(self) -> None:
        n = self.consecutive_failures
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"outlier consecutive_failures must be an int >= 1, got {n!r}")
        for name in ("base_ejection", "max_ejection", "max_ejection_percent", "probe_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"outlier {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"outlier {name} must be a finite number, got {value}")
        if self.base_ejection <= 0:
            raise ValueError(f"outlier base_ejection must be > 0, got {self.base_ejection}")
        if self.max_ejection < self.base_ejection:
            raise ValueError(
                f"outlier max_ejection {self.max_ejection} is below base_ejection "
                f"{self.base_ejection}"
            )
        if not 0 < self.max_ejection_percent <= 100:
            raise ValueError(
                f"outlier max_ejection_percent must be within (0, 100], "
                f"got {self.max_ejection_percent}"
            )
        if self.probe_timeout <= 0:
            raise ValueError(f"outlier probe_timeout must be > 0, got {self.probe_timeout}")


class InstanceHealth:
    """The state machine of one instance. The caller decides whether an ejection may happen."""

    def __init__(self, config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self.state = HealthState.ACTIVE
        self.consecutive_failures = 0
        self.ejections = 0  # the multiplier of the next ejection time, see `eject`
        self.ejected_until = -math.inf
        self._active_since = -math.inf
        self._probe_sent_at = -math.inf  # when the outstanding probe was granted

    def record_success(self, now: float) -> bool:
        """A call succeeded: the streak ends; a successful probe readmits the instance (True
        when this success did)."""
        if self.state is HealthState.EJECTED:
            return False  # a call sent before the ejection; the probe decides
        readmitted = self.state is HealthState.PROBING
        if readmitted:
            self.state = HealthState.ACTIVE
            self._active_since = now
        self.consecutive_failures = 0
        return readmitted

    def record_failure(self, now: float) -> bool:
        """A call failed; True when this failure asks for ejection (the streak reached N)."""
        if self.state is HealthState.EJECTED:
            return False
        if self.state is HealthState.PROBING:
            return True
        self.consecutive_failures += 1
        return self.consecutive_failures >= self.config.consecutive_failures

    def connection_failure(self, now: float) -> bool:
        """The instance could not be reached: asks for ejection at once (False if ejected)."""
        if self.state is HealthState.EJECTED:
            return False
        if self.state is HealthState.ACTIVE:
            self.consecutive_failures += 1
        return True

    def eject(self, now: float) -> None:
        """Eject until ``now + min(base * count, max)``; the count decays while ACTIVE."""
        if self.state is HealthState.ACTIVE and self.ejections:
            healthy_for = max(0.0, now - self._active_since)
            self.ejections = max(0, self.ejections - int(healthy_for // self.config.base_ejection))
        self.ejections += 1
        duration = min(self.config.base_ejection * self.ejections, self.config.max_ejection)
        self.state = HealthState.EJECTED
        self.ejected_until = now + duration
        self.consecutive_failures = 0

    def eligible(self, now: float) -> bool:
        """Would `available(now)` say True? Asks without claiming the probe call."""
        if self.state is HealthState.ACTIVE:
            return True
        if self.state is HealthState.PROBING:  # until the probe is given up, it is still out
            return now - self._probe_sent_at >= self.config.probe_timeout
        return now >= self.ejected_until

    def available(self, now: float) -> bool:
        """May a call go to this instance now? After an ejection: True exactly once (the probe)."""
        if self.state is HealthState.ACTIVE:
            return True
        if not self.eligible(now):
            return False
        self.state = HealthState.PROBING
        self._probe_sent_at = now
        return True

    def __repr__(self) -> str:
        return (
            f"InstanceHealth({self.state.name}, failures={self.consecutive_failures}, "
            f"ejections={self.ejections}, until={self.ejected_until})"
        )


class OutlierDetector:
    """The instances of one service, keyed by address or instance id, under one ejection cap."""

    def __init__(self, config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self._instances: dict[str, InstanceHealth] = {}
        self.ejections_total = 0

    def add(self, key: str) -> None:
        """Track an instance (no-op if tracked: its history is kept)."""
        self._instances.setdefault(key, InstanceHealth(self.config))

    def remove(self, key: str) -> None:
        """Forget an instance (no-op if unknown); late results for it are then ignored."""
        self._instances.pop(key, None)

    def health(self, key: str) -> InstanceHealth:
        """The state machine of one tracked instance (KeyError if unknown)."""
        return self._instances[key]

    def __len__(self) -> int:
        return len(self._instances)

    def _ejected(self) -> int:
        return sum(h.state is not HealthState.ACTIVE for h in self._instances.values())

    def may_eject(self, now: float) -> bool:
        """Would the cap allow one more ACTIVE instance to be ejected now?"""
        n = len(self._instances)
        ejected = self._ejected()
        cap = max(1, math.floor(n * self.config.max_ejection_percent / 100))
        return ejected < cap and n - ejected > 1

    def on_failure(self, key: str, now: float, *, connection: bool = False) -> bool:
        """Record a failed call; True if it ejected the instance. Unknown keys are ignored."""
        health = self._instances.get(key)
        if health is None:
            return False
        probing = health.state is HealthState.PROBING
        asks = health.connection_failure(now) if connection else health.record_failure(now)
        if asks and (probing or self.may_eject(now)):
            health.eject(now)
            self.ejections_total += 1
            return True
        return False

    def on_success(self, key: str, now: float) -> bool:
        """Record a successful call; True if it readmitted the instance (its probe call
        succeeded). Unknown keys are ignored."""
        health = self._instances.get(key)
        return health is not None and health.record_success(now)

    def available(self, key: str, now: float) -> bool:
        """May a call go to `key` now? Untracked instances are available (nothing against them).

        Call it only for the instance actually about to be called: after an ejection it hands
        out the single probe call. Use `eligible` to compare candidates.
        """
        health = self._instances.get(key)
        return True if health is None else health.available(now)

    def eligible(self, key: str, now: float) -> bool:
        """Would `available(key, now)` say True? For choosing among candidates (P2C) without
        claiming a probe call for the one not chosen."""
        health = self._instances.get(key)
        return True if health is None else health.eligible(now)

    def counts(self, now: float) -> dict[HealthState, int]:
        """Instances per state; an EJECTED one whose time is over counts as PROBING (half-open)."""
        result = dict.fromkeys(HealthState, 0)
        for health in self._instances.values():
            state = health.state
            if state is HealthState.EJECTED and now >= health.ejected_until:
                state = HealthState.PROBING
            result[state] += 1
        return result
