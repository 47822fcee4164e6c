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
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig, StreamInfo
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

__all__ = ["Publisher", "ensure_stream", "header_value", "stream_config"]

# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
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
        full_name = message.DESCRIPTOR.full_name
        subject = self._subjects.get(full_name)
        if subject is None:
            subject = self._subjects[full_name] = event_subject(self.prefix, full_name)
        if event_id is None:
            event_id = self._new_id()
        elif not event_id or header_value(event_id) != event_id:
            raise ValueError(f"event id {event_id!r} must be a non-empty single line")
        payload = message.SerializeToString()
        extra = headers
        headers = self.headers_for(full_name, event_id)
        if extra:
            for name, value in extra.items():
                if header_value(value) != value:
                    raise ValueError(f"header {name} value {value!r} must be a single line")
            headers.update(extra)
        if not self._tracing():
            # No tracer installed: no span of ours (it cost ~8 % of a publish), but the
            # caller's trace context travels; outside any, the event starts a new trace.
            if tracecontext.current_span_context() is None:
                headers[Headers.TRACEPARENT] = tracecontext.new_traceparent()
            else:
                (self._propagator or propagate.get_global_textmap()).inject(headers)
            return await self._send(full_name, subject, payload, headers)
        # OpenTelemetry messaging conventions: a PRODUCER span named "<operation> <destination>".
        with self._tracer.start_as_current_span(
            f"send {subject}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": subject,
                "messaging.message.id": event_id,
                "messaging.message.body.size": len(payload),
            },
        ) as span:
            # Inside the span, so the consumer's span becomes a child of this one.
            (self._propagator or propagate.get_global_textmap()).inject(headers)
            ack = await self._send(full_name, subject, payload, headers)
            span.set_attribute("messaging.nats.stream", ack.stream)
            span.set_attribute("messaging.nats.stream_sequence", ack.seq)
            if ack.duplicate:
                span.set_attribute("messaging.nats.duplicate", True)
            return ack

    def _tracing(self) -> bool:
        return self._own_provider or tracecontext.tracer_installed()

    async def _send(
        self, full_name: str, subject: str, payload: bytes, headers: dict[str, str]
    ) -> PubAck:
        try:
            return await self._js.publish(subject, payload, timeout=self._timeout, headers=headers)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            # JetStream answers a publish only on a subject some stream takes.
            raise Unavailable(
                f"publish {full_name}: no JetStream stream takes subject {subject} (create it "
                "with mesh.events.ensure_stream(js, events_stream()); `mesh up` creates the "
                "events and dead-letter streams)"
            ) from exc
        except nats.errors.Error as exc:
            raise Unavailable(f"publish {full_name} on {subject}: {exc!r}") from exc

    async def publish_many(
        self,
        messages: Iterable[Message],
        *,
        event_ids: Iterable[str] | None = None,
        concurrency: int = 64,
    ) -> list[PubAck]:
        """Publish every message with at most `concurrency` acks outstanding; acks in order.

        The first failure stops the batch and is raised (events before it may be stored; retry
        with the same `event_ids` to store each once).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        batch = list(messages)
        ids: list[str | None] = [None] * len(batch)
        if event_ids is not None:
            ids = list(event_ids)
            if len(ids) != len(batch):
                raise ValueError(f"{len(ids)} event ids for {len(batch)} messages")
        acks: list[PubAck | None] = [None] * len(batch)
        position = iter(range(len(batch)))

        async def worker() -> None:
            # A fixed pool of workers rather than one task per message: a batch of a million
            # creates 64 tasks, not a million.
            for index in position:
                acks[index] = await self.publish(batch[index], event_id=ids[index])

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(batch))):
                    group.create_task(worker())
        except* Exception as failures:
            raise failures.exceptions[0] from None
        return [ack for ack in acks if ack is not None]


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
