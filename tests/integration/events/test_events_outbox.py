"""Outbox relay against a real nats-server: row ids become Nats-Msg-Id, re-sends are stored once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.outbox import Outbox, OutboxRelay
from mesh.events.publisher import Publisher
from mesh.events.subjects import ConsumerSpec, events_stream
from mesh.events.subscriber import EventMeta, Subscriber
from mesh.resilience.backoff import BackoffPolicy

pytestmark = pytest.mark.integration

FAST = ConsumerSpec(ack_wait=0.5, backoff=(0.05, 0.1), max_deliver=3, max_in_flight=16)
RETRY = BackoffPolicy(base=0.05, cap=0.5)
WAIT = 10.0


def write_events(db: Path, outbox: Outbox, count: int) -> list[str]:
    conn = sqlite3.connect(str(db))
    ids = []
    for i in range(count):
        with conn:
            event = VoucherSubmitted(voucher_id=f"v{i}", applicant_id="a1", amount_pence=i)
            ids.append(outbox.add(conn, event, aggregate="a1"))
    conn.close()
    return ids


async def test_relay_publishes_rows_in_order_with_their_event_ids(
    js: JetStreamContext, tmp_path: Path
) -> None:
    db = tmp_path / "fee-calc.sqlite3"
    outbox = Outbox(db)
    ids = write_events(db, outbox, 50)
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
        seen.append((meta.id, event.amount_pence))
        if len(seen) == len(ids):
            done.set()

    subscriber = Subscriber(js, "audit", spec=FAST, poll=0.2)
    relay = OutboxRelay(
        outbox, Publisher(js, "fee-calc"), stream=events_stream(), backoff=RETRY, poll=0.05
    )
    try:
        await subscriber.subscribe(VoucherSubmitted, handle)
        relay.start()
        async with asyncio.timeout(WAIT):
            await done.wait()
    finally:
        await relay.stop()
        await subscriber.close()
        outbox.close()
    assert seen == [(event_id, i) for i, event_id in enumerate(ids)]


async def test_rows_sent_again_after_a_crash_before_marking_are_stored_once(
    js: JetStreamContext, tmp_path: Path
) -> None:
    db = tmp_path / "fee-calc.sqlite3"
    outbox = Outbox(db)
    write_events(db, outbox, 20)
    publisher = Publisher(js, "fee-calc")
    first = OutboxRelay(outbox, publisher, stream=events_stream(), backoff=RETRY)
    assert await first.relay_once() == 20
    # As if the relay died after publishing but before its mark committed.
    with sqlite3.connect(str(db)) as conn:
        conn.execute("UPDATE outbox SET sent_at = NULL")
    second = OutboxRelay(outbox, publisher, stream=events_stream(), backoff=RETRY)
    assert await second.relay_once() == 20
    assert second.pending() == 0
    info = await js.stream_info("HMS_EVENTS")
    assert info.state.messages == 20  # JetStream dropped the 20 re-sent ids
    outbox.close()


async def test_an_event_from_the_outbox_continues_the_writers_trace(
    js: JetStreamContext, tmp_path: Path
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    db = tmp_path / "fee-calc.sqlite3"
    outbox = Outbox(db)
    conn = sqlite3.connect(str(db))
    # The business transaction runs inside a span; the relay publishes later, elsewhere.
    with provider.get_tracer("test").start_as_current_span("submit voucher") as writer, conn:
        outbox.add(conn, VoucherSubmitted(voucher_id="v1"), aggregate="a1")
    conn.close()
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(message: VoucherSubmitted, meta: EventMeta) -> None:
        if not seen.done():
            seen.set_result(trace.get_current_span().get_span_context().trace_id)

    subscriber = Subscriber(js, "notify", spec=FAST, poll=0.2, tracer_provider=provider)
    relay = OutboxRelay(
        outbox, Publisher(js, "fee-calc", tracer_provider=provider), stream=events_stream(),
        backoff=RETRY,
    )  # fmt: skip
    await subscriber.subscribe(VoucherSubmitted, handler)
    relay.start()
    try:
        async with asyncio.timeout(WAIT):
            handler_trace = await seen
    finally:
        await relay.stop()
        await subscriber.close()
        outbox.close()
    assert handler_trace == writer.get_span_context().trace_id
