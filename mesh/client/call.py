"""The state of one outbound call as it passes through the middleware chain, and the errors
the chain raises (as `grpc.aio.AioRpcError`, so callers catch one type whatever failed)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from mesh.policy.retry import Idempotency

__all__ = ["CallInfo", "CallKind", "rpc_error", "service_of"]

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


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error raised by the mesh itself, of the same type grpc.aio raises."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details, debug_error_string=None
    )
