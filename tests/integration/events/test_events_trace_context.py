"""Events carry the W3C trace context with no tracer installed (span export off, the
default): the publisher's and the outbox relay's events carry the writer's trace, or start
one; a handler runs in the event's trace and reads it from `EventMeta.trace_id`."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh import tracecontext
from mesh.events.outbox import Outbox, OutboxRelay
from mesh.events.publisher import Publisher
from mesh.events.subjects import ConsumerSpec, Headers, event_subject, events_stream
from mesh.events.subscriber import EventMeta, Subscriber
from mesh.resilience.backoff import BackoffPolicy
from mesh.tracecontext import current_trace_id, parse_traceparent

pytestmark = pytest.mark.integration

FAST = ConsumerSpec(ack_wait=0.5, backoff=(0.05, 0.1), max_deliver=3, max_in_flight=4)
RETRY = BackoffPolicy(base=0.01, cap=0.05)
WAIT = 10.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
WRITER = f"00-{TRACE}-00f067aa0ba902b7-01"
SUBJECT = event_subject("hms", VoucherSubmitted.DESCRIPTOR.full_name)


def _in_writers_trace() -> object:
    context = parse_traceparent(WRITER)
    assert context is not None
    return tracecontext.attach(context)


async def _stored_traceparent(js: JetStreamContext, seq: int) -> str:
    stored = await js.get_msg("HMS_EVENTS", seq=seq)
    return (stored.headers or {})[Headers.TRACEPARENT]


def _trace_of(traceparent: str) -> str:
    context = parse_traceparent(traceparent)
    assert context is not None, traceparent
    return f"{context.trace_id:032x}"


async def test_a_published_event_carries_the_current_trace(js: JetStreamContext) -> None:
    assert not tracecontext.tracer_installed()
    token = _in_writers_trace()
    try:
        ack = await Publisher(js, "fee-calc").publish(VoucherSubmitted(voucher_id="v1"))
    finally:
        tracecontext.detach(token)
    assert await _stored_traceparent(js, ack.seq) == WRITER


async def test_an_event_published_outside_a_trace_starts_one(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc")
    first = await publisher.publish(VoucherSubmitted(voucher_id="v1"))
    second = await publisher.publish(VoucherSubmitted(voucher_id="v2"))
    traces = {_trace_of(await _stored_traceparent(js, ack.seq)) for ack in (first, second)}
    assert len(traces) == 2


async def test_an_outbox_event_carries_the_writers_trace(
    js: JetStreamContext, tmp_path: Path
) -> None:
    db = tmp_path / "fee-calc.sqlite3"
    outbox = Outbox(db)
    conn = sqlite3.connect(str(db))
    token = _in_writers_trace()
    try:
        with conn:
            outbox.add(conn, VoucherSubmitted(voucher_id="traced"), aggregate="a1")
    finally:
        tracecontext.detach(token)
    with conn:  # written outside any trace
        outbox.add(conn, VoucherSubmitted(voucher_id="untraced"), aggregate="a1")
    conn.close()
    relay = OutboxRelay(outbox, Publisher(js, "fee-calc"), stream=events_stream(), backoff=RETRY)
    try:
        assert await relay.relay_once() == 2
    finally:
        outbox.close()
    assert await _stored_traceparent(js, 1) == WRITER
    assert _trace_of(await _stored_traceparent(js, 2)) != TRACE


async def test_a_handler_runs_in_the_events_trace(js: JetStreamContext) -> None:
    seen: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

    async def handler(message: VoucherSubmitted, meta: EventMeta) -> None:
        if not seen.done():
            seen.set_result((meta.trace_id, current_trace_id()))

    subscriber = Subscriber(js, "notify", spec=FAST, poll=0.2)
    await subscriber.subscribe(VoucherSubmitted, handler)
    token = _in_writers_trace()
    try:
        await Publisher(js, "fee-calc").publish(VoucherSubmitted(voucher_id="v1"))
    finally:
        tracecontext.detach(token)
    try:
        async with asyncio.timeout(WAIT):
            meta_trace, handler_trace = await seen
    finally:
        await subscriber.close()
    assert meta_trace == handler_trace == TRACE


async def test_an_event_without_a_trace_is_handled_in_a_new_one(js: JetStreamContext) -> None:
    """A publisher that sends no trace context (another language's, say): `meta.trace_id` is
    empty, and the handler still runs in a trace, so its calls and events are one."""
    seen: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

    async def handler(message: VoucherSubmitted, meta: EventMeta) -> None:
        if not seen.done():
            seen.set_result((meta.trace_id, current_trace_id()))

    subscriber = Subscriber(js, "notify", spec=FAST, poll=0.2)
    await subscriber.subscribe(VoucherSubmitted, handler)
    headers = {Headers.MSG_ID: "bare-1", Headers.TYPE: VoucherSubmitted.DESCRIPTOR.full_name}
    await js.publish(
        SUBJECT, VoucherSubmitted(voucher_id="v1").SerializeToString(), headers=headers
    )
    try:
        async with asyncio.timeout(WAIT):
            meta_trace, handler_trace = await seen
    finally:
        await subscriber.close()
    assert meta_trace == ""
    assert len(handler_trace) == 32
    assert handler_trace != "0" * 32


async def test_a_handled_event_is_a_svc_trace_record_under_the_publishers_span(
    js: JetStreamContext, nats_client: Client
) -> None:
    """The console's waterfall ends REST -> hops -> event -> handler: the subscriber sends a
    SIDE_HANDLER record whose span is the handler's own (what it calls runs under it) and
    whose parent is the publisher's span."""
    from hms.mesh.v1 import trace_pb2
    from mesh.tracerecords import TraceEmitter

    got: asyncio.Queue[trace_pb2.CallRecord] = asyncio.Queue()

    async def heard(msg: Msg) -> None:
        for record in trace_pb2.CallRecordBatch.FromString(msg.data).records:
            await got.put(record)

    await nats_client.subscribe("svc.trace.>", cb=heard)

    async def connect() -> Client:
        return nats_client

    emitter = TraceEmitter("notify", connect=connect, interval=0.05)
    emitter.start()
    inside: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handler(message: VoucherSubmitted, meta: EventMeta) -> None:
        span = tracecontext.current_span_context()
        assert span is not None
        if not inside.done():
            inside.set_result(f"{span.span_id:016x}")

    subscriber = Subscriber(js, "notify", spec=FAST, poll=0.2, records=emitter)
    await subscriber.subscribe(VoucherSubmitted, handler)
    try:
        token = _in_writers_trace()
        try:
            await Publisher(js, "housing").publish(VoucherSubmitted(voucher_id="v9"))
        finally:
            tracecontext.detach(token)
        async with asyncio.timeout(WAIT):
            handler_span = await inside
            record = await got.get()
    finally:
        await subscriber.close()
        await emitter.close()
    assert record.side == trace_pb2.SIDE_HANDLER
    assert record.trace_id == TRACE
    assert record.parent_span_id == WRITER.split("-")[2]  # the publisher's span
    assert record.span_id == handler_span  # the handler's own: its calls are under it
    assert record.service == "hms.testing.v1.VoucherSubmitted"
    assert record.method == "notify__hms_testing_v1_VoucherSubmitted"
    assert record.caller == "spiffe://hms.local/svc/housing"
    assert record.deployment == "notify"
    assert record.code == 0
