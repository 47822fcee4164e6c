"""The whole platform for end-to-end tests: one real stack per session (etcd and NATS secured,
every service under services/, the gateway with its JWT gate), started on first use.

The stack lives on an event loop of its own, in a background thread, for the whole session:
its supervisor and registry watch keep running between tests, and tests stay synchronous
(REST through `tools.flows.Rest`, NATS stream info through the stack's loop).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import nats
import pytest

from hms_tools.devjwt import mint_token
from hms_tools.flows import Answer, Rest, wait_for_routes
from hms_tools.stack import Stack, StackConfig
from mesh.controlplane import nats_access
from mesh.events.subjects import events_stream
from mesh.tls import TlsFiles

T = TypeVar("T")

#: How long the stack may take to start on a loaded machine, and to stop.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
#: How long one wait on the stack's loop (a stream info, a connect) may take.
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


class Platform:
    """A running stack: REST calls with a token of given scopes, and the events stream."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop, gateway: str) -> None:
        self.stack = stack
        self.gateway = gateway
        self._loop = loop
        self._rest = Rest(gateway, self._token, subject="e2e")
        self._nats: Any = None
        self._stream = events_stream().name

    def _token(self, subject: str, scopes: Iterable[str]) -> str:
        return mint_token(self.stack.state_dir, subject, scopes)

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
    ) -> Answer:
        """One REST request through the gateway with a token holding `scopes` (None: no
        token at all)."""
        return self._rest.call(
            method, path, scopes=scopes, json_body=json_body, raw=raw, content_type=content_type
        )

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
        info = await self._nats.jetstream().stream_info(self._stream)
        return int(info.state.last_seq)

    def events_last_sequence(self) -> int:
        """The sequence of the last event in the events stream (0 when empty)."""
        return self.run(self._last_sequence())

    def wait_for_events(self, after: int, count: int, timeout: float = 20.0) -> int:
        """Wait until the stream holds at least `count` events after sequence `after`; the
        last sequence then."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.events_last_sequence()
            if last >= after + count:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{last - after} events after #{after} within {timeout} s, expected {count}"
                )
            time.sleep(0.05)

    async def close(self) -> None:
        if self._nats is not None:
            await self._nats.close()
            self._nats = None


def _clean_environment() -> None:
    """A developer's MESH_* variables (another stack's etcd, NATS, TLS) must not leak into
    this stack's services, which take theirs from it."""
    for name in [n for n in os.environ if n.startswith("MESH_")]:
        del os.environ[name]


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One stack of every service for the session, its gateway knowing every route."""
    _clean_environment()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="platform-stack", daemon=True)
    thread.start()
    stack = Stack(StackConfig(state_dir=tmp_path_factory.mktemp("platform") / "state"))
    try:
        info = asyncio.run_coroutine_threadsafe(stack.start(), loop).result(START_TIMEOUT)
        platform = Platform(stack, loop, info["gateway"])
        platform.run(wait_for_routes(info["gateway"], ROUTED_SERVICES), timeout=60)
        yield platform
        platform.run(platform.close())
    finally:
        # Also after a failed or timed-out start: whatever did start is stopped.
        asyncio.run_coroutine_threadsafe(stack.stop(), loop).result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


__all__ = ["Platform", "platform"]
