"""The gateway's trace of each request, in process: the Gateway app in front of a real mesh
channel and the mirror backend on a loopback grpc.aio server behind the service's trace
interceptor. Every answer names the trace in ``traceparent`` (errors too), the backend call
carries it, with span export off (the default) and on (a SERVER span per request)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hms.testing.v1 import mirror_pb2, mirror_pb2_grpc
from hms_gateway.app import Gateway
from hms_gateway.config import GatewayConfig
from hms_gateway.endpoint import endpoints_of
from hms_gateway.ratelimit import RateLimit
from hms_gateway.routes import RouteTable
from hms_gateway.tracing import NO_TRACING, RequestTracer, Tracing
from mesh.client import ClientConfig, MeshChannel
from mesh.registry.keys import Instance
from mesh.telemetry import tracing_server_interceptors
from tests.backends.mirror.service import MirrorService

MIRROR = "hms.testing.v1.MirrorService"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{CALLER_SPAN}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture
async def channel() -> AsyncIterator[MeshChannel]:
    server = grpc.aio.server(interceptors=tracing_server_interceptors(False))
    mirror_pb2_grpc.add_MirrorServiceServicer_to_server(MirrorService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    instance = Instance(
        service=MIRROR, instance_id="m1", address=f"127.0.0.1:{port}", deployment="mirror"
    )
    config = ClientConfig(
        etcd=(),
        upstreams={MIRROR: (instance,)},
        probe_connectivity=False,
        watch_health=False,
        rotation_check=0,
    )
    mesh = await MeshChannel.connect(config)
    try:
        yield mesh
    finally:
        await mesh.close()
        await server.stop(None)


def _gateway(channel: MeshChannel, tracing: Tracing = NO_TRACING, **config: Any) -> Gateway:
    table = RouteTable()
    table.set_service(MIRROR, endpoints_of(mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]))
    return Gateway(GatewayConfig(**config), table, channel, tracing=tracing)


async def _get(gateway: Gateway, method: str, url: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, url, **kwargs)


@dataclass(frozen=True)
class Parent:
    trace_id: str
    span_id: str
    flags: str

    @classmethod
    def of(cls, value: str) -> Parent:
        match = TRACEPARENT.fullmatch(value)
        assert match is not None, f"not a traceparent: {value!r}"
        return cls(*match.groups())


def _backend_saw(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    (sent,) = [e["value"] for e in response.json()["metadata"] if e["key"] == "traceparent"]
    return str(sent)


async def test_the_callers_trace_goes_on_with_a_span_of_the_gateways(
    channel: MeshChannel,
) -> None:
    response = await _get(_gateway(channel), "GET", "/v1/items/a", headers={"traceparent": CALLER})
    answered = Parent.of(response.headers["traceparent"])
    assert (answered.trace_id, answered.flags) == (TRACE, "01")
    assert answered.span_id != CALLER_SPAN
    # The backend call's parent is the span the answer names.
    assert _backend_saw(response) == response.headers["traceparent"]


async def test_the_callers_tracestate_goes_on(channel: MeshChannel) -> None:
    headers = {"traceparent": CALLER, "tracestate": "vendor=v1"}
    response = await _get(_gateway(channel), "GET", "/v1/items/a", headers=headers)
    seen = {e["key"]: e["value"] for e in response.json()["metadata"]}
    assert seen["tracestate"] == "vendor=v1"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="none"),
        pytest.param([("traceparent", CALLER.upper())], id="invalid"),
        pytest.param([("traceparent", f"00-{'0' * 32}-{CALLER_SPAN}-01")], id="zero-trace"),
        pytest.param([("traceparent", CALLER), ("traceparent", CALLER)], id="sent-twice"),
    ],
)
async def test_without_a_usable_trace_the_gateway_starts_one(
    channel: MeshChannel, headers: list[tuple[str, str]]
) -> None:
    gateway = _gateway(channel)
    first = await _get(gateway, "GET", "/v1/items/a", headers=headers)
    second = await _get(gateway, "GET", "/v1/items/a", headers=headers)
    traces = {Parent.of(r.headers["traceparent"]).trace_id for r in (first, second)}
    assert len(traces) == 2  # a new one each time
    assert TRACE not in traces
    assert Parent.of(first.headers["traceparent"]).flags == "01"  # sampled: a new trace
    assert _backend_saw(first) == first.headers["traceparent"]


@pytest.mark.parametrize(
    ("method", "url", "options", "status"),
    [
        pytest.param("GET", "/v1/nowhere", {}, 404, id="no-route"),
        pytest.param("DELETE", "/v1/items/a", {}, 405, id="method-not-allowed"),
        pytest.param("POST", "/v1/shape", {"content": b"{oops"}, 400, id="bad-json"),
        pytest.param("POST", "/v1/shape", {"json": {"failCode": 14}}, 503, id="backend-5xx"),
        pytest.param("POST", "/v1/shape", {"json": {"failCode": 5}}, 404, id="backend-4xx"),
        pytest.param("GET", "/healthz", {}, 200, id="probe"),
    ],
)
async def test_every_answer_names_the_trace(
    channel: MeshChannel, method: str, url: str, options: dict[str, Any], status: int
) -> None:
    headers = {"traceparent": CALLER}
    response = await _get(_gateway(channel), method, url, headers=headers, **options)
    assert response.status_code == status
    assert Parent.of(response.headers["traceparent"]).trace_id == TRACE


async def test_a_rate_limited_answer_names_the_trace(channel: MeshChannel) -> None:
    gateway = _gateway(channel, rate_limit=RateLimit(rate=0.001, burst=1))
    await _get(gateway, "GET", "/v1/items/a")
    refused = await _get(gateway, "GET", "/v1/items/a", headers={"traceparent": CALLER})
    assert refused.status_code == 429
    assert Parent.of(refused.headers["traceparent"]).trace_id == TRACE


# -- tracing on: a SERVER span per request ------------------------------------------------


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


async def test_with_tracing_on_the_answer_names_the_requests_span(
    channel: MeshChannel, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    gateway = _gateway(channel, RequestTracer(provider))
    response = await _get(gateway, "GET", "/v1/items/a", headers={"traceparent": CALLER})
    span = _only_span(exporter)
    assert span.name == "GET /v1/items/{id}"
    assert span.kind is trace.SpanKind.SERVER
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/items/{id}"
    assert span.attributes["http.response.status_code"] == 200
    answered = Parent.of(response.headers["traceparent"])
    assert (answered.trace_id, answered.span_id) == (TRACE, f"{span.context.span_id:016x}")
    assert _backend_saw(response) == response.headers["traceparent"]


@pytest.mark.parametrize(
    ("method", "url", "options", "name", "status", "error"),
    [
        pytest.param("GET", "/v1/nowhere", {}, "GET", 404, False, id="no-route"),
        pytest.param(
            "POST", "/v1/shape", {"json": {"failCode": 14}}, "POST /v1/shape", 503, True, id="5xx"
        ),
    ],
)
async def test_with_tracing_on_an_error_is_in_the_span(  # noqa: PLR0917 (a table's columns)
    channel: MeshChannel,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    method: str,
    url: str,
    options: dict[str, Any],
    name: str,
    status: int,
    error: bool,
) -> None:
    provider, exporter = spans
    gateway = _gateway(channel, RequestTracer(provider))
    response = await _get(gateway, method, url, **options)
    assert response.status_code == status
    span = _only_span(exporter)
    assert span.name == name
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is trace.StatusCode.ERROR) == error
    assert Parent.of(response.headers["traceparent"]).span_id == f"{span.context.span_id:016x}"
