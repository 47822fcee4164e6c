"""Server interceptor that records each inbound call's deadline for the handler, so that the
calls it makes through a MeshChannel inherit what is left (see mesh.deadline)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mesh.deadline import inbound_scope
from mesh.server.wrap import Behaviour, Kind, WrapCache

__all__ = ["DeadlineInterceptor"]


def _wrap(behaviour: Behaviour) -> Callable[..., Any]:
    function = behaviour.function
    if behaviour.kind is Kind.COROUTINE:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with inbound_scope(context.time_remaining()):
                return await function(request, context)

        return unary
    if behaviour.kind is Kind.ASYNC_GENERATOR:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with inbound_scope(context.time_remaining()):
                async for response in function(request, context):
                    yield response

        return stream
    return function  # sync handlers run in a thread pool: outside the mesh's async client


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = WrapCache(lambda _method: _wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return self._wrapped.get(details.method, await continuation(details))
