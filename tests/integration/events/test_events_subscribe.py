"""Subscriber against a real nats-server: sharing, dead letters, trace continuation."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.publisher import Publisher
from mesh.events.subjects import ConsumerSpec, Headers, dead_letter_subject, event_subject
from mesh.events.subscriber import EventMeta, Subscriber
from mesh.testing import eventually

pytestmark = pytest.mark.integration

TYPE = "hms.testing.v1.VoucherSubmitted"
# Small, so redeliveries in these tests take tenths of a second, not minutes.
FAST = ConsumerSpec(ack_wait=0.5, backoff=(0.05, 0.1), max_deliver=3, max_in_flight=4)
WAIT = 10.0


async def dead_letters(js: JetStreamContext, deployment: str, count: int) -> list:  # type: ignore[type-arg]
    """The first `count` dead letters of `deployment`, waiting up to WAIT for them."""
    sub = await js.pull_subscribe(dead_letter_subject("hms", deployment, TYPE), stream="HMS_DLQ")
    try:
        found: list = []  # type: ignore[type-arg]
        async with asyncio.timeout(WAIT):
            while len(found) < count:
                found += await sub.fetch(count - len(found), timeout=WAIT)
        return found
    finally:
        await sub.unsubscribe()


async def test_two_replicas_share_events_each_handled_once(
    js: JetStreamContext, second_client: Client
) -> None:
    handled: Counter[str] = Counter()
    by_replica: Counter[str] = Counter()
    all_done = asyncio.Event()
    total = 200

    def handler_for(replica: str):  # type: ignore[no-untyped-def]
        async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
            handled[event.voucher_id] += 1
            by_replica[replica] += 1
            if len(handled) == total:
                all_done.set()

        return handle

    one = Subscriber(js, "notify", spec=FAST, poll=0.2)
    two = Subscriber(second_client.jetstream(), "notify", spec=FAST, poll=0.2)
    try:
        sub_one = await one.subscribe(VoucherSubmitted, handler_for("one"))
        sub_two = await two.subscribe(VoucherSubmitted, handler_for("two"))
        assert sub_one.consumer == sub_two.consumer == "notify__hms_testing_v1_VoucherSubmitted"
        events = [VoucherSubmitted(voucher_id=f"v{i}") for i in range(total)]
        await Publisher(js, "fee-calc").publish_many(events)
        async with asyncio.timeout(WAIT):
            await all_done.wait()
    finally:
        await one.close()
        await two.close()
    assert set(handled.values()) == {1}
    assert by_replica["one"] > 0
    assert by_replica["two"] > 0
    assert by_replica["one"] + by_replica["two"] == total


async def test_restarted_subscriber_resumes_where_the_deployment_stopped(
    js: JetStreamContext,
) -> None:
    publisher = Publisher(js, "fee-calc")
    seen: list[str] = []
    got = asyncio.Condition()

    async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
        async with got:
            seen.append(event.voucher_id)
            got.notify_all()

    async def wait_for(count: int) -> None:
        async with asyncio.timeout(WAIT), got:
            await got.wait_for(lambda: len(seen) >= count)

    first = Subscriber(js, "audit", spec=FAST, poll=0.2)
    await first.subscribe(VoucherSubmitted, handle)
    await publisher.publish(VoucherSubmitted(voucher_id="before"))
    await wait_for(1)
    await first.close()

    await publisher.publish(VoucherSubmitted(voucher_id="while-down"))
    second = Subscriber(js, "audit", spec=FAST, poll=0.2)
    try:
        await second.subscribe(VoucherSubmitted, handle)
        await publisher.publish(VoucherSubmitted(voucher_id="after"))
        await wait_for(3)
    finally:
        await second.close()
    assert seen == ["before", "while-down", "after"]


async def test_poison_event_goes_to_dead_letters_and_later_events_flow(
    js: JetStreamContext,
) -> None:
    attempts: Counter[str] = Counter()
    good = asyncio.Event()
    deliveries: list[int] = []

    async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
        attempts[event.voucher_id] += 1
        if event.voucher_id == "poison":
            deliveries.append(meta.delivery_count)
            raise RuntimeError("amount_pence must be positive\nsecond line")
        if attempts.keys() >= {"good-1", "good-2"}:
            good.set()

    subscriber = Subscriber(js, "payments", spec=FAST, poll=0.2)
    publisher = Publisher(js, "fee-calc")
    try:
        await subscriber.subscribe(VoucherSubmitted, handle)
        await publisher.publish(VoucherSubmitted(voucher_id="poison"), event_id="evt-poison")
        await publisher.publish(VoucherSubmitted(voucher_id="good-1"))
        await publisher.publish(VoucherSubmitted(voucher_id="good-2"))
        (letter,) = await dead_letters(js, "payments", 1)
        async with asyncio.timeout(WAIT):
            await good.wait()
    finally:
        await subscriber.close()

    assert deliveries == [1, 2, 3]
    assert VoucherSubmitted.FromString(letter.data).voucher_id == "poison"
    headers = letter.headers or {}
    assert headers[Headers.DLQ_REASON] == "handler-failed"
    assert headers[Headers.DLQ_ERROR] == "RuntimeError: amount_pence must be positive second line"
    assert headers[Headers.DLQ_DELIVERIES] == "3"
    assert headers[Headers.DLQ_SUBJECT] == event_subject("hms", TYPE)
    assert headers[Headers.DLQ_STREAM] == "HMS_EVENTS"
    assert headers[Headers.DLQ_SEQUENCE] == "1"
    assert headers[Headers.DLQ_CONSUMER] == "payments__hms_testing_v1_VoucherSubmitted"
    assert headers[Headers.ID] == "evt-poison"
    assert attempts["good-1"] == attempts["good-2"] == 1
    consumer = "payments__hms_testing_v1_VoucherSubmitted"

    async def settled() -> bool:
        # The handler returned before its ack (and the poison's term) reached the server.
        info = await js.consumer_info("HMS_EVENTS", consumer)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(settled, WAIT, interval=0.05)
    info = await js.consumer_info("HMS_EVENTS", consumer)
    assert info.config.max_deliver == 3
    assert info.config.backoff == pytest.approx([0.55, 0.6])


async def test_undecodable_payload_goes_straight_to_dead_letters(js: JetStreamContext) -> None:
    handled: list[str] = []
    later = asyncio.Event()

    async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
        handled.append(event.voucher_id)
        later.set()

    subscriber = Subscriber(js, "ledger", spec=FAST, poll=0.2)
    try:
        await subscriber.subscribe(VoucherSubmitted, handle)
        # Field 1 as a length-delimited string that claims more bytes than follow.
        await js.publish(
            event_subject("hms", TYPE), b"\x0a\x7fshort", headers={Headers.ID: "evt-garbage"}
        )
        await Publisher(js, "fee-calc").publish(VoucherSubmitted(voucher_id="fine"))
        (letter,) = await dead_letters(js, "ledger", 1)
        async with asyncio.timeout(WAIT):
            await later.wait()
    finally:
        await subscriber.close()

    assert handled == ["fine"]
    headers = letter.headers or {}
    assert headers[Headers.DLQ_REASON] == "undecodable"
    assert TYPE in headers[Headers.DLQ_ERROR]
    assert headers[Headers.DLQ_DELIVERIES] == "1"
    assert headers[Headers.ID] == "evt-garbage"
    assert letter.data == b"\x0a\x7fshort"


async def test_handler_span_continues_the_publishers_trace(js: JetStreamContext) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: asyncio.Future[tuple[int, EventMeta]] = asyncio.get_running_loop().create_future()

    async def handle(event: VoucherSubmitted, meta: EventMeta) -> None:
        seen.set_result((trace.get_current_span().get_span_context().trace_id, meta))

    subscriber = Subscriber(js, "notify", spec=FAST, poll=0.2, tracer_provider=provider)
    publisher = Publisher(js, "fee-calc", tracer_provider=provider)
    try:
        await subscriber.subscribe(VoucherSubmitted, handle)
        with provider.get_tracer("test").start_as_current_span("submit") as root:
            await publisher.publish(VoucherSubmitted(voucher_id="v1"), event_id="evt-traced")
        async with asyncio.timeout(WAIT):
            handler_trace_id, meta = await seen
    finally:
        await subscriber.close()

    assert handler_trace_id == root.get_span_context().trace_id
    assert meta.id == "evt-traced"
    assert meta.source == "fee-calc"
    assert meta.type == TYPE
    assert meta.delivery_count == 1
    assert meta.time is not None
    assert meta.subject == event_subject("hms", TYPE)
    assert trace.get_current_span(meta.trace_context).get_span_context().trace_id == (
        handler_trace_id
    )
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    producer, consumer = spans[trace.SpanKind.PRODUCER], spans[trace.SpanKind.CONSUMER]
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.consumer.group.name"] == (
        "notify__hms_testing_v1_VoucherSubmitted"
    )
