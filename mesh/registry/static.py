"""Fixed upstream addresses in place of the registry, for callers without etcd.

A :class:`StaticDiscovery` offers the part of :class:`mesh.registry.watch.Discovery` that a
service pool uses (``subscribe``, ``start``, ``instances``, ``stop``) over a list of addresses
that never changes, so a mesh channel (and the REST gateway's static mode) works unchanged
against servers named on the command line.

>>> upstreams = parse_upstreams(["hms.notify.v1.NotifyService=127.0.0.1:50051@notify"])
>>> [(i.address, i.identity) for i in upstreams["hms.notify.v1.NotifyService"]]
[('127.0.0.1:50051', 'spiffe://hms.local/svc/notify')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from mesh.identity import spiffe_id
from mesh.registry.keys import Instance
from mesh.registry.watch import Listener

__all__ = ["StaticDiscovery", "parse_upstreams", "static_discovery"]


def parse_upstreams(specs: Iterable[str]) -> dict[str, tuple[Instance, ...]]:
    """Parse ``SERVICE=HOST:PORT[@DEPLOYMENT][,HOST:PORT[@DEPLOYMENT]...]`` specs.

    ``@DEPLOYMENT`` names the deployment whose certificate the server holds (its SPIFFE ID is
    checked in the TLS handshake); without it the address can only be called in plaintext.
    Raises ``ValueError`` naming the spec that is wrong.
    """
    upstreams: dict[str, list[Instance]] = {}
    for spec in specs:
        service, sep, addresses = spec.partition("=")
        if not sep or not service or not addresses:
            raise ValueError(f"upstream {spec!r}: expected SERVICE=HOST:PORT[@DEPLOYMENT],...")
        found = upstreams.setdefault(service, [])
        for item in addresses.split(","):
            address, _, deployment = item.partition("@")
            try:
                found.append(
                    Instance(
                        service=service,
                        instance_id=f"static-{len(found)}",
                        address=address,
                        deployment=deployment or "static",
                        identity=spiffe_id(deployment) if deployment else "",
                    )
                )
            except ValueError as exc:  # RegistryValueError, or spiffe_id's for the deployment
                raise ValueError(f"upstream {spec!r}: {exc}") from None
    return {service: tuple(instances) for service, instances in upstreams.items()}


class StaticDiscovery:
    """The instances of one service, fixed at construction."""

    def __init__(self, instances: Iterable[Instance]) -> None:
        self._instances = list(instances)

    def instances(self, service: str | None = None) -> list[Instance]:
        return [i for i in self._instances if service in (None, i.service)]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None  # nothing ever changes

    async def start(self, timeout: float | None = None) -> None:
        return None

    async def stop(self) -> None:
        return None


def static_discovery(
    upstreams: Mapping[str, tuple[Instance, ...]], service: str
) -> StaticDiscovery:
    """The discovery of `service` in static mode: its upstreams, or none at all."""
    return StaticDiscovery(upstreams.get(service, ()))
