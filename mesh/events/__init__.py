"""Events over NATS JetStream: typed Protobuf payloads, durable consumers, dead letters.

See docs/events.md for the subject layout, headers and redelivery rules.
"""

from mesh.events.idempotency import IdempotentHandler
from mesh.events.outbox import Outbox, OutboxRelay
from mesh.events.publisher import Publisher, ensure_stream
from mesh.events.subjects import (
    DEFAULT_PREFIX,
    ConsumerSpec,
    Headers,
    StreamSpec,
    dead_letter_stream,
    events_stream,
)
from mesh.events.subscriber import EventMeta, Subscriber, Subscription

__all__ = [
    "DEFAULT_PREFIX",
    "ConsumerSpec",
    "EventMeta",
    "Headers",
    "IdempotentHandler",
    "Outbox",
    "OutboxRelay",
    "Publisher",
    "StreamSpec",
    "Subscriber",
    "Subscription",
    "dead_letter_stream",
    "ensure_stream",
    "events_stream",
]
