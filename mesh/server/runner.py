"""The `main()` of a mesh service: flags and environment in, a running ServiceHost out.

Environment is read here, at the edge: MESH_ETCD, MESH_TLS_DIR, MESH_NAMESPACE. Flags win.

    def main() -> None:
        run_service("notify", lambda runtime: [NotifyService(Store(runtime.args.db))],
                    add_arguments=lambda p: p.add_argument("--db", default="notify.db"))
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from mesh.authz import AuthzInterceptor, PolicySource
from mesh.client import ClientConfig, MeshChannel
from mesh.gc_tuning import settle_heap
from mesh.server import HostConfig, ServiceHost
from mesh.telemetry import (
    ClientMetrics,
    ServerMetrics,
    ServerMetricsInterceptor,
    serve_metrics,
    setup_tracing,
    tracing_server_interceptors,
)
from mesh.tls import TlsFiles

__all__ = ["Runtime", "host_config", "parse_args", "run_service"]

log = logging.getLogger(__name__)

MakeServicers = Callable[["Runtime"], Sequence[object]]


def parse_args(
    deployment: str,
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None,
    environ: dict[str, str] | None = None,
) -> argparse.Namespace:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=deployment, description=f"the {deployment} service")
    parser.add_argument("--deployment", default=deployment)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--etcd", default=env.get("MESH_ETCD", ""), help="host:port[,host:port]")
    parser.add_argument("--namespace", default=env.get("MESH_NAMESPACE", "hms"))
    parser.add_argument("--tls-dir", default=env.get("MESH_TLS_DIR", ".mesh/tls"))
    parser.add_argument("--cert-name", help="certificate name in the TLS dir (default: deployment)")
    parser.add_argument("--insecure", action="store_true", help="plaintext: no TLS at all")
    parser.add_argument("--ttl", type=int, default=10, help="registration lease TTL in seconds")
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=1.0,
        help="on SIGTERM, after deregistering, serve new calls on for this long, s (default 1)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="then, at most this long for in-flight calls to finish, s (default 10)",
    )
    parser.add_argument(
        "--instance-id", default="", help="registry id of this instance (default: a new one)"
    )
    parser.add_argument("--zone", default="")
    parser.add_argument("--weight", type=int, default=100)
    parser.add_argument(
        "--data-dir",
        default=env.get("MESH_DATA_DIR", f".mesh/data/{deployment}"),
        help="where a service with state keeps its files",
    )
    parser.add_argument(
        "--tracing",
        choices=("off", "console", "otlp"),
        default=env.get("MESH_TRACING", "off"),
        help="OpenTelemetry tracing exporter (env MESH_TRACING)",
    )
    parser.add_argument(
        "--policy",
        default=env.get("MESH_POLICY", ""),
        help="authorization policy (TOML, docs/authz.md), reloaded on change (env MESH_POLICY)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env.get("MESH_METRICS_PORT", "0")),
        help="Prometheus metrics port (0 picks a free one; see `mesh ls` metadata)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    return (
        None if args.insecure else TlsFiles(Path(args.tls_dir), args.cert_name or args.deployment)
    )


def host_config(args: argparse.Namespace, metadata: dict[str, str] | None = None) -> HostConfig:
    return HostConfig(
        deployment=args.deployment,
        version=args.version,
        host=args.host,
        port=args.port,
        tls=_tls_files(args),
        etcd=tuple(e for e in args.etcd.split(",") if e),
        namespace=args.namespace,
        lease_ttl=args.ttl,
        drain_delay=args.drain_delay,
        grace=args.grace,
        zone=args.zone,
        weight=args.weight,
        metadata=metadata or {},
        instance_id=args.instance_id,
    )


class Runtime:
    """What a service's servicers get from the edge: its flags, its metrics registry, and
    its mesh channel for calling other services (opened on first use, inside the loop)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.registry = CollectorRegistry()
        self.metrics_port = serve_metrics(self.registry, args.metrics_port)
        self.tracing = setup_tracing(args.tracing, args.deployment)
        self._channel: MeshChannel | None = None
        self._client_metrics: ClientMetrics | None = None
        self._lock = asyncio.Lock()

    async def channel(self) -> MeshChannel:
        async with self._lock:
            if self._channel is None:
                config = ClientConfig(
                    etcd=tuple(e for e in self.args.etcd.split(",") if e),
                    namespace=self.args.namespace,
                    tls=_tls_files(self.args),
                    tracing=self.tracing,
                )
                self._client_metrics = ClientMetrics(self.registry)
                self._channel = await MeshChannel.connect(config, metrics=self._client_metrics)
        return self._channel

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ServerMetricsInterceptor(ServerMetrics(self.registry))
        ]
        if self.tracing:
            interceptors.extend(tracing_server_interceptors())
        if self.args.policy:
            interceptors.append(AuthzInterceptor(PolicySource(Path(self.args.policy))))
        return interceptors

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


async def _serve(runtime: Runtime, servicers: Sequence[object]) -> int:
    # The metrics address rides in the registry entry, so operators find every endpoint.
    metadata = {"metrics": f"{runtime.args.host}:{runtime.metrics_port}"}
    host = ServiceHost(
        host_config(runtime.args, metadata), interceptors=runtime.server_interceptors()
    )
    for servicer in servicers:
        host.add_servicer(servicer)
    await host.start()
    settle_heap()  # start-up is done: see mesh/gc_tuning.py
    try:
        status = await host.serve_until_signalled()
    finally:
        await runtime.close()
    return status


def run_service(
    deployment: str,
    make_servicers: MakeServicers,
    *,
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None,
) -> None:
    args = parse_args(deployment, argv, add_arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {args.deployment} %(name)s: %(message)s",
    )
    runtime = Runtime(args)
    sys.exit(asyncio.run(_serve(runtime, make_servicers(runtime))))
