"""The gateway's side of ASGI: the request as the pipeline reads it, and writing answers.

Kept apart from the pipeline (gateway/app.py) so that it reads as HTTP, not as ASGI messages.
Headers arrive as latin-1 bytes (RFC 9110 allows obs-text; ASCII is checked where a header
becomes gRPC metadata).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hms_gateway.errors import GatewayError
from hms_gateway.jsonpb import DEFAULT_OPTIONS, JsonOptions

__all__ = ["ClientGone", "Request", "Responder", "json_bytes", "read_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_random_bits = random.Random().getrandbits  # seeded from the OS once, at import


class ClientGone(Exception):
    """The client disconnected before the request was read."""


class Request:
    """One HTTP request: what the pipeline needs from the ASGI scope, decoded once."""

    __slots__ = ("client", "headers", "host", "method", "path", "query", "receive", "request_id")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        # The raw path: percent-escapes intact, so "%2F" inside a segment stays data.
        raw = scope.get("raw_path")
        self.path: str = raw.decode("latin-1") if raw else scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers: list[tuple[str, str]] = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.receive = receive
        self.request_id = ""
        self.host: str | None = None
        for name, value in self.headers:
            if name == "x-request-id":
                self.request_id = value
            elif name == "host":
                self.host = value
        if not self.request_id:
            # 128 random bits from the process's PRNG: unique enough to find a request in the
            # logs, and without uuid4's system call for every request.
            self.request_id = f"{_random_bits(128):032x}"
            self.headers.append(("x-request-id", self.request_id))

    def header(self, name: str) -> str | None:
        """The first value of the header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over `limit` bytes."""
    declared = request.header("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError.body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError.body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Responder:
    """Writes answers with the headers every answer carries (request id, CORS)."""

    __slots__ = ("common", "send", "status")

    def __init__(self, send: Send, common: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.common = common
        self.status = 0  # what was sent, for metrics and logs

    async def start(
        self, status: int, content_type: str | None, headers: list[tuple[str, str]]
    ) -> None:
        raw = [*self.common, *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)]
        if content_type is not None:
            raw.append((b"content-type", content_type.encode("latin-1")))
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        self.status = status  # only once sent: a failed start can still be answered

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(
        self,
        status: int,
        data: bytes,
        content_type: str | None,
        headers: list[tuple[str, str]] = [],  # noqa: B006 - never mutated
    ) -> None:
        if status in (204, 205, 304):
            data, content_type = b"", None  # these statuses carry no content
        await self.start(status, content_type, [*headers, ("content-length", str(len(data)))])
        await self.body(data)

    async def error(self, error: GatewayError, options: JsonOptions = DEFAULT_OPTIONS) -> None:
        """Answer `error`, its details written by the gateway's JSON options."""
        body = json_bytes(error.body(options))
        await self.whole(error.http_status, body, "application/json", list(error.headers))
