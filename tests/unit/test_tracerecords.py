"""TraceEmitter (mesh.tracerecords): sampling by trace id, batches per service on core NATS,
the bounded queue, and NATS down or gone never holding up a caller; against a real
nats-server."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from hms.mesh.v1 import trace_pb2
from hms_tools.devstack import NatsProcess, free_port
from mesh import tracerecords
from mesh.testing import eventually
from mesh.tracerecords import (
    EJECTED,
    SIDE_SERVER,
    TraceEmitter,
    check_sample_rate,
    sample_threshold,
)

A, B = "hms.a.v1.AService", "hms.b.v1.BService"
NEVER = 3600.0  # an interval that never ends within a test: only the batch size sends


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    process = NatsProcess(tmp_path / "nats.data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def listener(nats_server: NatsProcess) -> AsyncIterator[Client]:
    client = await nats_py.connect(nats_server.url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def opened() -> AsyncIterator[list[Client]]:
    """The connections the emitters opened: theirs to use, the owner's (here) to close."""
    clients: list[Client] = []
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


def connector(url: str, opened: list[Client] | None = None) -> Any:
    """The emitter's connect(): a client that reconnects for ever, as a service's does."""

    async def connect() -> Client:
        client = await nats_py.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        if opened is not None:
            opened.append(client)
        return client

    return connect


def record(emitter: TraceEmitter, service: str, n: int, *, parent: int = 7) -> None:
    emitter.call(
        SIDE_SERVER, (1 << 100) + n, n + 1, parent, "spiffe://hms.local/svc/a", "a-1",
        "127.0.0.1:1", service, "Do", 0, 1_700_000_000_000_000_000 + n, 1000 + n, 0, False,
    )  # fmt: skip


async def batches_on(listener: Client, subject: str) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def put(message: Any) -> None:
        await queue.put(message)

    await listener.subscribe(subject, cb=put)
    await listener.flush()
    return queue


def decoded(message: Any) -> trace_pb2.CallRecordBatch:
    return trace_pb2.CallRecordBatch.FromString(message.data)


async def started(emitter: TraceEmitter) -> TraceEmitter:
    emitter.start()
    await eventually(lambda: emitter._available() is not None, 10)
    return emitter


def test_the_numbers_are_the_contracts() -> None:
    """The library names the proto's enums as numbers (it never imports generated code on
    the call path): the same numbers."""
    assert {
        name: getattr(tracerecords, name) for name in ("SIDE_GATEWAY", "SIDE_CLIENT", "SIDE_SERVER")
    } == {
        name: trace_pb2.Side.Value(name) for name in ("SIDE_GATEWAY", "SIDE_CLIENT", "SIDE_SERVER")
    }
    for kind in ("EJECTED", "READMITTED", "BUDGET_REFUSED", "DRAINING", "UNREACHABLE"):
        assert getattr(tracerecords, kind) == trace_pb2.DecisionKind.Value(f"DECISION_KIND_{kind}")


# -- sampling ------------------------------------------------------------------------------


def test_sampling_is_the_same_choice_in_every_process_and_near_its_rate() -> None:
    draw = random.Random(11)
    ids = [draw.getrandbits(128) for _ in range(20_000)]
    one = TraceEmitter("a", connect=connector("nats://x"), sample=0.01)
    other = TraceEmitter("b", connect=connector("nats://x"), sample=0.01)
    chosen = [trace_id for trace_id in ids if one.sampled(trace_id)]
    assert chosen == [trace_id for trace_id in ids if other.sampled(trace_id)]
    assert 0.007 < len(chosen) / len(ids) < 0.013
    # Only the low 64 bits decide: the same request's id, whatever its high half.
    assert all(one.sampled((7 << 64) | (t & (2**64 - 1))) for t in chosen)


@pytest.mark.parametrize(("rate", "expected"), [(0.0, False), (1.0, True)])
def test_none_and_all(rate: float, expected: bool) -> None:
    emitter = TraceEmitter("a", connect=connector("nats://x"), sample=rate)
    for trace_id in (1, 2**64 - 1, 2**128 - 1, 2**64):
        assert emitter.sampled(trace_id) is expected
    assert sample_threshold(rate) == int(rate * 2**64)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), True])
def test_a_rate_outside_zero_to_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match=r"0\.0 to 1\.0"):
        check_sample_rate(rate)


# -- batches on core NATS --------------------------------------------------------------------


async def test_records_go_in_batches_per_service_with_every_field(
    nats_server: NatsProcess, listener: Client, opened: list[Client]
) -> None:
    queue = await batches_on(listener, "svc.trace.>")
    emitter = await started(
        TraceEmitter("notify", connect=connector(nats_server.url, opened), interval=0.05)
    )
    try:
        for n in range(600):
            record(emitter, A, n, parent=0 if n == 0 else 7)
        record(emitter, B, 1000)
        got: dict[str, list[trace_pb2.CallRecordBatch]] = {}
        async with asyncio.timeout(10):
            while sum(len(b.records) for bs in got.values() for b in bs) < 601:
                message = await queue.get()
                got.setdefault(message.subject, []).append(decoded(message))
    finally:
        await emitter.close()
    assert set(got) == {f"svc.trace.{A}", f"svc.trace.{B}"}
    assert [len(b.records) for b in got[f"svc.trace.{A}"]] == [256, 256, 88]
    first = got[f"svc.trace.{A}"][0].records[0]
    assert first.trace_id == f"{(1 << 100):032x}"
    assert (first.span_id, first.parent_span_id) == (f"{1:016x}", "")
    assert first.side == SIDE_SERVER
    assert (first.deployment, first.service, first.method) == ("notify", A, "Do")
    assert (first.caller, first.callee_instance, first.callee_address) == (
        "spiffe://hms.local/svc/a",
        "a-1",
        "127.0.0.1:1",
    )
    assert (first.start_unix_nanos, first.duration_nanos) == (1_700_000_000_000_000_000, 1000)
    assert got[f"svc.trace.{A}"][0].records[1].parent_span_id == f"{7:016x}"
    assert [r.span_id for b in got[f"svc.trace.{A}"] for r in b.records] == [
        f"{n + 1:016x}" for n in range(600)
    ]
    assert (emitter.sent, emitter.dropped) == (601, 0)


async def test_a_full_batch_goes_at_once_without_waiting_for_the_interval(
    nats_server: NatsProcess, listener: Client, opened: list[Client]
) -> None:
    queue = await batches_on(listener, f"svc.trace.{A}")
    connect = connector(nats_server.url, opened)
    emitter = await started(TraceEmitter("a", connect=connect, batch_size=10, interval=NEVER))
    try:
        for n in range(9):
            record(emitter, A, n)
        # A round trip on the emitter's connection, then on the listener's: a batch sent by
        # now would have been handed to `queue` before these return.
        for connection in (*opened, listener):
            await connection.flush()
        assert queue.empty()  # 9 < 10, and the interval is an hour
        record(emitter, A, 9)
        batch = decoded(await asyncio.wait_for(queue.get(), 5))
    finally:
        await emitter.close()
    assert len(batch.records) == 10


async def test_decisions_go_one_per_message_on_svc_mesh(
    nats_server: NatsProcess, listener: Client, opened: list[Client]
) -> None:
    queue = await batches_on(listener, "svc.mesh.>")
    emitter = await started(
        TraceEmitter("caller", connect=connector(nats_server.url, opened), interval=0.05)
    )
    try:
        emitter.decision(EJECTED, A, "a-2", "127.0.0.1:2", "5 consecutive failures")
        message = await asyncio.wait_for(queue.get(), 5)
    finally:
        await emitter.close()
    decision = trace_pb2.MeshDecision.FromString(message.data)
    assert message.subject == f"svc.mesh.{A}"
    assert (decision.kind, decision.deployment, decision.instance, decision.reason) == (
        EJECTED,
        "caller",
        "a-2",
        "5 consecutive failures",
    )
    assert abs(decision.time_unix_nanos - time.time_ns()) < 10 * 10**9


# -- losing records, counted, never a wait ------------------------------------------------------


def dropped_metric(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("mesh_trace_records_dropped_total")


async def test_a_full_queue_drops_and_the_next_batch_says_how_many(
    nats_server: NatsProcess, listener: Client, opened: list[Client]
) -> None:
    queue = await batches_on(listener, f"svc.trace.{A}")
    registry = CollectorRegistry()
    connect = connector(nats_server.url, opened)
    emitter = TraceEmitter("a", connect=connect, queue_size=8, interval=0.05, registry=registry)
    for n in range(12):  # not started yet: nothing leaves the queue
        record(emitter, A, n)
    assert (emitter.queued, emitter.dropped, dropped_metric(registry)) == (8, 4, 4.0)
    await started(emitter)
    try:
        first = decoded(await asyncio.wait_for(queue.get(), 5))
        record(emitter, A, 100)
        second = decoded(await asyncio.wait_for(queue.get(), 5))
    finally:
        await emitter.close()
    assert (len(first.records), first.dropped) == (8, 4)  # the oldest kept, the newest dropped
    assert (len(second.records), second.dropped) == (1, 0)  # told once
    assert registry.get_sample_value("mesh_trace_records_sent_total") == 9


async def test_nats_stopping_loses_records_counted_and_never_holds_a_caller(
    nats_server: NatsProcess, opened: list[Client]
) -> None:
    registry = CollectorRegistry()
    emitter = await started(
        TraceEmitter(
            "a", connect=connector(nats_server.url, opened), interval=0.02, registry=registry
        )
    )
    try:
        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: not opened[0].is_connected, 10)
        # A record is a plain call that appends to a bounded queue: it cannot wait for NATS.
        # What would hold callers is a queue that keeps what cannot be sent: it must not grow.
        most_queued = 0
        for n in range(20_000):
            record(emitter, A, n)
            most_queued = max(most_queued, emitter.queued)
            if n % 1000 == 0:
                await emitter.flush()  # what the sender does: it finds NATS gone, and drops
                assert emitter.queued == 0
        await eventually(lambda: emitter.dropped == 20_000, 10)
    finally:
        await emitter.close()
    assert emitter.sent == 0
    assert dropped_metric(registry) == 20_000
    assert most_queued <= 1000  # never more than the records since the last flush


async def test_a_nats_that_never_answers_costs_nothing_and_close_returns() -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    emitter = TraceEmitter("a", connect=connector(nowhere), interval=0.02)
    emitter.start()
    for n in range(100):
        record(emitter, A, n)
    await eventually(lambda: emitter.dropped == 100, 5)
    began = time.perf_counter()
    await emitter.close()
    assert time.perf_counter() - began < 2.0
