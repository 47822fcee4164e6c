"""The `main()` of a mesh service: flags and environment in, a running ServiceHost out.

Environment is read here, at the edge: MESH_ETCD, MESH_NATS, MESH_TLS_DIR, MESH_NAMESPACE,
MESH_TRACE_SAMPLE (svc.trace records: mesh.tracerecords), and
the control plane's TLS files MESH_ETCD_CA/_CERT/_KEY and MESH_NATS_CA/_CERT/_KEY/_CREDS (by
default the service's own certificate: mesh.controlplane). Flags win.

The order of a service's life: servicers made (they declare their events on the
`Runtime`), the host started (SERVING, registered), the runtime started (subscriptions, outbox
relays, start hooks), then on SIGTERM the host drains, and the runtime stops (the same, in
reverse) and closes its connections.

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
from collections.abc import Callable, Mapping, Sequence

from mesh.aio import cancel_and_wait
from mesh.authz.policy import PolicyError
from mesh.gc_tuning import settle_heap
from mesh.server.enduser import DEFAULT_GATEWAY_IDENTITIES
from mesh.server.host import DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, HostConfig, ServiceHost
from mesh.server.runtime import Runtime, etcd_tls, tls_files
from mesh.tracerecords import check_sample_rate

__all__ = [
    "MakeServicers",
    "add_control_plane_arguments",
    "host_config",
    "parse_args",
    "run_service",
    "trace_sample",
]

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
    parser.add_argument(
        "--nats", default=env.get("MESH_NATS", ""), help="NATS URL(s) for events (env MESH_NATS)"
    )
    add_control_plane_arguments(parser, env)
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
    parser.add_argument(
        "--serving",
        default=env.get("MESH_SERVING", ""),
        help="who may serve what, for the calls this service makes (env MESH_SERVING; "
        "docs/security.md)",
    )
    parser.add_argument(
        "--gateway-identity",
        action="append",
        default=None,
        help="whose x-hms-subject / x-hms-claims to believe (repeatable; default "
        "spiffe://hms.local/svc/gateway)",
    )
    parser.add_argument(
        "--max-receive-message-bytes",
        type=int,
        default=DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
        help="the largest request message taken, bytes (default gRPC's 4 MiB; a larger one is "
        "RESOURCE_EXHAUSTED)",
    )
    parser.add_argument(
        "--zone",
        default=env.get("MESH_ZONE", ""),
        help="the zone this instance registers, and its own calls stay in while it has "
        "capacity (env MESH_ZONE; docs/traffic.md)",
    )
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
        "--trace-sample",
        type=trace_sample,
        default=env.get("MESH_TRACE_SAMPLE", "0"),
        metavar="RATE",
        help="share of traces whose calls are recorded on NATS svc.trace.<service>, 0.0 to 1.0 "
        "(env MESH_TRACE_SAMPLE; default 0: none; `mesh up` sets 1; 0.01 for production)",
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
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=env.get("MESH_WORKERS", "1"),
        help="worker processes, each on its own port with its own registry entry, so the "
        "service uses N cores (env MESH_WORKERS; default 1: this process serves)",
    )
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def _worker_count(value: str) -> int:
    """A --workers value: a whole number from 1 to 64 (argparse's error otherwise)."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= _MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number from 1 to {_MAX_WORKERS}")
    return int(value)


_MAX_WORKERS = 64


def trace_sample(value: str) -> float:
    """A --trace-sample value: a number from 0.0 to 1.0 (argparse's error otherwise)."""
    try:
        return check_sample_rate(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a sampling rate from 0.0 to 1.0"
        ) from None


def add_control_plane_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The flags for etcd's and NATS's TLS files (each defaults to its MESH_* variable; each
    left out is the service's own mesh identity: mesh.controlplane)."""
    group = parser.add_argument_group(
        "control plane TLS",
        "https:// etcd endpoints and tls:// NATS URLs are TLS with the service's own "
        "certificate and the mesh CA; these replace either (and make the connection TLS)",
    )
    for system in ("etcd", "nats"):
        for part, what in (("ca", "CA certificate"), ("cert", "client certificate")):
            variable = f"MESH_{system.upper()}_{part.upper()}"
            group.add_argument(
                f"--{system}-{part}",
                default=env.get(variable, ""),
                help=f"{system} {what} (env {variable})",
            )
        variable = f"MESH_{system.upper()}_KEY"
        group.add_argument(
            f"--{system}-key", default=env.get(variable, ""), help=f"its key (env {variable})"
        )
    group.add_argument(
        "--nats-creds",
        default=env.get("MESH_NATS_CREDS", ""),
        help="a NATS credentials file, user JWT and NKEY seed (env MESH_NATS_CREDS)",
    )


def host_config(args: argparse.Namespace, metadata: dict[str, str] | None = None) -> HostConfig:
    return HostConfig(
        deployment=args.deployment,
        version=args.version,
        host=args.host,
        port=args.port,
        tls=tls_files(args),
        etcd=tuple(e for e in args.etcd.split(",") if e),
        etcd_tls=etcd_tls(args),
        namespace=args.namespace,
        lease_ttl=args.ttl,
        drain_delay=args.drain_delay,
        grace=args.grace,
        zone=args.zone,
        weight=args.weight,
        metadata=metadata or {},
        instance_id=args.instance_id,
        gateway_identities=tuple(args.gateway_identity or DEFAULT_GATEWAY_IDENTITIES),
        max_receive_message_bytes=args.max_receive_message_bytes,
    )


#: What a service can fail to start with that is the operator's to fix.
_CANNOT_START = (PolicyError, ValueError, OSError)


async def _serve(runtime: Runtime, servicers: Sequence[object]) -> int:
    # The metrics address rides in the registry entry, so operators find every endpoint.
    metadata = {"metrics": f"{runtime.args.host}:{runtime.metrics_port}"}
    host = ServiceHost(
        host_config(runtime.args, metadata), interceptors=runtime.server_interceptors()
    )
    for servicer in servicers:
        host.add_servicer(servicer)
    await host.start()
    # Before the registration task host.start began writes its first key (no await between):
    # from then on a SIGTERM drains, not kills, or callers keep a dead entry until its lease
    # ends. Before that, as while etcd is being reached, it still ends the process at once.
    host.install_signal_handlers()
    runtime.serving_as(host.instance_id, host.address)
    try:
        starting = asyncio.ensure_future(runtime.start())
        signalled = asyncio.ensure_future(host.wait_for_signal())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        # A signal during start-up (a start hook, a subscription) ends it: drain now.
        await cancel_and_wait(starting, signalled)
        if not starting.cancelled():
            starting.result()  # a start-up that failed fails the service
        settle_heap()  # start-up is done: see mesh/gc_tuning.py
        status = await host.serve_until_signalled()
    finally:
        await runtime.close()
    return status


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """This process as the supervisor of `args.workers` workers (mesh.server.workers)."""
    from mesh.server.workers import Workers, worker_command

    def command(index: int) -> list[str]:
        return worker_command(
            argv,
            index,
            instance_id=args.instance_id,
            port=args.port,
            metrics_port=args.metrics_port,
        )

    log.info("%s: %d workers", args.deployment, args.workers)
    return asyncio.run(Workers(command, args.workers).run())


def run_service(
    deployment: str,
    make_servicers: MakeServicers,
    *,
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None,
) -> None:
    """Run a service process until SIGTERM or SIGINT, then drain and exit (0 drained, 1 cut
    short by a second signal). `make_servicers(runtime)` builds its servicers and declares its
    events (see `mesh.server.runtime.Runtime`); flags and MESH_* variables are read here.

    >>> def main() -> None:
    ...     run_service("fees", lambda runtime: [FeeService(runtime)],
    ...                 add_arguments=lambda p: p.add_argument("--currency", default="GBP"))
    """
    args = parse_args(deployment, argv, add_arguments)
    worker = f" w{args.worker}" if args.worker else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {args.deployment}{worker} %(name)s: %(message)s",
    )
    if args.workers > 1:
        sys.exit(_supervise(args, list(argv) if argv is not None else sys.argv[1:]))
    try:
        runtime = Runtime(args)
        servicers = make_servicers(runtime)
        status = asyncio.run(_serve(runtime, servicers))
    except _CANNOT_START as exc:
        # Configuration the service cannot start with (a policy, a certificate, a port): one
        # line naming it, not a traceback.
        log.error("%s refusing to start: %s", args.deployment, exc)
        status = 2
    sys.exit(status)
