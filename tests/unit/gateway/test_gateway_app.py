"""The Gateway ASGI app in process, with a fake mesh channel: the whole request pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import httpx
import pytest
from google.api import http_pb2, httpbody_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hms.testing.v1 import echo_pb2, mirror_pb2
from hms_gateway import app as app_module
from hms_gateway.app import Gateway
from hms_gateway.config import GatewayConfig
from hms_gateway.endpoint import endpoints_of
from hms_gateway.routes import RouteTable
from mesh.client.call import CallInfo, CallKind, service_of
from mesh.client.rpc import MeshCall
from mesh.resilience.retry import Idempotency
from mesh.testing import FakeRpc

from .built_services import service_with_rules

_ECHO = "hms.testing.v1.EchoService"
_MIRROR = "hms.testing.v1.MirrorService"
_ECHO_SERVICE = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
_MIRROR_SERVICE = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]

Metadata = Sequence[tuple[str, str | bytes]]


def _error(
    code: grpc.StatusCode, details: str, trailing: Metadata = (), initial: Metadata = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(*initial), grpc.aio.Metadata(*trailing), details=details
    )


Handler = Callable[[CallInfo], Awaitable[Any]]


class FakeChannel:
    """Stands in for MeshChannel: its public `call()` gives a real MeshCall, whose attempt is
    `handler` (recorded in `calls`) instead of the middleware chain."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or _echo_back
        self.calls: list[CallInfo] = []

    def call(self, method: str, request: Any, **options: Any) -> MeshCall:
        info = CallInfo(
            kind=options.pop("kind", CallKind.UNARY_UNARY),
            method=method,
            service=options.pop("service", None) or service_of(method),
            request=request,
            metadata=list(options.pop("metadata", ())),
            serializer=options.pop("serializer"),
            deserializer=options.pop("deserializer"),
            idempotency=options.pop("idempotency"),
            timeout=options.pop("timeout", None),
            version=options.pop("version", None),
        )
        assert not options, f"unexpected call options {options}"
        return MeshCall(info, self._attempt)

    async def _attempt(self, call: CallInfo) -> Any:
        self.calls.append(call)
        return await self.handler(call)


async def _echo_back(call: CallInfo) -> Any:
    call.rpc = FakeRpc()
    if isinstance(call.request, echo_pb2.EchoRequest):
        return echo_pb2.EchoResponse(message=call.request.message, served_by="fake")
    return mirror_pb2.MirrorResponse(received=call.request, method=call.method)


def _answer(response: Any, initial: Metadata = (), trailing: Metadata = ()) -> Handler:
    async def handler(call: CallInfo) -> Any:
        call.rpc = FakeRpc(initial=initial, trailing=trailing)
        return response

    return handler


def _fail(error: BaseException) -> Handler:
    async def handler(call: CallInfo) -> Any:
        raise error

    return handler


def _stream(stream: FakeRpc) -> Handler:
    async def handler(call: CallInfo) -> Any:
        return stream

    return handler


def _table() -> RouteTable:
    table = RouteTable()
    table.set_service(_ECHO, endpoints_of(_ECHO_SERVICE))
    table.set_service(_MIRROR, endpoints_of(_MIRROR_SERVICE))
    return table


def _gateway(
    channel: FakeChannel,
    config: GatewayConfig | None = None,
    table: RouteTable | None = None,
    **kwargs: Any,
) -> Gateway:
    return Gateway(config or GatewayConfig(), table or _table(), channel, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


async def _client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gw"
    ) as client:
        yield client


@pytest.fixture
async def client(channel: FakeChannel) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(_gateway(channel)):
        yield c


async def _request(gateway: Gateway, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async for c in _client(gateway):
        return await c.request(method, url, **kwargs)
    raise AssertionError("unreachable")


def _status(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    return body


# -- unary ----------------------------------------------------------------------------------


async def test_unary_ok(client: httpx.AsyncClient, channel: FakeChannel) -> None:
    response = await client.post("/v1/echo", json={"message": "hi"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "message": "hi",
        "servedBy": "fake",
        "deadlineLeftMs": "0",
        "previousAttempts": 0,
        "hops": [],
        "pid": 0,
    }
    (call,) = channel.calls
    assert call.kind is CallKind.UNARY_UNARY
    assert call.method == f"/{_ECHO}/Echo"
    assert call.service == _ECHO
    assert call.request == echo_pb2.EchoRequest(message="hi")
    assert call.idempotency is Idempotency.IDEMPOTENT
    assert call.timeout == 30.0
    assert call.serializer is not None
    assert call.serializer(call.request) == call.request.SerializeToString()
    metadata = dict(call.metadata)
    assert metadata["x-forwarded-host"] == "gw"
    assert re.fullmatch(r"[0-9a-f]{32}", str(metadata["x-request-id"]))


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "expected_request"),
    [
        pytest.param(
            "GET",
            "/v1/shelves/s1/books/b1",
            {},
            mirror_pb2.MirrorRequest(name="shelves/s1/books/b1"),
            id="path-variable",
        ),
        pytest.param(
            "GET",
            "/v1/shelves/s2/books?int32Value=7&tags=a&tags=b",
            {},
            mirror_pb2.MirrorRequest(shelf="s2", int32_value=7, tags=["a", "b"]),
            id="query",
        ),
        pytest.param(
            "POST",
            "/v1/shelves/s3/books",
            {"json": {"title": "T"}},
            mirror_pb2.MirrorRequest(parent="shelves/s3", book=mirror_pb2.Book(title="T")),
            id="body-field",
        ),
    ],
)
async def test_unary_transcodes_request(  # noqa: PLR0917 (one parameter per table column)
    client: httpx.AsyncClient,
    channel: FakeChannel,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    expected_request: mirror_pb2.MirrorRequest,
) -> None:
    response = await client.request(method, url, **kwargs)
    assert response.status_code == 200, response.text
    assert channel.calls[0].request == expected_request
    assert response.json()["method"] == channel.calls[0].method


@pytest.mark.parametrize(
    ("header", "timeout"),
    [
        pytest.param(None, 30.0, id="default"),
        pytest.param("2S", 2.0, id="from-header"),
        pytest.param("250m", 0.25, id="millis"),
        pytest.param("10H", 300.0, id="capped-at-max"),
    ],
)
async def test_timeout(
    client: httpx.AsyncClient, channel: FakeChannel, header: str | None, timeout: float
) -> None:
    headers = {} if header is None else {"Grpc-Timeout": header}
    response = await client.post("/v1/echo", json={}, headers=headers)
    assert response.status_code == 200
    assert channel.calls[0].timeout == timeout


async def test_bad_timeout_is_400(client: httpx.AsyncClient, channel: FakeChannel) -> None:
    response = await client.post("/v1/echo", json={}, headers={"Grpc-Timeout": "1.5S"})
    assert response.status_code == 400
    assert "grpc-timeout" in _status(response)["message"]
    assert channel.calls == []


async def test_raw_http_body_response() -> None:
    body = httpbody_pb2.HttpBody(content_type="text/plain", data=b"hello")
    response = await _request(_gateway(FakeChannel(_answer(body))), "GET", "/v1/downloads/readme")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.content == b"hello"


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain\r\nx-evil: 1", id="header-injection"),
        pytest.param("text/plain\n", id="newline"),
        pytest.param("text/plain; name=\u00e9", id="non-ascii"),
    ],
)
async def test_http_body_bad_content_type_is_502(content_type: str) -> None:
    body = httpbody_pb2.HttpBody(content_type=content_type, data=b"hello")
    response = await _request(_gateway(FakeChannel(_answer(body))), "GET", "/v1/downloads/readme")
    assert response.status_code == 502
    status = _status(response)
    assert status["code"] == grpc.StatusCode.INTERNAL.value[0]
    assert f"/{_MIRROR}/Download" in status["message"]
    assert "x-evil" not in response.headers
    assert b"hello" not in response.content


async def test_bad_json_is_400(client: httpx.AsyncClient, channel: FakeChannel) -> None:
    response = await client.post(
        "/v1/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert _status(response)["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert channel.calls == []


# -- backend errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "http", "message"),
    [
        pytest.param(
            grpc.StatusCode.NOT_FOUND, "no such book", 404, "no such book", id="not-found"
        ),
        pytest.param(grpc.StatusCode.INVALID_ARGUMENT, "bad", 400, "bad", id="invalid-argument"),
        pytest.param(
            grpc.StatusCode.FAILED_PRECONDITION, "state", 400, "state", id="failed-precondition"
        ),
        pytest.param(grpc.StatusCode.PERMISSION_DENIED, "no", 403, "no", id="permission-denied"),
        pytest.param(
            grpc.StatusCode.DEADLINE_EXCEEDED, "slow", 504, "slow", id="deadline-exceeded"
        ),
        pytest.param(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", 429, "quota", id="resource-exhausted"
        ),
        pytest.param(grpc.StatusCode.INTERNAL, "oops", 500, "oops", id="internal"),
        pytest.param(
            grpc.StatusCode.UNAVAILABLE,
            "down for maintenance",
            503,
            f"{_ECHO} is unavailable: down for maintenance",
            id="unavailable-prefixed",
        ),
        pytest.param(
            grpc.StatusCode.UNAVAILABLE,
            f"no ready instance of {_ECHO}: 2 ejected",
            503,
            f"no ready instance of {_ECHO}: 2 ejected",
            id="unavailable-already-named",
        ),
        pytest.param(
            grpc.StatusCode.UNAVAILABLE,
            "",
            503,
            f"{_ECHO} is unavailable: ",
            id="unavailable-empty",
        ),
        pytest.param(
            grpc.StatusCode.NOT_FOUND,
            f"{_ECHO} is not the point",
            404,
            f"{_ECHO} is not the point",
            id="only-unavailable-prefixed",
        ),
    ],
)
async def test_backend_error(code: grpc.StatusCode, details: str, http: int, message: str) -> None:
    gateway = _gateway(FakeChannel(_fail(_error(code, details))))
    response = await _request(gateway, "POST", "/v1/echo", json={"message": "x"})
    assert response.status_code == http
    assert _status(response) == {"code": code.value[0], "message": message, "details": []}


# What grpc's core (either side) or the mesh says about the plumbing, as the attack saw it.
_WITHHELD = [
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:44161: "
        "Failed to connect to remote host: Connection refused",
        503,
        f"{_ECHO} is unavailable",
        id="connect-refused-ipv4",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv6:%5B::1%5D:7001: "
        "Socket closed",
        503,
        f"{_ECHO} is unavailable",
        id="connect-socket-closed-ipv6",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "Stream removed (Socket closed)",
        503,
        f"{_ECHO} is unavailable",
        id="backend-died-mid-call",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "/hms.testing.v1.EchoService/Echo: the channel to 10.0.0.5:7001 closed with the call "
        "in flight; no answer came",
        503,
        f"{_ECHO} is unavailable",
        id="mesh-message-with-an-address",
    ),
    pytest.param(
        grpc.StatusCode.UNAVAILABLE,
        "connect to [fd00::5]:7001 failed",
        503,
        f"{_ECHO} is unavailable",
        id="bracketed-ipv6",
    ),
    pytest.param(
        grpc.StatusCode.UNKNOWN,
        "Exception calling application: could not reach db at db.internal:5432",
        500,
        f"the call to {_ECHO} failed (UNKNOWN)",
        id="python-server-core-exception",
    ),
    pytest.param(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max (5000000 vs. 4194304)",
        429,
        f"the call to {_ECHO} failed (RESOURCE_EXHAUSTED)",
        id="message-too-large",
    ),
    pytest.param(
        grpc.StatusCode.INTERNAL,
        "Received RST_STREAM with error code 2",
        500,
        f"the call to {_ECHO} failed (INTERNAL)",
        id="rst-stream",
    ),
    pytest.param(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "Deadline Exceeded",
        504,
        f"{_ECHO} did not answer within the deadline",
        id="core-deadline",
    ),
    pytest.param(
        grpc.StatusCode.CANCELLED,
        "Cancelled",
        499,
        f"the call to {_ECHO} was cancelled",
        id="core-cancelled",
    ),
]


@pytest.mark.parametrize(("code", "details", "http", "message"), _WITHHELD)
async def test_transport_error_text_is_withheld_and_logged(
    code: grpc.StatusCode,
    details: str,
    http: int,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No address and no grpc core text in the body; the original goes to the log with the
    request id the answer carries."""
    gateway = _gateway(FakeChannel(_fail(_error(code, details))))
    with caplog.at_level(logging.WARNING, logger=app_module.__name__):
        response = await _request(gateway, "POST", "/v1/echo", json={"message": "x"})
    assert response.status_code == http
    assert _status(response) == {"code": code.value[0], "message": message, "details": []}
    request_id = response.headers["x-request-id"]
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1, caplog.text
    assert details in logged[0]
    assert "/hms.testing.v1.EchoService/Echo" in logged[0]


async def test_withheld_message_keeps_the_backend_details() -> None:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromSeconds(3)
    status = status_pb2.Status(code=14, message="x")
    status.details.add().Pack(info)
    failure = _error(
        grpc.StatusCode.UNAVAILABLE,
        "Stream removed (Socket closed)",
        trailing=[("grpc-status-details-bin", status.SerializeToString())],
    )
    gateway = _gateway(FakeChannel(_fail(failure)))
    response = await _request(gateway, "POST", "/v1/echo", json={"message": "x"})
    body = _status(response)
    assert body["message"] == f"{_ECHO} is unavailable"
    assert body["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    ]


async def test_a_backend_message_for_a_4xx_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    gateway = _gateway(FakeChannel(_fail(_error(grpc.StatusCode.NOT_FOUND, "no such book"))))
    with caplog.at_level(logging.WARNING, logger=app_module.__name__):
        response = await _request(gateway, "POST", "/v1/echo", json={"message": "x"})
    assert response.status_code == 404
    assert caplog.records == []


async def test_stream_error_midway_is_withheld_too() -> None:
    items = [*_replies(1), _error(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)")]
    response = await _request(_gateway(FakeChannel(_stream(FakeRpc(items)))), "GET", "/v1/stream")
    assert _lines(response)[-1] == {
        "error": {"code": 14, "message": f"{_MIRROR} is unavailable", "details": []}
    }


async def test_error_details_from_trailer() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(field="message", description="empty")
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=3, message="invalid", details=[detail])
    error = _error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid",
        trailing=[("grpc-status-details-bin", status.SerializeToString()), ("cost", "3")],
        initial=[("etag", "7")],
    )
    response = await _request(_gateway(FakeChannel(_fail(error))), "POST", "/v1/echo", json={})
    assert response.status_code == 400
    assert _status(response) == {
        "code": 3,
        "message": "invalid",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                # Unpopulated fields too, the message-typed one null, as grpc-gateway's default
                # marshaler writes the Status (protojson EmitUnpopulated).
                "fieldViolations": [
                    {
                        "field": "message",
                        "description": "empty",
                        "reason": "",
                        "localizedMessage": None,
                    }
                ],
            }
        ],
    }
    assert response.headers["grpc-metadata-etag"] == "7"
    assert response.headers["grpc-trailer-cost"] == "3"
    assert not any("status-details" in name for name in response.headers)


async def test_undecodable_error_details_are_dropped() -> None:
    error = _error(
        grpc.StatusCode.INTERNAL,
        "broken",
        trailing=[("grpc-status-details-bin", b"\xff\xff not a status")],
    )
    response = await _request(_gateway(FakeChannel(_fail(error))), "POST", "/v1/echo", json={})
    assert response.status_code == 500
    assert _status(response) == {"code": 13, "message": "broken", "details": []}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError("secret at /srv/internal.py"), id="a-bug"),
        # grpc.aio's, when a channel closes under a call: not a cancellation of the request.
        pytest.param(asyncio.CancelledError("secret channel closed"), id="stray-cancelled-error"),
    ],
)
async def test_unexpected_exception_is_500_without_internals(
    caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    gateway = _gateway(FakeChannel(_fail(error)))
    with caplog.at_level(logging.ERROR, logger="hms_gateway.app"):
        response = await _request(
            gateway, "POST", "/v1/echo", json={}, headers={"X-Request-Id": "req-500"}
        )
    assert response.status_code == 500
    assert _status(response) == {
        "code": grpc.StatusCode.INTERNAL.value[0],
        "message": "internal error in the gateway (request id req-500)",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.RequestInfo",
                "requestId": "req-500",
                "servingData": "",
            }
        ],
    }
    assert b"Traceback" not in response.content
    assert b"secret" not in response.content
    assert type(error).__name__.encode() not in response.content
    assert response.headers["x-request-id"] == "req-500"
    (record,) = caplog.records  # logged once
    assert "req-500" in record.getMessage()
    assert record.exc_info is not None
    assert gateway.metrics.unexpected._value.get() == 1
    metrics = (await _request(gateway, "GET", "/metrics")).text
    assert "gateway_unexpected_errors_total 1.0" in metrics
    assert 'status="500"' in metrics


async def test_the_servers_own_cancellation_is_not_answered() -> None:
    """uvicorn cancelling a request task (at shutdown) is passed on, not turned into a 500."""
    started = asyncio.Event()

    async def hang(call: CallInfo) -> Any:
        started.set()
        await asyncio.Event().wait()

    gateway = _gateway(FakeChannel(hang))
    request = asyncio.create_task(_request(gateway, "POST", "/v1/echo", json={}))
    await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert gateway.metrics.unexpected._value.get() == 0


# -- response metadata ----------------------------------------------------------------------


async def test_response_metadata_headers() -> None:
    handler = _answer(
        echo_pb2.EchoResponse(message="m"),
        initial=[("etag", "7"), ("sig-bin", b"\x01\x02"), ("grpc-internal", "x")],
        trailing=[("cost", "3"), ("bad key", "x")],
    )
    response = await _request(_gateway(FakeChannel(handler)), "POST", "/v1/echo", json={})
    assert response.status_code == 200
    assert response.headers["grpc-metadata-etag"] == "7"
    assert response.headers["grpc-metadata-sig-bin"] == "AQI="
    assert response.headers["grpc-trailer-cost"] == "3"
    assert "grpc-metadata-grpc-internal" not in response.headers
    assert response.json()["message"] == "m"


@pytest.mark.parametrize(
    ("code", "status", "has_body"),
    [
        pytest.param("201", 201, True, id="created"),
        pytest.param("202", 202, True, id="accepted"),
        pytest.param("204", 204, False, id="no-content"),
        pytest.param("404", 200, True, id="not-2xx-ignored"),
        pytest.param("abc", 200, True, id="garbage-ignored"),
    ],
)
async def test_x_http_code(code: str, status: int, has_body: bool) -> None:
    handler = _answer(echo_pb2.EchoResponse(message="m"), initial=[("x-http-code", code)])
    response = await _request(_gateway(FakeChannel(handler)), "POST", "/v1/echo", json={})
    assert response.status_code == status
    assert "grpc-metadata-x-http-code" not in response.headers
    assert bool(response.content) is has_body


# -- request id -----------------------------------------------------------------------------


async def test_request_id_created(client: httpx.AsyncClient, channel: FakeChannel) -> None:
    first = await client.post("/v1/echo", json={})
    second = await client.post("/v1/echo", json={})
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]
    assert [dict(c.metadata)["x-request-id"] for c in channel.calls] == ids


@pytest.mark.parametrize(
    ("method", "url"),
    [
        pytest.param("POST", "/v1/echo", id="call"),
        pytest.param("GET", "/v1/nothing", id="error"),
        pytest.param("GET", "/healthz", id="operation"),
    ],
)
async def test_request_id_passed_through(
    client: httpx.AsyncClient, channel: FakeChannel, method: str, url: str
) -> None:
    response = await client.request(method, url, headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    for call in channel.calls:
        assert dict(call.metadata)["x-request-id"] == "abc-123"


# -- routing and refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "status", "code", "allow"),
    [
        pytest.param("GET", "/v1/nothing", 404, 5, None, id="no-route"),
        pytest.param("POST", "/healthz", 404, 5, None, id="operation-only-get"),
        pytest.param("GET", "/v1/echo", 405, 12, "POST", id="get-on-post"),
        pytest.param(
            "PUT", "/v1/shelves/s/books/b", 405, 12, "DELETE, GET, PATCH", id="allow-list"
        ),
        pytest.param("POST", "/v1/echo:collect", 501, 12, None, id="client-streaming"),
        pytest.param("POST", "/v1/gather", 501, 12, None, id="client-streaming-mirror"),
        pytest.param("GET", "/v1/items/%zz", 400, 3, None, id="bad-path"),
    ],
)
async def test_refused(  # noqa: PLR0917 (one parameter per table column)
    client: httpx.AsyncClient,
    channel: FakeChannel,
    method: str,
    url: str,
    status: int,
    code: int,
    allow: str | None,
) -> None:
    response = await client.request(method, url, content=b"{}")
    assert response.status_code == status
    assert _status(response)["code"] == code
    assert response.headers.get("allow") == allow
    assert channel.calls == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b'{"a":"b"}', 200, id="under"),
        pytest.param(b'{"m":"12"}', 200, id="exactly-at-limit"),
        pytest.param(b'{"m":"123"}', 413, id="one-over"),
        pytest.param(b"x" * 1000, 413, id="far-over"),
    ],
)
async def test_body_limit(body: bytes, status: int) -> None:
    channel = FakeChannel()
    gateway = _gateway(channel, GatewayConfig(body_limit=10))
    response = await _request(gateway, "POST", "/v1/echo", content=body)
    assert response.status_code == status
    if status == 413:
        assert _status(response) == {
            "code": grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            "message": "request body is larger than the limit of 10 bytes",
            "details": [],
        }
        assert channel.calls == []


async def test_body_limit_streamed_body() -> None:
    """Without Content-Length the limit holds while the body is read."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"abcd"

    channel = FakeChannel()
    gateway = _gateway(channel, GatewayConfig(body_limit=10))
    response = await _request(gateway, "POST", "/v1/echo", content=chunks())
    assert response.status_code == 413
    assert channel.calls == []


# -- server streaming -----------------------------------------------------------------------


def _replies(count: int) -> list[mirror_pb2.MirrorResponse]:
    return [mirror_pb2.MirrorResponse(index=i, method="m") for i in range(count)]


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.content.endswith(b"\n")
    return [json.loads(line) for line in response.content.decode().splitlines()]


async def test_stream_ndjson() -> None:
    stream = FakeRpc([*_replies(2), grpc.aio.EOF], initial=[("etag", "1")])
    channel = FakeChannel(_stream(stream))
    response = await _request(_gateway(channel), "GET", "/v1/stream?count=2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["grpc-metadata-etag"] == "1"
    lines = _lines(response)
    assert [line["result"]["index"] for line in lines] == [0, 1]
    assert all(set(line) == {"result"} for line in lines)
    (call,) = channel.calls
    assert call.kind is CallKind.UNARY_STREAM
    assert call.request == mirror_pb2.MirrorRequest(count=2)


async def test_stream_empty() -> None:
    channel = FakeChannel(_stream(FakeRpc([])))
    response = await _request(_gateway(channel), "GET", "/v1/stream")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param("text/event-stream", id="plain"),
        pytest.param("application/json, text/event-stream;q=0.9", id="in-list"),
    ],
)
async def test_stream_sse(accept: str) -> None:
    channel = FakeChannel(_stream(FakeRpc(_replies(2))))
    response = await _request(_gateway(channel), "GET", "/v1/stream", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    frames = response.content.decode().split("\n\n")
    assert frames[-1] == ""
    assert [json.loads(f.removeprefix("data: "))["result"]["index"] for f in frames[:-1]] == [
        0,
        1,
    ]


@pytest.mark.parametrize(
    ("accept", "expected_tail"),
    [
        pytest.param(
            None,
            b'{"error":{"code":13,"message":"boom","details":[]}}\n',
            id="ndjson",
        ),
        pytest.param(
            "text/event-stream",
            b'event: error\ndata: {"error":{"code":13,"message":"boom","details":[]}}\n\n',
            id="sse",
        ),
    ],
)
async def test_stream_error_mid_stream(accept: str | None, expected_tail: bytes) -> None:
    items = [*_replies(1), _error(grpc.StatusCode.INTERNAL, "boom")]
    channel = FakeChannel(_stream(FakeRpc(items)))
    headers = {} if accept is None else {"Accept": accept}
    response = await _request(_gateway(channel), "GET", "/v1/stream", headers=headers)
    assert response.status_code == 200  # already sent when the error came
    assert response.content.endswith(expected_tail)
    assert response.content.count(b'"result"') == 1


async def test_stream_mid_stream_unavailable_is_named() -> None:
    items = [*_replies(1), _error(grpc.StatusCode.UNAVAILABLE, "gone")]
    response = await _request(_gateway(FakeChannel(_stream(FakeRpc(items)))), "GET", "/v1/stream")
    assert _lines(response)[-1] == {
        "error": {"code": 14, "message": f"{_MIRROR} is unavailable: gone", "details": []}
    }


async def test_stream_error_before_first_message_is_plain() -> None:
    stream = FakeRpc([_error(grpc.StatusCode.NOT_FOUND, "no stream")])
    response = await _request(_gateway(FakeChannel(_stream(stream))), "GET", "/v1/stream")
    assert response.status_code == 404
    assert _status(response) == {"code": 5, "message": "no stream", "details": []}


async def test_stream_invoke_error_is_mapped() -> None:
    """The mesh channel refuses a server-streaming call at invoke (no ready instance)."""
    error = _error(grpc.StatusCode.UNAVAILABLE, f"no ready instance of {_MIRROR}: none")
    response = await _request(_gateway(FakeChannel(_fail(error))), "GET", "/v1/stream")
    assert response.status_code == 503
    assert _status(response) == {
        "code": 14,
        "message": f"no ready instance of {_MIRROR}: none",
        "details": [],
    }


# -- operations -----------------------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("ready", "status", "body"),
    [
        pytest.param(True, 200, {"status": "ready", "services": [_ECHO, _MIRROR]}, id="ready"),
        pytest.param(False, 503, {"status": "starting"}, id="not-ready"),
    ],
)
async def test_readyz(ready: bool, status: int, body: dict[str, Any]) -> None:
    gateway = _gateway(FakeChannel(), ready=lambda: ready)
    response = await _request(gateway, "GET", "/readyz")
    assert response.status_code == status
    assert response.json() == body


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/v1/echo", json={})
    await client.get("/v1/nothing")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "gateway_requests_total" in text
    assert f'gateway_requests_total{{method="Echo",service="{_ECHO}",status="200"}} 1.0' in text
    assert 'gateway_requests_total{method="",service="",status="404"} 1.0' in text
    assert "gateway_request_seconds_bucket" in text


async def test_openapi_cached_until_table_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    real = app_module.build_openapi

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "build_openapi", counting)
    table = RouteTable()
    table.set_service(_ECHO, endpoints_of(_ECHO_SERVICE))
    gateway = _gateway(FakeChannel(), table=table)
    async for client in _client(gateway):
        first = await client.get("/openapi.json")
        second = await client.get("/openapi.json")
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        assert len(built) == 1
        paths = first.json()["paths"]
        assert "/v1/echo" in paths
        assert "/v1/items/{id}" not in paths

        table.set_service(_MIRROR, endpoints_of(_MIRROR_SERVICE))
        third = await client.get("/openapi.json")
        assert len(built) == 2
        assert "/v1/items/{id}" in third.json()["paths"]
        await client.get("/openapi.json")
        assert len(built) == 2

        table.drop_service(_MIRROR)
        fourth = await client.get("/openapi.json")
        assert "/v1/items/{id}" not in fourth.json()["paths"]
        assert len(built) == 3


async def test_lifespan() -> None:
    gateway = _gateway(FakeChannel())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await gateway({"type": "lifespan"}, receive, send)
    assert sent == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


async def test_routes_lists_what_is_served_and_what_was_refused() -> None:
    gateway = _gateway(FakeChannel())
    shadow = service_with_rules("hms.shadow.v1.Shadow", {"Get": http_pb2.HttpRule(post="/v1/echo")})
    gateway.table.set_service("hms.shadow.v1.Shadow", list(endpoints_of(shadow)))
    body = (await _request(gateway, "GET", "/routes")).json()
    assert {"method": "POST", "template": "/v1/echo", "rpc": f"/{_ECHO}/Echo"} in body["services"][
        _ECHO
    ]
    (refused,) = body["refused"]
    assert (refused["service"], refused["owner"], refused["template"]) == (
        "hms.shadow.v1.Shadow", _ECHO, "/v1/echo",
    )  # fmt: skip
    assert refused["why"].endswith("which has it already")


# -- version pins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "headers", "pinned"),
    [
        ((), {}, None),
        ((("/v1/", ">=1 <2"),), {}, ">=1 <2"),
        # The longest prefix wins; another prefix binds nothing.
        ((("/v1/", "^1"), ("/v1/echo", "=1.4.0")), {}, "=1.4.0"),
        ((("/v2/", ">=2"),), {}, None),
        # The client's own header wins over the route's binding.
        ((("/v1/", "^1"),), {"X-Hms-Version": "~1.3"}, "~1.3"),
        ((), {"X-Hms-Version": "0.2.0"}, "0.2.0"),
    ],
)
async def test_the_versions_a_call_may_go_to(
    channel: FakeChannel,
    routes: tuple[tuple[str, str], ...],
    headers: dict[str, str],
    pinned: str | None,
) -> None:
    gateway = _gateway(channel, GatewayConfig(version_routes=routes))
    response = await _request(gateway, "POST", "/v1/echo", json={"message": "hi"}, headers=headers)
    assert response.status_code == 200
    (call,) = channel.calls
    assert dict(call.metadata).get("x-hms-version") == pinned


@pytest.mark.parametrize(
    ("routes", "message"),
    [((("v1/", ">=1"),), "starts with /"), ((("/v1/", ">=x"),), "not a version")],
)
def test_a_bad_version_route_is_refused(routes: tuple[tuple[str, str], ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GatewayConfig(version_routes=routes)
