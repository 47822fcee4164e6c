"""The gateway's live route table: every HTTP binding of every service it has learnt.

Services come and go as a whole: learning a service (again) replaces all its routes at once, so
a request never sees half of an old version and half of a new one. ``version`` goes up on each
change, so derived views (the OpenAPI document) are rebuilt only when something changed.

Routes have owners. A service's route that would take requests from another service's route
(the same method and template, or one that wins over it for some path: a more specific template
inside the other's variable, such as ``GET /v1/rules/MAX_INCOME`` beside
``GET /v1/rules/{rule_id}``) is refused for the service that comes later, logged, and listed
(`refusals()`, served on ``/routes``). A service whose last instance left (`depart`) keeps its
routes, which answer 503, but owns nothing any more: a newcomer's route that collides with one
of them replaces it, and services refused because of it are learnt again.

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
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

from hms_gateway.endpoint import Endpoint
from hms_gateway.router import Match, MethodNotAllowed, NotFound, Router
from hms_gateway.template.parse import Literal, Template, parse_template

__all__ = ["RouteRefusal", "RouteTable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteRefusal:
    """A route of `service` not installed because `owner`'s route has that path."""

    service: str
    method: str
    template: str
    rpc: str
    owner: str
    owner_template: str

    def describe(self) -> str:
        return (
            f"{self.method} {self.template} of {self.service} ({self.rpc}) would take requests "
            f"from {self.method} {self.owner_template} of {self.owner}, which has it already"
        )


def _witness(template: Template) -> str:
    """A path `template` matches: its literals, and a sample for each wildcard."""
    parts = [seg.value if isinstance(seg, Literal) else "w-i-t-n-e-s-s" for seg in template.flat()]
    verb = "" if template.verb is None else f":{template.verb}"
    return "/" + "/".join(parts) + verb


def _takes_from(newcomer: Template, owner: Template) -> bool:
    """Would `newcomer`'s route win some path that `owner`'s matches (tried on a path
    `newcomer` matches)? Precedence is the router's own."""
    router: Router[str] = Router()
    router.add("GET", owner, "owner")
    path = _witness(newcomer)
    if not isinstance(router.resolve("GET", path), Match):
        return False
    router.add("GET", newcomer, "newcomer")
    found = router.resolve("GET", path)
    return isinstance(found, Match) and found.route.payload == "newcomer"


class RouteTable:
    """Routes per service, resolved in one pass (see hms_gateway.router for precedence)."""

    #: Resolutions remembered, by (method, raw path); the cache is emptied when full.
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._router: Router[Endpoint] = Router()
        self._services: dict[str, tuple[Endpoint, ...]] = {}
        self._refused: dict[str, tuple[RouteRefusal, ...]] = {}
        self._departed: set[str] = set()
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
        self._departed.discard(service)
        admitted: list[Endpoint] = []
        refused: list[RouteRefusal] = []
        for endpoint in fresh:
            owner = self._collision(endpoint)
            if owner is not None and owner.service in self._departed:
                # Its service has left: the route gives way.
                self._router.remove_payloads(partial(operator.is_, owner))
                owner = None
            if owner is not None:
                refusal = RouteRefusal(
                    service=service,
                    method=endpoint.mapping.http_method,
                    template=str(endpoint.mapping.template),
                    rpc=endpoint.path,
                    owner=owner.service,
                    owner_template=str(owner.mapping.template),
                )
                log.warning("route refused: %s", refusal.describe())
                refused.append(refusal)
                continue
            self._router.add(endpoint.mapping.http_method, endpoint.mapping.template, endpoint)
            admitted.append(endpoint)
        self._services[service] = tuple(admitted)
        if refused:
            self._refused[service] = tuple(refused)
        else:
            self._refused.pop(service, None)
        self.version += 1
        self._cache.clear()

    def _collision(self, endpoint: Endpoint) -> Endpoint | None:
        """The other service's endpoint that `endpoint`'s route would take requests from or
        share a template with, if there is one."""
        method = endpoint.mapping.http_method.upper()
        template = endpoint.mapping.template
        mine = parse_template(template) if isinstance(template, str) else template
        for route in self._router.routes:
            other = route.payload
            if route.method != method or other.service == endpoint.service:
                continue
            if str(route.template) == str(mine) or _takes_from(mine, route.template):
                return other
            if _takes_from(route.template, mine):
                return other  # the other way round: it would keep taking this one's requests
        return None

    def depart(self, service: str) -> list[str]:
        """The last instance of `service` left: its routes own nothing any more. Returns the
        services refused because of it, to learn again."""
        if service not in self._services:
            return []
        self._departed.add(service)
        return [
            s for s, refusals in self._refused.items() if any(r.owner == service for r in refusals)
        ]

    def refusals(self) -> list[RouteRefusal]:
        return [r for refused in self._refused.values() for r in refused]

    def drop_service(self, service: str) -> None:
        self._refused.pop(service, None)
        self._departed.discard(service)
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
