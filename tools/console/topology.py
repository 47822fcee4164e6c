"""What the manifests declare, for the console: each deployment and the event topology (who
publishes each event type and who subscribes to it). Pure: manifests in, JSON-ready data out.

The traffic graph (`stats` edges) shows who called whom in the last minute; this shows who
is wired to whom by design, events included, whether or not anything flowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hms_tools.manifest import Manifest

__all__ = ["declared"]


def declared(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """``{"deployments": [...], "events": [...], "calls": [...]}`` from `manifests`.

    Each event type lists its publishers and subscribers (sorted); a type subscribed to with
    no publisher, or published with no subscriber, is kept, so the page can show it as loose.

    >>> from hms_tools.manifest import State
    >>> a = Manifest("a", "1", "", 1, State.NONE, ("p.A",), publishes=("p.Done",))
    >>> b = Manifest(
    ...     "b", "1", "", 2, State.SQLITE, ("p.B",), calls=("p.A",), subscribes=("p.Done",)
    ... )
    >>> topology = declared([a, b])
    >>> topology["events"]
    [{'type': 'p.Done', 'publishers': ['a'], 'subscribers': ['b']}]
    >>> topology["calls"]
    [{'caller': 'b', 'callee': 'a', 'service': 'p.A'}]
    """
    ordered = sorted(manifests, key=lambda m: m.name)
    server_of = {service: m.name for m in ordered for service in m.serves}
    events: dict[str, dict[str, list[str]]] = {}
    for manifest in ordered:
        for event in manifest.publishes:
            events.setdefault(event, {"publishers": [], "subscribers": []})["publishers"].append(
                manifest.name
            )
        for event in manifest.subscribes:
            events.setdefault(event, {"publishers": [], "subscribers": []})["subscribers"].append(
                manifest.name
            )
    return {
        "deployments": [_deployment(m) for m in ordered],
        "events": [{"type": t, **events[t]} for t in sorted(events)],
        "calls": [
            {"caller": m.name, "callee": server_of.get(service, ""), "service": service}
            for m in ordered
            for service in m.calls
        ],
    }


def _deployment(manifest: Manifest) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "replicas": manifest.replicas,
        "state": str(manifest.state),
        "serves": list(manifest.serves),
        "calls": list(manifest.calls),
        "publishes": list(manifest.publishes),
        "subscribes": list(manifest.subscribes),
        "accepts": [
            {"from": list(a.callers), "methods": list(a.methods)} for a in manifest.accepts
        ],
        "labels": dict(manifest.labels),
    }
