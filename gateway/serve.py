"""Run the gateway: the mesh channel, the route source, the ASGI app and uvicorn, wired once.

The listening sockets are bound here (port 0 by default, so several gateways run side by side)
and handed to uvicorn, so the real addresses are known before the first request and reported
through ``on_listening`` (the ops listener's line first, then ``gateway listening on URL``).
uvicorn serves them with the gateway's own protocol (gateway/protocol.py: the limits of
``ServerLimits``), the public listener with the :class:`Gateway` app and the ops listener, if
any, with :meth:`Gateway.ops`. uvicorn handles SIGINT/SIGTERM: it stops accepting, lets
requests in flight finish (up to ``grace``), then the channel and the registry watch are closed.

Every connection is a file descriptor: the soft ``RLIMIT_NOFILE`` is raised (up to the hard
one) to fit ``max_connections`` per listener and a reserve; if it cannot, ``max_connections`` is
lowered to what fits, with a warning, rather than let ``accept()`` fail with EMFILE and take
the backends' connections down with it.

With ``trace_sample`` above 0 and a NATS URL (``mesh gateway --nats``, ``--trace-sample``), the
gateway opens a NATS connection of its own, for svc.trace and svc.mesh records only
(mesh.tracerecords), in the background: a NATS that is down delays nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge

from hms_gateway.app import Gateway, GatewayMetrics
from hms_gateway.config import GatewayConfig
from hms_gateway.learn import RegistryLearner, load_descriptor_set
from hms_gateway.limits import ServerLimits
from hms_gateway.protocol import LINGER_BYTES, MAX_LINGERING, Guard, Listener, protocol_class
from hms_gateway.routes import RouteTable
from hms_gateway.tracing import NO_TRACING, RequestTracer, Tracing
from mesh.client.channel import MeshChannel
from mesh.client.config import ClientConfig
from mesh.controlplane import NatsAccess
from mesh.gc_tuning import settle_heap
from mesh.telemetry import ClientMetrics, setup_tracing
from mesh.tls import identity_of
from mesh.tracerecords import TraceEmitter, check_sample_rate

__all__ = ["GatewayServer", "ListenConfig", "fit_open_files", "listening_socket"]

log = logging.getLogger(__name__)

#: Open files kept for everything but client connections: the backends' channels, etcd, logs.
FD_RESERVE = 256


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn, made so that its connections get TCP_NODELAY.

    IPPROTO_TCP is said out loud: accepted sockets inherit the listening socket's proto, and
    asyncio only turns Nagle's algorithm off on sockets whose proto is TCP. With proto 0 every
    keep-alive response, written in two parts (head, then body), waited ~40 ms for the
    client's delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening from now on: a client that connects as soon as the address is announced is
    # queued until uvicorn accepts, not refused.
    sock.listen(2048)
    return sock


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 0
    #: Seconds that requests in flight get to finish on shutdown.
    grace: float = 10.0
    #: Static mode: routes from this descriptor set instead of the registry.
    descriptor_set: Path | None = None
    #: OpenTelemetry exporter: off, console or otlp (mesh.telemetry.setup_tracing).
    tracing: str = "off"
    #: What a connection may cost (gateway/protocol.py).
    limits: ServerLimits = dataclasses.field(default_factory=ServerLimits)
    #: A second listener for /healthz, /readyz, /metrics and /openapi.json (None: none);
    #: ``GatewayConfig.ops`` must then be ``listener``.
    ops_port: int | None = None
    ops_host: str = "127.0.0.1"
    #: svc.trace: the share of traces recorded (0: none) and the NATS to send them to (no
    #: URL: none sent), with how to connect (TLS as the gateway's identity).
    trace_sample: float = 0.0
    nats: tuple[str, ...] = ()
    nats_access: NatsAccess = dataclasses.field(default_factory=NatsAccess)
    #: A worker of `mesh gateway --workers N`: the listening sockets its supervisor bound,
    #: inherited (file descriptors), instead of binding `port` and `ops_port` itself.
    listen_fd: int | None = None
    ops_listen_fd: int | None = None

    def __post_init__(self) -> None:
        check_sample_rate(self.trace_sample)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.ops_port is not None and not 0 <= self.ops_port < 65536:
            raise ValueError(f"ops_port must be within 0..65535, got {self.ops_port}")


def fit_open_files(limits: ServerLimits, listeners: int) -> ServerLimits:
    """`limits`, with ``max_connections`` lowered if the process cannot have that many
    connections open on each of `listeners` (after raising its soft limit as far as allowed)."""
    needed = limits.max_connections * listeners + MAX_LINGERING + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.debug("could not raise RLIMIT_NOFILE to %d: %s", wanted, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    fitted = max(1, (soft - MAX_LINGERING - FD_RESERVE) // listeners)
    log.warning(
        "max connections %d per listener needs %d open files, and the limit is %d: "
        "holding %d per listener",
        limits.max_connections,
        needed,
        soft,
        fitted,
    )
    return dataclasses.replace(limits, max_connections=fitted)


class GatewayServer:
    """``await GatewayServer(gateway_config, client_config, listen).run(on_listening)``."""

    def __init__(self, config: GatewayConfig, client: ClientConfig, listen: ListenConfig) -> None:
        if (config.ops == "listener") != (listen.ops_port is not None):
            raise ValueError("ops 'listener' and an ops port go together")
        self.config = config
        self.client = client
        self.listen = listen
        self.table = RouteTable()
        self.registry = CollectorRegistry()
        self.url = ""
        self.ops_url = ""
        self._server: uvicorn.Server | None = None
        self._nats: Any = None

    def _sockets(self) -> list[socket.socket]:
        """The public listener, then the ops listener if any: bound here, or inherited."""
        listen = self.listen
        if listen.listen_fd is not None:
            sockets = [socket.socket(fileno=listen.listen_fd)]
            if listen.ops_listen_fd is not None:
                sockets.append(socket.socket(fileno=listen.ops_listen_fd))
            return sockets
        sockets = [listening_socket(listen.host, listen.port)]
        if listen.ops_port is not None:
            try:
                sockets.append(listening_socket(listen.ops_host, listen.ops_port))
            except OSError:
                sockets[0].close()
                raise
        return sockets

    async def run(self, on_listening: Callable[[str], object] = print) -> None:
        sockets = self._sockets()
        host, port = sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        if len(sockets) > 1:
            ops_host, ops_port = sockets[1].getsockname()[:2]
            self.ops_url = f"http://{ops_host}:{ops_port}"
        # The gateway counts each request per route itself (gateway/app.py); the channel's
        # telemetry layer would count the same calls again, so it is left out of the chain.
        # The channel's endpoint and ejection figures are still collected.
        client = self.client
        tracing: Tracing = NO_TRACING
        if setup_tracing(self.listen.tracing, "gateway"):
            # The channel's gRPC client interceptor sends each request span's context on.
            client = dataclasses.replace(client, tracing=True)
            tracing = RequestTracer()
        if "telemetry" in client.layers:
            layers = tuple(layer for layer in client.layers if layer != "telemetry")
            client = dataclasses.replace(client, layers=layers)
        records = self._trace_emitter()
        channel = await MeshChannel.connect(
            client, metrics=ClientMetrics(self.registry), records=records
        )
        learner: RegistryLearner | None = None
        try:
            if self.listen.descriptor_set is not None:
                names = load_descriptor_set(self.listen.descriptor_set, self.table)
                log.info("static routes of %s", ", ".join(names) or "no annotated service")
                ready: Callable[[], bool] = lambda: True  # noqa: E731
            else:
                registry = channel.watch_registry()
                if registry is None:
                    raise ValueError("dynamic mode needs etcd (or give a descriptor set)")
                learner = RegistryLearner(channel, registry, self.table)
                await learner.start(timeout=5.0)
                ready = lambda: learner.synced  # noqa: E731
            app = Gateway(
                self.config,
                self.table,
                channel,
                metrics=GatewayMetrics(self.registry),
                ready=ready,
                tracing=tracing,
                records=records,
            )
            guard = self._guard(app, sockets)
            server = self._server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    # uvicorn's httptools protocol with the gateway's limits.
                    http=protocol_class(guard),
                    ws="none",
                    loop="none",  # ours: the channel and the app share it
                    lifespan="off",
                    access_log=False,
                    log_level="warning",
                    timeout_graceful_shutdown=int(self.listen.grace),
                    server_header=False,
                    # X-Forwarded-For is the gateway's to read (gateway/headers.py); uvicorn's
                    # own handling would replace the peer address with a client's claim.
                    proxy_headers=False,
                )
            )
            settle_heap()  # start-up is done: see mesh/gc_tuning.py
            if self.ops_url:
                on_listening(f"gateway ops listening on {self.ops_url}")
            on_listening(f"gateway listening on {self.url}")
            await server.serve(sockets=sockets)
        finally:
            for listening in sockets:
                listening.close()
            if learner is not None:
                await learner.stop()
            await channel.close()
            await self._close_records(records)

    def _trace_emitter(self) -> TraceEmitter | None:
        """svc.trace records, if sampling and given a NATS (None: nothing is recorded); the
        emitter is started, and connects in the background."""
        if self.listen.trace_sample <= 0:
            return None
        if not self.listen.nats:
            log.info(
                "trace sample %g but no NATS URL (--nats): no svc.trace", self.listen.trace_sample
            )
            return None
        files = self.client.tls
        records = TraceEmitter(
            "gateway",
            connect=self._connect_nats,
            sample=self.listen.trace_sample,
            identity=identity_of(files) if files is not None else "",
            registry=self.registry,
        )
        records.start()
        return records

    async def _close_records(self, records: TraceEmitter | None) -> None:
        if records is not None:
            await records.close()
        if self._nats is not None:
            await self._nats.close()

    async def _connect_nats(self) -> Any:
        """The gateway's NATS connection, for svc.trace only (reconnects for ever)."""
        import nats

        self._nats = await nats.connect(
            list(self.listen.nats),
            name="gateway",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            **self.listen.nats_access.options(),
        )
        return self._nats

    def _guard(self, app: Gateway, sockets: list[socket.socket]) -> Guard:
        """The limits the connections of both listeners share, and their figures."""
        listeners = [Listener("public", app, sockets[0].getsockname()[:2])]
        if len(sockets) > 1:
            listeners.append(Listener("ops", app.ops, sockets[1].getsockname()[:2]))
        refused = Counter(
            "gateway_refused",
            "Connections and requests refused before the app (a limit or a timeout), by reason",
            ["reason"],
            registry=self.registry,
        )
        connections = Gauge(
            "gateway_open_connections",
            "Client connections open, by listener",
            ["listener"],
            registry=self.registry,
        )
        in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being served (head read, answer not finished), by listener",
            ["listener"],
            registry=self.registry,
        )
        for listener in listeners:
            open_now, serving_now = _counts_of(listener)
            connections.labels(listener.name).set_function(open_now)
            in_flight.labels(listener.name).set_function(serving_now)
        limits = fit_open_files(self.listen.limits, len(listeners))
        return Guard(
            limits,
            listeners,
            on_refused=lambda reason: refused.labels(reason).inc(),
            # A client sending a body within the limit reads its early answer (a 401) whole.
            linger_bytes=max(LINGER_BYTES, self.config.body_limit),
        )

    def stop(self) -> None:
        """Ask the server to stop (as SIGTERM does)."""
        if self._server is not None:
            self._server.should_exit = True


def _counts_of(listener: Listener) -> tuple[Callable[[], float], Callable[[], float]]:
    """A listener's open connections and requests in flight, read when /metrics is."""
    return (lambda: listener.connections), (lambda: listener.in_flight)
