"""Event naming and stream configuration: pure values and functions, no I/O.

Subject layout (language-neutral, so a consumer written in Go can join)::

    <prefix>.events.<protobuf full name>             an event
    <prefix>.dlq.<deployment>.<protobuf full name>   a dead letter of one deployment's consumer

With the default prefix `hms`, `hms.testing.v1.VoucherSubmitted` is published on
`hms.events.hms.testing.v1.VoucherSubmitted`. Events and dead letters live under different second
tokens so that their two streams (`hms.events.>` and `hms.dlq.>`) never overlap; JetStream refuses
two streams whose subjects overlap.

Headers: `Nats-Msg-Id` (the event id, JetStream's de-duplication key), the CloudEvents attributes
`ce-specversion`, `ce-id` (the same id), `ce-type`, `ce-source`, `ce-time` (a binary-mode
CloudEvent), and W3C `traceparent`/`tracestate` (docs/events.md).

>>> event_subject("hms", "hms.testing.v1.VoucherSubmitted")
'hms.events.hms.testing.v1.VoucherSubmitted'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypedDict, Unpack

__all__ = [
    "DEFAULT_PREFIX",
    "ConsumerSpec",
    "Headers",
    "StreamSpec",
    "consumer_name",
    "dead_letter_stream",
    "dead_letter_subject",
    "event_subject",
    "events_stream",
    "format_time",
    "stream_name",
    "validate_subject",
]

DEFAULT_PREFIX = "hms"

Retention = Literal["limits", "interest", "workqueue"]
Storage = Literal["file", "memory"]

# A subject token: no whitespace, no wildcard, no dot (dots separate tokens), not empty.
_TOKEN = re.compile(r"[^\s.*>]+")
# Protobuf full names are dot-separated identifiers; each is a valid subject token.
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Stream and consumer names become subject tokens of the JetStream API (and file names on disk).
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class Headers:
    """Header names of an event message (NATS headers are HTTP-like)."""

    MSG_ID = "Nats-Msg-Id"  # JetStream drops a second message with the same id in its window
    SPEC_VERSION = "ce-specversion"
    ID = "ce-id"
    TYPE = "ce-type"  # the payload's Protobuf full name
    SOURCE = "ce-source"  # the publishing deployment
    TIME = "ce-time"  # RFC 3339, UTC
    CONTENT_TYPE = "content-type"
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    # Events from an outbox: their aggregate, and "<outbox id>:<n>", the event's place among
    # that outbox's events of that aggregate (1, 2, 3, ...), which consumers apply in order.
    AGGREGATE = "Hms-Aggregate"
    SEQUENCE = "Hms-Sequence"
    # Dead letters carry the original headers plus these.
    DLQ_REASON = "Hms-Dlq-Reason"  # "handler-failed" or "undecodable"
    DLQ_ERROR = "Hms-Dlq-Error"  # the error's text, one line, truncated
    DLQ_DELIVERIES = "Hms-Dlq-Deliveries"
    DLQ_SUBJECT = "Hms-Dlq-Subject"  # the subject the event was published on
    DLQ_STREAM = "Hms-Dlq-Stream"
    DLQ_SEQUENCE = "Hms-Dlq-Sequence"  # the event's sequence in its stream
    DLQ_CONSUMER = "Hms-Dlq-Consumer"

    SPEC_VERSION_VALUE = "1.0"
    CONTENT_TYPE_VALUE = "application/protobuf"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, always with microseconds (so stamps also compare correctly as text):
    the `ce-time` header and the outbox's stamps.

    >>> format_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    '2025-01-02T03:04:05.000000Z'
    """
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def validate_subject(subject: str, *, wildcards: bool = False) -> str:
    """`subject` if every token is valid; `wildcards` allows `*` tokens and a final `>`."""
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and index == len(tokens) - 1)):
            continue
        if not _TOKEN.fullmatch(token):
            raise ValueError(
                f"subject {subject!r}: token {index + 1} ({token!r}) must be non-empty and "
                "hold no whitespace, '.', '*' or '>'"
            )
    return subject


def _check_prefix(prefix: str) -> None:
    validate_subject(prefix)


def _check_full_name(full_name: str) -> None:
    if not _FULL_NAME.fullmatch(full_name):
        raise ValueError(f"{full_name!r} is not a Protobuf full name (package.Message)")


def event_subject(prefix: str, full_name: str) -> str:
    """The subject events of type `full_name` are published on."""
    _check_prefix(prefix)
    _check_full_name(full_name)
    return f"{prefix}.events.{full_name}"


def dead_letter_subject(prefix: str, deployment: str, full_name: str) -> str:
    """Where `deployment`'s consumer of `full_name` puts events it gave up on."""
    _check_prefix(prefix)
    _check_full_name(full_name)
    if not _NAME.fullmatch(deployment):
        raise ValueError(f"deployment {deployment!r}: use letters, digits, '-' and '_' only")
    return f"{prefix}.dlq.{deployment}.{full_name}"


def stream_name(prefix: str, kind: str) -> str:
    """`hms` + `events` -> `HMS_EVENTS` (stream names may not contain '.')."""
    _check_prefix(prefix)
    return f"{prefix}_{kind}".replace(".", "_").replace("-", "_").upper()


def consumer_name(deployment: str, full_name: str) -> str:
    """The durable consumer of `deployment` for one event type.

    Replicas of a deployment share it (each event goes to one of them) and a restarted replica
    resumes where the deployment stopped. Dots become '_' (consumer names may not hold '.'), so
    `fee-calc` + `hms.testing.v1.VoucherSubmitted` -> `fee-calc__hms_testing_v1_VoucherSubmitted`.
    """
    if not _NAME.fullmatch(deployment):
        raise ValueError(f"deployment {deployment!r}: use letters, digits, '-' and '_' only")
    _check_full_name(full_name)
    return f"{deployment}__{full_name.replace('.', '_')}"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream as the mesh declares it; `ensure_stream` creates or updates it.

    Durations are seconds; 0 for `max_age` and -1 for the counts mean unlimited. The duplicate
    window must exceed the longest time a publisher may retry one event (the outbox relay's
    longest backoff), or a retry after the window is stored twice.
    """

    name: str
    subjects: tuple[str, ...]
    max_age: float = 7 * 24 * 3600.0
    duplicate_window: float = 120.0
    max_msgs: int = -1
    max_bytes: int = -1
    retention: Retention = "limits"
    storage: Storage = "file"
    replicas: int = 1

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"stream name {self.name!r}: use letters, digits, '-' and '_' only")
        if isinstance(self.subjects, str):
            raise ValueError(f"stream {self.name}: subjects must be a tuple, not one string")
        if not self.subjects:
            raise ValueError(f"stream {self.name}: at least one subject is required")
        for subject in self.subjects:
            validate_subject(subject, wildcards=True)
        self._check_limits()

    def _check_limits(self) -> None:
        for field in ("max_age", "duplicate_window"):
            value = getattr(self, field)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"stream {self.name}: {field} must be >= 0 s, got {value}")
        if self.duplicate_window <= 0:
            raise ValueError(f"stream {self.name}: duplicate_window must be > 0 s")
        if self.max_age and self.duplicate_window > self.max_age:
            raise ValueError(
                f"stream {self.name}: duplicate_window {self.duplicate_window} s exceeds "
                f"max_age {self.max_age} s (JetStream refuses this)"
            )
        for field in ("max_msgs", "max_bytes"):
            value = getattr(self, field)
            if value == 0 or value < -1:
                raise ValueError(f"stream {self.name}: {field} must be > 0 or -1, got {value}")
        if self.retention not in ("limits", "interest", "workqueue"):
            raise ValueError(f"stream {self.name}: unknown retention {self.retention!r}")
        if self.storage not in ("file", "memory"):
            raise ValueError(f"stream {self.name}: unknown storage {self.storage!r}")
        if self.replicas < 1:
            raise ValueError(f"stream {self.name}: replicas must be >= 1, got {self.replicas}")


class StreamLimits(TypedDict, total=False):
    """The settings of a `StreamSpec` that `events_stream` and `dead_letter_stream` take."""

    max_age: float
    duplicate_window: float
    max_msgs: int
    max_bytes: int
    retention: Retention
    storage: Storage
    replicas: int


def events_stream(prefix: str = DEFAULT_PREFIX, **limits: Unpack[StreamLimits]) -> StreamSpec:
    """The stream holding every event under `prefix` (`HMS_EVENTS` on `hms.events.>`)."""
    _check_prefix(prefix)
    return StreamSpec(stream_name(prefix, "events"), (f"{prefix}.events.>",), **limits)


def dead_letter_stream(prefix: str = DEFAULT_PREFIX, **limits: Unpack[StreamLimits]) -> StreamSpec:
    """The stream holding dead letters under `prefix` (`HMS_DLQ` on `hms.dlq.>`)."""
    _check_prefix(prefix)
    return StreamSpec(stream_name(prefix, "dlq"), (f"{prefix}.dlq.>",), **limits)


@dataclass(frozen=True)
class ConsumerSpec:
    """How a deployment's durable consumer redelivers; durations in seconds.

    - `ack_wait`: how long a silent subscriber (crashed, killed, cut off) holds an event before
      JetStream gives it to another replica. A live subscriber tells JetStream it is still working
      every `ack_wait / 3`, so a handler may run longer than this.
    - `backoff`: after the n-th failed attempt the event is redelivered after `backoff[n-1]` (the
      last value repeats). A silent subscriber counts as a failed attempt after `ack_wait`: the
      server-side BackOff list is `ack_wait + backoff[i]` (JetStream lets a BackOff list replace
      AckWait, so AckWait alone is not sent as such).
    - `max_deliver`: attempts before the event goes to the dead letters.

    JetStream's own defaults (30 s AckWait, unlimited deliveries) would retry a poison event
    forever; these defaults give up after 5 attempts over about 3 minutes.
    """

    ack_wait: float = 30.0
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    max_deliver: int = 5
    max_in_flight: int = 64

    def __post_init__(self) -> None:
        if not math.isfinite(self.ack_wait) or self.ack_wait <= 0:
            raise ValueError(f"consumer ack_wait must be > 0 s, got {self.ack_wait}")
        if isinstance(self.backoff, (int, float)):
            raise ValueError("consumer backoff must be a tuple of delays, not one number")
        if not self.backoff:
            raise ValueError("consumer backoff needs at least one delay")
        for delay in self.backoff:
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(f"consumer backoff delays must be >= 0 s, got {delay}")
        if self.max_deliver < 1:
            raise ValueError(f"consumer max_deliver must be >= 1, got {self.max_deliver}")
        if len(self.backoff) > self.max_deliver:
            raise ValueError(
                f"consumer backoff has {len(self.backoff)} delays but max_deliver is "
                f"{self.max_deliver} (JetStream refuses more delays than deliveries)"
            )
        if self.max_in_flight < 1:
            raise ValueError(f"consumer max_in_flight must be >= 1, got {self.max_in_flight}")

    def retry_delay(self, delivery: int) -> float:
        """The delay before redelivering after attempt `delivery` (1-based) failed."""
        if delivery < 1:
            raise ValueError(f"delivery count starts at 1, got {delivery}")
        return self.backoff[min(delivery, len(self.backoff)) - 1]

    def server_backoff(self) -> list[float]:
        """The BackOff list sent to JetStream: per-delivery time before a silent redelivery."""
        return [self.ack_wait + delay for delay in self.backoff]

    @property
    def heartbeat(self) -> float:
        """How often a running handler tells JetStream it is still working."""
        return self.ack_wait / 3
