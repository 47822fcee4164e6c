"""What the audit log records of an event: its case, its trace, its payload as JSON.

The case (the entry's subject) is the aggregate the producer's outbox named (`Hms-Aggregate`:
an application, renewal, licence or payment id); an event published without an outbox has
none, and is filed under its own id. The trace id is that of the request that caused the
event, from its W3C `traceparent`.

>>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
'4bf92f3577b34da6a3ce929d0e0e4736'
>>> parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
''
"""

from __future__ import annotations

import datetime
import json
import re

from google.protobuf import json_format
from google.protobuf.message import Message

from hms.housing.v1.housing_pb2 import VoucherSubmitted
from hms.licensing.v1.licensing_pb2 import LicenceIssued, LicenceRefused
from hms.passport.v1.passport_pb2 import RenewalSubmitted
from hms.payments.v1.payments_pb2 import PaymentCaptured, PaymentRefunded
from hms_services.audit.chain import Record
from mesh.events import EventMeta, Headers

__all__ = [
    "AUDITED_EVENTS",
    "parse_traceparent",
    "payload_json",
    "record_of",
    "subject_of",
    "to_us",
    "trace_id_of",
]

#: Every event the platform publishes (services/audit/service.toml, `subscribes`).
AUDITED_EVENTS: tuple[type[Message], ...] = (
    VoucherSubmitted,
    RenewalSubmitted,
    LicenceIssued,
    LicenceRefused,
    PaymentCaptured,
    PaymentRefunded,
)

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INVALID_TRACE_ID = "0" * 32
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def parse_traceparent(value: str) -> str:
    """The trace id of a `traceparent` header value; "" if it is missing or invalid."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return ""
    version, trace_id, parent_id, _flags, rest = match.groups()
    # Version ff is forbidden; version 00 has nothing after the flags; all-zero ids are invalid.
    if version == "ff" or (version == "00" and rest) or parent_id == "0" * 16:
        return ""
    return "" if trace_id == _INVALID_TRACE_ID else trace_id


def trace_id_of(meta: EventMeta) -> str:
    """The event's trace id: `EventMeta.trace_id` where the mesh provides it, else read from
    the `traceparent` header."""
    given = getattr(meta, "trace_id", None)
    if isinstance(given, str) and given:
        return given
    return parse_traceparent(meta.headers.get(Headers.TRACEPARENT, ""))


def subject_of(meta: EventMeta) -> str:
    """The case the event is about: its outbox aggregate, else its own id."""
    return meta.headers.get(Headers.AGGREGATE) or meta.id


def payload_json(message: Message) -> str:
    """The event as compact JSON (the proto3 JSON mapping, keys sorted), as the REST API
    shows messages."""
    as_dict = json_format.MessageToDict(message)
    return json.dumps(as_dict, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def to_us(moment: datetime.datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (integer arithmetic, exact)."""
    if moment.tzinfo is None:
        raise ValueError("record time must be timezone-aware")
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def record_of(message: Message, meta: EventMeta, recorded_at: datetime.datetime) -> Record:
    """What the audit log keeps of `message`, recorded at `recorded_at`."""
    if not meta.id:
        raise ValueError("the event has no id: it cannot be recorded once and only once")
    return Record(
        event_id=meta.id,
        event_type=message.DESCRIPTOR.full_name,
        source=meta.source,
        subject=subject_of(meta),
        trace_id=trace_id_of(meta),
        record_time_us=to_us(recorded_at),
        payload_json=payload_json(message),
    )
