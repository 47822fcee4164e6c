"""Server interceptor that turns handler exceptions into gRPC statuses.

A `MeshError` answers with its own code and message. Any other exception is a bug: it is
logged with its traceback and answered INTERNAL with a generic message, so internals never
leak to callers. One adapter covers grpc.aio's four handler shapes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mesh.errors import MeshError
from mesh.server.wrap import Behaviour, Kind, WrapCache

__all__ = ["ErrorInterceptor"]

log = logging.getLogger(__name__)


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, MeshError):
        await context.abort(exc.code, exc.message)
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc.aio.AbortError; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError)


def _wrap_unary(method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request_or_iterator, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort_for(exc, context, method)

    return handler


def _wrap_stream(method: str, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for response in behaviour(request_or_iterator, context):
                yield response
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort_for(exc, context, method)

    return handler


def _wrap_for(method: str) -> Callable[[Behaviour], Callable[..., Any]]:
    def wrap(behaviour: Behaviour) -> Callable[..., Any]:
        if behaviour.kind is Kind.SYNC:
            return behaviour.function  # runs in a thread pool: an async wrapper breaks it
        if not behaviour.response_streaming:
            return _wrap_unary(method, behaviour.function)
        if behaviour.kind is Kind.ASYNC_GENERATOR:
            return _wrap_stream(method, behaviour.function)
        return behaviour.function  # streams written with context.write() keep their errors

    return wrap


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = WrapCache(_wrap_for)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return self._wrapped.get(details.method, await continuation(details))
