"""The state of one outbound call as it passes through the middleware chain, and the errors
the chain raises (as `grpc.aio.AioRpcError`, so callers catch one type whatever failed)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from mesh.aio import cancelled_by_caller
from mesh.resilience.retry import Idempotency

__all__ = [
    "CallInfo",
    "CallKind",
    "GuardedStream",
    "channel_closed_error",
    "rpc_error",
    "service_of",
]

Metadata = Sequence[tuple[str, str | bytes]]


class CallKind(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def request_streaming(self) -> bool:
        return self in (CallKind.STREAM_UNARY, CallKind.STREAM_STREAM)

    @property
    def response_streaming(self) -> bool:
        return self in (CallKind.UNARY_STREAM, CallKind.STREAM_STREAM)


def service_of(method: str) -> str:
    """`/hms.notify.v1.NotifyService/Send` -> `hms.notify.v1.NotifyService`."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ValueError(f"method {method!r} is not /package.Service/Method")
    return parts[1]


@dataclass
class CallInfo:
    """One call: what the caller asked for, and what the chain decided so far."""

    kind: CallKind
    method: str
    service: str
    request: Any
    metadata: list[tuple[str, str | bytes]]
    serializer: Callable[[Any], bytes] | None
    deserializer: Callable[[bytes], Any] | None
    idempotency: Idempotency
    timeout: float | None = None
    deadline: float | None = None  # absolute, time.monotonic()
    wait_for_ready: bool | None = None
    attempt: int = 0
    #: True for a hedged copy (sent while an earlier attempt is still out).
    hedge: bool = False
    tried: set[str] = field(default_factory=set)  # instance keys already used by this call
    #: Set by the transport once the request may have reached a server.
    sent: bool = False
    #: The instance chosen for the current attempt (set by the pick layer).
    endpoint: Any = None
    #: Trailing metadata of the last failed attempt (retry pushback lives there).
    trailers: Metadata = ()
    #: The grpc.aio call of the last attempt: a caller that needs the response's metadata
    #: (the REST gateway) reads it there.
    rpc: Any = None
    #: True once the pick layer has waited for an instance to appear: it waits once a call.
    waited_for_instance: bool = False
    #: Only instances that registered this version take the call (None: any).
    version: str | None = None


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error raised by the mesh itself, of the same type grpc.aio raises."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details, debug_error_string=None
    )


def channel_closed_error(method: str, address: str) -> grpc.aio.AioRpcError:
    """What a call gets instead of grpc.aio's bare CancelledError when its channel closed
    under it: UNAVAILABLE (no answer came), which the retry layer retries where safe."""
    return rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        f"{method}: the channel to {address} closed with the call in flight; no answer came",
    )


class GuardedStream:
    """A grpc.aio streaming call whose reads turn a CancelledError nobody asked for (its
    channel closed) into an UNAVAILABLE `AioRpcError`; everything else is the call's own."""

    def __init__(self, rpc: Any, method: str, address: str) -> None:
        self._rpc = rpc
        self._method = method
        self._address = address
        self._cancelled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rpc, name)

    def cancel(self) -> bool:
        self._cancelled = True
        return bool(self._rpc.cancel())

    async def read(self) -> Any:
        try:
            return await self._rpc.read()
        except asyncio.CancelledError:
            self._reraise()
            raise

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for message in self._rpc:
                yield message
        except asyncio.CancelledError:
            self._reraise()
            raise

    def _reraise(self) -> None:
        """Raise UNAVAILABLE unless the cancellation was asked for (by the caller's task or
        by its own `cancel()`); then return, and the CancelledError goes on."""
        if not (self._cancelled or cancelled_by_caller()):
            raise channel_closed_error(self._method, self._address) from None
