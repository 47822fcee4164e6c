"""gRPC handlers of hms.audit.v1.AuditService, and the event handler that records events.

Each event is recorded once: `recorder` wraps the append in an `IdempotentHandler`, whose
transaction (BEGIN IMMEDIATE) holds the write lock from the check of the event id to the
commit of the entry, so a redelivery records nothing and two replicas never fork the chain.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from hms.audit.v1 import audit_pb2, audit_pb2_grpc
from hms_services.audit.chain import Entry
from hms_services.audit.record import record_of
from hms_services.audit.store import AuditLog, append_in
from mesh import InvalidArgument
from mesh.events import EventMeta, IdempotentHandler

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["CONSUMER", "AuditService", "entry_pb", "recorder"]

#: The consumer name under which events count as recorded (one for every event type, so
#: a case's events are recorded in the order its outbox numbered them, whatever their type).
CONSUMER = "audit"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def recorder(
    db_path: str | Path, *, clock: Callable[[], datetime.datetime] = _utc_now
) -> IdempotentHandler[Message]:
    """The subscription handler that appends each event to the chain in `db_path`, once."""

    def record(conn: sqlite3.Connection, message: Message, meta: EventMeta) -> None:
        append_in(conn, record_of(message, meta, clock()))

    return IdempotentHandler(db_path, CONSUMER, record)


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    """Lists a case's entries and verifies the chain, reading `log`."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def ListEntries(
        self,
        request: audit_pb2.ListEntriesRequest,
        context: grpc.aio.ServicerContext[
            audit_pb2.ListEntriesRequest, audit_pb2.ListEntriesResponse
        ],
    ) -> audit_pb2.ListEntriesResponse:
        if not request.subject.strip():
            raise InvalidArgument.field(
                "subject", "is required: the case id (application, renewal, licence or payment)"
            )
        entries = self._log.entries_for(request.subject)
        return audit_pb2.ListEntriesResponse(entries=[entry_pb(e) for e in entries])

    async def VerifyChain(
        self,
        request: audit_pb2.VerifyChainRequest,
        context: grpc.aio.ServicerContext[
            audit_pb2.VerifyChainRequest, audit_pb2.VerifyChainResponse
        ],
    ) -> audit_pb2.VerifyChainResponse:
        # It reads every entry: in a worker thread, so the service answers other calls meanwhile.
        verdict = await asyncio.to_thread(self._log.verify)
        return audit_pb2.VerifyChainResponse(
            intact=verdict.intact,
            entries=verdict.entries,
            first_broken_sequence=verdict.first_broken_sequence,
            problem=verdict.problem,
        )


def entry_pb(entry: Entry) -> audit_pb2.Entry:
    seconds, micros = divmod(entry.record_time_us, 1_000_000)
    return audit_pb2.Entry(
        sequence=entry.sequence,
        event_id=entry.event_id,
        event_type=entry.event_type,
        source=entry.source,
        subject=entry.subject,
        trace_id=entry.trace_id,
        record_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000),
        payload_json=entry.payload_json,
        previous_hash=entry.previous_hash,
        hash=entry.hash,
    )
