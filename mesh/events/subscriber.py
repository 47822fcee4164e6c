"""Consume events with durable JetStream pull consumers: ack, nak with backoff, dead letters.

One durable consumer per (deployment, event type), named by `consumer_name`: replicas of a
deployment share it, so each event goes to one replica, and a restarted replica resumes where the
deployment stopped. Per event, `decide` (a pure function) says what to do, and the
subscription does it:

    decode fails (or ce-type names another type)  -> dead letters ("undecodable"), term
    handler returns                               -> ack
    handler raises, deliveries left               -> nak, redelivered after spec.retry_delay(n)
    handler raises on the last delivery           -> dead letters ("handler-failed"), term

Dead letters go to `<prefix>.dlq.<deployment>.<type>` with the original payload and headers and
the reason, error text, delivery count, stream and sequence in `Hms-Dlq-*` headers. JetStream has
no dead-letter queue of its own. Delivery is at least once: a handler may see an event again (a
crash before its ack), so handlers must be idempotent.

The consumer loop never ends on an error: fetch errors (NATS down) are retried with backoff, and
every per-event failure is logged and settled.

>>> subscriber = Subscriber(nc.jetstream(), deployment="notify")
>>> await subscriber.subscribe(VoucherSubmitted, on_voucher)   # async def on_voucher(msg, meta)
>>> ...
>>> await subscriber.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import nats.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator

from mesh import tracecontext
from mesh.aio import back_off, cancel_and_wait
from mesh.errors import Unavailable
from mesh.events.publisher import header_value
from mesh.events.subjects import (
    DEFAULT_PREFIX,
    ConsumerSpec,
    Headers,
    consumer_name,
    dead_letter_subject,
    event_subject,
    stream_name,
)
from mesh.identity import check_deployment, spiffe_id
from mesh.resilience.backoff import Backoff, BackoffPolicy
from mesh.tracerecords import SIDE_HANDLER, TraceEmitter

__all__ = [
    "Ack",
    "DeadLetter",
    "Decision",
    "EventMeta",
    "Handled",
    "Handler",
    "HandlerFailed",
    "Nak",
    "Outcome",
    "Subscriber",
    "Subscription",
    "Undecodable",
    "decide",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_TRACER_NAME = "mesh.events"
# Retrying a failed fetch or dead-letter publish: quick at first, at most every 2 s.
_RETRY = BackoffPolicy(base=0.05, cap=2.0)


@dataclass(frozen=True)
class EventMeta:
    """What a handler knows about the event besides its payload."""

    id: str
    type: str
    source: str
    time: datetime | None  # when it was published (ce-time), None if absent or unreadable
    delivery_count: int  # 1 on first delivery
    subject: str
    stream_sequence: int
    trace_context: otel_context.Context  # the publisher's, extracted from the headers
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def trace_id(self) -> str:
        """The trace the event belongs to (that of the request that caused it): 32
        lower-case hex digits, "" if it came without one."""
        return tracecontext.trace_id_of(self.trace_context)


Handler = Callable[[M, EventMeta], Awaitable[None]]


# -- deciding: what happened to an event, and what to do about it ------------------------------


@dataclass(frozen=True)
class Handled:
    """The handler returned."""


@dataclass(frozen=True)
class Undecodable:
    """The payload is not the subscribed type (it does not decode, or ce-type names another)."""

    error: str


@dataclass(frozen=True)
class HandlerFailed:
    """The handler raised; `error` describes the exception ("KeyError: 'x'")."""

    error: str


Outcome = Handled | Undecodable | HandlerFailed


@dataclass(frozen=True)
class Ack:
    """Done with: JetStream forgets the event for this consumer."""


@dataclass(frozen=True)
class Nak:
    """Give the event back, to be redelivered after `delay` seconds, because of `error`."""

    delay: float
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """Store the event in the dead letters with why, then term it (never redelivered)."""

    reason: Literal["undecodable", "handler-failed"]
    error: str


Decision = Ack | Nak | DeadLetter


def decide(outcome: Outcome, delivery: int, spec: ConsumerSpec) -> Decision:
    """What to do with an event after `outcome` on its `delivery`-th delivery (1 the first).

    >>> decide(HandlerFailed("KeyError: 'x'"), 1, ConsumerSpec(backoff=(1.0, 5.0)))
    Nak(delay=1.0, error="KeyError: 'x'")
    """
    match outcome:
        case Handled():
            return Ack()
        case Undecodable(error):
            return DeadLetter("undecodable", error)  # the same bytes would fail again
        case HandlerFailed(error) if delivery >= spec.max_deliver:
            return DeadLetter("handler-failed", error)  # JetStream would not redeliver it
        case HandlerFailed(error):
            return Nak(spec.retry_delay(delivery), error)
    raise TypeError(f"not an outcome: {outcome!r}")


class Subscription(Generic[M]):
    """One consumer loop; `stop()` ends it (an event being handled is redelivered later)."""

    def __init__(
        self, owner: Subscriber, message_type: type[M], handler: Handler[M], name: str
    ) -> None:
        self._owner = owner
        self.message_type = message_type
        self.full_name: str = message_type.DESCRIPTOR.full_name
        self.handler = handler
        self.consumer = name
        self.subject = event_subject(owner.prefix, self.full_name)
        self.dead_letter_subject = dead_letter_subject(
            owner.prefix, owner.deployment, self.full_name
        )
        self._pull: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        owner = self._owner
        spec = owner.spec
        config = ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait,
            backoff=spec.server_backoff(),
            max_deliver=spec.max_deliver,
            max_ack_pending=max(1000, spec.max_in_flight * 4),
        )
        try:
            # Create-or-update: a changed ConsumerSpec takes effect at the next start.
            await owner.js.add_consumer(owner.stream, config=config)
            self._pull = await owner.js.pull_subscribe_bind(
                durable=self.consumer, stream=owner.stream
            )
        except nats.errors.Error as exc:
            raise Unavailable(f"consumer {self.consumer} on {owner.stream}: {exc!r}") from exc
        self._task = asyncio.create_task(self._run(), name=f"events:{self.consumer}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # lets a cancellation of our caller through
            self._task = None
        if self._pull is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._pull.unsubscribe()
            self._pull = None

    async def _run(self) -> None:
        if self._pull is None:
            raise RuntimeError("start() the subscription first")
        retry = Backoff(_RETRY)
        spec = self._owner.spec
        while True:
            try:
                batch = await self._pull.fetch(spec.max_in_flight, timeout=self._owner.poll)
            except nats.errors.TimeoutError:
                continue  # nothing to do within the poll interval
            except Exception:
                await back_off(
                    retry,
                    log.warning,
                    "fetch on %s failed; again in %.2f s",
                    self.consumer,
                    exc_info=True,
                )
                continue
            retry.reset()
            await asyncio.gather(*(self._settle(msg) for msg in batch))

    async def _settle(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not acked: JetStream redelivers after its ack wait. The loop goes on.
            log.exception("settling an event on %s failed", self.consumer)

    async def _handle(self, msg: Msg) -> None:
        owner = self._owner
        headers = dict(msg.headers or {})
        parent = owner.propagator.extract(headers)
        handled_in = parent
        if not owner.spans:
            # No tracer starts a span: the handler gets one of its own, under the publisher's
            # (or, for an event that came without a trace, the first of a new trace), so that
            # what it calls and publishes is one trace, under its own svc.trace record.
            published = trace.get_current_span(parent).get_span_context()
            new = trace.NonRecordingSpan(tracecontext.child_of(published))
            handled_in = trace.set_span_in_context(new, parent)
        delivery = msg.metadata.num_delivered
        # Ours carry the id as Nats-Msg-Id; a CloudEvents publisher's ce-id is read too.
        event_id = headers.get(Headers.MSG_ID) or headers.get(Headers.ID, "")
        with owner.tracer.start_as_current_span(
            f"process {msg.subject}",
            context=handled_in,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.consumer,
                "messaging.message.id": event_id,
                "messaging.message.body.size": len(msg.data),
                "messaging.message.delivery_count": delivery,
            },
        ) as span:
            # Worked on (JetStream hears so) until settled; and settled with no pause after
            # the handler (or after the dead letter is stored), so a stop() interrupts the
            # handler or the dead-letter publish, never a finished event before its ack,
            # nak or term.
            async with _working(msg, owner.spec.heartbeat):
                outcome = await self._process(msg, headers, event_id, parent, span)
                decision = decide(outcome, delivery, owner.spec)
                match decision:
                    case Ack():
                        await msg.ack()
                    case Nak(delay, error):
                        log.warning(
                            "%s: event %s failed (delivery %d of %d), retry in %.2f s: %s",
                            self.consumer,
                            event_id,
                            delivery,
                            owner.spec.max_deliver,
                            delay,
                            error,
                        )
                        await msg.nak(delay=delay)
                    case DeadLetter(reason, error):
                        await self._dead_letter(msg, headers, event_id, reason, error)

    async def _process(
        self,
        msg: Msg,
        headers: dict[str, str],
        event_id: str,
        parent: otel_context.Context,
        span: trace.Span,
    ) -> Outcome:
        """Decode the event and run the handler on it; what happened is also on the span."""
        try:
            message = self._decode(msg.data, headers)
        except DecodeError as exc:
            span.set_status(trace.StatusCode.ERROR, str(exc))
            return Undecodable(str(exc))
        metadata = msg.metadata
        meta = EventMeta(
            id=event_id,
            type=headers.get(Headers.TYPE, self.full_name),
            source=headers.get(Headers.SOURCE, ""),
            time=_parse_time(headers.get(Headers.TIME)),
            delivery_count=metadata.num_delivered,
            subject=msg.subject,
            stream_sequence=metadata.sequence.stream,
            trace_context=parent,
            headers=headers,
        )
        started = (time.time_ns(), time.perf_counter_ns())
        try:
            await self.handler(message, meta)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            self._record(meta, parent, started, failed=True)
            return HandlerFailed(_describe(exc))
        self._record(meta, parent, started, failed=False)
        return Handled()

    def _record(
        self,
        meta: EventMeta,
        parent: otel_context.Context,
        started: tuple[int, int],
        *,
        failed: bool,
    ) -> None:
        """The handler's svc.trace record (SIDE_HANDLER), if the trace is sampled."""
        records = self._owner.records
        if records is None:
            return
        mine = trace.get_current_span().get_span_context()
        if not mine.is_valid or not records.sampled(mine.trace_id):
            return
        published = trace.get_current_span(parent).get_span_context()
        records.call(
            SIDE_HANDLER,
            mine.trace_id,
            mine.span_id,
            published.span_id if published.is_valid else 0,
            _identity_of(meta.source),
            "",
            "",
            self.full_name,
            self.consumer,
            _UNKNOWN_CODE if failed else 0,
            started[0],
            time.perf_counter_ns() - started[1],
        )

    def _decode(self, data: bytes, headers: Mapping[str, str]) -> M:
        declared = headers.get(Headers.TYPE)
        if declared is not None and declared != self.full_name:
            raise DecodeError(f"ce-type is {declared}, expected {self.full_name}")
        try:
            return self.message_type.FromString(data)
        except DecodeError as exc:
            raise DecodeError(f"payload does not decode as {self.full_name}: {exc}") from exc

    async def _dead_letter(
        self, msg: Msg, headers: Mapping[str, str], event_id: str, reason: str, error: str
    ) -> None:
        """Publish to the dead letters, then term. Retries until stored: on the last delivery
        JetStream would not redeliver, so giving up here would lose the event."""
        owner = self._owner
        metadata = msg.metadata
        letter = {
            **headers,
            # The letter's own Nats-Msg-Id below replaces the event's: keep the event's id.
            Headers.ID: event_id,
            # One dead letter per (deployment, stored event), even if this is retried.
            Headers.MSG_ID: f"{owner.deployment}:{metadata.stream}:{metadata.sequence.stream}",
            Headers.DLQ_REASON: reason,
            Headers.DLQ_ERROR: header_value(error),
            Headers.DLQ_DELIVERIES: str(metadata.num_delivered),
            Headers.DLQ_SUBJECT: msg.subject,
            Headers.DLQ_STREAM: metadata.stream,
            Headers.DLQ_SEQUENCE: str(metadata.sequence.stream),
            Headers.DLQ_CONSUMER: self.consumer,
        }
        retry = Backoff(_RETRY)
        while True:
            try:
                await owner.js.publish(self.dead_letter_subject, msg.data, headers=letter)
                break
            except nats.errors.Error:
                await back_off(
                    retry,
                    log.warning,
                    "dead-lettering %s failed; again in %.2f s",
                    letter[Headers.MSG_ID],
                    exc_info=True,
                )
        log.error(
            "%s: event %s dead-lettered (%s): %s",
            self.consumer,
            event_id or "?",
            reason,
            error,
        )
        await msg.term()


class Subscriber:
    """The event consumers of one deployment.

    `spec` sets redelivery (see `ConsumerSpec`); `poll` is how long one fetch waits for events.
    `tracer_provider` and `propagator` default to OpenTelemetry's global ones; `records`
    sends a svc.trace record (SIDE_HANDLER) per handled delivery of a sampled trace.
    """

    def __init__(
        self,
        js: JetStreamContext,
        deployment: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream: str | None = None,
        spec: ConsumerSpec | None = None,
        poll: float = 1.0,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        records: TraceEmitter | None = None,
    ) -> None:
        consumer_name(deployment, "Probe")  # validates the deployment name now
        if poll <= 0:
            raise ValueError(f"poll must be > 0 s, got {poll}")
        self.js = js
        self.deployment = deployment
        self.prefix = prefix
        self.stream = stream or stream_name(prefix, "events")
        self.spec = spec or ConsumerSpec()
        self.poll = poll
        self.tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._own_provider = tracer_provider is not None
        self.propagator = propagator or propagate.get_global_textmap()
        #: svc.trace: a record per handled delivery of a sampled trace (None: no records).
        self.records = records
        self._subscriptions: list[Subscription[Any]] = []  # of any message types

    @property
    def spans(self) -> bool:
        """True when handlers run in spans of a tracer (given, or installed)."""
        return self._own_provider or tracecontext.tracer_installed()

    async def subscribe(self, message_type: type[M], handler: Handler[M]) -> Subscription[M]:
        """Deliver events of `message_type` to `handler(message, meta)` until `close()`."""
        name = consumer_name(self.deployment, message_type.DESCRIPTOR.full_name)
        subscription = Subscription(self, message_type, handler, name)
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.stop()


@contextlib.asynccontextmanager
async def _working(msg: Msg, interval: float) -> AsyncIterator[None]:
    """Tell JetStream every `interval` that `msg` is still being worked on (+WPI), so a long
    handler is not redelivered to another replica while it runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        await cancel_and_wait(task)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


#: grpc's UNKNOWN: what a handler that raised is recorded as.
_UNKNOWN_CODE = 2


def _identity_of(source: str) -> str:
    """The publisher's identity as the event's ce-source names it ("" if it is no deployment
    name: the header is the publisher's word, shown, not trusted)."""
    try:
        return spiffe_id(check_deployment(source))
    except ValueError:
        return ""
