"""The registry as the page and Prometheus see it, and what the mesh decided about instances.
Pure: registry entries, lease times, health and decisions in; JSON-ready values out.

- `instance_rows`: the `instances` event, one row per (service, instance).
- `sd_groups`: Prometheus HTTP service discovery, one target group per metrics address (a
  process serving two services is scraped once; its `service` label names both, comma
  separated; a metric's own `service` label wins with the scrape config's honor_labels).
- `Decisions`: svc.mesh decisions as events, and whether an instance is ejected (by any
  caller's mesh channel, until it readmits it) or draining.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError

from hms.mesh.v1 import trace_pb2
from mesh.registry import keys

__all__ = [
    "HEALTH_STATES",
    "Decisions",
    "instance_rows",
    "rfc3339",
    "sd_groups",
]

HEALTH_STATES = ("SERVING", "NOT_SERVING", "UNKNOWN")
METRICS_KEY = "metrics"


def rfc3339(unix_nanos: int) -> str:
    """A time as the API gives it: RFC 3339, UTC, microseconds.

    >>> rfc3339(1_700_000_000_123_456_789)
    '2023-11-14T22:13:20.123456Z'
    """
    moment = datetime.fromtimestamp(unix_nanos // 1000 / 1e6, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _kind(kind: int) -> str:
    try:
        name = trace_pb2.DecisionKind.Name(kind)
    except ValueError:
        return "unknown"
    return name.removeprefix("DECISION_KIND_").lower()


class Decisions:
    """The latest decisions (kept for pages that open later) and the state they imply."""

    def __init__(self, keep: int = 200) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        #: (deciding deployment, instance) -> ejected by that caller now.
        self._ejected: dict[tuple[str, str], bool] = {}
        self._draining: set[str] = set()
        self.malformed = 0

    def add_message(self, data: bytes) -> dict[str, Any] | None:
        """One svc.mesh message: the `decisions` event, or None (counted) if it does not decode."""
        try:
            decision = trace_pb2.MeshDecision.FromString(data)
        except (DecodeError, ValueError):
            self.malformed += 1
            return None
        return self.add(decision)

    def add(self, decision: trace_pb2.MeshDecision) -> dict[str, Any]:
        event = {
            "kind": _kind(decision.kind),
            "deployment": decision.deployment,
            "service": decision.service,
            "instance": decision.instance,
            "address": decision.address,
            "reason": decision.reason,
            "time": rfc3339(decision.time_unix_nanos) if decision.time_unix_nanos > 0 else "",
        }
        self.recent.append(event)
        who = decision.instance or decision.address
        if decision.kind == trace_pb2.DECISION_KIND_EJECTED:
            self._ejected[(decision.deployment, who)] = True
        elif decision.kind == trace_pb2.DECISION_KIND_READMITTED:
            self._ejected.pop((decision.deployment, who), None)
        elif decision.kind == trace_pb2.DECISION_KIND_DRAINING:
            self._draining.add(who)
        return event

    def ejected(self, instance: keys.Instance) -> bool:
        return any(who in (instance.instance_id, instance.address) for _, who in self._ejected)

    def draining(self, instance: keys.Instance) -> bool:
        return instance.instance_id in self._draining or instance.address in self._draining

    def forget(self, live: Iterable[keys.Instance]) -> None:
        """Drop the state of instances no longer registered (their ids are never reused)."""
        known = {i.instance_id for i in live} | {i.address for i in live}
        self._ejected = {k: v for k, v in self._ejected.items() if k[1] in known}
        self._draining &= known


def instance_rows(
    instances: Iterable[keys.Instance],
    leases: Mapping[tuple[str, str], int | None],
    health: Mapping[tuple[str, str], str],
    decisions: Decisions,
) -> list[dict[str, Any]]:
    """The `instances` event. `leases`: seconds left by (service, instance id), None when
    unknown (etcd not answering); `health`: by (address, service)."""
    rows = []
    for instance in instances:
        rows.append(
            {
                "service": instance.service,
                "deployment": instance.deployment,
                "instance_id": instance.instance_id,
                "address": instance.address,
                "version": instance.version,
                "zone": instance.zone,
                "identity": instance.identity,
                "lease_ttl_s": leases.get((instance.service, instance.instance_id)),
                "health": health.get((instance.address, instance.service), "UNKNOWN"),
                "ejected": decisions.ejected(instance),
                "draining": decisions.draining(instance),
                "metrics": instance.metadata.get(METRICS_KEY, ""),
            }
        )
    rows.sort(key=lambda r: (r["service"], r["deployment"], r["instance_id"]))
    return rows


def sd_groups(instances: Iterable[keys.Instance]) -> list[dict[str, Any]]:
    """Prometheus HTTP SD target groups: every registered metrics address, once."""
    by_address: dict[str, list[keys.Instance]] = {}
    for instance in instances:
        address = instance.metadata.get(METRICS_KEY, "")
        if address:
            by_address.setdefault(address, []).append(instance)
    groups = []
    for address, serving in sorted(by_address.items()):
        first = serving[0]
        groups.append(
            {
                "targets": [address],
                "labels": {
                    "service": ",".join(sorted({i.service for i in serving})),
                    "deployment": first.deployment,
                    "version": first.version,
                    "zone": first.zone,
                    "instance": first.instance_id,
                },
            }
        )
    return groups
