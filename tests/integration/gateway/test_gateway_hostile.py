"""The gateway under load from a hostile client: each attack of the "trust boundaries" issue
against a real `mesh gateway` process, with raw sockets (docs/security.md).

Three gateways, one per module: one with the default limits (the big header, and what the
defaults answer), one with short timeouts (1 s for a head or a body, 0.5 s idle), one with
small caps (50 connections, 4 requests in flight). Every wait is on a condition (an answer,
the connection closing), bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from hms_tools.devstack import GatewayProcess
from mesh.testing import wait_until

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

MIRROR = "hms.testing.v1.MirrorService"
BOUND = 10.0  # no single wait in this module lasts longer
MiB = 1 << 20


@dataclass
class Gateway:
    process: GatewayProcess
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.process.url)
        assert parts.hostname is not None
        assert parts.port is not None
        return parts.hostname, parts.port


def _gateway(stack: GatewayStack, name: str, *args: str) -> Iterator[Gateway]:
    process = stack.start_gateway(*args, name=name)
    try:
        wait_ready(process.url, {MIRROR})
        yield Gateway(process, stack.base / "logs" / f"{name}.log")
    finally:
        process.stop(timeout=5)


@pytest.fixture(scope="module")
def defaults(gateway_stack: GatewayStack) -> Iterator[Gateway]:
    yield from _gateway(gateway_stack, "gateway-hostile-defaults")


@pytest.fixture(scope="module")
def timeouts(gateway_stack: GatewayStack) -> Iterator[Gateway]:
    yield from _gateway(
        gateway_stack,
        "gateway-hostile-timeouts",
        "--header-timeout=1",
        "--body-timeout=1",
        "--keepalive-timeout=0.5",
    )


@pytest.fixture(scope="module")
def caps(gateway_stack: GatewayStack) -> Iterator[Gateway]:
    yield from _gateway(
        gateway_stack, "gateway-hostile-caps", "--max-connections=50", "--max-in-flight=4"
    )


# -- raw HTTP/1.1 -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _parse(data: bytes) -> Answer | None:
    """The first answer in `data`, once all of it is there."""
    head, found, rest = data.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None
    return Answer(int(lines[0].split(" ")[1]), headers, rest[:length])


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=BOUND)
    sock.settimeout(BOUND)
    return sock


def _answer(sock: socket.socket) -> Answer:
    data = b""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        answer = _parse(data)
        if answer is not None:
            return answer
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    answer = _parse(data)
    assert answer is not None, f"no whole answer: {data[:300]!r}"
    return answer


def _closed_after(
    sock: socket.socket, drip: bytes = b"", every: float = 0.1
) -> tuple[float, bytes]:
    """Seconds until the gateway closes `sock`, and what it said before; `drip` is sent every
    `every` seconds meanwhile (a client that keeps a head or a body coming, slowly)."""
    started = time.monotonic()
    data = b""
    while time.monotonic() - started < BOUND:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - started, data
            if not chunk:
                return time.monotonic() - started, data
            data += chunk
        elif drip:
            with contextlib.suppress(OSError):  # closed under us: the next read says so
                sock.sendall(drip)
    raise AssertionError(f"still open after {BOUND} s (got {data[:200]!r})")


def _status_body(answer: Answer, code: int) -> dict[str, Any]:
    assert answer.headers["content-type"] == "application/json", answer
    body = answer.json()
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    return dict(body)


def _peak_rss_kib(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _refused_count(gateway: Gateway, reason: str) -> float:
    response = httpx.get(f"{gateway.process.url}/metrics", timeout=BOUND)
    match = re.search(
        rf'^gateway_refused_total\{{reason="{reason}"\}} ([0-9.e+]+)$', response.text, re.M
    )
    return float(match[1]) if match else 0.0


HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"  # no blank line: the head never ends


# -- request heads ------------------------------------------------------------------------------


def test_a_200_mib_header_is_431_and_memory_stays_low(defaults: Gateway) -> None:
    """The attack: one header of 200 MiB. Before: accepted (200), the gateway's memory from
    85 to 415 MiB. Now: 431 once 40 KiB of head are in, and nothing is gathered."""
    pid = defaults.process.pid
    peak_before = _peak_rss_kib(pid)
    sock = _connect(defaults.address)
    sent = [0]

    def send() -> None:
        chunk = b"a" * MiB
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            for _ in range(200):
                sock.sendall(chunk)
                sent[0] += 1
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the gateway closed: it has answered

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        answer = _answer(sock)
    finally:
        sender.join(BOUND)
        sock.close()
    assert answer.status == 431, answer
    assert _status_body(answer, 8)["message"] == (
        "the request header fields are larger than the limit of 32768 bytes"
    )
    assert answer.headers["connection"] == "close"
    peak_after = _peak_rss_kib(pid)
    assert peak_after - peak_before < 32 * 1024, (peak_before, peak_after, sent[0])
    # And the gateway serves on.
    assert httpx.get(f"{defaults.process.url}/healthz", timeout=BOUND).status_code == 200


def test_a_long_request_target_is_414(defaults: Gateway) -> None:
    with _connect(defaults.address) as sock:
        sock.sendall(b"GET /v1/items/" + b"x" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = _answer(sock)
    assert answer.status == 414, answer
    assert "8192 bytes" in _status_body(answer, 8)["message"]


def test_too_many_header_fields_are_431(defaults: Gateway) -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    with _connect(defaults.address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + fields + b"\r\n")
        answer = _answer(sock)
    assert answer.status == 431, answer
    assert _status_body(answer, 8)["message"] == "the request has more than 100 header fields"


def test_a_token_sized_header_is_served(defaults: Gateway) -> None:
    """The limits leave room for what real clients send: an 8 KiB bearer token and cookies."""
    with _connect(defaults.address) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
            + b"t" * 8192
            + b"\r\nCookie: "
            + b"c" * 8000
            + b"\r\n\r\n"
        )
        assert _answer(sock).status == 200


# -- slow clients -------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(timeouts: Gateway) -> None:
    with _connect(timeouts.address) as sock:
        elapsed, data = _closed_after(sock)
    assert 0.5 <= elapsed < 3.0, elapsed
    answer = _parse(data)
    assert answer is not None, data
    assert answer.status == 408, data
    assert _status_body(answer, 4)["message"] == "the request head did not arrive within 1 s"


def test_a_head_dripped_a_byte_at_a_time_is_closed(timeouts: Gateway) -> None:
    with _connect(timeouts.address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        elapsed, data = _closed_after(sock, drip=b"a")
    assert elapsed < 3.0, elapsed  # the drip does not move the deadline
    answer = _parse(data)
    assert answer is not None, data
    assert answer.status == 408, data


def test_a_body_dripped_a_byte_at_a_time_is_closed(timeouts: Gateway) -> None:
    with _connect(timeouts.address) as sock:
        sock.sendall(
            b"POST /v1/shape HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        elapsed, data = _closed_after(sock, drip=b" ")
    assert 0.5 <= elapsed < 3.0, elapsed
    answer = _parse(data)
    assert answer is not None, data
    assert answer.status == 408, data
    assert _status_body(answer, 4)["message"] == "the request body did not arrive within 1 s"


def test_an_idle_kept_alive_connection_is_closed(timeouts: Gateway) -> None:
    with _connect(timeouts.address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _answer(sock).status == 200
        elapsed, data = _closed_after(sock)
    assert data == b""
    assert 0.2 <= elapsed < 3.0, elapsed


def test_a_prompt_client_is_served_on_a_kept_alive_connection(timeouts: Gateway) -> None:
    with _connect(timeouts.address) as sock:
        for _ in range(3):
            sock.sendall(
                b"POST /v1/shape HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b'Content-Length: 21\r\n\r\n{"failMessage":"hi"}\n'
            )
            answer = _answer(sock)
            assert answer.status == 200, answer
            assert answer.json()["received"]["failMessage"] == "hi"


# -- caps ---------------------------------------------------------------------------------------


def test_half_sent_requests_hold_at_most_the_cap(caps: Gateway) -> None:
    """The attack: thousands of requests whose head never ends. Before: all held. Now: 50
    held (the cap), the rest and any later client answered 503 with Retry-After at once."""
    refused_before = _refused_count(caps, "connections")
    socks = [_connect(caps.address) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(HALF_SENT)
        answered: dict[socket.socket, bytes] = {}

        def all_but_the_cap_answered() -> bool:
            readable, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.1)
            for sock in readable:
                answered[sock] = sock.recv(65536)
            return len(answered) >= 150

        wait_until(all_but_the_cap_answered, BOUND)
        held = [sock for sock in socks if sock not in answered]
        assert len(held) == 50
        for data in answered.values():
            answer = _parse(data)
            assert answer is not None, data
            assert answer.status == 503, data
            assert answer.headers["retry-after"] == "1"
            assert _status_body(answer, 14)["message"] == (
                "the gateway holds its limit of 50 connections; retry later"
            )
        with _connect(caps.address) as later:
            later.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            answer = _answer(later)
        assert answer.status == 503, answer
        assert answer.headers["retry-after"] == "1"
        readable, _, _ = select.select(held, [], [], 0)
        assert readable == []  # the held ones still wait for their head
    finally:
        for sock in socks:
            sock.close()

    def served_again() -> bool:
        try:
            return httpx.get(f"{caps.process.url}/healthz", timeout=BOUND).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(served_again, BOUND)
    assert _refused_count(caps, "connections") >= refused_before + 151


def test_requests_over_the_in_flight_cap_get_503(caps: Gateway) -> None:
    body = b'{"delayMs":3000}'
    slow = (
        b"POST /v1/shape HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    socks = [_connect(caps.address) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(slow)
        refused: list[httpx.Response] = []

        def refused_while_full() -> bool:
            response = httpx.get(f"{caps.process.url}/healthz", timeout=BOUND)
            if response.status_code == 503:
                refused.append(response)
            return bool(refused)

        wait_until(refused_while_full, BOUND)
        (response,) = refused
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "code": 14,
            "message": "the gateway is serving its limit of 4 requests; retry later",
            "details": [],
        }
        for sock in socks:
            assert _answer(sock).status == 200
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{caps.process.url}/healthz", timeout=BOUND).status_code == 200


# -- error bodies -------------------------------------------------------------------------------

# grpc core's words for a broken connection, as a backend relays its own upstream's failure.
# (Not the finding's "failed to connect ...": the mesh channel reads that phrase in a status as
# "never sent" and would take the healthy mirror for unreachable.)
CORE_TEXT = "Stream removed (Socket closed); last error: UNKNOWN: ipv4:10.20.30.40:5432"


def _logged(log: Path, request_id: str) -> str:
    """The gateway's log line for `request_id` (waits for it: the log is another process's)."""
    found: list[str] = []

    def logged() -> bool:
        found[:] = [line for line in log.read_text().splitlines() if request_id in line]
        return bool(found)

    wait_until(logged, BOUND)
    return found[0]


def _assert_no_internals(text: str) -> None:
    for leak in ("127.0.0.1", "ipv4:", "ipv6:", "Failed to connect", "failed to connect"):
        assert leak not in text, text


def test_a_503_names_no_address_and_no_grpc_text(defaults: Gateway) -> None:
    """The backend fails with grpc core's words and an address: the caller is told which
    service is unavailable; the log has the rest, with the request id."""
    response = httpx.post(
        f"{defaults.process.url}/v1/shape",
        json={"failCode": 14, "failMessage": CORE_TEXT},
        timeout=BOUND,
    )
    assert response.status_code == 503, response.text
    assert response.json() == {"code": 14, "message": f"{MIRROR} is unavailable", "details": []}
    _assert_no_internals(response.text)
    assert "10.20.30.40" not in response.text
    assert "Socket closed" not in response.text
    line = _logged(defaults.log, response.headers["x-request-id"])
    assert CORE_TEXT in line
    assert "/hms.testing.v1.MirrorService/Shape" in line


def test_a_backend_s_own_message_is_passed_on(defaults: Gateway) -> None:
    response = httpx.post(
        f"{defaults.process.url}/v1/shape",
        json={"failCode": 14, "failMessage": "down for maintenance until 18:00"},
        timeout=BOUND,
    )
    assert response.status_code == 503, response.text
    message = response.json()["message"]
    assert message == f"{MIRROR} is unavailable: down for maintenance until 18:00"


def test_an_unreachable_upstream_is_a_503_without_internals(gateway_stack: GatewayStack) -> None:
    """Static mode, the upstream a port where nothing listens: what grpc (or the mesh) says
    about the connection stays in the log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    descriptor_set = Path(__file__).resolve().parents[3] / "gen" / "hms.binpb"
    name = "gateway-hostile-static"
    process = gateway_stack.start_gateway(
        f"--descriptor-set={descriptor_set}",
        f"--upstream={MIRROR}=127.0.0.1:{closed_port}",
        "--insecure",
        "--default-timeout=5",
        name=name,
    )
    try:
        response = httpx.get(f"{process.url}/v1/shelves/s1/books/b1", timeout=BOUND)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["code"] == 14
        assert MIRROR in body["message"]
        _assert_no_internals(response.text)
        assert str(closed_port) not in response.text
        log = gateway_stack.base / "logs" / f"{name}.log"
        line = _logged(log, response.headers["x-request-id"])
        assert "UNAVAILABLE" in line
    finally:
        process.stop(timeout=5)
