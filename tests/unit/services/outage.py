"""A dependency that is down or too slow, for the tests of services that call others
(housing, passport): a server interceptor in front of the fakes of their dependencies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass
class Outage(grpc.aio.ServerInterceptor):
    """Answers every call to a service in `down` UNAVAILABLE, and holds every call to one in
    `slow` past any deadline the tests set."""

    down: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        service = details.method.split("/")[1]
        if service not in self.down | self.slow:
            return handler

        async def fail(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if service in self.slow:
                # Never answers: the caller's deadline ends the call (and cancels this).
                await asyncio.Event().wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{service} is down")

        return grpc.unary_unary_rpc_method_handler(
            fail,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
