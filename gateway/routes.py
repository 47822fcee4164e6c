"""The gateway's live route table: every HTTP binding of every service it has learnt.

Services come and go as a whole: learning a service (again) replaces all its routes at once, so
a request never sees half of an old version and half of a new one. ``version`` goes up on each
change, so derived views (the OpenAPI document) are rebuilt only when something changed.

>>> table = RouteTable()
>>> from hms.testing.v1 import echo_pb2
>>> from hms_gateway.endpoint import endpoints_of
>>> table.set_service("hms.testing.v1.EchoService",
...                   endpoints_of(echo_pb2.DESCRIPTOR.services_by_name["EchoService"]))
>>> table.resolve("POST", "/v1/echo").route.payload.path
'/hms.testing.v1.EchoService/Echo'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import MappingProxyType

from hms_gateway.endpoint import Endpoint
from hms_gateway.router import Match, MethodNotAllowed, NotFound, Router

__all__ = ["RouteTable"]

log = logging.getLogger(__name__)


class RouteTable:
    """Routes per service, resolved in one pass (see hms_gateway.router for precedence)."""

    #: Resolutions remembered, by (method, raw path); the cache is emptied when full.
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._router: Router[Endpoint] = Router()
        self._services: dict[str, tuple[Endpoint, ...]] = {}
        self.version = 0
        # Most traffic repeats a few paths: resolving one walks every route (and splits and
        # normalises the path), a hit here is one dict lookup. Emptied on every change.
        self._cache: dict[tuple[str, str], Match[Endpoint] | NotFound | MethodNotAllowed] = {}

    def set_service(self, service: str, endpoints: Iterable[Endpoint]) -> None:
        """Replace every route of `service` with `endpoints`."""
        fresh = tuple(endpoints)
        # Check every new route first (ValueError names the bad one), so that a refused set
        # leaves the service's old routes in place rather than half replaced.
        scratch: Router[Endpoint] = Router()
        for endpoint in fresh:
            try:
                scratch.add(endpoint.mapping.http_method, endpoint.mapping.template, endpoint)
            except ValueError as exc:
                raise ValueError(f"{endpoint.path}: {exc}") from None
        self._router.remove_payloads(lambda endpoint: endpoint.service == service)
        taken = {(r.method, str(r.template)) for r in self._router.routes}
        for endpoint in fresh:
            route = self._router.add(
                endpoint.mapping.http_method, endpoint.mapping.template, endpoint
            )
            key = (route.method, str(route.template))
            if key in taken:
                # Registration order decides a tie; say so, as the later one is unreachable.
                log.warning(
                    "%s %s of %s is already served; the first one wins", *key, endpoint.path
                )
            taken.add(key)
        self._services[service] = fresh
        self.version += 1
        self._cache.clear()

    def drop_service(self, service: str) -> None:
        if self._services.pop(service, None) is not None:
            self._router.remove_payloads(lambda endpoint: endpoint.service == service)
            self.version += 1
            self._cache.clear()

    def services(self) -> dict[str, tuple[Endpoint, ...]]:
        return dict(self._services)

    def endpoints(self) -> list[Endpoint]:
        return [endpoint for found in self._services.values() for endpoint in found]

    def resolve(self, method: str, path: str) -> Match[Endpoint] | NotFound | MethodNotAllowed:
        """As Router.resolve (``BadPath`` for a malformed path is never cached)."""
        key = (method, path)
        found = self._cache.get(key)
        if found is None:
            found = self._router.resolve(method, path)
            if isinstance(found, Match):  # shared by every hit: read-only
                found = Match(found.route, MappingProxyType(dict(found.bindings)))
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found
