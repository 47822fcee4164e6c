"""Run the gateway: the mesh channel, the route source, the ASGI app and uvicorn, wired once.

The listening socket is bound here (port 0 by default, so several gateways run side by side)
and handed to uvicorn, so the real address is known before the first request and reported
through ``on_listening``. uvicorn handles SIGINT/SIGTERM: it stops accepting, lets requests in
flight finish (up to ``grace``), then the channel and the registry watch are closed.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from hms_gateway.app import Gateway, GatewayMetrics
from hms_gateway.config import GatewayConfig
from hms_gateway.learn import RegistryLearner, load_descriptor_set
from hms_gateway.routes import RouteTable
from hms_gateway.tracing import NO_TRACING, RequestTracer, Tracing
from mesh.client.channel import MeshChannel
from mesh.client.config import ClientConfig
from mesh.gc_tuning import settle_heap
from mesh.telemetry import ClientMetrics, setup_tracing

__all__ = ["GatewayServer", "ListenConfig", "listening_socket"]

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be within 0..65535, got {self.port}")


class GatewayServer:
    """``await GatewayServer(gateway_config, client_config, listen).run(on_listening)``."""

    def __init__(self, config: GatewayConfig, client: ClientConfig, listen: ListenConfig) -> None:
        self.config = config
        self.client = client
        self.listen = listen
        self.table = RouteTable()
        self.registry = CollectorRegistry()
        self.url = ""
        self._server: uvicorn.Server | None = None

    async def run(self, on_listening: Callable[[str], object] = print) -> None:
        sock = listening_socket(self.listen.host, self.listen.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
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
        channel = await MeshChannel.connect(client, metrics=ClientMetrics(self.registry))
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
            )
            server = self._server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    http="httptools",
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
            on_listening(f"gateway listening on {self.url}")
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            if learner is not None:
                await learner.stop()
            await channel.close()

    def stop(self) -> None:
        """Ask the server to stop (as SIGTERM does)."""
        if self._server is not None:
            self._server.should_exit = True
