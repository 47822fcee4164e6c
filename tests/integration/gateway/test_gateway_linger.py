"""Early answers reach clients that send their whole body before they read (docs/security.md).

A real `mesh gateway` with a 1 MiB body limit and the gate answers 413 (a body declared over
the limit) and 401 (no token) before it reads the body. urllib, httpx and curl each send the
whole 8 MiB body first; before the lingering close (gateway/protocol.py) the gateway closed at
once with the body unread, the kernel reset the connection, and urllib raised
``ConnectionResetError: [Errno 104] Connection reset by peer`` instead of returning the 413.
The linger is bounded: a client that keeps sending is cut, fast ones at the byte bound (16 MiB
dropped), slow ones at ``--linger-timeout``. Every wait is on a condition, bounded.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from hms_gateway.protocol import LINGER_BYTES

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

MIRROR = "hms.testing.v1.MirrorService"
BOUND = 20.0  # no single wait in this module lasts longer
MiB = 1 << 20
BODY_LIMIT = 1 * MiB
BODY = b"x" * (8 * MiB)
LINGER_TIMEOUT = 3.0
OPEN_ROUTE = "/v1/shape"  # public (--public): the body limit answers
GATED_ROUTE = "/v1/shelves/s1/books"  # CreateBook: the gate answers, before the body


@dataclass
class Gateway:
    url: str

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        assert parts.port is not None
        return parts.hostname, parts.port


@pytest.fixture(scope="module")
def gateway(
    gateway_stack: GatewayStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    secret_file = tmp_path_factory.mktemp("linger-keys") / "hs256.secret"
    secret_file.write_bytes(secrets.token_urlsafe(48).encode("ascii"))
    process = gateway_stack.start_gateway(
        f"--body-limit={BODY_LIMIT}",
        f"--linger-timeout={LINGER_TIMEOUT:g}",
        f"--jwt-hs256-secret-file={secret_file}",
        f"--public={MIRROR}/Shape",
        name="gateway-linger",
    )
    try:
        wait_ready(process.url, {MIRROR})
        yield Gateway(process.url)
    finally:
        process.stop(timeout=5)


# -- clients that send the whole body, then read ------------------------------------------------

Answer = tuple[int, bytes]  # status, body


def _urllib(url: str, body_path: Path) -> Answer:
    # urllib says Connection: close, and sends the body before it reads a byte.
    request = urllib.request.Request(
        url, data=BODY, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=BOUND) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _httpx(url: str, body_path: Path) -> Answer:
    response = httpx.post(
        url, content=BODY, headers={"Content-Type": "application/json"}, timeout=BOUND
    )
    return response.status_code, response.content


def _curl(*extra: str) -> Callable[[str, Path], Answer]:
    def send(url: str, body_path: Path) -> Answer:
        curl = shutil.which("curl")
        if curl is None:
            pytest.skip("curl is not installed")
        args = ["-sS", "--max-time", str(BOUND), "-H", "Content-Type: application/json"]
        args += ["--data-binary", f"@{body_path}", "-o", "-", "-w", "\n%{http_code}"]
        done = subprocess.run(
            [curl, *args, *extra, url],
            capture_output=True,
            timeout=BOUND + 5,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        content, _, status = done.stdout.rpartition(b"\n")
        return int(status), content

    return send


CLIENTS = [
    pytest.param(_urllib, id="urllib"),
    pytest.param(_httpx, id="httpx"),
    # curl asks Expect: 100-continue for a large body, and sends it only when told to (or
    # after a second): the answer can come first. `Expect:` (empty) makes it send at once.
    pytest.param(_curl(), id="curl-expect-100"),
    pytest.param(_curl("-H", "Expect:"), id="curl"),
]


@pytest.fixture(scope="module")
def body_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("linger-body") / "body.json"
    path.write_bytes(BODY)
    return path


def _status_body(content: bytes, code: int) -> dict[str, Any]:
    body = json.loads(content)
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    return dict(body)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_body_over_the_limit_reads_its_413(
    gateway: Gateway, body_path: Path, client: Callable[[str, Path], Answer]
) -> None:
    status, content = client(gateway.url + OPEN_ROUTE, body_path)
    assert status == 413, content[:300]
    assert _status_body(content, 8)["message"] == (
        f"request body is larger than the limit of {BODY_LIMIT} bytes"
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_a_large_body_without_a_token_reads_its_401(
    gateway: Gateway, body_path: Path, client: Callable[[str, Path], Answer]
) -> None:
    status, content = client(gateway.url + GATED_ROUTE, body_path)
    assert status == 401, content[:300]
    _status_body(content, 16)


def test_the_gateway_serves_on(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + OPEN_ROUTE, json={"failMessage": "hi"}, timeout=BOUND)
    assert response.status_code == 200, response.text


# -- the bounds ---------------------------------------------------------------------------------


@dataclass
class Cut:
    sent: int  # bytes sent after the head
    after: float  # seconds from the answer to the cut
    answer: bytes


def _send_until_cut(gateway: Gateway, chunk: int, every: float) -> Cut:
    """A raw client that declares 1 GiB of body and keeps sending `chunk` bytes every `every`
    seconds while it reads the answer, until the gateway cuts the connection."""
    sock = socket.create_connection(gateway.address, timeout=BOUND)
    sock.settimeout(BOUND)
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (OPEN_ROUTE.encode(), 1 << 30)
    )
    sent = [0]
    cut_at = [0.0]

    def send() -> None:
        data = b"x" * chunk
        deadline = time.monotonic() + BOUND
        try:
            while time.monotonic() < deadline:
                sock.sendall(data)
                sent[0] += len(data)
                if every:
                    time.sleep(every)
        except OSError:
            cut_at[0] = time.monotonic()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    answered_at = 0.0
    try:
        # The answer, then its end (the gateway's side shut), then the cut (a reset here).
        while data := sock.recv(65536):
            received += data
            answered_at = answered_at or time.monotonic()
        sender.join(BOUND)
    except ConnectionResetError:
        sender.join(BOUND)
    finally:
        sock.close()
    assert not sender.is_alive(), "still sending: the gateway never cut the connection"
    assert cut_at[0], f"not cut within {BOUND} s"
    assert answered_at, "no answer"
    return Cut(sent[0], cut_at[0] - answered_at, received)


def test_a_client_that_keeps_sending_fast_is_cut_at_the_byte_bound(gateway: Gateway) -> None:
    cut = _send_until_cut(gateway, 256 * 1024, every=0.0)
    assert b" 413 " in cut.answer.split(b"\r\n")[0], cut.answer[:300]
    assert cut.sent >= LINGER_BYTES
    assert cut.after < LINGER_TIMEOUT, cut  # the bytes, not the time, ended it


def test_a_client_that_keeps_sending_slowly_is_cut_at_the_time_bound(gateway: Gateway) -> None:
    cut = _send_until_cut(gateway, 16 * 1024, every=0.05)  # ~320 KiB/s, far below the bytes
    assert b" 413 " in cut.answer.split(b"\r\n")[0], cut.answer[:300]
    assert cut.sent < LINGER_BYTES
    assert LINGER_TIMEOUT - 0.5 <= cut.after < LINGER_TIMEOUT + 3.0, cut
