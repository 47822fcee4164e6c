"""gRPC handlers of the trace witness, a test backend.

`GetItem` does what a real handler does with a request: it calls another service (Echo),
records an event in its outbox in the same transaction as its own write, and publishes another
event directly. It answers like the mirror backend, with the request and the metadata it came
with, plus the trace ids it saw: its own (`witness-trace-id`) and Echo's (`echo-trace-id`), so
a test follows one REST request's trace through the gateway, the hop and both events (their
voucher ids are ``<id>-outbox`` and ``<id>-direct``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from hms.testing.v1 import echo_pb2, echo_pb2_grpc, events_pb2, mirror_pb2, mirror_pb2_grpc
from mesh.events import Outbox, Publisher
from mesh.tracecontext import current_trace_id

__all__ = ["TraceWitness"]

_GET_ITEM = "/hms.testing.v1.MirrorService/GetItem"


class TraceWitness(mirror_pb2_grpc.MirrorServiceServicer):
    """Example::

    TraceWitness(echo=stub_factory, db=sqlite3.connect(path), publisher=runtime.publisher)
    """

    def __init__(
        self,
        *,
        echo: Callable[[], Awaitable[echo_pb2_grpc.EchoServiceStub]],
        db: sqlite3.Connection,
        publisher: Callable[[], Awaitable[Publisher]],
    ) -> None:
        self._echo = echo
        self._db = db
        self._publisher = publisher

    async def GetItem(
        self, request: mirror_pb2.MirrorRequest, context: Any
    ) -> mirror_pb2.MirrorResponse:
        stub = await self._echo()
        echoed = await stub.Echo(echo_pb2.EchoRequest(message=request.id), timeout=5)
        with self._db:  # the outbox row commits with the handler's own write, or neither
            self._db.execute("INSERT INTO seen (item) VALUES (?)", (request.id,))
            Outbox.add(
                self._db,
                events_pb2.VoucherSubmitted(voucher_id=f"{request.id}-outbox"),
                aggregate=request.id,
            )
        publisher = await self._publisher()
        await publisher.publish(events_pb2.VoucherSubmitted(voucher_id=f"{request.id}-direct"))
        seen = [
            mirror_pb2.MetadataEntry(key=key, value=value)
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        ]
        seen.append(mirror_pb2.MetadataEntry(key="witness-trace-id", value=current_trace_id()))
        seen.append(mirror_pb2.MetadataEntry(key="echo-trace-id", value=echoed.hops[0].trace_id))
        return mirror_pb2.MirrorResponse(received=request, method=_GET_ITEM, metadata=seen)
