"""The gateway's HTTP/1.1 protocol (gateway/protocol.py) in process: a real uvicorn server on a
loopback socket with small limits and a small ASGI app, spoken to with raw sockets.

Every wait is on a condition (an answer, the connection closing) bounded by a timeout; the
timeouts under test are fractions of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from hms_gateway.asgi import Receive, Scope, Send
from hms_gateway.limits import ServerLimits
from hms_gateway.protocol import MAX_PIPELINED, Guard, Listener, error_response, protocol_class
from hms_gateway.serve import listening_socket
from mesh.testing import eventually

LIMITS = ServerLimits(
    max_request_line=256,
    max_header_bytes=1024,
    max_header_count=10,
    header_timeout=0.5,
    body_timeout=0.5,
    keepalive_timeout=0.3,
    max_connections=4,
    max_in_flight=2,
    linger_timeout=1.0,
)
LINGER_BYTES = 1 << 20
BOUND = 5.0  # no wait in this file lasts longer
KiB = 1 << 10


@dataclass
class App:
    """Answers by path: /ok reads the body and says how long it was; /hold waits for
    `release`; /early answers 401 without reading (/early-big with 512 KiB of answer);
    /slowread reads after 1 s."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    disconnects: int = 0
    started: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.started += 1
        path = scope["path"]
        if path == "/hold":
            await self.release.wait()
        if path == "/early":
            await _answer(send, 401, b"{}")
            return
        if path == "/early-big":
            await _answer(send, 401, BIG_ANSWER)
            return
        if path == "/slowread":
            await asyncio.sleep(1.0)
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await _answer(send, 200, json.dumps({"size": size}).encode())


BIG_ANSWER = json.dumps({"pad": "p" * (512 * KiB)}).encode()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Served:
    public: tuple[str, int]
    ops: tuple[str, int]
    app: App
    guard: Guard
    refused: list[str]
    clients: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self, address: tuple[str, int] | None = None) -> Stream:
        reader, writer = await asyncio.open_connection(*(address or self.public))
        self.clients.append(writer)
        return reader, writer

    async def close_clients(self) -> None:
        for writer in self.clients:
            writer.close()
        for writer in self.clients:
            with contextlib.suppress(OSError):  # reset by the server: closed all the same
                await writer.wait_closed()


async def _serve(limits: ServerLimits, linger_bytes: int = LINGER_BYTES) -> AsyncIterator[Served]:
    app = App()
    refused: list[str] = []
    sockets = [listening_socket("127.0.0.1", 0), listening_socket("127.0.0.1", 0)]
    addresses = [s.getsockname()[:2] for s in sockets]
    guard = Guard(
        limits,
        [Listener("public", app, addresses[0]), Listener("ops", app, addresses[1])],
        on_refused=refused.append,
        linger_bytes=linger_bytes,
    )
    config = uvicorn.Config(
        app,
        http=protocol_class(guard),
        ws="none",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=sockets))
    await eventually(lambda: server.started, timeout=BOUND)
    served = Served(addresses[0], addresses[1], app, guard, refused)
    try:
        yield served
    finally:
        await served.close_clients()
        app.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, BOUND)
        for sock in sockets:
            sock.close()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async for one in _serve(LIMITS):
        yield one


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _answer_of(reader: asyncio.StreamReader) -> Answer:
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the server closes the connection (an assertion if it does not)."""
    async with asyncio.timeout(BOUND):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b"<reset>"


async def _closed_after(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    started = time.monotonic()
    data = await _closed(reader)
    return time.monotonic() - started, data


def _get(path: str = "/ok", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n".encode()


def _assert_status_body(answer: Answer, code: int) -> dict[str, Any]:
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    return dict(body)


# -- a plain request is untouched ---------------------------------------------------------------


async def test_a_request_and_keep_alive(served: Served) -> None:
    reader, writer = await served.connect()
    for _ in range(3):
        writer.write(b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
        answer = await _answer_of(reader)
        assert answer.status == 200
        assert answer.json() == {"size": 5}
    writer.close()
    assert served.refused == []


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(
        b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\na"
        b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nbb" + _get()
    )
    sizes = [(await _answer_of(reader)).json()["size"] for _ in range(3)]
    assert sizes == [1, 2, 0]
    writer.close()


# -- head size ----------------------------------------------------------------------------------


async def test_request_target_over_the_limit_is_414(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get("/ok?" + "q" * 300))
    answer = await _answer_of(reader)
    assert answer.status == 414
    body = _assert_status_body(answer, 8)
    assert body["message"] == "the request target is longer than the limit of 256 bytes"
    assert answer.headers["connection"] == "close"
    assert await _closed(reader) == b""
    assert served.refused == ["request_line"]
    assert served.app.started == 0


async def test_header_fields_over_the_limit_are_431(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get(extra="X-Big: " + "a" * 1100 + "\r\n"))
    answer = await _answer_of(reader)
    assert answer.status == 431
    body = _assert_status_body(answer, 8)
    assert body["message"] == "the request header fields are larger than the limit of 1024 bytes"
    assert served.refused == ["header_bytes"]
    assert served.app.started == 0


async def test_header_fields_at_the_limit_are_accepted(served: Served) -> None:
    reader, writer = await served.connect()
    # "host" + "gw" + 4 = 10 bytes; the second field takes the other 1014 exactly.
    writer.write(_get(extra="X-Fill: " + "a" * (1014 - len("x-fill") - 4) + "\r\n"))
    assert (await _answer_of(reader)).status == 200
    writer.close()


async def test_too_many_header_fields_are_431(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get(extra="".join(f"X-{i}: v\r\n" for i in range(10))))
    answer = await _answer_of(reader)
    assert answer.status == 431
    assert _assert_status_body(answer, 8)["message"] == (
        "the request has more than 10 header fields"
    )
    assert served.refused == ["header_count"]


async def test_a_huge_header_is_refused_before_it_ends(served: Served) -> None:
    """The answer comes while the header is still arriving: it is not gathered first."""
    reader, writer = await served.connect()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: gw\r\nX-Big: ")
    for _ in range(8):  # 8 reads of 1 KiB, no end of the header in sight
        writer.write(b"a" * 1024)
        await writer.drain()
    answer = await _answer_of(reader)
    assert answer.status == 431
    assert served.refused == ["header_bytes"]
    # What the client still sends is read and dropped until the server closes.
    writer.write(b"a" * 65536)
    assert await _closed(reader) in (b"", b"<reset>")


async def test_malformed_request_is_400_in_json(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    answer = await _answer_of(reader)
    assert answer.status == 400
    assert _assert_status_body(answer, 3)["message"] == "malformed HTTP request"
    assert served.refused == ["malformed"]


# -- timeouts -----------------------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    reader, _ = await served.connect()
    elapsed, data = await _closed_after(reader)
    assert 0.3 <= elapsed < 2.0, elapsed
    answer = await _answer_of(_reader_of(data))
    assert answer.status == 408
    assert _assert_status_body(answer, 4)["message"] == (
        "the request head did not arrive within 0.5 s"
    )
    assert served.refused == ["header_timeout"]


async def test_a_head_dripped_a_byte_at_a_time_is_closed(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: gw\r\nX-A: ")

    async def drip() -> None:
        while not reader.at_eof():
            writer.write(b"a")
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        elapsed, data = await _closed_after(reader)
    finally:
        dripping.cancel()
    assert elapsed < 2.0, elapsed  # the drip did not move the deadline
    assert (await _answer_of(_reader_of(data))).status == 408


async def test_a_later_head_has_its_own_deadline(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get())
    assert (await _answer_of(reader)).status == 200
    writer.write(b"GET /ok HTTP/1.1\r\n")  # the next head begins, and stops
    elapsed, data = await _closed_after(reader)
    assert 0.3 <= elapsed < 2.0, elapsed
    assert (await _answer_of(_reader_of(data))).status == 408
    assert served.refused == ["header_timeout"]


async def test_line_breaks_dripped_between_requests_are_a_head_too(served: Served) -> None:
    """The parser skips CRLFs before a request, and uvicorn's idle timer stops at any byte:
    a client dripping them would be held for ever."""
    reader, writer = await served.connect()
    writer.write(_get())
    assert (await _answer_of(reader)).status == 200

    async def drip() -> None:
        while not reader.at_eof():
            writer.write(b"\r\n")
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        elapsed, data = await _closed_after(reader)
    finally:
        dripping.cancel()
    assert elapsed < 2.0, elapsed
    assert (await _answer_of(_reader_of(data))).status == 408
    assert served.refused == ["header_timeout"]


async def test_a_slow_body_is_408(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc")
    elapsed, data = await _closed_after(reader)
    assert 0.3 <= elapsed < 2.0, elapsed
    answer = await _answer_of(_reader_of(data))
    assert answer.status == 408
    assert _assert_status_body(answer, 4)["message"] == (
        "the request body did not arrive within 0.5 s"
    )
    assert served.refused == ["body_timeout"]
    # The app waiting for the body was told the client is gone.
    await eventually(lambda: served.app.disconnects == 1, timeout=BOUND)


async def test_the_body_timer_waits_while_the_gateway_does_not_read(served: Served) -> None:
    """/slowread reads after 1 s, twice the body timeout: the 200 KiB the client sent at once
    wait in the socket (uvicorn stops reading at 64 KiB); that is not the client's delay."""
    reader, writer = await served.connect()
    body = b"x" * (200 * 1024)
    writer.write(b"POST /slowread HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body))
    writer.write(body)
    answer = await _answer_of(reader)
    assert answer.status == 200
    assert answer.json() == {"size": len(body)}
    assert served.refused == []
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get())
    assert (await _answer_of(reader)).status == 200
    elapsed, data = await _closed_after(reader)
    assert data == b""  # closed without a word: there was no request
    assert 0.1 <= elapsed < 2.0, elapsed


# -- lingering close ---------------------------------------------------------------------------


def _post_head(path: str, length: int, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


async def _send_until_cut(writer: asyncio.StreamWriter, chunk: bytes, every: float = 0.0) -> int:
    """Send `chunk` (every `every` s) until the connection is cut; the bytes sent."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(BOUND):
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                await asyncio.sleep(every)
    return sent


async def test_an_answer_before_the_body_ends_the_connection_and_is_read(served: Served) -> None:
    """A 401 (or 413) sent before the body was read: the rest is not waited for, the client
    reads the answer and then the end, and the connection is gone once the client closes."""
    reader, writer = await served.connect()
    writer.write(_post_head("/early", 100000) + b"ab")
    answer = await _answer_of(reader)
    assert answer.status == 401
    writer.write(b"c" * 50000)  # read and dropped
    await writer.drain()
    assert await _closed(reader) == b""  # the gateway's side is shut: an end, not a reset
    assert served.guard.listeners[0].connections == 1  # lingering, still counted
    writer.close()
    await eventually(lambda: served.guard.listeners[0].connections == 0, timeout=0.5)
    assert served.guard.lingering == 0


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
async def test_a_client_that_sends_its_whole_body_first_reads_the_early_answer(
    served: Served, connection: str
) -> None:
    """As urllib, httpx and curl do: the whole body, then the answer. urllib says
    ``Connection: close``, after which uvicorn itself closed at once: the client was reset
    while sending and never read the 401."""
    reader, writer = await served.connect()
    body = b"x" * (768 * KiB)  # well over what the sockets' buffers hold
    writer.write(_post_head("/early", len(body), f"Connection: {connection}\r\n"))
    writer.write(body)
    await writer.drain()
    answer = await _answer_of(reader)
    assert answer.status == 401
    assert answer.headers["connection"] == "close"
    assert await _closed(reader) == b""


async def test_an_early_answer_is_delivered_whole_before_the_end(served: Served) -> None:
    """512 KiB of answer, more than the socket buffers take, and a client that sends its body
    before it reads a byte: all of the answer arrives, then the end."""
    reader, writer = await served.connect()
    body = b"x" * (512 * KiB)
    writer.write(_post_head("/early-big", len(body), "Connection: close\r\n") + body)
    await writer.drain()
    answer = await _answer_of(reader)
    assert answer.status == 401
    assert answer.body == BIG_ANSWER
    assert await _closed(reader) == b""


@pytest.fixture
async def long_linger() -> AsyncIterator[Served]:
    """A server whose lingering ends at 256 KiB dropped, long before its time bound."""
    async for one in _serve(dataclasses.replace(LIMITS, linger_timeout=60.0), 256 * KiB):
        yield one


async def test_lingering_ends_at_its_byte_bound(long_linger: Served) -> None:
    """A client that keeps sending after its answer, as fast as it can: cut once the gateway
    has dropped `linger_bytes` (the time bound is far off)."""
    served = long_linger
    reader, writer = await served.connect()
    writer.write(_post_head("/early", 1 << 30))
    assert (await _answer_of(reader)).status == 401
    started = time.monotonic()
    sent = await _send_until_cut(writer, b"x" * (64 * KiB))
    assert time.monotonic() - started < 2.0
    assert sent >= 256 * KiB
    await eventually(lambda: served.guard.listeners[0].connections == 0, timeout=BOUND)
    assert served.guard.lingering == 0


async def test_lingering_ends_at_its_time_bound(served: Served) -> None:
    """A client that keeps sending after its answer, slowly (far below the byte bound): cut
    `linger_timeout` (1 s) after the answer, counted against the connection cap until then."""
    reader, writer = await served.connect()
    writer.write(_post_head("/early", 1 << 30))
    assert (await _answer_of(reader)).status == 401
    started = time.monotonic()
    assert served.guard.lingering == 1
    assert served.guard.listeners[0].connections == 1
    sent = await _send_until_cut(writer, b"x" * KiB, every=0.02)
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 3.0, elapsed
    assert sent < LINGER_BYTES
    await eventually(lambda: served.guard.listeners[0].connections == 0, timeout=BOUND)
    assert served.guard.lingering == 0


async def test_a_refused_head_lingers_too(served: Served) -> None:
    """A 431 to a client still sending its header: it reads the answer, then the end."""
    reader, writer = await served.connect()
    writer.write(_get(extra="X-Big: " + "a" * 1100 + "\r\n"))
    writer.write(b"a" * (256 * KiB))
    await writer.drain()
    answer = await _answer_of(reader)
    assert answer.status == 431
    assert await _closed(reader) == b""


# -- caps ---------------------------------------------------------------------------------------


async def test_connections_over_the_cap_get_503_with_retry_after(served: Served) -> None:
    held = [await served.connect() for _ in range(LIMITS.max_connections)]
    for _, writer in held:
        writer.write(b"GET /ok HTTP/1.1\r\n")  # half-sent: each holds its connection
    await eventually(lambda: served.guard.listeners[0].connections == 4, timeout=BOUND)
    reader, writer = await served.connect()
    writer.write(_get())
    answer = await _answer_of(reader)
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["connection"] == "close"
    assert _assert_status_body(answer, 14)["message"] == (
        "the gateway holds its limit of 4 connections; retry later"
    )
    assert await _closed(reader) == b""
    assert served.refused == ["connections"]
    # The ops listener counts its own connections.
    ops_reader, ops_writer = await served.connect(served.ops)
    ops_writer.write(_get())
    assert (await _answer_of(ops_reader)).status == 200
    ops_writer.close()
    # A held connection leaves: there is room again.
    held[0][1].close()
    await eventually(lambda: served.guard.listeners[0].connections == 3, timeout=BOUND)
    reader, writer = await served.connect()
    writer.write(_get())
    assert (await _answer_of(reader)).status == 200
    writer.close()
    for _, held_writer in held[1:]:
        held_writer.close()


async def test_requests_over_the_in_flight_cap_get_503_with_retry_after(served: Served) -> None:
    held = [await served.connect() for _ in range(LIMITS.max_in_flight)]
    for _, writer in held:
        writer.write(_get("/hold"))
    await eventually(lambda: served.guard.listeners[0].in_flight == 2, timeout=BOUND)
    reader, writer = await served.connect()
    writer.write(_get())
    answer = await _answer_of(reader)
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert _assert_status_body(answer, 14)["message"] == (
        "the gateway is serving its limit of 2 requests; retry later"
    )
    assert served.refused == ["in_flight"]
    served.app.release.set()
    for held_reader, _ in held:
        assert (await _answer_of(held_reader)).status == 200
    await eventually(lambda: served.guard.listeners[0].in_flight == 0, timeout=BOUND)
    reader, writer = await served.connect()
    writer.write(_get())
    assert (await _answer_of(reader)).status == 200
    writer.close()


async def test_pipelining_past_the_depth_closes_the_connection(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(_get("/hold") + _get() * (MAX_PIPELINED + 1))
    await eventually(lambda: "pipelined" in served.refused, timeout=BOUND)
    served.app.release.set()
    # The request being served is answered, then the connection closes.
    assert (await _answer_of(reader)).status == 200
    await _closed(reader)


async def test_an_upgrade_is_ignored_and_answered_over_http1(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(
        _get(extra="Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n")
    )
    answer = await _answer_of(reader)
    assert answer.status == 200
    assert await _closed(reader) == b""


# -- pieces -------------------------------------------------------------------------------------


def test_error_response() -> None:
    data = error_response(503, "full", retry_after=1)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 503 Service Unavailable",
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"retry-after: 1",
    ]
    assert json.loads(body) == {"code": 14, "message": "full", "details": []}


@pytest.mark.parametrize(
    ("listener", "sockname", "expected"),
    [
        pytest.param(("127.0.0.1", 80), ("127.0.0.1", 80), True, id="same"),
        pytest.param(("127.0.0.1", 80), ("127.0.0.1", 81), False, id="other-port"),
        pytest.param(("127.0.0.1", 80), ("10.0.0.1", 80), False, id="other-host"),
        pytest.param(("0.0.0.0", 80), ("10.0.0.1", 80), True, id="any-ipv4"),
        pytest.param(("::", 80), ("::1", 80, 0, 0), True, id="any-ipv6"),
        pytest.param(("127.0.0.1", 80), None, False, id="unknown"),
    ],
)
def test_listener_matches(listener: tuple[str, int], sockname: object, expected: bool) -> None:
    assert Listener("x", App(), listener).matches(sockname) is expected


def _reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader
