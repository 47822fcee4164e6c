"""One place that knows grpc.aio's handler shapes, for server interceptors that wrap them.

A `grpc.RpcMethodHandler` holds one behaviour in one of four fields (unary_unary,
unary_stream, stream_unary, stream_stream), and grpc.aio runs it one of three ways, decided
by inspecting the function (`Kind`). A wrapper must be of the same kind as what it wraps:
grpc.aio hands a sync stream_unary behaviour a sync request iterator and runs it in its
thread pool, and treats a coroutine stream behaviour as writing with ``context.write()``.

A server interceptor says only what it does around each call of a method, as an `Around`:

- `refuse(context)` decides, before the behaviour runs, whether to end the call with a status
  instead (`Refusal`); the behaviour then never runs;
- `scope(context)` is an async context manager entered around the behaviour: what it does on
  entry runs before the call, the call's exception reaches its ``__aexit__`` (to record, or to
  translate by aborting), and its exit runs when the call ends.

`wrap_behaviour` builds the wrapper for whichever shape and kind the behaviour has, and
`AroundInterceptor` is the rest of an interceptor (``intercept_service``, one wrap per
method). What each kind gets:

    kind                              refuse                        scope
    coroutine that returns            await context.abort()         around the await
    coroutine that writes its stream  same                          around the await
    async generator                   same                          around the iteration
    sync (in the thread pool)         context.abort(), in the pool  never: it runs off the loop

`Around(writers=False)` leaves coroutines that write their stream alone altogether.

Example::

    class Timing(AroundInterceptor):
        def around(self, method: str) -> Around:
            return Around(scope=lambda context: Timer(method))  # an async context manager
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc

__all__ = [
    "Around",
    "AroundInterceptor",
    "Behaviour",
    "Kind",
    "Refusal",
    "WrapCache",
    "kind_of",
    "map_behaviour",
    "wrap_behaviour",
]

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
    handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[Behaviour], Callable[..., Any]]
) -> grpc.RpcMethodHandler[Any, Any]:
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
    # grpc's handlers are namedtuples (grpc.*_rpc_method_handler makes them); types-grpcio
    # declares only the RpcMethodHandler interface, without the namedtuple's _replace.
    replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(**{field: wrapped})  # type: ignore[attr-defined]
    return replaced


class WrapCache:
    """Wrapped handlers per method, so an interceptor wraps each method once, not per call
    (grpc.aio asks every interceptor for the handler on every call; rebuilding it showed up
    as ~10 % of a busy server's samples)."""

    def __init__(self, wrap_for: Callable[[str], Callable[[Behaviour], Callable[..., Any]]]):
        self._wrap_for = wrap_for
        self._cache: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler is None:
            return None
        found = self._cache.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = map_behaviour(handler, self._wrap_for(method))
        self._cache[method] = (handler, wrapped)
        return wrapped


@dataclass(frozen=True)
class Refusal:
    """The status a call ends with when it is refused before its behaviour runs."""

    code: grpc.StatusCode
    message: str


#: Decides, before the behaviour runs, whether to refuse the call (None: let it through).
#: Gets the call's context; for sync behaviours it runs in grpc.aio's thread pool.
Refuse = Callable[[Any], Refusal | None]
#: An async context manager around one call, made from the call's context.
Scope = Callable[[Any], AbstractAsyncContextManager[object]]


@dataclass(frozen=True)
class Around:
    """What a server interceptor does around each call of one method (see the module doc).

    `writers=False` leaves alone (neither refused nor scoped) coroutines that write their
    stream with ``context.write()``.
    """

    refuse: Refuse | None = None
    scope: Scope | None = None
    writers: bool = True

    def __post_init__(self) -> None:
        if self.refuse is None and self.scope is None:
            raise ValueError("Around needs a refuse, a scope or both (None leaves a method alone)")


def wrap_behaviour(behaviour: Behaviour, around: Around) -> Callable[..., Any]:
    """`behaviour`'s function wrapped in `around`, as a function of the same kind (or the
    function itself when `around` has nothing to do for this kind)."""
    function, refuse, scope = behaviour.function, around.refuse, around.scope
    if behaviour.kind is Kind.SYNC:
        # Sync behaviours run in the thread pool, outside the event loop: a scope cannot
        # reach them, and their (sync) context's abort() blocks on the loop, so a refusal
        # must be decided and carried out in the pool too, never in the loop.
        if refuse is None:
            return function
        if behaviour.response_streaming:
            return _refusing_sync_generator(function, refuse)
        return _refusing_sync(function, refuse)
    if behaviour.kind is Kind.ASYNC_GENERATOR:
        return _async_generator(function, refuse, scope)
    if behaviour.response_streaming and not around.writers:
        return function
    return _coroutine(function, refuse, scope)


def _coroutine(
    function: Callable[..., Awaitable[Any]], refuse: Refuse | None, scope: Scope | None
) -> Callable[..., Awaitable[Any]]:
    async def around_coroutine(request: Any, context: Any) -> Any:
        if refuse is not None and (refusal := refuse(context)) is not None:
            await context.abort(refusal.code, refusal.message)
            return None  # abort raises; never run the behaviour if it did not
        if scope is None:
            return await function(request, context)
        async with scope(context):
            return await function(request, context)

    return around_coroutine


def _async_generator(
    function: Callable[..., AsyncIterator[Any]], refuse: Refuse | None, scope: Scope | None
) -> Callable[..., AsyncIterator[Any]]:
    async def around_async_generator(request: Any, context: Any) -> AsyncIterator[Any]:
        if refuse is not None and (refusal := refuse(context)) is not None:
            await context.abort(refusal.code, refusal.message)
            return  # abort raises; never run the behaviour if it did not
        if scope is None:
            async for response in function(request, context):
                yield response
            return
        async with scope(context):
            async for response in function(request, context):
                yield response

    return around_async_generator


def _refusing_sync(function: Callable[..., Any], refuse: Refuse) -> Callable[..., Any]:
    def refusing_sync(request: Any, context: Any) -> Any:
        refusal = refuse(context)
        if refusal is not None:
            context.abort(refusal.code, refusal.message)  # does not raise from a sync context
            return None
        return function(request, context)

    return refusing_sync


def _refusing_sync_generator(
    function: Callable[..., Iterator[Any]], refuse: Refuse
) -> Callable[..., Iterator[Any]]:
    def refusing_sync_generator(request: Any, context: Any) -> Iterator[Any]:
        # A generator, so this body runs when grpc.aio iterates it in its thread pool.
        refusal = refuse(context)
        if refusal is not None:
            context.abort(refusal.code, refusal.message)  # does not raise from a sync context
            return
        yield from function(request, context)

    return refusing_sync_generator


def _unchanged(behaviour: Behaviour) -> Callable[..., Any]:
    return behaviour.function


class AroundInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that is only what it does around each call: `around(method)`
    (None leaves the method alone). Each method is wrapped once, on its first call."""

    def __init__(self) -> None:
        self._wrapped = WrapCache(self._wrap_for)

    @abc.abstractmethod
    def around(self, method: str) -> Around | None:
        """What to do around each call of `method` ('/pkg.Service/Method')."""

    def _wrap_for(self, method: str) -> Callable[[Behaviour], Callable[..., Any]]:
        around = self.around(method)
        if around is None:
            return _unchanged
        return lambda behaviour: wrap_behaviour(behaviour, around)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._wrapped.get(details.method, await continuation(details))
