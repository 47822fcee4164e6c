"""HTTP/1.1 connections with limits: uvicorn's httptools protocol, guarded against clients that
send too much, too slowly, or too many at once.

uvicorn (0.5x) on httptools bounds neither the size of a request head nor the time a client
takes to send it: httptools gathers a header's value across reads before handing it over, so a
200 MiB header is held (and copied) whole; a connection that sends nothing, a head sent a byte
a second and a body that never ends are each held for ever (uvicorn's keep-alive timer only runs
between requests). Its ``limit_concurrency`` counts every listener together and answers a
text/plain 503 without ``Retry-After``. So the gateway serves with this subclass of uvicorn's
protocol (``uvicorn.Config(http=<class>)``), built for one server by :func:`protocol_class`.
Per connection, in the order a request arrives (the limits are ``ServerLimits``):

- **connections**: a listener over ``max_connections`` open connections answers a new one 503
  with ``Retry-After`` at once and closes it, without reading a request;
- **head timeout**: the head (request line and headers) must be complete ``header_timeout``
  seconds after the connection opened (its first request) or after the head's first byte (a
  later request on a kept-alive connection): else 408 and the connection is closed. A drip of
  bytes does not move the deadline;
- **head size**: the request target over ``max_request_line`` bytes is 414; the header fields
  (names and values, 4 bytes more each for ``: `` and CRLF) over ``max_header_bytes``, or more
  than ``max_header_count`` fields, are 431. Fields are counted as httptools hands them over,
  and every read that is head only is counted as it arrives, so a head larger than
  ``max_request_line + max_header_bytes`` is refused once that much has arrived (httptools holds
  at most that plus one read, 256 KiB), not when it ends;
- **body timeout**: the body must be complete ``body_timeout`` seconds after the head: else 408
  (or a plain close if the answer has begun). An answer sent before the body was read (a 401, a
  413) ends the connection rather than wait for the rest, lingering (below);
- **requests in flight**: a listener with ``max_in_flight`` requests being served (from the end
  of their head to the end of their answer) answers another 503 with ``Retry-After``;
- **idle**: a kept-alive connection with no request for ``keepalive_timeout`` seconds is
  closed (uvicorn's own timer, given a float);
- **pipelining**: more than 16 requests queued on one connection behind the one being served
  closes it (uvicorn parses every pipelined request it has read, which is otherwise unbounded).

The head and body clocks stop while the gateway itself has paused reading (a pipelined request
waits for the one before it, or the app has not read the body buffered so far): the client is
not the slow one then, and gets its whole allowance of time the gateway was reading.

Every answer here is a ``google.rpc.Status`` in JSON with ``Connection: close``.

**Lingering close** (as nginx's ``lingering_close``): closing a socket that has unread data
sends a reset, and a client still writing its request (urllib, httpx and curl send the whole
body before they read) then loses the answer it was sent: ``Connection reset by peer`` instead
of the 413. So a connection that ends while the client may still be sending (a refusal here, an
app's answer before the body was read, or the close a ``Connection: close`` request asks for
while its body is unread) shuts down its write side once the answer is flushed (the client
reads the answer and then the end), and reads and drops what still arrives until the client
closes too, for at most ``linger_timeout`` seconds and ``Guard.linger_bytes`` bytes; past
either it is cut. A lingering connection still counts against ``max_connections`` (one refused
for the cap never did), and at most ``MAX_LINGERING`` connections linger at once (past it one
closes at once).

Refusals are counted by reason (``on_refused``, ``gateway_refused_total``), not logged: a
hostile client would write the log.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, cast

import grpc
import httptools
from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from hms_gateway.asgi import Receive, Scope, Send, json_bytes
from hms_gateway.errors import status_body
from hms_gateway.limits import ServerLimits

__all__ = [
    "LINGER_BYTES",
    "MAX_LINGERING",
    "RETRY_AFTER",
    "Guard",
    "GuardedProtocol",
    "Listener",
    "error_response",
    "protocol_class",
]

App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``Retry-After`` (seconds) of a 503 for a full listener.
RETRY_AFTER = 1
#: Requests queued behind the one being served on one connection.
MAX_PIPELINED = 16
#: Bytes a lingering connection drops at the least before it is cut; a server raises it to its
#: body limit (a client whose body is within the limit reads its early 401 whole).
LINGER_BYTES = 16 * 1024 * 1024
#: Connections lingering at once; past it a connection that ends is closed at once.
MAX_LINGERING = 256

_WILDCARD = frozenset({"", "0.0.0.0", "::"})

# Where a connection is in its current request (None between requests).
_HEAD = "head"
_BODY = "body"


class Listener:
    """One listening socket's share of a server: its app and its counts.

    ``host`` and ``port`` are the socket's own address; a connection belongs to the listener
    whose port it arrived on (and whose host, unless the listener took every address).
    """

    __slots__ = ("app", "connections", "host", "in_flight", "name", "port")

    def __init__(self, name: str, app: App, address: tuple[str, int]) -> None:
        self.name = name
        self.app = app
        self.host, self.port = address[0], address[1]
        self.connections = 0
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"Listener({self.name}, {self.host}:{self.port})"

    def matches(self, sockname: object) -> bool:
        if not isinstance(sockname, tuple) or len(sockname) < 2:
            return False
        host, port = sockname[0], sockname[1]
        return bool(port == self.port and (self.host in _WILDCARD or host == self.host))


def _ignore(_reason: str) -> None:
    return None


class Guard:
    """What the connections of one server share: the limits, the listeners (the first is the
    one a connection of unknown address is counted on), how refusals are counted, and how many
    bytes a lingering connection drops before it is cut (``linger_bytes``)."""

    def __init__(
        self,
        limits: ServerLimits,
        listeners: Sequence[Listener],
        on_refused: Callable[[str], None] = _ignore,
        *,
        linger_bytes: int = LINGER_BYTES,
    ) -> None:
        if not listeners:
            raise ValueError("a server needs at least one listener")
        if linger_bytes < 0:
            raise ValueError(f"linger_bytes must be >= 0, got {linger_bytes}")
        self.limits = limits
        self.linger_bytes = linger_bytes
        self.listeners = tuple(listeners)
        self.on_refused = on_refused
        self.lingering = 0
        for listener in self.listeners:
            listener.app = self._counted(listener, listener.app)

    def listener_for(self, sockname: object) -> Listener:
        for listener in self.listeners:
            if listener.matches(sockname):
                return listener
        return self.listeners[0]

    def _counted(self, listener: Listener, app: App) -> App:
        """`app`, run only while the listener has fewer than max_in_flight requests in it."""
        limit = self.limits.max_in_flight
        refused = self.on_refused

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if listener.in_flight >= limit:
                refused("in_flight")
                await _send_busy(
                    send, f"the gateway is serving its limit of {limit} requests; retry later"
                )
                return
            listener.in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                listener.in_flight -= 1

        return counted


def error_response(status: int, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, its body a google.rpc.Status."""
    body = json_bytes(status_body(_CODES[status], message))
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    414: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


async def _send_busy(send: Send, message: str) -> None:
    body = json_bytes(status_body(grpc.StatusCode.UNAVAILABLE, message))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"retry-after", str(RETRY_AFTER).encode("ascii")),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is in ``_refusal``."""


class _CycleTransport(asyncio.Transport):
    """The connection's transport as one uvicorn request cycle sees it.

    uvicorn's cycle closes the transport itself once a ``Connection: close`` answer (asked for
    by the client, as urllib does, or by the app) is written; with the request's body unread,
    that close would reset the connection under the answer. Here the protocol decides how the
    connection ends (:meth:`GuardedProtocol.answered_and_closing`).
    """

    def __init__(
        self, protocol: GuardedProtocol, transport: asyncio.Transport, cycle: RequestResponseCycle
    ) -> None:
        super().__init__()
        self._protocol = protocol
        self._transport = transport
        self._cycle = cycle

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        if self._cycle.response_complete:
            self._protocol.answered_and_closing()
        else:
            self._transport.close()  # an answer cut short (the app failed): nothing to wait for


class _Flow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading stops and starts again."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._protocol.reading_stopped()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self._protocol.reading_resumed()
        super().resume_reading()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the gateway's limits; use :func:`protocol_class`."""

    guard: ClassVar[Guard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.guard.limits
        # uvicorn arms its keep-alive timer with this; it takes a float as well as an int.
        self.timeout_keep_alive = limits.keepalive_timeout  # type: ignore[assignment]
        self._listener: Listener | None = None  # set while the connection is counted on it
        # One clock at a time: the head's or the body's (or the linger after a refusal).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._timer_delay = 0.0
        self._timer_spent = 0.0  # time already counted, while the gateway was reading
        self._timer_since: float | None = None  # when the current counted stretch began
        self._state: str | None = None
        self._heads = 0  # heads completed on this connection
        self._head_seen = 0  # bytes of reads that were all head, of the current head
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str, str] | None = None
        self._closing = False  # refused or closing: what still arrives is dropped
        self._lingering = False
        self._dropped = 0  # bytes dropped while lingering

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        guard = self.guard
        listener = guard.listener_for(transport.get_extra_info("sockname"))
        if listener.connections >= guard.limits.max_connections:
            self.transport = transport
            self._refuse(
                503,
                "connections",
                f"the gateway holds its limit of {guard.limits.max_connections} connections; "
                "retry later",
                retry_after=RETRY_AFTER,
            )
            return
        listener.connections += 1
        self._listener = listener
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self.app = cast(ASGI3Application, listener.app)
        self._arm(_HEAD, guard.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._lingering:
            self._lingering = False
            self.guard.lingering -= 1
        if self._listener is not None:
            self._listener.connections -= 1
            self._listener = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._drop(data)
            return
        self._unset_keepalive_if_required()
        starts_in_head = self._state is not _BODY
        heads = self._heads
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade (h2c, websocket) is not taken: the request is served over HTTP/1.1,
            # as RFC 9110 allows, and the connection closes after it (the parser stopped).
            self._cancel_timer()
            self._close_after_answer()
            return
        except httptools.HttpParserError:
            status, reason, message = self._refusal or (400, "malformed", "malformed HTTP request")
            self._refuse_head(status, reason, message)
            return
        if self._closing:
            return
        limits = self.guard.limits
        if starts_in_head and self._heads == heads and self._state is _HEAD:
            # No head ended in this read, which began inside one: all of it was head.
            self._head_seen += len(data)
            if self._head_seen > limits.max_request_line + limits.max_header_bytes:
                self._refuse_head(431, "header_bytes", self._header_bytes_message())
                return
        if self._state is _HEAD:
            if self._timer_kind != _HEAD:
                self._arm(_HEAD, limits.header_timeout)
        elif self._state is _BODY:
            if self._timer_kind != _BODY:
                self._arm(_BODY, limits.body_timeout)
        elif self._heads != heads:
            self._cancel_timer()  # a request ended: uvicorn's keep-alive timer takes over
        elif not self._timer_kind:
            # Bytes between requests that begin none (CRLFs, which the parser skips) stopped
            # uvicorn's keep-alive timer: they start the next head's clock instead.
            self._arm(_HEAD, limits.header_timeout)

    def _drop(self, data: bytes) -> None:
        """Refused or answered: what the client still sends is dropped, while lingering up to
        ``linger_bytes``; past it the connection is cut."""
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > self.guard.linger_bytes:
                self.transport.abort()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._state = _HEAD
        self._head_seen = self._header_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        limit = self.guard.limits.max_request_line
        if len(self.url) > limit:
            raise self._refused(
                414, "request_line", f"the request target is longer than the limit of {limit} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.guard.limits
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > limits.max_header_count:
            raise self._refused(
                431,
                "header_count",
                f"the request has more than {limits.max_header_count} header fields",
            )
        if self._header_bytes > limits.max_header_bytes:
            raise self._refused(431, "header_bytes", self._header_bytes_message())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._state = _BODY
        self._heads += 1
        if len(self.pipeline) >= MAX_PIPELINED:
            raise self._refused(503, "pipelined", f"more than {MAX_PIPELINED} requests pipelined")
        super().on_headers_complete()
        if self.cycle is not None:
            self._adopt(self.cycle)

    def _adopt(self, cycle: RequestResponseCycle) -> None:
        """Let the protocol, not uvicorn's `cycle`, say how the connection ends after it."""
        cycle.transport = _CycleTransport(self, self.transport, cycle)
        send = cycle.send

        async def send_and_say_close(message: ASGISendEvent) -> None:
            if (
                message["type"] == "http.response.start"
                and cycle is self.cycle
                and self._state is _BODY
            ):
                # An answer begun before its request's body arrived: the connection ends after
                # it (lingering), and the answer says so (uvicorn writes Connection: close).
                cycle.keep_alive = False
            await send(message)

        cycle.send = send_and_say_close  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._state = None

    def on_response_complete(self) -> None:
        if self._lingering:
            # The connection ends after this answer (answered_and_closing): nothing follows it.
            self.server_state.total_requests += 1
            return
        super().on_response_complete()

    def answered_and_closing(self) -> None:
        """A whole answer is written and the connection is to close (``Connection: close``):
        lingering if the client may still be sending (a body or a request unread), else now."""
        flow = self.flow
        sending = (
            self._closing
            or self._state is not None
            or bool(self.pipeline)
            or (flow is not None and flow.read_paused)
        )
        if not sending or self.transport.is_closing():
            self.transport.close()
            return
        self._closing = True
        self._cancel_timer()
        self._linger()

    def shutdown(self) -> None:
        if self._lingering:
            return  # the server stops: a lingering connection still ends at its own bound
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own path (a parser error it catches) answers in the gateway's form too.
        self._refuse_head(400, "malformed", "malformed HTTP request")

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, kind: str, delay: float) -> None:
        """Start the head's or the body's clock: `delay` seconds of the gateway reading."""
        self._cancel_timer()
        self._timer_kind = kind
        self._timer_delay = delay
        self._timer_spent = 0.0
        if self.flow is None or not self.flow.read_paused:
            self.reading_resumed()

    def reading_resumed(self) -> None:
        """The gateway reads again (`_Flow`): the head's or body's clock runs on."""
        if self._timer_kind in (_HEAD, _BODY) and self._timer_since is None:
            self._timer_since = self.loop.time()
            left = self._timer_delay - self._timer_spent
            self._timer = self.loop.call_later(max(left, 0.0), self._timed_out)

    def reading_stopped(self) -> None:
        """The gateway stopped reading (`_Flow`): not the client's time, the clock stops."""
        if self._timer_kind in (_HEAD, _BODY) and self._timer_since is not None:
            self._timer_spent += self.loop.time() - self._timer_since
            self._timer_since = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = ""
        self._timer_since = None

    def _timed_out(self) -> None:
        kind, delay = self._timer_kind, self._timer_delay
        self._timer, self._timer_kind, self._timer_since = None, "", None
        if self._closing:
            # The linger is over: cut, whatever the client still sends or has not read.
            self.transport.abort()
            return
        if kind == _HEAD:
            self._refuse_head(
                408, "header_timeout", f"the request head did not arrive within {delay:g} s"
            )
            return
        cycle = self.cycle
        message = f"the request body did not arrive within {delay:g} s"
        if cycle is not None and not self.pipeline and not cycle.response_started:
            self._refuse(408, "body_timeout", message)
        else:
            self.guard.on_refused("body_timeout")
            self._closing = True
            self.transport.close()

    # -- refusing --------------------------------------------------------------------------

    def _refused(self, status: int, reason: str, message: str) -> _Refused:
        self._refusal = (status, reason, message)
        return _Refused(message)

    def _header_bytes_message(self) -> str:
        limit = self.guard.limits.max_header_bytes
        return f"the request header fields are larger than the limit of {limit} bytes"

    def _refuse_head(self, status: int, reason: str, message: str) -> None:
        """Refuse the request whose head is arriving; answered only if no earlier request on
        this connection is still being answered (else the connection closes after that one)."""
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            self.guard.on_refused(reason)
            self._closing = True
            self._cancel_timer()
            self._close_after_answer()
            return
        self._refuse(status, reason, message)

    def _close_after_answer(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # uvicorn closes once the answer is sent
        else:
            self.transport.close()
        self._closing = True

    def _refuse(
        self, status: int, reason: str, message: str, *, retry_after: int | None = None
    ) -> None:
        """Answer `status` now, then close: the connection is done."""
        self.guard.on_refused(reason)
        self._closing = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app's reads end (http.disconnect) and what it still writes is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        self.transport.write(error_response(status, message, retry_after=retry_after))
        self._linger()

    def _linger(self) -> None:
        """End the connection after what was written, reading and dropping what still comes
        until the client closes, for at most ``linger_timeout`` s and ``linger_bytes`` bytes:
        closing a socket with unread data sends a reset, which can destroy the answer before
        the client reads it."""
        transport = self.transport
        if self._lingering:
            return
        if self.guard.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        self.guard.lingering += 1
        self._lingering = True
        # The write side shuts once the answer is flushed (asyncio waits for its buffer): the
        # client reads the whole answer, then the end of it.
        transport.write_eof()
        self._cancel_timer()
        if self.flow is not None:
            self.flow.resume_reading()
        self._timer_kind = "linger"
        self._timer = self.loop.call_later(self.guard.limits.linger_timeout, self._timed_out)


def protocol_class(guard: Guard) -> type[GuardedProtocol]:
    """The protocol class for one server (``uvicorn.Config(http=...)``), bound to `guard`."""
    return type("GatewayHttpProtocol", (GuardedProtocol,), {"guard": guard})
