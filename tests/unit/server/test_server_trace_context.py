"""Trace context with tracing off, on a real grpc.aio server on loopback: the mesh channel
sends the current trace, the service's trace interceptor makes it current for the handler
(or starts a trace), and a handler's own calls carry it on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from mesh import tracecontext
from mesh.client import ClientConfig, MeshChannel
from mesh.registry.keys import Instance
from mesh.telemetry import TraceContextInterceptor, tracing_server_interceptors
from mesh.tracecontext import current_traceparent, parse_traceparent

SERVICE = "test.Trace"
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _received(context: Any) -> list[str]:
    return [v for k, v in context.invocation_metadata() or () if k == "traceparent"]


def _answer(context: Any) -> bytes:
    """The traceparents the call came with, then the handler's current one, "|"-joined."""
    return "|".join([",".join(_received(context)), current_traceparent()]).encode()


@dataclass
class Hop:
    """What one handler saw: the traceparent(s) it was sent, and its current one."""

    received: list[str]
    current: str

    @classmethod
    def of(cls, answer: bytes) -> Hop:
        received, current = answer.decode().split("|")
        return cls([r for r in received.split(",") if r], current)

    @property
    def trace_id(self) -> str:
        return self.current.split("-")[1]


def _config(port: int, *, tracing: bool = False) -> ClientConfig:
    instance = Instance(
        service=SERVICE, instance_id="i1", address=f"127.0.0.1:{port}", deployment="trace"
    )
    return ClientConfig(
        etcd=(),
        upstreams={SERVICE: (instance,)},
        probe_connectivity=False,
        watch_health=False,
        rotation_check=0,
        tracing=tracing,
    )


@dataclass
class Server:
    port: int
    channel: MeshChannel  # the handlers' own, for Forward


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """`Seen` answers what it saw; `Forward` calls `Seen` through its own mesh channel and
    answers both; `SeenStream` is `Seen` as an async generator."""
    grpc_server = grpc.aio.server(interceptors=tracing_server_interceptors(False))
    holder: list[MeshChannel] = []

    async def seen(_request: bytes, context: Any) -> bytes:
        return _answer(context)

    async def seen_stream(_request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield _answer(context)

    async def forward(_request: bytes, context: Any) -> bytes:
        onward = await holder[0].unary_unary(f"/{SERVICE}/Seen")(b"", timeout=5)
        return _answer(context) + b"#" + onward

    handlers = {
        "Seen": grpc.unary_unary_rpc_method_handler(seen),
        "SeenStream": grpc.unary_stream_rpc_method_handler(seen_stream),
        "Forward": grpc.unary_unary_rpc_method_handler(forward),
    }
    grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = await MeshChannel.connect(_config(port))
    holder.append(channel)
    try:
        yield Server(port, channel)
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[MeshChannel]:
    channel = await MeshChannel.connect(_config(server.port))
    try:
        yield channel
    finally:
        await channel.close()


async def _call(channel: Any, method: str, **options: Any) -> Hop:
    return Hop.of(await channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=5, **options))


def _in_trace(traceparent: str) -> object:
    context = parse_traceparent(traceparent)
    assert context is not None
    return tracecontext.attach(context)


def test_without_tracing_services_run_the_trace_context_interceptor() -> None:
    (interceptor,) = tracing_server_interceptors(False)
    assert isinstance(interceptor, TraceContextInterceptor)


async def test_the_callers_trace_is_current_in_the_handler(client: MeshChannel) -> None:
    token = _in_trace(CALLER)
    try:
        hop = await _call(client, "Seen")
    finally:
        tracecontext.detach(token)
    assert hop.received == [CALLER]
    version, trace_id, span_id, flags = hop.current.split("-")
    assert (version, trace_id, flags) == ("00", CALLER.split("-")[1], "01")
    assert span_id != CALLER.split("-")[2]  # the handler's own span id


async def test_a_streaming_handler_has_it_too(client: MeshChannel) -> None:
    token = _in_trace(CALLER)
    try:
        (answer,) = [a async for a in client.unary_stream(f"/{SERVICE}/SeenStream")(b"")]
    finally:
        tracecontext.detach(token)
    assert Hop.of(answer).trace_id == CALLER.split("-")[1]


async def test_a_call_outside_any_trace_gets_a_new_one_at_the_service(
    client: MeshChannel,
) -> None:
    first, second = await _call(client, "Seen"), await _call(client, "Seen")
    assert first.received == second.received == []
    assert tracecontext.parse_traceparent(first.current) is not None
    assert first.trace_id != second.trace_id


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param([("traceparent", "00-garbage")], id="invalid"),
        pytest.param([("traceparent", CALLER.upper())], id="upper-case"),
    ],
)
async def test_an_unusable_traceparent_starts_a_new_trace(
    server: Server, sent: list[tuple[str, str]]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as raw:
        hop = await _call(raw, "Seen", metadata=sent)
    assert parse_traceparent(hop.current) is not None
    assert hop.trace_id != CALLER.split("-")[1]


async def test_a_handlers_call_carries_its_trace_on(client: MeshChannel) -> None:
    token = _in_trace(CALLER)
    try:
        answer = await client.unary_unary(f"/{SERVICE}/Forward")(b"", timeout=5)
    finally:
        tracecontext.detach(token)
    first, second = (Hop.of(part) for part in answer.split(b"#"))
    assert first.trace_id == second.trace_id == CALLER.split("-")[1]
    # The second hop's parent is the first handler's span.
    assert second.received == [first.current]


async def test_the_current_trace_replaces_a_traceparent_the_caller_put_in(
    client: MeshChannel,
) -> None:
    forged = f"00-{'1' * 32}-{'2' * 16}-01"
    token = _in_trace(CALLER)
    try:
        hop = await _call(client, "Seen", metadata=[("traceparent", forged)])
    finally:
        tracecontext.detach(token)
    assert hop.received == [CALLER]


async def test_the_low_level_call_carries_it_too(client: MeshChannel) -> None:
    token = _in_trace(CALLER)
    try:
        call = client.call(f"/{SERVICE}/Seen", b"", serializer=None, deserializer=None, timeout=5)
        hop = Hop.of(await call)
    finally:
        tracecontext.detach(token)
    assert hop.received == [CALLER]


async def test_with_tracing_on_opentelemetrys_interceptor_sends_it_alone(server: Server) -> None:
    """No second traceparent from the channel beside the instrumentation's."""
    async with await MeshChannel.connect(_config(server.port, tracing=True)) as channel:
        assert not channel.sends_trace_context
        token = _in_trace(CALLER)
        try:
            hop = await _call(channel, "Seen")
        finally:
            tracecontext.detach(token)
    assert len(hop.received) == 1
    assert hop.received[0].split("-")[1] == CALLER.split("-")[1]
