"""The console: the stack's registry, NATS and gateway watched as the operator `ops`, their
figures kept, pushed to every open page and answered on the HTTP API (app.py); `serve` runs
it under uvicorn until cancelled.

Where the stack is comes from `<state-dir>/stack.json` (`mesh up` writes it): etcd, NATS,
the namespace, the TLS directory and operator certificate, the gateway's URL. A stack
restarted elsewhere (new ports) needs the console restarted too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hms_tools.console.aggregate import TraceStore, TrafficWindow, is_trace_id, trace_id_of
from hms_tools.console.app import ApiError, ConsoleApp
from hms_tools.console.feed import NatsFeed
from hms_tools.console.gateway import ExploreRequest, GatewayClient, GatewayUnavailable
from hms_tools.console.instances import Decisions, instance_rows, sd_groups
from hms_tools.console.registry import RegistryWatch
from hms_tools.console.sse import Hub, frame
from hms_tools.console.streams import (
    DeadLetterGone,
    RedriveRefused,
    dead_letters,
    redrive,
    stream_rows,
)
from hms_tools.stackfile import read_stack_file
from mesh.aio import cancel_and_wait
from mesh.events.subjects import DEFAULT_PREFIX, Headers, stream_name

__all__ = ["Console", "ConsoleSettings", "serve"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATS_INTERVAL_S = 1.0
#: How long one JetStream request of the API may take.
NATS_TIMEOUT_S = 5.0
MAX_LIMIT = 1000


@dataclass(frozen=True)
class ConsoleSettings:
    state_dir: Path
    etcd: tuple[str, ...]
    nats: str | None
    namespace: str = "hms"
    tls_dir: Path | None = None
    ops_cert: str = "ops"
    gateway: str | None = None
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_stack(cls, state_dir: Path) -> ConsoleSettings:
        """The running stack in `state_dir` (FileNotFoundError naming stack.json if none)."""
        stack = read_stack_file(state_dir)
        if not stack.get("etcd"):
            raise ValueError(f"{Path(state_dir) / 'stack.json'} names no etcd")
        return cls(
            state_dir=Path(state_dir).resolve(),
            etcd=tuple(e for e in str(stack["etcd"]).split(",") if e),
            nats=stack.get("nats") or None,
            namespace=str(stack.get("namespace") or "hms"),
            tls_dir=Path(stack["tls_dir"]) if stack.get("tls_dir") else None,
            ops_cert=str(stack.get("ops_cert") or "ops"),
            gateway=stack.get("gateway") or None,
        )


class Console:
    def __init__(self, settings: ConsoleSettings, *, clock: Callable[[], float] = time.time):
        from mesh.controlplane import etcd_client_tls, nats_access
        from mesh.tls import TlsFiles

        self.settings = settings
        self.clock = clock
        self.hub = Hub()
        self.traffic = TrafficWindow(clock())
        self.traces = TraceStore()
        self.decisions = Decisions()
        self.identity = (
            TlsFiles(settings.tls_dir, settings.ops_cert) if settings.tls_dir is not None else None
        )
        self.registry = RegistryWatch(
            settings.etcd,
            settings.namespace,
            etcd_tls=etcd_client_tls(settings.etcd, None, self.identity),
            identity=self.identity,
            on_change=self._instances_changed,
        )
        self.feed: NatsFeed | None = None
        if settings.nats:
            self.feed = NatsFeed(
                settings.nats,
                nats_access(settings.nats.split(","), None, self.identity),
                events_stream=stream_name(settings.prefix, "events"),
                events_subject=f"{settings.prefix}.events.>",
                on_trace=self._on_trace,
                on_decision=self._on_decision,
                on_event=self._on_event,
                on_state=lambda state: self.hub.publish("nats", state),
            )
        self.gateway = GatewayClient(settings.gateway, settings.state_dir)
        self.app = ConsoleApp(self, STATIC_DIR)
        self._rows: list[dict[str, Any]] = []
        self._registry_state: dict[str, object] = {}
        self._publishing = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.registry.start()
        if self.feed is not None:
            await self.feed.start()
        self._tasks.append(asyncio.create_task(self._tick_stats(), name="console-stats"))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        for client in list(self.hub.clients):
            client.end()
        if self.feed is not None:
            await self.feed.stop()
        await self.registry.stop()

    # -- what the page is told ----------------------------------------------------------

    def nats_state(self) -> dict[str, Any]:
        if self.feed is None:
            return {"connected": False, "error": "stack.json names no NATS"}
        return dict(self.feed.state)

    def first_frames(self) -> list[bytes]:
        """What a page that just connected gets: the state as it is now."""
        return [
            frame("nats", self.nats_state()),
            frame("registry", self.registry.state),
            frame("instances", self._current_rows()),
            frame("stats", self.traffic.snapshot(self.clock())),
            *(frame("decisions", d) for d in self.decisions.recent),
        ]

    def _current_rows(self) -> list[dict[str, Any]]:
        instances = self.registry.instances()
        return instance_rows(instances, self.registry.leases, self.registry.health, self.decisions)

    def _instances_changed(self) -> None:
        # Changes come in bursts (a stack starting, a lease poll): one publication per burst.
        if not self._publishing:
            self._publishing = True
            asyncio.get_running_loop().call_soon(self._publish_instances)

    def _publish_instances(self) -> None:
        self._publishing = False
        self.decisions.forget(self.registry.instances())
        rows = self._current_rows()
        if rows != self._rows:
            self._rows = rows
            self.hub.publish("instances", rows)
        if self.registry.state != self._registry_state:
            self._registry_state = dict(self.registry.state)
            self.hub.publish("registry", self._registry_state)

    async def _tick_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self.hub.publish("stats", self.traffic.snapshot(self.clock()))

    def _on_trace(self, subject: str, data: bytes) -> None:
        self.traces.add_records(self.traffic.add_message(data, self.clock()))

    def _on_decision(self, subject: str, data: bytes) -> None:
        event = self.decisions.add_message(data)
        if event is not None:
            self.hub.publish("decisions", event)
            self._instances_changed()

    def _on_event(self, subject: str, sequence: int, headers: dict[str, str]) -> None:
        trace_id = trace_id_of(headers.get(Headers.TRACEPARENT, ""))
        if trace_id is not None:
            self.traces.add_event(
                trace_id,
                type=headers.get(Headers.TYPE, ""),
                subject=subject,
                stream_sequence=sequence,
                time=headers.get(Headers.TIME, ""),
            )

    # -- the API ----------------------------------------------------------------------------

    def trace(self, text: str) -> dict[str, Any]:
        trace_id = text.strip().lower()
        if not is_trace_id(trace_id):
            raise ApiError(400, f"trace id {text[:80]!r} is not 32 hex digits (W3C trace id)")
        found = self.traces.get(trace_id)
        if found is None:
            raise ApiError(
                404,
                f"no such trace: {trace_id} (not among the {len(self.traces)} traces this "
                "console has seen since it started: sampled out, older, or not yet arrived)",
            )
        return found

    def recent_traces(self, limit: int) -> list[dict[str, Any]]:
        return self.traces.recent(limit)

    def sd(self) -> list[dict[str, Any]]:
        if not self.registry.synced:
            raise ApiError(503, f"the registry has not been read yet: {self.registry.state}")
        return sd_groups(self.registry.instances())

    def _js(self) -> Any:
        if self.feed is None or not self.feed.connected:
            raise ApiError(503, f"NATS is not connected: {self.nats_state()['error']}")
        return self.feed.nc.jetstream(timeout=NATS_TIMEOUT_S)

    async def manifests(self) -> dict[str, Any]:
        """What services/*/service.toml declare (tools/console/topology.py); a manifest that
        does not load is a 500 naming its file and field."""
        from hms_tools.console.topology import declared
        from hms_tools.stack import read_manifests

        try:
            loaded = await asyncio.to_thread(read_manifests)
        except (OSError, ValueError) as exc:
            raise ApiError(500, f"the manifests cannot be read: {exc}") from None
        return declared(loaded.values())

    async def streams(self) -> list[dict[str, Any]]:
        return await self._nats_call(stream_rows(self._js()), "reading the streams")

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        from nats.js.errors import NotFoundError

        dlq = stream_name(self.settings.prefix, "dlq")
        subjects = f"{self.settings.prefix}.dlq.>"
        try:
            return await self._nats_call(
                dead_letters(self._js(), dlq, subjects, limit), "reading the dead letters"
            )
        except NotFoundError as exc:
            raise ApiError(404, f"there is no {dlq} stream (`mesh up` makes it)") from exc

    async def redrive(self, sequence: int) -> dict[str, Any]:
        self._js()  # NATS must be there at all
        dlq = stream_name(self.settings.prefix, "dlq")
        try:
            nc = await asyncio.wait_for(self._admin_connection(), NATS_TIMEOUT_S)
        except RedriveRefused as exc:
            raise ApiError(403, str(exc)) from exc
        except Exception as exc:
            raise ApiError(503, f"connecting to NATS to redrive failed: {exc}") from exc
        try:
            done = await self._nats_call(
                redrive(nc.jetstream(timeout=NATS_TIMEOUT_S), dlq, sequence), "redriving"
            )
        except DeadLetterGone as exc:
            raise ApiError(404, f"{exc} (redriven already?)") from exc
        except ValueError as exc:
            raise ApiError(409, str(exc)) from exc
        finally:
            await nc.close()
        return {
            "redriven": True,
            "sequence": done.sequence,
            "subject": done.subject,
            "event_id": done.event_id,
            "stream_sequence": done.stream_sequence,
        }

    async def _admin_connection(self) -> Any:
        """NATS as the control plane's administrator (streams.py says why)."""
        import nats

        from hms_tools.controlplane import ADMIN_IDENTITY, default_own_dir
        from mesh.controlplane import ClientTls, NatsAccess, nats_uses_tls
        from mesh.tls import TlsFiles

        url = str(self.settings.nats)
        access = NatsAccess()
        if nats_uses_tls(url.split(",")):
            if self.settings.tls_dir is None:
                raise RedriveRefused("a redrive needs the stack's TLS directory (stack.json)")
            admin = TlsFiles(default_own_dir(self.settings.tls_dir), ADMIN_IDENTITY)
            if not (admin.cert.is_file() and admin.key.is_file()):
                raise RedriveRefused(
                    f"a redrive publishes the event again as the control plane's administrator, "
                    f"and {admin.cert} is not here (the operator `ops` may publish nothing)"
                )
            access = NatsAccess(ClientTls.of(admin))
        return await nats.connect(
            url.split(","), allow_reconnect=False, connect_timeout=2.0, **access.options()
        )

    async def _nats_call(self, work: Awaitable[T], doing: str) -> T:
        import nats.errors
        from nats.js.errors import NotFoundError

        try:
            return await asyncio.wait_for(work, NATS_TIMEOUT_S * 2)
        except (NotFoundError, DeadLetterGone, ApiError, ValueError):
            raise
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            refused = self.nats_state().get("error", "")
            why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise ApiError(
                502, f"{doing} failed: {why}" + (f" ({refused})" if refused else "")
            ) from exc

    async def routes(self) -> list[dict[str, Any]]:
        try:
            return await self.gateway.routes()
        except GatewayUnavailable as exc:
            raise ApiError(502, str(exc)) from exc

    async def explore(self, body: Any) -> dict[str, Any]:
        try:
            request = ExploreRequest(body)
            return await self.gateway.explore(request)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        except FileNotFoundError as exc:
            raise ApiError(503, f"no development token: {exc}") from exc
        except GatewayUnavailable as exc:
            raise ApiError(502, str(exc)) from exc


def parse_limit(values: list[str] | None, default: int = 50) -> int:
    if not values:
        return default
    text = values[-1]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit {text[:20]!r}: a whole number from 1 to {MAX_LIMIT}")
    return int(text)


async def serve(
    settings: ConsoleSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_listening: Callable[[str], object] = print,
) -> None:
    """Run the console until cancelled (Ctrl-C); `on_listening` gets its URL once it serves."""
    import socket

    import uvicorn

    console = Console(settings)
    sock = socket.create_server((host, port), reuse_port=False)
    bound_host, bound_port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            console.app,
            ws="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
            server_header=False,
        )
    )
    await console.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    # The socket listens already: a page asking now waits in its backlog until uvicorn takes it.
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    on_listening(f"http://{shown}:{bound_port}/")
    try:
        await asyncio.shield(serving)
    finally:
        server.should_exit = True
        for client in list(console.hub.clients):
            client.end()  # open pages end their streams, so uvicorn can stop at once
        await asyncio.wait([serving], timeout=5)
        await cancel_and_wait(serving)
        sock.close()
        await console.stop()
