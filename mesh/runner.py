"""The `main()` of a mesh service: flags and environment in, a running ServiceHost out.

Environment is read here, at the edge: MESH_ETCD, MESH_TLS_DIR, MESH_NAMESPACE. Flags win.

    def main() -> None:
        run_service("notify", lambda args: [NotifyService(Store(args.db))],
                    add_arguments=lambda p: p.add_argument("--db", default="notify.db"))
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mesh.client import ClientConfig, MeshChannel
from mesh.server import HostConfig, ServiceHost
from mesh.tls import TlsFiles

__all__ = ["host_config", "parse_args", "run_service"]

log = logging.getLogger(__name__)

MakeServicers = Callable[[argparse.Namespace], Sequence[object]]


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
    parser.add_argument("--grace", type=float, default=10.0, help="drain time on SIGTERM, s")
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
    parser.add_argument("-v", "--verbose", action="store_true")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def host_config(args: argparse.Namespace) -> HostConfig:
    files = (
        None if args.insecure else TlsFiles(Path(args.tls_dir), args.cert_name or args.deployment)
    )
    return HostConfig(
        deployment=args.deployment,
        version=args.version,
        host=args.host,
        port=args.port,
        tls=files,
        etcd=tuple(e for e in args.etcd.split(",") if e),
        namespace=args.namespace,
        lease_ttl=args.ttl,
        grace=args.grace,
        zone=args.zone,
        weight=args.weight,
    )


def mesh_channel_opener(args: argparse.Namespace) -> Callable[[], Awaitable[MeshChannel]]:
    """A function that opens this service's MeshChannel on first use (inside the event loop)
    and returns the same channel after; for servicers that call other services."""
    opened: list[MeshChannel] = []
    lock = asyncio.Lock()

    async def open_channel() -> MeshChannel:
        async with lock:
            if not opened:
                files = (
                    None
                    if args.insecure
                    else TlsFiles(Path(args.tls_dir), args.cert_name or args.deployment)
                )
                config = ClientConfig(
                    etcd=tuple(e for e in args.etcd.split(",") if e),
                    namespace=args.namespace,
                    tls=files,
                    tracing=args.tracing != "off",
                )
                opened.append(await MeshChannel.connect(config))
        return opened[0]

    return open_channel


async def _serve(config: HostConfig, servicers: Sequence[object]) -> None:
    host = ServiceHost(config)
    for servicer in servicers:
        host.add_servicer(servicer)
    await host.start()
    try:
        await host.wait_for_signal()
    finally:
        await host.stop()


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
    asyncio.run(_serve(host_config(args), make_servicers(args)))
