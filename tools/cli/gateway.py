"""`mesh gateway`: the REST gateway, routes learnt from the registry or from a descriptor set.

Everything from files and the environment is read here and handed to the gateway as frozen
configuration; the library itself never reads either.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hms_tools.cli.env import (
    add_nats_tls_arguments,
    add_stack_arguments,
    etcd_endpoints,
    etcd_tls,
    namespace,
    nats_settings,
)
from hms_tools.stackfile import read_stack_file

if TYPE_CHECKING:
    from hms_gateway.config import GatewayConfig
    from hms_gateway.serve import ListenConfig
    from mesh.client.config import ClientConfig
    from mesh.controlplane import NatsAccess
    from mesh.tls import TlsFiles

__all__ = ["LIMIT_FLAGS", "gateway_configs", "register"]


#: The limit flags: (flag, type, metavar, help); the flag's name is ServerLimits' field.
LIMIT_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    ("--max-request-line", int, "BYTES", "longest request target (default 8192)"),
    (
        "--max-header-bytes",
        int,
        "BYTES",
        "largest header section, names and values (default 32768)",
    ),
    ("--max-header-count", int, "N", "most header fields in a request (default 100)"),
    (
        "--header-timeout",
        float,
        "SECONDS",
        "time for a request head to arrive, from the connection or its first byte (default 10)",
    ),
    (
        "--body-timeout",
        float,
        "SECONDS",
        "time for a request body to arrive after its head (default 30)",
    ),
    (
        "--keepalive-timeout",
        float,
        "SECONDS",
        "an idle kept-alive connection is closed after this (default 5)",
    ),
    (
        "--linger-timeout",
        float,
        "SECONDS",
        "a connection answered before its request was read keeps reading and dropping what "
        "the client sends for at most this, so that the client reads the answer (default 5)",
    ),
    ("--max-connections", int, "N", "open connections per listener (default 1000)"),
    ("--max-in-flight", int, "N", "requests served at once per listener (default 256)"),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("gateway", help="run the REST gateway (HTTP/JSON -> gRPC)")
    add_stack_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes sharing the listening socket, each with its own mesh channel and "
        "route table, so the gateway uses N cores (default 1)",
    )
    # A worker's own: the listening sockets its supervisor bound, inherited.
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ops-listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", help="certificates (env MESH_TLS_DIR, else the stack's)")
    parser.add_argument("--cert-name", default="gateway", help="the gateway's own certificate")
    parser.add_argument("--insecure", action="store_true", help="call backends in plaintext")
    static = parser.add_argument_group("static mode (no etcd)")
    parser.add_argument(
        "--serving",
        default=os.environ.get("MESH_SERVING", ""),
        help="who may serve what: instances whose identity may not serve their service are "
        "ignored (env MESH_SERVING; `mesh up` writes one; docs/security.md)",
    )
    static.add_argument("--descriptor-set", type=Path, help="routes from `buf build -o x.binpb`")
    static.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT[@DEPLOYMENT]",
        help="fixed address(es) of a service; @DEPLOYMENT names its certificate",
    )
    gate = parser.add_argument_group(
        "the gate",
        "with a key, every route needs a valid bearer JWT holding the scopes its contract's "
        "(hms.api.v1.access) asks for (401, 403), except public ones (docs/gateway.md)",
    )
    gate.add_argument("--jwt-hs256-secret-file", type=Path)
    gate.add_argument("--jwt-public-key", type=Path, action="append", default=[], help="PEM")
    gate.add_argument("--jwks", type=Path, help="a JWK Set file")
    gate.add_argument("--jwt-issuer")
    gate.add_argument("--jwt-audience")
    gate.add_argument(
        "--public",
        action="append",
        default=[],
        metavar="SERVICE[/METHOD]",
        help="no token, whatever the contract asks",
    )
    gate.add_argument(
        "--no-gate",
        action="store_true",
        help="no JWT gate: every route open to anyone (what no key means; said on purpose, "
        "e.g. `mesh up --gateway-arg=--no-gate`)",
    )
    gate.add_argument("--rate", type=float, help="requests per second per client address")
    gate.add_argument("--burst", type=int, default=20)
    gate.add_argument("--body-limit", type=int, default=4 * 1024 * 1024, help="bytes")
    gate.add_argument(
        "--response-limit",
        type=int,
        default=16 * 1024 * 1024,
        help="the largest answer taken from a backend, bytes (default 16 MiB, room for the "
        "documents service's files; gRPC's own default is 4 MiB)",
    )
    gate.add_argument("--cors-origin", action="append", default=[], help="an allowed origin")
    parser.add_argument(
        "--version-route",
        action="append",
        default=[],
        metavar="PREFIX=RANGE",
        help="bind a path prefix to versions, e.g. '/v2/=>=2': requests under it that send "
        "no X-Hms-Version go to those versions only (repeatable; docs/traffic.md)",
    )
    mapping = parser.add_argument_group("JSON and deadlines")
    mapping.add_argument("--default-timeout", type=float, default=30.0, help="seconds")
    mapping.add_argument("--proto-names", action="store_true", help="output proto field names")
    mapping.add_argument("--omit-unpopulated", action="store_true")
    mapping.add_argument("--enums-as-ints", action="store_true")
    mapping.add_argument("--strict", action="store_true", help="400 on unknown fields")
    limits = parser.add_argument_group(
        "limits on clients (over a size: 414/431; too slow: 408; over a cap: 503 + Retry-After)"
    )
    # Defaults are hms_gateway.limits.ServerLimits' (not imported here: `mesh` starts without
    # the gateway); a test checks that the help says the same.
    for flag, kind, metavar, text in LIMIT_FLAGS:
        limits.add_argument(flag, type=kind, metavar=metavar, help=text)
    ops = parser.add_argument_group(
        "operations endpoints (/healthz and /readyz are always served, without a token)"
    )
    ops.add_argument(
        "--ops-port",
        type=int,
        metavar="PORT",
        help="serve /metrics and /openapi.json only on this separate listener (0: a free port)",
    )
    ops.add_argument("--ops-host", default="127.0.0.1", help="the ops listener's address")
    ops.add_argument(
        "--ops-gate",
        action="store_true",
        help="/metrics and /openapi.json need a valid token, like the API (needs a JWT key)",
    )
    parser.add_argument(
        "--tracing",
        default=os.environ.get("MESH_TRACING", "off"),
        help="OpenTelemetry exporter, off, console or otlp: a span per request, continuing the "
        "caller's trace (env MESH_TRACING)",
    )
    records = parser.add_argument_group(
        "svc.trace",
        "call records of sampled requests on NATS (svc.trace.<service>, svc.mesh.<service>), "
        "sent in the background: a NATS that is slow or down loses records, never requests",
    )
    records.add_argument(
        "--trace-sample",
        default=os.environ.get("MESH_TRACE_SAMPLE", "0"),
        metavar="RATE",
        help="share of traces recorded, 0.0 to 1.0 (env MESH_TRACE_SAMPLE; default 0: none; "
        "`mesh up` sets 1; 0.01 for production)",
    )
    records.add_argument(
        "--nats",
        default=os.environ.get("MESH_NATS", ""),
        help="NATS URL(s) for the records (env MESH_NATS); tls:// connects as the gateway's "
        "own identity",
    )
    add_nats_tls_arguments(parser)
    parser.set_defaults(func=run)


def gateway_configs(args: argparse.Namespace) -> tuple[GatewayConfig, ClientConfig, ListenConfig]:
    """The three configurations from the command line (``ValueError`` naming a bad flag)."""
    # Loaded here, not at import: other subcommands start without uvicorn and PyJWT.
    from hms_gateway.auth import JwtConfig
    from hms_gateway.config import GatewayConfig
    from hms_gateway.cors import CorsPolicy
    from hms_gateway.limits import ServerLimits
    from hms_gateway.ratelimit import RateLimit
    from hms_gateway.serve import ListenConfig
    from hms_gateway.transcode import JsonOptions
    from mesh.authz.serving import load_serving
    from mesh.client.config import ClientConfig
    from mesh.registry.static import parse_upstreams
    from mesh.telemetry import EXPORTERS
    from mesh.tls import TlsFiles

    if args.tracing not in EXPORTERS:
        raise ValueError(f"--tracing {args.tracing!r}: use one of {', '.join(EXPORTERS)}")
    jwt = None
    keyed = bool(args.jwt_hs256_secret_file or args.jwt_public_key or args.jwks)
    if args.no_gate and keyed:
        raise ValueError("--no-gate and a JWT key (--jwt-...): choose one")
    if keyed:
        secret = None
        if args.jwt_hs256_secret_file:
            # A file written by `echo` ends in a newline that is not part of the secret.
            secret = args.jwt_hs256_secret_file.read_bytes().rstrip(b"\r\n")
        jwt = JwtConfig.load(
            secret, args.jwt_public_key, args.jwks, args.jwt_issuer, args.jwt_audience
        )
    if args.ops_gate and args.ops_port is not None:
        raise ValueError("--ops-gate and --ops-port: choose one place for /metrics")
    if args.ops_gate and jwt is None:
        raise ValueError("--ops-gate needs the gate: give a JWT key (--jwt-...)")
    ops = "gate" if args.ops_gate else "listener" if args.ops_port is not None else "open"
    config = GatewayConfig(
        json=JsonOptions(
            use_proto_names=args.proto_names,
            emit_unpopulated=not args.omit_unpopulated,
            enums_as_ints=args.enums_as_ints,
            strict=args.strict,
        ),
        default_timeout=args.default_timeout,
        version_routes=tuple(_version_route(v) for v in args.version_route),
        body_limit=args.body_limit,
        jwt=jwt,
        public=frozenset(args.public),
        rate_limit=RateLimit(args.rate, args.burst) if args.rate else None,
        cors=CorsPolicy(
            tuple(args.cors_origin),
            allow_methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
            allow_headers=("*",),
        )
        if args.cors_origin
        else None,
        ops=ops,
    )
    static = args.descriptor_set is not None
    if static and not args.upstream:
        raise ValueError("static mode (--descriptor-set) needs at least one --upstream")
    if args.upstream and not static:
        raise ValueError("--upstream is for static mode: give --descriptor-set too")
    tls = None
    if not args.insecure:
        tls_dir = args.tls_dir or os.environ.get("MESH_TLS_DIR")
        if not tls_dir:
            tls_dir = read_stack_file(args.state_dir)["tls_dir"]
        tls = TlsFiles(Path(tls_dir), args.cert_name)
    endpoints = () if static else tuple(etcd_endpoints(args))
    client = ClientConfig(
        etcd=endpoints,
        namespace=namespace(args),
        tls=tls,
        # https:// etcd: the gateway's own certificate, a reader (unless files are given).
        etcd_tls=etcd_tls(args, endpoints, tls) if endpoints else None,
        upstreams=parse_upstreams(args.upstream),
        serving=load_serving(Path(args.serving)) if args.serving else None,
        max_receive_message_bytes=args.response_limit,
    )
    fields = (flag[2:].replace("-", "_") for flag, *_ in LIMIT_FLAGS)
    limits = ServerLimits(
        **{name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    )
    trace_sample, nats, nats_access = _trace_settings(args, tls)
    listen = ListenConfig(
        host=args.host,
        port=args.port,
        descriptor_set=args.descriptor_set,
        tracing=args.tracing,
        limits=limits,
        ops_port=args.ops_port,
        ops_host=args.ops_host,
        trace_sample=trace_sample,
        nats=nats,
        nats_access=nats_access,
        listen_fd=args.listen_fd,
        ops_listen_fd=args.ops_listen_fd,
    )
    return config, client, listen


def _version_route(value: str) -> tuple[str, str]:
    prefix, sep, text = value.partition("=")
    if not sep or not prefix or not text:
        raise ValueError(f"--version-route {value!r}: write PREFIX=RANGE, e.g. /v2/=>=2")
    return prefix, text


def _trace_settings(
    args: argparse.Namespace, tls: TlsFiles | None
) -> tuple[float, tuple[str, ...], NatsAccess]:
    """svc.trace's sampling rate, NATS URLs (none when not sampling) and how to connect: TLS
    as the gateway's own identity, given files replacing any part."""
    from mesh.controlplane import NatsAccess
    from mesh.tracerecords import check_sample_rate

    try:
        rate = check_sample_rate(float(args.trace_sample))
    except ValueError:
        raise ValueError(
            f"--trace-sample {args.trace_sample!r}: a sampling rate from 0.0 to 1.0"
        ) from None
    urls = tuple(u for u in str(args.nats).split(",") if u) if rate > 0 else ()
    return rate, urls, nats_settings(args, urls, tls) if urls else NatsAccess()


def run(args: argparse.Namespace) -> int:
    from hms_gateway.serve import GatewayServer

    if not 1 <= args.workers <= MAX_WORKERS:
        raise ValueError(f"--workers {args.workers}: give a number from 1 to {MAX_WORKERS}")
    config, client, listen = gateway_configs(args)
    if args.workers > 1:
        return _supervise(args, listen)
    asyncio.run(GatewayServer(config, client, listen).run(lambda line: print(line, flush=True)))
    return 0


MAX_WORKERS = 64


def _supervise(args: argparse.Namespace, listen: ListenConfig) -> int:
    """`--workers N`: bind the listening sockets here, once, and run N workers on them
    (mesh.server.workers: signals passed on, a worker that dies started again). The kernel
    hands each new connection to one worker; each worker has its own mesh channel, route
    table and /metrics (a scrape of the shared port reads the worker that accepted it)."""
    import logging
    import sys

    from hms_gateway.serve import listening_socket
    from mesh.server.workers import Workers, worker_command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway %(message)s")
    sockets = [listening_socket(listen.host, listen.port)]
    if listen.ops_port is not None:
        sockets.append(listening_socket(listen.ops_host, listen.ops_port))
    fds = [sock.fileno() for sock in sockets]
    inherited = [f"--listen-fd={fds[0]}"]
    if len(fds) > 1:
        inherited.append(f"--ops-listen-fd={fds[1]}")
        host, port = sockets[1].getsockname()[:2]
        print(f"gateway ops listening on http://{host}:{port}", flush=True)
    host, port = sockets[0].getsockname()[:2]
    # Said now: connections wait in the socket's backlog until a worker accepts them.
    print(f"gateway listening on http://{host}:{port}", flush=True)
    logging.info("%d workers share it", args.workers)
    interpreter = [sys.executable, "-m", "hms_tools.cli"]

    def command(index: int) -> list[str]:
        return [*worker_command(sys.argv[1:], index, interpreter=interpreter), *inherited]

    try:
        return asyncio.run(Workers(command, args.workers, pass_fds=fds).run())
    finally:
        for sock in sockets:
            sock.close()
