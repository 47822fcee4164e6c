"""MeshChannel: a channel any generated stub accepts unchanged (`NotifyServiceStub(channel)`).

grpcio has no plug-in API for name resolvers or load balancers, so discovery and picking live
here, in our own channel pool: one registry watch and one ServicePool per gRPC service, opened
on the first call to it, and per-instance grpc.aio channels opened lazily. No etcd round trip
on the hot path: the watch keeps each pool current.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from mesh import tls
from mesh.aio import cancel_and_wait
from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.config import ClientConfig
from mesh.client.middleware import (
    DeadlineLayer,
    Handler,
    Layer,
    PickLayer,
    RetryLayer,
    TelemetryLayer,
    TraceRecordLayer,
    build_chain,
    transport,
)
from mesh.client.pool import ServicePool
from mesh.client.reach import tcp_reachable
from mesh.client.rpc import MeshCall
from mesh.client.semver import VersionRange
from mesh.client.traffic import VERSION_METADATA, Locality, TrafficPolicy
from mesh.client.traffic_policies import TrafficPolicies
from mesh.controlplane import etcd_client_tls
from mesh.registry.etcd import Etcd
from mesh.registry.keys import Instance
from mesh.registry.static import StaticDiscovery, static_discovery
from mesh.registry.watch import Change, ChangeKind, Discovery
from mesh.resilience.budget import RetryBudget
from mesh.resilience.outlier import HealthState
from mesh.resilience.retry import Idempotency, idempotency_of
from mesh.telemetry import ChannelCollector, ClientMetrics
from mesh.tracecontext import TRACEPARENT, current_span_context, inject_metadata, new_traceparent
from mesh.tracerecords import BUDGET_REFUSED, TraceEmitter

__all__ = ["ChannelStats", "MeshChannel", "ServiceStats"]

log = logging.getLogger(__name__)

#: HTTP/2 keepalive while calls are open: an instance whose host vanished without a word
#: (its link cut, its machine off, its process stopped: no RST, no FIN) is known dead within
#: ~4 s (2 s quiet, then a ping unanswered for 2 s; not less, so that a busy machine's late
#: answer is not taken for a dead host). The calls in flight on it then fail as UNAVAILABLE
#: (retried elsewhere where safe) and new calls go to others, instead of each waiting out its
#: deadline until the instance's lease expires. grpc 1.85 times a keepalive ping out after
#: `ping_timeout_ms` (1 min by default), not `keepalive_timeout_ms` alone: both are set. The
#: service host accepts pings this often (mesh.server.host.PING_POLICY).
INSTANCE_KEEPALIVE: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.ping_timeout_ms", 2000),
)


@dataclass(frozen=True)
class ServiceStats:
    service: str
    instances: int  # registered (or configured) instances the channel knows
    serving: int  # of which not draining
    ejected: int  # of which ejected by outlier detection (or on probation)
    unreachable: int  # of which gated: nothing answered a connection lately
    ejections_total: int
    #: Attempts per (version, status code name, count): how each version fares (a canary).
    attempts_by_version: tuple[tuple[str, str, int], ...] = ()
    #: Picks whose split subset had no ready instance: its share went to the others.
    split_redistributed: int = 0


@dataclass(frozen=True)
class ChannelStats:
    retries: int  # retries and hedges sent
    budget_refusals: int  # retries the budget refused
    services: tuple[ServiceStats, ...]


class MeshChannel:
    """One client-side channel for every service of the mesh.

    >>> channel = await MeshChannel.connect(ClientConfig(etcd=("127.0.0.1:2379",), tls=files))
    >>> stub = EchoServiceStub(channel)
    >>> await stub.Echo(EchoRequest(message="hi"), timeout=1)
    >>> await channel.close()
    """

    def __init__(
        self,
        etcd: Etcd | None,
        config: ClientConfig,
        *,
        owns_etcd: bool = False,
        metrics: ClientMetrics | None = None,
        records: TraceEmitter | None = None,
    ) -> None:
        self.config = config
        self.etcd = etcd
        self._owns_etcd = owns_etcd
        self._clock = time.monotonic
        self._rand = random.Random()
        self._pools: dict[str, ServicePool] = {}
        self._discoveries: dict[str, Discovery | StaticDiscovery] = {}
        self._opening: dict[str, asyncio.Future[ServicePool]] = {}
        self.budget = RetryBudget(
            self._clock,
            ratio=config.budget_ratio,
            window=config.budget_window,
            min_per_second=config.budget_min_per_second,
        )
        #: svc.trace records and svc.mesh decisions (mesh.tracerecords); None: neither.
        self.records = records
        self.retry_layer = RetryLayer(
            config.retry_for,
            self.budget,
            rand=self._rand.random,
            on_refused=self._budget_refused if records is not None else None,
        )
        layers: dict[str, Layer | None] = {
            "telemetry": TelemetryLayer(metrics) if metrics is not None else None,
            "deadline": DeadlineLayer(config.deadlines),
            "retry": self.retry_layer,
            "pick": PickLayer(self.pool, no_instance_wait=config.no_instance_wait),
        }
        chosen = [layers[name] for name in config.layers]
        if records is not None:
            # Per attempt, so just outside pick: it sees which instance each one went to.
            at = config.layers.index("pick")
            chosen.insert(at, TraceRecordLayer(records, sends_trace_context=not config.tracing))
        self._chain: Handler = build_chain([x for x in chosen if x is not None], transport)
        if metrics is not None:
            metrics.registry.register(ChannelCollector(self))
        self._credentials: grpc.ChannelCredentials | None = None
        self._cert_stamp = self._stamp()
        self._rotation_task: asyncio.Task[None] | None = None
        self._traffic: TrafficPolicies | None = None
        self._interceptors = _tracing_interceptors() if config.tracing else []
        #: Without OpenTelemetry's interceptor, each call is given the trace context here.
        self.sends_trace_context = not config.tracing

    @property
    def pools(self) -> dict[str, ServicePool]:
        return self._pools

    @classmethod
    async def connect(
        cls,
        config: ClientConfig,
        *,
        metrics: ClientMetrics | None = None,
        records: TraceEmitter | None = None,
    ) -> MeshChannel:
        etcd = None
        if config.etcd:
            etcd = Etcd(config.etcd, tls=etcd_client_tls(config.etcd, config.etcd_tls, config.tls))
            await etcd.connect()
        channel = cls(etcd, config, owns_etcd=etcd is not None, metrics=metrics, records=records)
        channel.start()
        return channel

    def start(self) -> None:
        if self.etcd is not None and self.config.traffic_policies:
            self._traffic = TrafficPolicies(self.etcd, self.config.namespace)
            self._traffic.subscribe(self._policy_changed)
            self._traffic.start()
        if self.config.serving is None and self.config.tls is not None:
            log.warning(
                "no serving policy: any mesh identity registered under a service may serve it "
                "(give one, as `mesh up` does: docs/security.md)"
            )
        if self.config.tls is not None and self.config.rotation_check > 0:
            self._rotation_task = asyncio.create_task(self._follow_rotation())

    def _policy_changed(self, service: str, policy: TrafficPolicy | None) -> None:
        pool = self._pools.get(service)
        if pool is not None:
            pool.policy = policy

    @property
    def traffic(self) -> TrafficPolicies | None:
        """The traffic policies this channel follows (None: none read)."""
        return self._traffic

    async def close(self) -> None:
        if self._traffic is not None:
            await self._traffic.stop()
        await cancel_and_wait(self._rotation_task)
        for discovery in self._discoveries.values():
            await discovery.stop()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._discoveries.clear()
        if self._owns_etcd and self.etcd is not None:
            await self.etcd.close()

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the pools ------------------------------------------------------------------------

    async def pool(self, service: str) -> ServicePool:
        """The pool of `service`, opening its registry watch on first use."""
        found = self._pools.get(service)
        if found is not None:
            return found
        opening = self._opening.get(service)
        if opening is None:
            opening = asyncio.ensure_future(self._open_pool(service))
            self._opening[service] = opening
        return await asyncio.shield(opening)

    async def _open_pool(self, service: str) -> ServicePool:
        pool = ServicePool(
            service,
            self._open_instance_channel,
            outlier=self.config.outlier,
            clock=self._clock,
            rand=self._rand.random,
            watch_health=self.config.watch_health,
            drain_grace=self.config.drain_grace,
            probe=tcp_reachable if self.config.probe_connectivity else None,
            admit=self._admit,
            decisions=self.records.decision if self.records is not None else None,
            locality=Locality(self.config.zone, self.config.locality_factor),
        )
        if self._traffic is not None:
            pool.policy = self._traffic.get(service)
        discovery: Discovery | StaticDiscovery
        if service in self.config.upstreams or self.etcd is None:
            discovery = static_discovery(self.config.upstreams, service)
        else:
            discovery = Discovery(self.etcd, self.config.namespace, service)
        discovery.subscribe(pool.apply)
        # Bounded: with etcd down at start there is nothing to serve, but a call must not hang.
        await discovery.start(timeout=self.config.no_instance_wait)
        for instance in discovery.instances():
            if instance.instance_id not in pool.endpoints:
                pool.apply(Change(ChangeKind.ADDED, instance))
        self._pools[service] = pool
        self._discoveries[service] = discovery
        self._opening.pop(service, None)
        return pool

    def _version_pin(
        self, service: str, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> str | None:
        """The versions a call may go to: its ``x-hms-version`` metadata, else the config's
        pin for the service, else any (None). A malformed range in the metadata fails the
        call INVALID_ARGUMENT naming it."""
        for key, value in metadata or ():
            if key == VERSION_METADATA:
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                try:
                    VersionRange.parse(text)
                except ValueError as exc:
                    raise rpc_error(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{VERSION_METADATA}: {exc}"
                    ) from None
                return text
        return self.config.version_pins.get(service)

    def _budget_refused(self, call: CallInfo) -> None:
        assert self.records is not None
        endpoint = call.endpoint
        instance, address = (
            ("", "") if endpoint is None else (endpoint.key, endpoint.instance.address)
        )
        reason = f"retry budget exhausted: {call.method} attempt {call.attempt + 1} not sent"
        self.records.decision(BUDGET_REFUSED, call.service, instance, address, reason)

    def _outgoing(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> list[Any]:
        """The metadata a call sends: the caller's, with the current trace context. With
        svc.trace on, a call made outside any trace starts one, so that all its attempts and
        the server's side share it (and one sampling choice)."""
        sent: list[tuple[str, str | bytes]] = list(metadata or ())
        if self.sends_trace_context:
            inject_metadata(sent)
            if (
                self.records is not None
                and current_span_context() is None
                and all(key != TRACEPARENT for key, _ in sent)
            ):
                sent.append((TRACEPARENT, new_traceparent()))
        return sent

    def _admit(self, instance: Instance) -> str | None:
        """Why `instance` may not serve its service (the serving policy), or None."""
        serving = self.config.serving
        if serving is None or self.config.tls is None:
            return None  # development: anyone may serve (said once at start)
        return serving.refusal(instance.service, instance.identity)

    def _open_instance_channel(self, instance: Instance) -> grpc.aio.Channel:
        options = [
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", self.config.max_receive_message_bytes),
            *INSTANCE_KEEPALIVE,
        ]
        if self.config.tls is None:
            return grpc.aio.insecure_channel(
                instance.address, options=options, interceptors=self._interceptors
            )
        if not instance.identity:
            # Without a registered identity the server cannot be checked: refuse to call it.
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"{instance.service} instance {instance.instance_id} registered no identity",
            )
        try:
            pinned = tls.channel_options_for(instance.identity)
        except ValueError as exc:  # decode() refuses such entries; static upstreams may not
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"{instance.service} instance {instance.instance_id}: {exc}",
            ) from None
        if self._credentials is None:
            self._credentials = tls.channel_credentials(self.config.tls)
        return grpc.aio.secure_channel(
            instance.address,
            self._credentials,
            options=[*options, *pinned],
            interceptors=self._interceptors,
        )

    # -- certificate rotation -------------------------------------------------------------

    def _stamp(self) -> tuple[float, ...]:
        files = self.config.tls
        if files is None:
            return ()
        try:
            return tuple(p.stat().st_mtime_ns for p in (files.cert, files.key, files.ca))
        except OSError:
            return ()

    async def _follow_rotation(self) -> None:
        """grpcio has no client-side reload: on new files, open new channels and swap."""
        while True:
            await asyncio.sleep(self.config.rotation_check)
            stamp = self._stamp()
            if stamp and stamp != self._cert_stamp:
                self._cert_stamp = stamp
                self._credentials = None
                for pool in self._pools.values():
                    for endpoint in pool.endpoints.values():
                        endpoint.rotate()
                log.info("client certificate changed: channels swapped")

    # -- grpc.aio.Channel's surface, as generated stubs use it ------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool = False,
                    ) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, CallKind.UNARY_UNARY, method, request_serializer,
                              response_deserializer)  # fmt: skip

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False,
                     ) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, CallKind.UNARY_STREAM, method, request_serializer,
                              response_deserializer)  # fmt: skip

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False,
                     ) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, CallKind.STREAM_UNARY, method, request_serializer,
                              response_deserializer)  # fmt: skip

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, _registered_method: bool = False,
                      ) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, CallKind.STREAM_STREAM, method, request_serializer,
                              response_deserializer)  # fmt: skip

    async def channel_ready(self) -> None:
        """Compatibility with grpc.aio.Channel: the mesh channel is always ready."""

    # -- the low-level call, for callers without generated stubs (the REST gateway) ---------

    def call(
        self,
        method: str,
        request: Any,
        *,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
        kind: CallKind = CallKind.UNARY_UNARY,
        idempotency: Idempotency | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        version: str | None = None,
        service: str | None = None,
    ) -> MeshCall:
        """One call of `method` (`/pkg.Service/Method`) through the chain, as a generated stub
        would make it. `idempotency` defaults to the method's proto option; `version` sends it
        only to instances that registered that version; `service` routes it to instances of
        another service than the method's own (reflection and health, which every instance
        serves beside its own services).

        >>> call = channel.call("/hms.notify.v1.NotifyService/Send", request,
        ...                     serializer=SendRequest.SerializeToString,
        ...                     deserializer=SendResponse.FromString, timeout=2)
        >>> response = await call
        """
        sent = self._outgoing(metadata)
        info = CallInfo(
            kind=kind,
            method=method,
            service=service or service_of(method),
            request=request,
            metadata=sent,
            serializer=serializer,
            deserializer=deserializer,
            idempotency=idempotency if idempotency is not None else idempotency_of(method),
            timeout=timeout,
            version=version or self._version_pin(service or service_of(method), metadata),
        )
        return MeshCall(info, self._chain)

    # -- what operators and metrics read ----------------------------------------------------

    def stats(self) -> ChannelStats:
        """Retries, budget refusals, and per service its instances and ejections."""
        now = self._clock()
        services = []
        for name, pool in sorted(self._pools.items()):
            counts = pool.detector.counts(now)
            services.append(
                ServiceStats(
                    service=name,
                    instances=len(pool.endpoints),
                    serving=sum(e.serving for e in pool.endpoints.values()),
                    ejected=len(pool.endpoints) - counts[HealthState.ACTIVE],
                    unreachable=sum(not e.reach.usable(now) for e in pool.endpoints.values()),
                    ejections_total=pool.detector.ejections_total,
                    attempts_by_version=tuple(
                        (version, code, count)
                        for (version, code), count in sorted(pool.version_attempts.items())
                    ),
                    split_redistributed=pool.split_redistributed,
                )
            )
        return ChannelStats(
            retries=self.retry_layer.retries,
            budget_refusals=self.retry_layer.budget_refusals,
            services=tuple(services),
        )

    def watch_registry(self) -> Discovery | None:
        """A Discovery of every service in the channel's namespace, on the channel's own etcd
        connection (not started); None for a channel without etcd (static upstreams)."""
        if self.etcd is None:
            return None
        return Discovery(self.etcd, self.config.namespace)


def _tracing_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


class _MultiCallable:
    """What `channel.unary_unary(...)` returns: calling it starts a call."""

    def __init__(self, channel: MeshChannel, kind: CallKind, method: str,
                 serializer: Callable[[Any], bytes] | None,
                 deserializer: Callable[[bytes], Any] | None) -> None:  # fmt: skip
        self._channel = channel
        self._kind = kind
        self._method = method
        self._service = service_of(method)
        self._serializer = serializer
        self._deserializer = deserializer
        self._idempotency = idempotency_of(method)

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        sent = self._channel._outgoing(metadata)
        call = CallInfo(
            kind=self._kind,
            method=self._method,
            service=self._service,
            request=request,
            metadata=sent,
            serializer=self._serializer,
            deserializer=self._deserializer,
            idempotency=self._idempotency,
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            version=self._channel._version_pin(self._service, metadata),
        )
        return MeshCall(call, self._channel._chain)
