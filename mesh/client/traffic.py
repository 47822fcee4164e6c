"""Traffic shaping: which instances may take a call, before the balancer picks one (pure).

Three rules, applied in this order to the instances ready to take the call:

1. **A version pin** (a `VersionRange`: the caller's config per service, or the call's
   ``x-hms-version`` metadata) keeps only the instances whose registered version matches. An
   instance whose version is not semver matches no range.
2. **A split** (a `TrafficPolicy`, kept in etcd at ``/<ns>/traffic/<service>`` and read live)
   draws one version subset by weight, e.g. ``{"0.1.0": 95, "0.2.0": 5}``. A subset with no
   ready instance gives its share to the others; versions the policy does not name take no
   share while a named one can serve, and all of it when none can (an outage is worse than an
   unplanned version).
3. **Locality**: with the caller's zone known, the calls stay in that zone while it has healthy
   capacity: a ready instance there, and the zone's load (its instances' average outstanding
   calls) at most `Locality.factor` times the other zones' (and at least `factor` calls of
   slack); otherwise they spill over to every zone (Envoy's zone-aware routing, simplified).
   Without a zone: every zone.

Inside what is left the balancer works as always (P2C on peak EWMA, weights, ejection).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mesh.client.semver import Version, VersionRange

__all__ = [
    "VERSION_METADATA",
    "Choice",
    "Locality",
    "TrafficPolicy",
    "select",
    "traffic_key",
    "traffic_prefix",
    "version_matches",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The metadata key a caller (or the gateway, from ``X-Hms-Version``) pins a call's versions by.
VERSION_METADATA = "x-hms-version"
_MAX_POLICY_BYTES = 16 * 1024
_MAX_SUBSETS = 64


def traffic_prefix(namespace: str) -> bytes:
    return f"/{namespace}/traffic/".encode()


def traffic_key(namespace: str, service: str) -> bytes:
    return traffic_prefix(namespace) + service.encode()


@dataclass(frozen=True)
class TrafficPolicy:
    """Weighted version subsets of one service: ((version, weight), ...), weights >= 0, at
    least one above 0. Weights need not sum to 100: each subset's share is its weight over
    the sum of those that can serve."""

    splits: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("a traffic policy needs at least one version")
        if len(self.splits) > _MAX_SUBSETS:
            raise ValueError(f"a traffic policy names at most {_MAX_SUBSETS} versions")
        seen: set[str] = set()
        for version, weight in self.splits:
            Version.parse(version)  # ValueError naming it
            if version in seen:
                raise ValueError(f"version {version} is named twice")
            seen.add(version)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"version {version}: weight must be a whole number >= 0")
        if not any(weight > 0 for _, weight in self.splits):
            raise ValueError("a traffic policy needs a weight above 0")

    @classmethod
    def parse(cls, data: bytes | str) -> TrafficPolicy:
        """From its JSON form, ``{"0.1.0": 95, "0.2.0": 5}``; ValueError naming what is wrong."""
        if len(data) > _MAX_POLICY_BYTES:
            raise ValueError(f"traffic policy is larger than {_MAX_POLICY_BYTES} bytes")
        try:
            value = json.loads(data)
        except RecursionError:  # "[[[[..." deep enough to exhaust Python's stack
            raise ValueError("traffic policy is nested too deep to be one") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"traffic policy is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("traffic policy must be a JSON object of version: weight")
        return cls(tuple((str(k), v) for k, v in value.items()))

    @classmethod
    def of(cls, weights: Mapping[str, int]) -> TrafficPolicy:
        return cls(tuple(weights.items()))

    def to_json(self) -> bytes:
        return json.dumps(dict(self.splits), separators=(",", ":")).encode()

    def shares(self) -> dict[str, float]:
        """Each version's share of the calls (0 to 1) when every subset can serve."""
        total = sum(weight for _, weight in self.splits)
        return {version: weight / total for version, weight in self.splits}


@dataclass(frozen=True)
class Locality:
    """The caller's zone ("" : none, every zone alike) and how much busier its zone may be
    than the others before calls spill over."""

    zone: str = ""
    factor: float = 1.5

    def __post_init__(self) -> None:
        if not math.isfinite(self.factor) or self.factor < 1:
            raise ValueError(f"locality factor must be >= 1, got {self.factor}")


@dataclass(frozen=True)
class Choice(Generic[T]):
    """What `select` left for the balancer, and why (the pool counts redistributed picks)."""

    candidates: list[T]
    #: The version subset the split drew (None: no split applied).
    subset: str | None = None
    #: The drawn subset's share went elsewhere: none of its instances could serve.
    redistributed: bool = False
    #: Calls kept in the caller's zone (False: spilled over, or no zone given).
    local: bool = False


def select(
    candidates: Sequence[T],
    *,
    version_of: Callable[[T], str],
    zone_of: Callable[[T], str],
    load_of: Callable[[T], float],
    pin: VersionRange | None = None,
    policy: TrafficPolicy | None = None,
    locality: Locality | None = None,
    rand: Callable[[], float],
) -> Choice[T]:
    """The candidates the three rules leave (see the module's doc), in their order."""
    pool = list(candidates)
    if pin is not None:
        pool = [c for c in pool if version_matches(pin, version_of(c))]
    subset: str | None = None
    redistributed = False
    if policy is not None and pool:
        pool, subset, redistributed = _split(pool, policy, version_of, rand)
    local = False
    if locality is not None and locality.zone and pool:
        mine = [c for c in pool if zone_of(c) == locality.zone]
        others = [c for c in pool if zone_of(c) != locality.zone]
        # At least `factor` calls a local instance of slack, so that idle other zones do
        # not pull the first call away.
        limit = locality.factor * max(_average(others, load_of), 1.0) if others else math.inf
        if mine and _average(mine, load_of) <= limit:
            pool, local = mine, True
    return Choice(pool, subset, redistributed, local)


_warned_versions: set[str] = set()


def version_matches(pin: VersionRange, version: str) -> bool:
    """Is `version` in `pin`? A version named exactly by the pin is; otherwise one that is
    not semver is in no range (said once)."""
    if version == pin.text:
        return True
    try:
        return pin.matches(Version.parse(version))
    except ValueError:
        if version not in _warned_versions:
            _warned_versions.add(version)
            log.warning("instance version %r is not semver: it matches no version range", version)
        return False


def _split(
    pool: list[T], policy: TrafficPolicy, version_of: Callable[[T], str], rand: Callable[[], float]
) -> tuple[list[T], str | None, bool]:
    by_version: dict[str, list[T]] = {}
    for candidate in pool:
        by_version.setdefault(version_of(candidate), []).append(candidate)
    serving = [(v, w) for v, w in policy.splits if w > 0 and by_version.get(v)]
    if not serving:
        return pool, None, True  # no named subset can serve: everyone, said as redistributed
    total = sum(w for _, w in serving)
    target = rand() * total
    running = 0.0
    drawn = serving[-1][0]
    for version, weight in serving:
        running += weight
        if target < running:
            drawn = version
            break
    # Redistributed when a subset with a share had nothing to offer.
    redistributed = any(w > 0 and not by_version.get(v) for v, w in policy.splits)
    return by_version[drawn], drawn, redistributed


def _average(items: Sequence[T], load_of: Callable[[T], float]) -> float:
    return sum(load_of(i) for i in items) / len(items)
