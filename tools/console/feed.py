"""The console's NATS connection, as the operator `ops`: the mesh's telemetry on core NATS
(`svc.trace.>` call records, `svc.mesh.>` balancer and breaker decisions) and the events
stream's headers (an ordered consumer from now on, headers only), which tie each event to the
trace it was published in.

The connection is retried forever; whenever its state changes (`connected`, or an error
NATS reported: a refused subscription names the permission) `on_state` hears it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.aio import cancel_and_wait
from mesh.controlplane import NatsAccess
from mesh.events.subjects import Headers
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["DECISION_SUBJECT", "TRACE_SUBJECT", "NatsFeed"]

log = logging.getLogger(__name__)

TRACE_SUBJECT = "svc.trace.>"
DECISION_SUBJECT = "svc.mesh.>"
CONNECT_TIMEOUT = 2.0
#: Messages a slow console lets NATS queue for it before it drops some (NATS counts them).
PENDING_LIMIT = 100_000
_RECONNECT = BackoffPolicy(base=0.5, cap=5.0)

OnMessage = Callable[[str, bytes], None]
OnEvent = Callable[[str, int, dict[str, str]], None]


class NatsFeed:
    """Hands svc.trace messages to `on_trace(subject, data)`, svc.mesh ones to
    `on_decision(subject, data)`, and each event's (subject, stream sequence, headers) to
    `on_event`."""

    def __init__(
        self,
        url: str,
        access: NatsAccess,
        *,
        events_stream: str,
        events_subject: str,
        on_trace: OnMessage,
        on_decision: OnMessage,
        on_event: OnEvent,
        on_state: Callable[[dict[str, Any]], None],
    ) -> None:
        self.url = url
        self.access = access
        self.events_stream = events_stream
        self.events_subject = events_subject
        self.on_trace = on_trace
        self.on_decision = on_decision
        self.on_event = on_event
        self.on_state = on_state
        self.nc: Any = None
        self.state: dict[str, Any] = {"connected": False, "error": "connecting"}
        self._task: asyncio.Task[None] | None = None
        self._events_sub: Any = None
        self._events_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-nats")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._events_task)
        nc, self.nc = self.nc, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:  # closing what may already be broken
                log.debug("closing NATS failed", exc_info=True)

    def _set_state(self, connected: bool, error: str) -> None:
        state = {"connected": connected, "error": error}
        if state != self.state:
            self.state = state
            self.on_state(state)

    async def _run(self) -> None:
        import nats

        backoff = Backoff(_RECONNECT)
        while self.nc is None:
            try:
                self.nc = await asyncio.wait_for(
                    nats.connect(
                        self.url.split(","),
                        connect_timeout=CONNECT_TIMEOUT,
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=1.0,
                        disconnected_cb=self._disconnected,
                        reconnected_cb=self._reconnected,
                        error_cb=self._error,
                        **self.access.options(),
                    ),
                    CONNECT_TIMEOUT * 2,
                )
            except Exception as exc:  # refused, no server, TLS: said on the page, tried again
                reason = str(exc) or type(exc).__name__
                self._set_state(False, f"NATS at {self.url}: {reason}")
                await asyncio.sleep(backoff.next_delay())
        self._set_state(True, "")
        await self.nc.subscribe(TRACE_SUBJECT, cb=self._trace, pending_msgs_limit=PENDING_LIMIT)
        await self.nc.subscribe(
            DECISION_SUBJECT, cb=self._decision, pending_msgs_limit=PENDING_LIMIT
        )
        self._events_task = asyncio.create_task(self._follow_events(), name="console-events")

    async def _trace(self, msg: Any) -> None:
        self.on_trace(msg.subject, msg.data)

    async def _decision(self, msg: Any) -> None:
        self.on_decision(msg.subject, msg.data)

    async def _disconnected(self) -> None:
        self._set_state(False, f"lost the connection to NATS at {self.url}; reconnecting")

    async def _reconnected(self) -> None:
        self._set_state(True, "")

    async def _error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if "permissions violation" in text.lower():
            # Connected, but refused something: the page says what (docs/security.md).
            self._set_state(self.connected, f"NATS refused the console (as ops): {text}")
        else:
            log.debug("NATS: %s", text)

    async def _follow_events(self) -> None:
        """An ordered consumer of the events stream from now, headers only, kept open."""
        from nats.js.api import DeliverPolicy

        backoff = Backoff(BackoffPolicy(base=1.0, cap=10.0))
        while self._events_sub is None:
            try:
                self._events_sub = await self.nc.jetstream().subscribe(
                    self.events_subject,
                    stream=self.events_stream,
                    cb=self._event,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW,
                    headers_only=True,
                )
            except Exception as exc:  # no stream yet, NATS away: traces lack events meanwhile
                log.info("following %s failed (%s); again later", self.events_stream, exc)
                await asyncio.sleep(backoff.next_delay())

    async def _event(self, msg: Any) -> None:
        headers = dict(msg.headers or {})
        try:
            sequence = msg.metadata.sequence.stream
        except Exception:  # not a JetStream delivery: nothing to place it by
            return
        if Headers.TYPE in headers or Headers.TRACEPARENT in headers:
            self.on_event(msg.subject, sequence, headers)
