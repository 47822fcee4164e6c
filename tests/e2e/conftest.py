"""The whole platform for end-to-end tests: one real stack per session (etcd and NATS secured,
every service under services/, the gateway with its JWT gate), started on first use.

The stack lives on an event loop of its own, in a background thread, for the whole session:
its supervisor and registry watch keep running between tests, and tests stay synchronous
(REST with http.client, the events stream read as the operator through the stack's loop).

REST goes through http.client rather than `tools.flows.Rest`: urllib sends `Connection:
close` and raises on a body the gateway refused before reading it (its 413 lost to a broken
pipe), where a client that keeps the connection reads the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import threading
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from hms_tools.devjwt import mint_token
from hms_tools.flows import Answer, wait_for_routes
from hms_tools.stack import Stack, StackConfig
from mesh.controlplane import nats_access
from mesh.events.subjects import Headers, events_stream
from mesh.server.enduser import STAFF_SCOPE
from mesh.testing import wait_until
from mesh.tls import TlsFiles

T = TypeVar("T")

#: How long the stack may take to start on a loaded machine, and to stop.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
#: How long one wait on the stack's loop (a stream info, a connect) may take, and one request.
CALL_TIMEOUT = 15.0

#: The gRPC services behind the routes of docs/platform.md: the gateway must know them all.
ROUTED_SERVICES = (
    "hms.identity.v1.IdentityService",
    "hms.documents.v1.DocumentsService",
    "hms.eligibility.v1.EligibilityService",
    "hms.fees.v1.FeeService",
    "hms.licensing.v1.LicensingService",
    "hms.passport.v1.PassportService",
    "hms.housing.v1.HousingService",
    "hms.report.v1.ReportService",
    "hms.notify.v1.NotifyService",
    "hms.audit.v1.AuditService",
)


@dataclass(frozen=True)
class Event:
    """One message of the events stream, as the operator sees it."""

    sequence: int
    type: str
    aggregate: str


class Platform:
    """A running stack: REST calls with a token of given scopes, and the events stream."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop, gateway: str) -> None:
        self.stack = stack
        self.gateway = gateway
        self._loop = loop
        self._address = urlsplit(gateway)
        self._nats: Any = None
        self._stream = events_stream()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run `work` on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def call(
        self,
        method: str,
        path: str,
        *,
        scopes: Iterable[str] | None = (),
        json_body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        subject: str | None = None,
    ) -> Answer:
        """One REST request through the gateway with a token holding `scopes` (None: no
        token at all); the body is `json_body` as JSON, or `raw` as it is. The token is
        `subject`'s, holding just `scopes`; by default a caseworker's (`e2e`, with the
        `caseworker` scope too), who may act for any citizen."""
        headers = {"content-type": content_type}
        if scopes is not None:
            if subject is None:
                subject, scopes = "e2e", [*scopes, STAFF_SCOPE]
            token = mint_token(self.stack.state_dir, subject, scopes)
            headers["authorization"] = f"Bearer {token}"
        data = json.dumps(json_body).encode() if json_body is not None else raw
        host, port = self._address.hostname or "127.0.0.1", self._address.port
        connection = http.client.HTTPConnection(host, port, timeout=CALL_TIMEOUT)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            if data is not None:
                connection.putheader("content-length", str(len(data)))
            connection.endheaders()
            if data is not None:
                # Answered before the whole body was read (401, 413): the answer is still read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    connection.send(data)
            response = connection.getresponse()
            return Answer(response.status, response.read(), dict(response.getheaders()))
        finally:
            connection.close()

    # -- the events stream, read as the operator (`mesh events ls`) ------------------------

    async def _connect(self) -> None:
        if self._nats is None:
            url = self.stack.info["nats"]
            access = nats_access([url], None, TlsFiles(self.stack.tls_dir, "ops"))
            self._nats = await nats.connect(
                url, connect_timeout=5, allow_reconnect=False, **access.options()
            )

    async def _last_sequence(self) -> int:
        await self._connect()
        info = await self._nats.jetstream().stream_info(self._stream.name)
        return int(info.state.last_seq)

    async def _events_after(self, sequence: int) -> list[Event]:
        last = await self._last_sequence()
        if last <= sequence:
            return []
        # An ephemeral ordered consumer from `sequence`, as `mesh events tail` reads.
        subscription = await self._nats.jetstream().subscribe(
            self._stream.subjects[0],
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=sequence + 1
            ),
        )
        try:
            events = []
            while not events or events[-1].sequence < last:
                message = await subscription.next_msg(timeout=CALL_TIMEOUT)
                headers = message.headers or {}
                events.append(
                    Event(
                        message.metadata.sequence.stream,
                        headers.get(Headers.TYPE, ""),
                        headers.get(Headers.AGGREGATE, ""),
                    )
                )
            return events
        finally:
            await subscription.unsubscribe()

    def events_last_sequence(self) -> int:
        """The sequence of the last event in the events stream (0 when empty)."""
        return self.run(self._last_sequence())

    def events_after(self, sequence: int) -> list[Event]:
        """Every event in the stream after `sequence`, in order."""
        return self.run(self._events_after(sequence))

    def wait_for_events(
        self, after: int, wanted: Iterable[tuple[str, str]], timeout: float = 20.0
    ) -> list[Event]:
        """Wait until every (event type, aggregate) of `wanted` is in the stream after sequence
        `after` (an outbox relay publishes in order: what its service wrote before is there
        too); every event after `after` then."""
        pairs = set(wanted)
        seen: list[Event] = []

        def arrived() -> bool:
            seen[:] = self.events_after(after)
            return pairs <= {(event.type, event.aggregate) for event in seen}

        try:
            wait_until(arrived, timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(
                f"not all of {sorted(pairs)} after #{after} within {timeout} s: {seen}"
            ) from None
        return seen

    async def close(self) -> None:
        if self._nats is not None:
            await self._nats.close()
            self._nats = None


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One stack of every service for the session, its gateway knowing every route."""
    with pytest.MonkeyPatch.context() as env:
        # A developer's MESH_* variables (another stack's etcd, NATS, TLS) must not reach
        # this stack's services, which take theirs from it.
        for name in [n for n in os.environ if n.startswith("MESH_")]:
            env.delenv(name)
        yield from _running_platform(tmp_path_factory.mktemp("platform") / "state")


def _running_platform(state_dir: Path) -> Iterator[Platform]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="platform-stack", daemon=True)
    thread.start()
    stack = Stack(StackConfig(state_dir=state_dir))
    starting = asyncio.run_coroutine_threadsafe(stack.start(), loop)
    platform: Platform | None = None
    try:
        info = starting.result(START_TIMEOUT)
        platform = Platform(stack, loop, info["gateway"])
        platform.run(wait_for_routes(info["gateway"], ROUTED_SERVICES), timeout=60)
        yield platform
    finally:
        starting.cancel()  # a start that timed out stops what it started
        if platform is not None:
            platform.run(platform.close())
        asyncio.run_coroutine_threadsafe(stack.stop(), loop).result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


__all__ = ["Event", "Platform", "platform"]
