"""grpc.health.v1.Health for a host that drains: grpc's own servicer, whose Watch streams can
be ended when the server stops accepting.

grpc's Watch never returns by itself, and `server.stop(grace)` waits for every call in flight,
so one forgotten watcher (grpcurl, a caller that did not close its channel) would hold a
stopping process for its whole grace period. Mesh callers close their Watch when the instance
leaves the registry; `end_watches()` ends whatever is left, with status OK.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from mesh.aio import cancel_and_wait

__all__ = ["DrainingHealth"]


class DrainingHealth(HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self._ended.is_set():
            return
        watching = asyncio.ensure_future(super().Watch(request, context))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({watching, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(watching, ended)
        if watching.done() and not watching.cancelled():
            watching.result()  # the stream's own failure, if it had one

    def end_watches(self) -> None:
        """End every Watch stream now, and any opened later at once."""
        self._ended.set()
