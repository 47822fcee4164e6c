"""Pick the route for a request: ``Match``, ``NotFound`` (404) or ``MethodNotAllowed`` (405).

Routes are kept sorted, most specific first, so ``resolve`` is one pass (as Starlette does, and
unlike grpc-gateway's two loops): the first route whose template matches under the request's
method wins; templates that match under other methods are collected for the ``Allow`` header
on the way.

Precedence, from the template alone (the path is not needed to rank):

1. segment by segment, a literal beats ``*``, which beats ``**``; the first difference decides;
2. when one template's segments are a prefix of the other's, the longer one wins;
3. a template with a verb beats one without (``/v1/{name}:publish`` over ``/v1/{name}``, which
   would otherwise bind ``name="x:publish"``);
4. ties keep registration order.

Methods are compared upper-cased. Example::

    >>> router = Router()
    >>> _ = router.add("GET", "/v1/{name=shelves/*}", "GetShelf")
    >>> router.resolve("GET", "/v1/shelves/s1").bindings
    {'name': 'shelves/s1'}
    >>> router.resolve("DELETE", "/v1/shelves/s1")
    MethodNotAllowed(allow=('GET',))
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hms_gateway.template.match import Matcher, compile_template, split_path
from hms_gateway.template.parse import DeepWildcard, Literal, Template, parse_template

__all__ = ["Match", "MethodNotAllowed", "NotFound", "Resolution", "Route", "Router", "specificity"]

P = TypeVar("P")

_RANK_LITERAL, _RANK_STAR, _RANK_DEEP, _RANK_END = 0, 1, 2, 3


def specificity(template: Template) -> tuple[int, ...]:
    """Sort key: smaller is more specific (see the module docstring for the order)."""
    ranks = [
        _RANK_LITERAL
        if isinstance(seg, Literal)
        else _RANK_DEEP
        if isinstance(seg, DeepWildcard)
        else _RANK_STAR
        for seg in template.flat()
    ]
    # _RANK_END sorts after every segment rank, so a template that goes on is more specific
    # than one that stops; the last element puts verbs first.
    return (*ranks, _RANK_END, 0 if template.verb is not None else 1)


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    """One HTTP method + template, carrying whatever the caller needs (``payload``)."""

    method: str
    template: Template
    payload: P
    matcher: Matcher = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Match(Generic[P]):
    route: Route[P]
    bindings: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NotFound:
    """No template matches the path under any method (404)."""


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """Templates match the path, but only under other methods (405); ``allow`` is sorted."""

    allow: tuple[str, ...]


Resolution = Match[P] | NotFound | MethodNotAllowed


class Router(Generic[P]):
    """An ordered set of routes. Not thread-safe; mutate from the event loop that resolves."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        # (specificity, registration number, route), kept sorted.
        self._entries: list[tuple[tuple[int, ...], int, Route[P]]] = []

    def add(self, method: str, template: str | Template, payload: P) -> Route[P]:
        """Register a route; a ``str`` template is parsed (``TemplateError`` if bad)."""
        if not method or not method.isascii() or not method.isalpha():
            raise ValueError(f"bad HTTP method {method!r}")
        parsed = parse_template(template) if isinstance(template, str) else template
        route = Route(method.upper(), parsed, payload, compile_template(parsed))
        entry = (specificity(parsed), next(self._seq), route)
        bisect.insort(self._entries, entry, key=lambda e: (e[0], e[1]))
        return route

    def remove_payloads(self, predicate: Callable[[P], bool]) -> list[Route[P]]:
        """Drop every route whose payload satisfies ``predicate``; return the removed routes."""
        kept: list[tuple[tuple[int, ...], int, Route[P]]] = []
        removed: list[tuple[tuple[int, ...], int, Route[P]]] = []
        for entry in self._entries:
            (removed if predicate(entry[2].payload) else kept).append(entry)
        self._entries = kept
        return [entry[2] for entry in removed]

    @property
    def routes(self) -> tuple[Route[P], ...]:
        """All routes, in the order ``resolve`` tries them."""
        return tuple(entry[2] for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, method: str, path: str) -> Match[P] | NotFound | MethodNotAllowed:
        """One pass over the routes; raises ``BadPath`` for a malformed path (answer 400)."""
        view = split_path(path)
        method = method.upper()
        allow: set[str] = set()
        for _, _, route in self._entries:
            if route.method != method and route.method in allow:
                continue  # already known to match under that method
            bindings = route.matcher.match_view(view)
            if bindings is None:
                continue
            if route.method == method:
                return Match(route, bindings)
            allow.add(route.method)
        return MethodNotAllowed(tuple(sorted(allow))) if allow else NotFound()
