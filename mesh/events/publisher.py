"""Publish Protobuf messages as events on JetStream, and declare streams.

Each event is one NATS message on `<prefix>.events.<full name>` whose payload is the serialized
message and whose headers are listed in `mesh.events.subjects.Headers`. Publishing waits for
JetStream's ack, so a returned ack means the event is stored. The event id doubles as
`Nats-Msg-Id`: publishing the same id again within the stream's duplicate window is stored once
(the ack says `duplicate=True`), which is what makes retrying a publish safe.

NATS errors are translated at this boundary: a lost connection, a timeout or a subject no stream
listens on raise `mesh.errors.Unavailable` (the event may or may not be stored; retry with the
same `event_id`).

>>> publisher = Publisher(nc.jetstream(), source="fee-calc")
>>> ack = await publisher.publish(VoucherSubmitted(voucher_id="v1"))
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator

from mesh import tracecontext
from mesh.errors import Unavailable
from mesh.events.subjects import (
    DEFAULT_PREFIX,
    Headers,
    StreamSpec,
    event_subject,
    format_time,
)

__all__ = [
    "BatchResult",
    "OutgoingEvent",
    "Publisher",
    "ensure_stream",
    "header_value",
    "stream_config",
]

# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
#: An event ready to send: full name, subject, event id, payload, headers (no trace yet).
_Prepared = tuple[str, str, str, bytes, dict[str, str]]
_TRACER_NAME = "mesh.events"


def header_value(text: str, limit: int = 1024) -> str:
    """`text` made safe for a NATS header value: one line (a CR or LF would end the header block
    early, and nats-py does not check), at most `limit` characters."""
    single = " ".join(text.splitlines()).replace("\r", " ").replace("\n", " ")
    return single if len(single) <= limit else single[: limit - 3] + "..."


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _IdSource:
    """Event ids unique across processes at a fraction of uuid4's cost (it reads os.urandom
    on every call): one random 128-bit base per publisher, then a counter."""

    def __init__(self) -> None:
        self._base = uuid.uuid4().hex
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._base}-{next(self._count)}"


class Publisher:
    """Publishes events from one deployment (`source`) under one subject prefix.

    `tracer_provider` and `propagator` default to OpenTelemetry's global ones; pass them in to
    keep several meshes (or tests) in one process apart. `clock` and `new_id` are for tests.
    """

    def __init__(
        self,
        js: JetStreamContext,
        source: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        if not source or header_value(source) != source:
            raise ValueError(f"publisher source {source!r} must be a non-empty single line")
        if timeout <= 0:
            raise ValueError(f"publish timeout must be > 0 s, got {timeout}")
        event_subject(prefix, "Probe")  # validates the prefix now rather than at first publish
        self._js = js
        self.source = source
        self.prefix = prefix
        self._timeout = timeout
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._own_provider = tracer_provider is not None
        self._propagator = propagator
        self._clock = clock
        self._new_id = new_id if new_id is not None else _IdSource()
        self._subjects: dict[str, str] = {}  # full name -> subject, validated once

    def headers_for(self, full_name: str, event_id: str) -> dict[str, str]:
        """The headers of a new event, without trace context: a CloudEvent in binary mode
        (the attributes as ``ce-`` headers, the NATS protocol binding's and HTTP's) whose
        ``ce-id`` is also ``Nats-Msg-Id``, the key JetStream de-duplicates on. So a
        CloudEvents consumer (Knative, Dapr, an SDK) reads every event as it is.
        """
        return {
            Headers.MSG_ID: event_id,
            Headers.SPEC_VERSION: Headers.SPEC_VERSION_VALUE,
            Headers.ID: event_id,
            Headers.TYPE: full_name,
            Headers.SOURCE: self.source,
            Headers.TIME: format_time(self._clock()),
        }

    def _prepare(
        self, message: Message, event_id: str | None, extra: Mapping[str, str] | None
    ) -> _Prepared:
        """(full name, subject, event id, payload, headers without trace context) of an event;
        ValueError naming a malformed id or header value."""
        full_name = message.DESCRIPTOR.full_name
        subject = self._subjects.get(full_name)
        if subject is None:
            subject = self._subjects[full_name] = event_subject(self.prefix, full_name)
        if event_id is None:
            event_id = self._new_id()
        elif not event_id or header_value(event_id) != event_id:
            raise ValueError(f"event id {event_id!r} must be a non-empty single line")
        headers = self.headers_for(full_name, event_id)
        if extra:
            for name, value in extra.items():
                if header_value(value) != value:
                    raise ValueError(f"header {name} value {value!r} must be a single line")
            headers.update(extra)
        return full_name, subject, event_id, message.SerializeToString(), headers

    def _inject(self, headers: dict[str, str], context: otel_context.Context | None) -> None:
        """The trace context of `context` (the current one if None) into `headers`; outside
        any trace, the event starts a new one."""
        if trace.get_current_span(context).get_span_context().is_valid:
            (self._propagator or propagate.get_global_textmap()).inject(headers, context)
        else:
            headers[Headers.TRACEPARENT] = tracecontext.new_traceparent()

    def _start_span(
        self, subject: str, event_id: str, payload: bytes, context: otel_context.Context | None
    ) -> trace.Span:
        # OpenTelemetry messaging conventions: a PRODUCER span named "<operation> <destination>".
        return self._tracer.start_span(
            f"send {subject}",
            context=context,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": subject,
                "messaging.message.id": event_id,
                "messaging.message.body.size": len(payload),
            },
        )

    @staticmethod
    def _end_span(span: trace.Span, ack: PubAck | None, error: BaseException | None) -> None:
        if ack is not None:
            span.set_attribute("messaging.nats.stream", ack.stream)
            span.set_attribute("messaging.nats.stream_sequence", ack.seq)
            if ack.duplicate:
                span.set_attribute("messaging.nats.duplicate", True)
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
        span.end()

    async def publish(
        self,
        message: Message,
        *,
        event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Publish `message` and wait until JetStream has stored it; returns JetStream's ack.

        Give `event_id` when retrying (or from an outbox row), so a second copy is dropped.
        `headers` are added to the event's own (the outbox relay's aggregate and sequence).
        """
        full_name, subject, event_id, payload, sent = self._prepare(message, event_id, headers)
        if not self._tracing():
            # No tracer installed: no span of ours (it cost ~8 % of a publish), but the
            # caller's trace context travels; outside any, the event starts a new trace.
            self._inject(sent, None)
            return await self._send(full_name, subject, payload, sent)
        span = self._start_span(subject, event_id, payload, None)
        # The span's context, so the consumer's span becomes a child of this one.
        self._inject(sent, trace.set_span_in_context(span))
        ack: PubAck | None = None
        error: BaseException | None = None
        try:
            ack = await self._send(full_name, subject, payload, sent)
            return ack
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end_span(span, ack, error)

    def _tracing(self) -> bool:
        return self._own_provider or tracecontext.tracer_installed()

    async def _send(
        self, full_name: str, subject: str, payload: bytes, headers: dict[str, str]
    ) -> PubAck:
        try:
            return await self._js.publish(subject, payload, timeout=self._timeout, headers=headers)
        except nats.errors.Error as exc:
            raise _unavailable(full_name, subject, exc) from exc

    async def publish_batch(
        self, events: Sequence[OutgoingEvent], *, window: int = 64
    ) -> BatchResult:
        """Publish `events` in order, pipelined: each is sent without waiting for the acks of
        those before it (JetStream's async publish, one reply subscription), with at most
        `window` acks outstanding. Returns the acks of the events stored in order up to the
        first failure, and that failure (None when all were stored). Events after a failure
        may be stored too: publishing them again with the same ids stores each once.

        A malformed event (its id or a header value) is a ValueError before anything is sent.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        prepared = [self._prepare(e.message, e.event_id, e.headers) for e in events]
        pipeline = _Pipeline(self, window)
        try:
            for event, ready in zip(events, prepared, strict=True):
                if pipeline.failure is not None:
                    break
                await pipeline.send(event, ready)
            await pipeline.drain()
        finally:
            pipeline.abandon()  # cancelled mid-batch: release nats-py's slots, end the spans
        return BatchResult(pipeline.acks, pipeline.failure)

    async def publish_many(
        self,
        messages: Iterable[Message],
        *,
        event_ids: Iterable[str] | None = None,
        concurrency: int = 64,
    ) -> list[PubAck]:
        """Publish every message, pipelined with at most `concurrency` acks outstanding;
        acks in order.

        The first failure is raised (events before it are stored; retry with the same
        `event_ids` to store each once).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        batch = list(messages)
        ids: list[str | None] = [None] * len(batch)
        if event_ids is not None:
            ids = list(event_ids)
            if len(ids) != len(batch):
                raise ValueError(f"{len(ids)} event ids for {len(batch)} messages")
        events = [OutgoingEvent(m, i) for m, i in zip(batch, ids, strict=True)]
        result = await self.publish_batch(events, window=concurrency)
        if result.failure is not None:
            raise result.failure
        return result.acks


class _Pipeline:
    """The events of one `publish_batch` in flight: sent in order, settled oldest first.

    Each ack is due `timeout` s after its own send, not after the acks before it were settled:
    a window of acks lost together (a node gone, JetStream still recovering) fails in one
    timeout, not in one per event. After the first failure nothing more is waited for: the acks
    counted are the stored prefix, and the events after it are published again anyway.
    """

    def __init__(self, publisher: Publisher, window: int) -> None:
        self.publisher = publisher
        self.window = window
        self.tracing = publisher._tracing()
        self.loop = asyncio.get_running_loop()
        self.pending: collections.deque[
            tuple[str, str, asyncio.Future[PubAck], trace.Span | None, float]
        ] = collections.deque()
        self.acks: list[PubAck] = []
        self.failure: Exception | None = None

    async def send(self, event: OutgoingEvent, prepared: _Prepared) -> None:
        full_name, subject, event_id, payload, headers = prepared
        publisher = self.publisher
        span = None
        if self.tracing:
            span = publisher._start_span(subject, event_id, payload, event.context)
            publisher._inject(headers, trace.set_span_in_context(span, event.context))
        else:
            publisher._inject(headers, event.context)
        try:
            # No wait_stall: our window (far below nats-py's 4,000 pending) never stalls it,
            # and a stall timeout costs a task per publish.
            future = await publisher._js.publish_async(subject, payload, headers=headers)
        except nats.errors.Error as exc:
            error = _unavailable(full_name, subject, exc)
            if span is not None:
                publisher._end_span(span, None, error)
            self.failure = self.failure or error
            return
        due = self.loop.time() + publisher._timeout
        self.pending.append((full_name, subject, future, span, due))
        if len(self.pending) >= self.window:
            await self.settle_oldest()

    async def settle_oldest(self) -> None:
        full_name, subject, future, span, due = self.pending.popleft()
        if self.failure is not None:
            self._abandon(future, span)
            return
        ack: PubAck | None = None
        error: Exception | None = None
        try:
            # nats-py's future has no deadline of its own: an ack lost with a node would be
            # awaited for ever. Most acks are in by the time they are settled: no timer then.
            if future.done():
                ack = future.result()
            else:
                ack = await asyncio.wait_for(future, max(0.0, due - self.loop.time()))
        except TimeoutError:
            timeout = self.publisher._timeout
            error = Unavailable(f"publish {full_name} on {subject}: no ack within {timeout} s")
        except nats.errors.Error as exc:
            error = _unavailable(full_name, subject, exc)
        if span is not None:
            self.publisher._end_span(span, ack, error)
        if error is not None:
            self.failure = error
        elif ack is not None:
            self.acks.append(ack)

    async def drain(self) -> None:
        while self.pending:
            await self.settle_oldest()

    def abandon(self) -> None:
        while self.pending:
            _, _, future, span, _ = self.pending.popleft()
            self._abandon(future, span)

    @staticmethod
    def _abandon(future: asyncio.Future[PubAck], span: trace.Span | None) -> None:
        """Let go of an ack no longer counted (its result, if any, read so asyncio keeps quiet)."""
        if future.done():
            if not future.cancelled():
                future.exception()
        else:
            future.cancel()  # releases nats-py's pending slot
        if span is not None:
            span.end()


@dataclass(frozen=True)
class OutgoingEvent:
    """One event of a batch: the message, its id (None: a new one), headers added to the
    event's own, and the trace it belongs to (None: the current one)."""

    message: Message
    event_id: str | None = None
    headers: Mapping[str, str] | None = None
    context: otel_context.Context | None = None


@dataclass(frozen=True)
class BatchResult:
    """What `Publisher.publish_batch` stored: the acks of the events stored in order up to
    the first failure, and that failure (None: every event stored)."""

    acks: list[PubAck]
    failure: Exception | None


def _unavailable(full_name: str, subject: str, exc: BaseException) -> Unavailable:
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        # JetStream answers a publish only on a subject some stream takes.
        return Unavailable(
            f"publish {full_name}: no JetStream stream takes subject {subject} (create it "
            "with mesh.events.ensure_stream(js, events_stream()); `mesh up` creates the "
            "events and dead-letter streams)"
        )
    return Unavailable(f"publish {full_name} on {subject}: {exc!r}")


def stream_config(spec: StreamSpec) -> StreamConfig:
    """nats-py's StreamConfig for `spec`."""
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        max_age=spec.max_age,
        duplicate_window=spec.duplicate_window,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
        num_replicas=spec.replicas,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> StreamInfo:
    """Create the stream, or update it to `spec` if it exists with another configuration.

    Safe to call at every start from every replica: an identical create is a no-op.
    """
    config = stream_config(spec)
    try:
        try:
            return await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            return await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise ValueError(f"stream {spec.name}: JetStream refused {spec}: {exc}") from exc
    except nats.errors.Error as exc:
        raise Unavailable(f"stream {spec.name}: {exc!r}") from exc
