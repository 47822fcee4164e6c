"""What a service gets from the edge: its flags, its metrics, its mesh channel, its events, and
hooks for what it owns.

A service's `make_servicers(runtime)` builds its handlers and declares what it needs; the
runner starts the declared parts once the host is SERVING and registered, and stops them, in
reverse, once the host has drained:

    def make(runtime: Runtime) -> list[object]:
        store = Store(Path(runtime.args.data_dir) / "fees.sqlite3")
        outbox = runtime.outbox(store.path)                    # relayed while the service runs
        runtime.subscribe(VoucherSubmitted, IdempotentHandler(store.path, "fees", apply))
        runtime.on_stop(store.close)
        return [FeeService(store, outbox, channel=runtime.channel)]

`await runtime.channel()` is the mesh channel for calling other services and
`await runtime.publisher()` publishes events directly (the outbox is the way to publish what a
database change implies). NATS is connected on first use and reconnects for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from mesh.authz import AuthzInterceptor, PolicySource
from mesh.authz.serving import load_serving
from mesh.client import ClientConfig, MeshChannel
from mesh.controlplane import ClientTls, NatsAccess, TlsOverrides, nats_access
from mesh.events import (
    ConsumerSpec,
    Outbox,
    OutboxRelay,
    Publisher,
    Subscriber,
    events_stream,
)
from mesh.events.subscriber import Handler
from mesh.telemetry import (
    ClientMetrics,
    ServerMetrics,
    ServerMetricsInterceptor,
    ServerRecords,
    serve_metrics,
    setup_tracing,
    tracing_server_interceptors,
)
from mesh.tls import TlsFiles, identity_of
from mesh.tracerecords import TraceEmitter

__all__ = ["Hook", "Runtime", "etcd_tls", "nats_settings", "tls_files"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
#: A start or stop hook: a function of no arguments, sync or async.
Hook = Callable[[], Awaitable[object] | object]

#: nats-py gives up after 60 reconnect attempts by default; a service must outlive an outage.
_NATS_OPTIONS: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    return (
        None if args.insecure else TlsFiles(Path(args.tls_dir), args.cert_name or args.deployment)
    )


def etcd_tls(args: argparse.Namespace) -> ClientTls | None:
    """etcd's TLS files given by flag or environment, the gaps filled from the service's own
    identity; None when none was given (then https:// endpoints use that identity)."""
    overrides = TlsOverrides.of(
        getattr(args, "etcd_ca", ""), getattr(args, "etcd_cert", ""), getattr(args, "etcd_key", "")
    )
    return overrides.resolve(tls_files(args), "etcd")


def nats_settings(args: argparse.Namespace) -> NatsAccess:
    """How this service connects to NATS: TLS files by flag or environment, else its own
    identity for tls:// URLs; a credentials file if given."""
    identity = tls_files(args)
    overrides = TlsOverrides.of(
        getattr(args, "nats_ca", ""), getattr(args, "nats_cert", ""), getattr(args, "nats_key", "")
    )
    creds = getattr(args, "nats_creds", "")
    urls = [u for u in getattr(args, "nats", "").split(",") if u]
    return nats_access(
        urls, overrides.resolve(identity, "nats"), identity, Path(creds) if creds else None
    )


class Runtime:
    """See the module's docstring. Everything here is opened inside the service's loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deployment: str = args.deployment
        self.registry = CollectorRegistry()
        # On the address the service serves and registers (its metrics address is advertised).
        self.metrics_port = serve_metrics(self.registry, args.metrics_port, args.host)
        self.tracing = setup_tracing(args.tracing, args.deployment)
        # Read at start: a service given a broken serving policy must not start.
        serving = getattr(args, "serving", "")
        self._serving = load_serving(Path(serving)) if serving else None
        self._channel: MeshChannel | None = None
        self._client_metrics: ClientMetrics | None = None
        self._lock = asyncio.Lock()
        # Apart from the channel's: svc.trace waits on NATS in the background, and a call
        # must never wait for NATS to open a mesh channel.
        self._nats_lock = asyncio.Lock()
        self._nats: Any = None
        #: svc.trace / svc.mesh records (mesh.tracerecords); None when not sampling.
        self.records = self._trace_emitter()
        self._server_records: ServerRecords | None = None
        self._publisher: Publisher | None = None
        self._subscriptions: list[tuple[type[Message], Handler[Any], ConsumerSpec | None]] = []
        self._subscribers: list[Subscriber] = []
        self._outboxes: list[Outbox] = []
        self._relays: list[OutboxRelay] = []
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._started = False

    def _trace_emitter(self) -> TraceEmitter | None:
        rate = float(getattr(self.args, "trace_sample", 0.0) or 0.0)
        if rate <= 0:
            return None
        if not getattr(self.args, "nats", ""):
            log.info("%s: --trace-sample %g but no NATS URL: no svc.trace", self.deployment, rate)
            return None
        files = tls_files(self.args)
        return TraceEmitter(
            self.deployment,
            connect=self.nats,
            sample=rate,
            identity=identity_of(files) if files is not None else "",
            registry=self.registry,
        )

    # -- calling other services -------------------------------------------------------------

    async def channel(self) -> MeshChannel:
        async with self._lock:
            if self._channel is None:
                config = ClientConfig(
                    etcd=tuple(e for e in self.args.etcd.split(",") if e),
                    namespace=self.args.namespace,
                    tls=tls_files(self.args),
                    etcd_tls=etcd_tls(self.args),
                    tracing=self.tracing,
                    serving=self._serving,
                    # The zone this instance registers is the one its own calls stay in.
                    zone=self.args.zone,
                )
                self._client_metrics = ClientMetrics(self.registry)
                self._channel = await MeshChannel.connect(
                    config, metrics=self._client_metrics, records=self.records
                )
        return self._channel

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ServerMetricsInterceptor(ServerMetrics(self.registry))
        ]
        if self.records is not None:
            self._server_records = ServerRecords(self.records)
        # The caller's trace is current for the handler, with tracing on or off (and the
        # sampled calls recorded, inside it: authorization's refusals included).
        interceptors.extend(tracing_server_interceptors(self.tracing, self._server_records))
        if self.args.policy:
            interceptors.append(AuthzInterceptor(PolicySource(Path(self.args.policy))))
        return interceptors

    def serving_as(self, instance_id: str, address: str) -> None:
        """The host serves as this instance at this address (its svc.trace records say so)."""
        if self._server_records is not None:
            self._server_records.serving_as(instance_id, address)

    # -- events -----------------------------------------------------------------------------

    async def jetstream(self) -> Any:
        """This service's JetStream context (NATS connected on first use)."""
        return (await self.nats()).jetstream()

    async def nats(self) -> Any:
        """This service's NATS connection (connected on first use; reconnects for ever)."""
        async with self._nats_lock:
            if self._nats is None:
                url = getattr(self.args, "nats", "")
                if not url:
                    raise ValueError(
                        f"{self.deployment} uses events but has no NATS URL: pass --nats or set "
                        "MESH_NATS (`mesh up` sets it)"
                    )
                import nats

                access = nats_settings(self.args)
                self._nats = await nats.connect(
                    url.split(","), name=self.deployment, **_NATS_OPTIONS, **access.options()
                )
        return self._nats

    async def publisher(self) -> Publisher:
        """Publishes events with this deployment as their source."""
        if self._publisher is None:
            self._publisher = Publisher(await self.jetstream(), self.deployment)
        return self._publisher

    def subscribe(
        self, message_type: type[M], handler: Handler[M], *, spec: ConsumerSpec | None = None
    ) -> None:
        """Deliver `message_type` events to `handler(message, meta)` from when the service is
        up until it stops; one durable consumer per (deployment, type), shared by replicas."""
        if self._started:
            raise RuntimeError("declare subscriptions before the service starts")
        self._subscriptions.append((message_type, handler, spec))

    def outbox(self, database: str | Path) -> Outbox:
        """The outbox table of `database`, relayed to NATS while the service runs."""
        if self._started:
            raise RuntimeError("declare outboxes before the service starts")
        outbox = Outbox(database)
        self._outboxes.append(outbox)
        return outbox

    # -- lifecycle --------------------------------------------------------------------------

    def on_start(self, hook: Hook) -> None:
        """Run `hook` once the service is up (after its subscriptions and relays start)."""
        self._on_start.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Run `hook` when the service stops (after it drained; stop hooks run in reverse)."""
        self._on_stop.append(hook)

    async def start(self) -> None:
        """Start what was declared: svc.trace, outbox relays, subscriptions, then the start
        hooks."""
        self._started = True
        if self.records is not None:
            self.records.start()
        if self._outboxes:
            publisher = await self.publisher()
            for outbox in self._outboxes:
                relay = OutboxRelay(outbox, publisher, stream=events_stream())
                relay.start()
                self._relays.append(relay)
        by_spec: dict[ConsumerSpec | None, Subscriber] = {}
        for message_type, handler, spec in self._subscriptions:
            subscriber = by_spec.get(spec)
            if subscriber is None:
                subscriber = Subscriber(
                    await self.jetstream(), self.deployment, spec=spec, records=self.records
                )
                by_spec[spec] = subscriber
                self._subscribers.append(subscriber)
            await subscriber.subscribe(message_type, handler)
        for hook in self._on_start:
            await _call(hook)

    async def close(self) -> None:
        """Stop everything started, in reverse, then close the connections. Each step runs
        even if one before it failed (logged)."""
        # Consumers and relays first: they use what the service owns (its store), which its
        # stop hooks close.
        steps: list[Hook] = [s.close for s in reversed(self._subscribers)]
        steps += [r.stop for r in reversed(self._relays)]
        steps += [*reversed(self._on_stop)]
        steps += [o.close for o in self._outboxes]
        if self.records is not None:
            steps.append(self.records.close)  # what is queued, before NATS closes
        steps.append(self._close_nats)
        if self._channel is not None:
            steps.append(self._channel.close)
        for step in steps:
            try:
                await _call(step)
            except Exception:
                log.exception("%s: stopping %r failed", self.deployment, step)

    async def _close_nats(self) -> None:
        if self._nats is not None:
            await self._nats.close()


async def _call(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result
