"""Publisher and streams against a real nats-server with JetStream."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.errors import Unavailable
from mesh.events.publisher import Publisher, ensure_stream
from mesh.events.subjects import Headers, StreamSpec, event_subject, events_stream

pytestmark = pytest.mark.integration

SUBJECT = event_subject("hms", "hms.testing.v1.VoucherSubmitted")


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_publish_stores_payload_and_headers(js: JetStreamContext) -> None:
    provider, exporter = tracing()
    fixed = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    publisher = Publisher(js, "fee-calc", tracer_provider=provider, clock=lambda: fixed)
    event = VoucherSubmitted(voucher_id="v1", applicant_id="a1", amount_pence=1250)

    with provider.get_tracer("test").start_as_current_span("request") as root:
        ack = await publisher.publish(event, event_id="evt-1")

    assert (ack.stream, ack.seq, ack.duplicate) == ("HMS_EVENTS", 1, None)
    stored = await js.get_msg("HMS_EVENTS", seq=1)
    assert stored.subject == SUBJECT
    assert VoucherSubmitted.FromString(stored.data) == event
    headers = stored.headers or {}
    assert headers[Headers.MSG_ID] == "evt-1"
    assert headers[Headers.TYPE] == "hms.testing.v1.VoucherSubmitted"
    assert headers[Headers.SOURCE] == "fee-calc"
    assert headers[Headers.TIME] == "2025-01-02T03:04:05.678000Z"
    # A binary-mode CloudEvent (its id is the de-duplication key), and nothing more: each
    # header costs every publish.
    assert headers[Headers.SPEC_VERSION] == "1.0"
    assert headers[Headers.ID] == "evt-1"
    assert set(headers) == {
        Headers.MSG_ID,
        Headers.SPEC_VERSION,
        Headers.ID,
        Headers.TYPE,
        Headers.SOURCE,
        Headers.TIME,
        Headers.TRACEPARENT,
    }
    version, trace_id, span_id, _flags = headers[Headers.TRACEPARENT].split("-")
    assert version == "00"
    assert int(trace_id, 16) == root.get_span_context().trace_id

    (producer,) = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.PRODUCER]
    assert producer.name == f"send {SUBJECT}"
    assert int(span_id, 16) == producer.context.span_id
    assert producer.parent is not None
    assert producer.parent.span_id == root.get_span_context().span_id
    assert producer.attributes is not None
    assert producer.attributes["messaging.destination.name"] == SUBJECT
    assert producer.attributes["messaging.message.id"] == "evt-1"
    assert producer.attributes["messaging.nats.stream_sequence"] == 1


async def test_same_event_id_is_stored_once(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc")
    first = await publisher.publish(VoucherSubmitted(voucher_id="v1"), event_id="same")
    again = await publisher.publish(VoucherSubmitted(voucher_id="v1"), event_id="same")
    other = await publisher.publish(VoucherSubmitted(voucher_id="v1"))

    assert first.duplicate is None
    assert again.duplicate is True
    assert again.seq == first.seq
    assert other.seq == first.seq + 1
    info = await js.stream_info("HMS_EVENTS")
    assert info.state.messages == 2


async def test_publish_many_bounded_concurrency_keeps_order_of_acks(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc")
    events = [VoucherSubmitted(voucher_id=f"v{i}") for i in range(300)]
    ids = [f"evt-{i}" for i in range(300)]

    acks = await publisher.publish_many(events, event_ids=ids, concurrency=16)
    assert len(acks) == 300
    assert len({ack.seq for ack in acks}) == 300
    again = await publisher.publish_many(events[:10], event_ids=ids[:10], concurrency=4)
    assert all(ack.duplicate for ack in again)
    assert [ack.seq for ack in again] == [ack.seq for ack in acks[:10]]
    assert (await js.stream_info("HMS_EVENTS")).state.messages == 300


async def test_publish_many_refuses_mismatched_ids(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc")
    with pytest.raises(ValueError, match="1 event ids for 2 messages"):
        await publisher.publish_many([VoucherSubmitted(), VoucherSubmitted()], event_ids=["a"])


async def test_publish_without_a_stream_is_unavailable(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc", prefix="nostream", timeout=2.0)
    with pytest.raises(Unavailable, match=r"nostream\.events\.hms\.testing\.v1"):
        await publisher.publish(VoucherSubmitted(voucher_id="v1"))


async def test_ensure_stream_is_idempotent_and_updates(js: JetStreamContext) -> None:
    spec = events_stream(max_msgs=1000)
    first = await ensure_stream(js, spec)
    second = await ensure_stream(js, spec)
    assert first.config.max_msgs == second.config.max_msgs == 1000

    changed = await ensure_stream(js, events_stream(max_msgs=5000, duplicate_window=600.0))
    assert changed.config.max_msgs == 5000
    assert changed.config.duplicate_window == 600.0
    assert (await js.stream_info("HMS_EVENTS")).config.max_msgs == 5000


async def test_ensure_stream_reports_a_refused_change(js: JetStreamContext) -> None:
    # JetStream cannot change a stream's storage type in place.
    with pytest.raises(ValueError, match="HMS_EVENTS"):
        await ensure_stream(js, events_stream(storage="memory"))
    created = await ensure_stream(js, StreamSpec("OTHER", ("other.>",), storage="memory"))
    assert created.config.name == "OTHER"
