"""svc.trace records from both sides of a call, on a real grpc.aio server on loopback and a
mesh channel, sent to a real nats-server: a client record per attempt and a server record
per call served, one trace, each hop's parent the span before it; unsampled calls untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats as nats_py
import pytest
from nats.aio.client import Client

from hms.mesh.v1 import trace_pb2
from hms_tools.devstack import NatsProcess
from mesh import tracecontext
from mesh.client import ClientConfig, MeshChannel
from mesh.client.call import CallInfo, CallKind, service_of
from mesh.client.middleware import TraceRecordLayer
from mesh.errors import NotFound
from mesh.registry.keys import Instance
from mesh.resilience.retry import Idempotency
from mesh.server.errors import ErrorInterceptor
from mesh.server.runner import parse_args
from mesh.server.runtime import Runtime
from mesh.telemetry import ServerRecords, tracing_server_interceptors
from mesh.testing import FakeEndpoint, FakeMulticallable, eventually
from mesh.tracerecords import SIDE_CLIENT, SIDE_SERVER, TraceEmitter

SERVICE = "test.Trace"
PLUMBING = "grpc.testing.Plumbing"  # like grpc.health.v1.Health and reflection
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{CALLER_SPAN}-01"
# Low 64 bits 0xa3ce929d0e0e4736: above half of 2**64, so not sampled at 0.5.
UNSAMPLED_AT_HALF = CALLER
SAMPLED_AT_HALF = f"00-{'4' * 16}{'1' * 16}-{CALLER_SPAN}-01"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    process = NatsProcess(tmp_path / "nats.data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Mesh:
    channel: MeshChannel  # the client's
    emitter: TraceEmitter
    records: asyncio.Queue[trace_pb2.CallRecord]
    port: int
    #: Every record sent so far has reached `records` once this returns.
    settle: Callable[[], Awaitable[None]]

    async def collect(self, count: int) -> list[trace_pb2.CallRecord]:
        await self.emitter.flush()
        got: list[trace_pb2.CallRecord] = []
        async with asyncio.timeout(10):
            while len(got) < count:
                got.append(await self.records.get())
        await self.settle()
        assert self.records.empty(), "more records than expected"
        return got


def _config(port: int) -> ClientConfig:
    instance = Instance(
        service=SERVICE, instance_id="i1", address=f"127.0.0.1:{port}", deployment="trace"
    )
    return ClientConfig(
        etcd=(),
        upstreams={SERVICE: (instance,), PLUMBING: (instance,)},
        probe_connectivity=False,
        watch_health=False,
        rotation_check=0,
    )


async def _mesh(nats_server: NatsProcess, rate: float) -> AsyncIterator[Mesh]:
    listener = await nats_py.connect(nats_server.url, allow_reconnect=False)
    publisher: list[Client] = []

    async def connect() -> Client:
        publisher.append(await nats_py.connect(nats_server.url))
        return publisher[-1]

    emitter = TraceEmitter("trace", connect=connect, sample=rate, identity="spiffe://x/svc/t")
    records: asyncio.Queue[trace_pb2.CallRecord] = asyncio.Queue()

    async def received(message: Any) -> None:
        for record in trace_pb2.CallRecordBatch.FromString(message.data).records:
            await records.put(record)

    await listener.subscribe("svc.trace.>", cb=received)
    await listener.flush()

    async def settle() -> None:
        # A round trip on each connection: what the emitter sent is at the server, then what
        # the server routed to the listener is read (and handed to `received`) before the PONG.
        await emitter.flush()
        for connection in publisher:
            await connection.flush()
        await listener.flush()

    emitter.start()
    await eventually(lambda: emitter._available() is not None, 10)
    server_records = ServerRecords(emitter)
    # As the service host orders them: errors translated outside the records.
    interceptors = [ErrorInterceptor(), *tracing_server_interceptors(False, server_records)]
    server = grpc.aio.server(interceptors=interceptors)
    holder: list[MeshChannel] = []

    async def seen(_request: bytes, context: Any) -> bytes:
        return tracecontext.current_traceparent().encode()

    async def missing(_request: bytes, context: Any) -> bytes:
        raise NotFound("no such thing")

    async def forward(_request: bytes, context: Any) -> bytes:
        return bytes(await holder[0].unary_unary(f"/{SERVICE}/Seen")(b"", timeout=5))

    handlers = {
        "Seen": grpc.unary_unary_rpc_method_handler(seen),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Forward": grpc.unary_unary_rpc_method_handler(forward),
    }
    plumbing = {"Ping": grpc.unary_unary_rpc_method_handler(seen)}
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler(PLUMBING, plumbing),
    ])  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    server_records.serving_as("i1", f"127.0.0.1:{port}")
    holder.append(await MeshChannel.connect(_config(port), records=emitter))
    client = await MeshChannel.connect(_config(port), records=emitter)
    try:
        yield Mesh(client, emitter, records, port, settle)
    finally:
        await client.close()
        await holder[0].close()
        await server.stop(None)
        await emitter.close()
        for connection in (*publisher, listener):
            await connection.close()


@pytest.fixture
async def mesh(nats_server: NatsProcess) -> AsyncIterator[Mesh]:
    async for one in _mesh(nats_server, 1.0):
        yield one


@pytest.fixture
async def half(nats_server: NatsProcess) -> AsyncIterator[Mesh]:
    async for one in _mesh(nats_server, 0.5):
        yield one


async def _call_in(
    traceparent: str, channel: MeshChannel, method: str, service: str = SERVICE
) -> Any:
    context = tracecontext.parse_traceparent(traceparent)
    assert context is not None
    token = tracecontext.attach(context)
    try:
        return await channel.unary_unary(f"/{service}/{method}")(b"", timeout=5)
    finally:
        tracecontext.detach(token)


def _by(records: list[trace_pb2.CallRecord], side: int, method: str) -> trace_pb2.CallRecord:
    (found,) = [r for r in records if r.side == side and r.method == method]
    return found


async def test_every_hop_is_a_record_in_one_trace_each_under_the_one_before(mesh: Mesh) -> None:
    answer = await _call_in(CALLER, mesh.channel, "Forward")
    records = await mesh.collect(4)
    client_forward = _by(records, SIDE_CLIENT, "Forward")
    server_forward = _by(records, SIDE_SERVER, "Forward")
    client_seen = _by(records, SIDE_CLIENT, "Seen")
    server_seen = _by(records, SIDE_SERVER, "Seen")
    assert {r.trace_id for r in records} == {TRACE}
    assert client_forward.parent_span_id == CALLER_SPAN
    assert server_forward.parent_span_id == client_forward.span_id
    assert client_seen.parent_span_id == server_forward.span_id
    assert server_seen.parent_span_id == client_seen.span_id
    # The last handler ran in the span its server record names.
    assert answer.decode() == f"00-{TRACE}-{server_seen.span_id}-01"
    for client in (client_forward, client_seen):
        assert (client.callee_instance, client.callee_address) == ("i1", f"127.0.0.1:{mesh.port}")
        assert (client.caller, client.attempt, client.hedge) == ("spiffe://x/svc/t", 0, False)
    for server in (server_forward, server_seen):
        assert (server.callee_instance, server.caller) == ("i1", "")  # plaintext: no identity
    assert all((r.service, r.code, r.deployment) == (SERVICE, 0, "trace") for r in records)
    # Each hop's time lies within its caller's.
    assert client_forward.start_unix_nanos <= server_forward.start_unix_nanos
    assert server_forward.duration_nanos <= client_forward.duration_nanos


async def test_a_failed_call_is_recorded_with_its_code_on_both_sides(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _call_in(CALLER, mesh.channel, "Missing")
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    records = await mesh.collect(2)
    assert {(r.side, r.code) for r in records} == {
        (SIDE_CLIENT, grpc.StatusCode.NOT_FOUND.value[0]),
        (SIDE_SERVER, grpc.StatusCode.NOT_FOUND.value[0]),
    }


async def test_a_call_outside_any_trace_starts_one_shared_by_both_sides(mesh: Mesh) -> None:
    await mesh.channel.unary_unary(f"/{SERVICE}/Seen")(b"", timeout=5)
    client, server = sorted(await mesh.collect(2), key=lambda r: r.side)
    assert (client.side, server.side) == (SIDE_CLIENT, SIDE_SERVER)
    assert client.trace_id == server.trace_id
    assert server.parent_span_id == client.span_id


async def test_the_meshs_plumbing_is_not_recorded(mesh: Mesh) -> None:
    await _call_in(CALLER, mesh.channel, "Ping", service=PLUMBING)
    await _call_in(CALLER, mesh.channel, "Seen")
    records = await mesh.collect(2)
    assert {r.service for r in records} == {SERVICE}


async def test_the_sampling_choice_is_the_trace_ids(half: Mesh) -> None:
    answer = await _call_in(UNSAMPLED_AT_HALF, half.channel, "Seen")
    # Not sampled: no record, and the caller's own span is what was sent on.
    assert answer.decode().split("-")[1] == TRACE
    await _call_in(SAMPLED_AT_HALF, half.channel, "Seen")
    records = await half.collect(2)
    assert {r.trace_id for r in records} == {"4" * 16 + "1" * 16}


# -- the client layer alone: attempt numbers and hedges -----------------------------------------


async def test_each_attempt_is_its_own_record_with_its_number_and_hedge_flag(mesh: Mesh) -> None:
    layer = TraceRecordLayer(mesh.emitter)
    endpoint = FakeEndpoint(FakeMulticallable(), "i-7", address="10.0.0.7:1")
    sent: list[list[tuple[str, Any]]] = []

    async def next_(call: CallInfo) -> bytes:
        call.endpoint = endpoint
        sent.append(list(call.metadata))
        return b"ok"

    method = f"/{SERVICE}/Seen"
    for attempt, hedge in ((0, False), (1, True)):
        call = CallInfo(
            kind=CallKind.UNARY_UNARY, method=method, service=service_of(method), request=b"",
            metadata=[("traceparent", CALLER), ("x-other", "kept")], serializer=None,
            deserializer=None, idempotency=Idempotency.IDEMPOTENT, attempt=attempt, hedge=hedge,
        )  # fmt: skip
        assert await layer(call, next_) == b"ok"
    first, second = await mesh.collect(2)
    assert [(r.attempt, r.hedge) for r in (first, second)] == [(0, False), (1, True)]
    assert first.span_id != second.span_id
    assert first.parent_span_id == second.parent_span_id == CALLER_SPAN
    assert (first.callee_instance, first.callee_address) == ("i-7", "10.0.0.7:1")
    # Each attempt went out as its own span, the caller's other metadata untouched.
    for metadata, record in zip(sent, (first, second), strict=True):
        assert metadata == [("x-other", "kept"), ("traceparent", f"00-{TRACE}-{record.span_id}-01")]


# -- a service's settings: the flag, the environment, and when there is an emitter at all ------


def test_the_sample_rate_comes_from_the_flag_or_the_environment() -> None:
    assert parse_args("notify", [], environ={}).trace_sample == 0.0
    assert parse_args("notify", [], environ={"MESH_TRACE_SAMPLE": "1"}).trace_sample == 1.0
    flagged = parse_args("notify", ["--trace-sample=0.01"], environ={"MESH_TRACE_SAMPLE": "1"})
    assert flagged.trace_sample == 0.01
    with pytest.raises(SystemExit):
        parse_args("notify", ["--trace-sample=2"], environ={})


def test_a_service_records_only_when_sampling_with_a_nats(tmp_path: Path) -> None:
    def runtime(*flags: str) -> Runtime:
        argv = ["--insecure", "--metrics-port=0", f"--data-dir={tmp_path}", *flags]
        return Runtime(parse_args("echo", argv, environ={}))

    assert runtime().records is None
    assert runtime("--trace-sample=1").records is None  # no NATS to send to
    records = runtime("--trace-sample=0.5", "--nats=nats://127.0.0.1:1").records
    assert records is not None
    assert (records.deployment, records.rate, records.identity) == ("echo", 0.5, "")
