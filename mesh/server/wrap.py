"""One place that knows grpc.aio's handler shapes, for server interceptors that wrap them.

A `grpc.RpcMethodHandler` holds one behaviour in one of four fields (unary_unary,
unary_stream, stream_unary, stream_stream), and grpc.aio runs it one of three ways, decided
by inspecting the function (`Kind`). A wrapper must be of the same kind as what it wraps:
grpc.aio hands a sync stream_unary behaviour a sync request iterator and runs it in its
thread pool, and treats a coroutine stream behaviour as writing with ``context.write()``.

Example, in an interceptor's ``intercept_service``::

    handler = await continuation(details)
    return handler and map_behaviour(handler, lambda b: guarded(b.function, b.kind))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc

__all__ = ["Behaviour", "Kind", "kind_of", "map_behaviour"]

_FIELDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class Kind(Enum):
    """How grpc.aio runs a behaviour."""

    COROUTINE = "coroutine"  # awaited: returns the response, or writes a stream itself
    ASYNC_GENERATOR = "async generator"  # yields the responses
    SYNC = "sync"  # run in the server's migration thread pool with a sync context


def kind_of(function: Callable[..., Any]) -> Kind:
    """Classify a behaviour the way grpc.aio's server does."""
    if inspect.isasyncgenfunction(function):
        return Kind.ASYNC_GENERATOR
    if inspect.iscoroutinefunction(function) or inspect.isawaitable(function):
        return Kind.COROUTINE
    return Kind.SYNC


@dataclass(frozen=True)
class Behaviour:
    """The behaviour of one method handler and what shape it has."""

    function: Callable[..., Any]
    kind: Kind
    request_streaming: bool
    response_streaming: bool


def map_behaviour(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by `wrap(behaviour)`, whichever of the four
    shapes it has. `wrap` may return the function unchanged to leave a shape alone."""
    streaming = bool(handler.request_streaming), bool(handler.response_streaming)
    field = _FIELDS[streaming]
    function = getattr(handler, field)
    if function is None:
        return handler  # not a well-formed handler; grpc.aio fails it on its own
    behaviour = Behaviour(function, kind_of(function), *streaming)
    wrapped = wrap(behaviour)
    if wrapped is function:
        return handler
    return handler._replace(**{field: wrapped})


class WrapCache:
    """Wrapped handlers per method, so an interceptor wraps each method once, not per call
    (grpc.aio asks every interceptor for the handler on every call; rebuilding it showed up
    as ~10 % of a busy server's samples)."""

    def __init__(self, wrap_for: Callable[[str], Callable[[Behaviour], Callable[..., Any]]]):
        self._wrap_for = wrap_for
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        if handler is None:
            return None
        found = self._cache.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = map_behaviour(handler, self._wrap_for(method))
        self._cache[method] = (handler, wrapped)
        return wrapped
