"""Tracing and metrics, set up at a process's edge (its main) and handed to the library.

Tracing is OpenTelemetry with opentelemetry-instrumentation-grpc on both sides, so the W3C
trace context travels in gRPC metadata and A -> B -> C is one trace. OpenTelemetry's tracer
provider is process-global by its own design; it is set here, once, from the command line.
With tracing off (the default) nothing is recorded, but the trace context still travels, at a
fraction of the instrumentation's cost: `TraceContextInterceptor` here makes the caller's
trace current for the handler, and the mesh channel sends it on (mesh.tracecontext).

Metrics are Prometheus text on a per-process metrics port, from a registry of our own
(never the library-global default), so several meshes in one process do not mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh import tracecontext
from mesh.errors import MeshError
from mesh.identity import caller_identity
from mesh.server.wrap import Around, AroundInterceptor
from mesh.tracerecords import SIDE_SERVER, TraceEmitter, recorded

__all__ = [
    "EXPORTERS",
    "CallRecordInterceptor",
    "ClientMetrics",
    "ServerMetrics",
    "ServerMetricsInterceptor",
    "ServerRecords",
    "TraceContextInterceptor",
    "serve_metrics",
    "setup_tracing",
    "tracing_server_interceptors",
]

log = logging.getLogger(__name__)

EXPORTERS = ("off", "console", "otlp")
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def setup_tracing(exporter: str, service_name: str) -> bool:
    """Install a tracer provider exporting to `exporter`; False when tracing is off."""
    if exporter not in EXPORTERS:
        raise ValueError(f"tracing exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    if exporter == "off":
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    else:  # OTLP over gRPC; endpoint from OTEL_EXPORTER_OTLP_ENDPOINT (default localhost:4317)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return True


def tracing_server_interceptors(
    tracing: bool, records: ServerRecords | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """What makes the caller's trace current for a handler: OpenTelemetry's instrumentation
    with `tracing` on (a span per call), else `TraceContextInterceptor`; with `records`, each
    call of a sampled trace is also a svc.trace record (mesh.tracerecords)."""
    if not tracing:
        return [TraceContextInterceptor(records)]
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptors: list[grpc.aio.ServerInterceptor] = [aio_server_interceptor()]
    if records is not None:
        interceptors.append(CallRecordInterceptor(records))
    return interceptors


class ServerRecords:
    """The service host's side of svc.trace: one SIDE_SERVER record per call of a sampled
    trace, its span the hop's own, its parent the caller's, its caller the peer
    certificate's identity. The instance and address are set once the host serves
    (`serving_as`)."""

    def __init__(self, emitter: TraceEmitter) -> None:
        self.emitter = emitter
        self.instance = ""
        self.address = ""

    def serving_as(self, instance: str, address: str) -> None:
        self.instance, self.address = instance, address

    def emit(
        self,
        site: tuple[str, str],
        span: Any,
        parent_span_id: int,
        started: tuple[int, int],
        *,
        exc: BaseException | None,
        context: Any,
    ) -> None:
        """Queue the record of one call that began at `started` (wall, perf ns)."""
        duration = time.perf_counter_ns() - started[1]
        try:
            caller = caller_identity(context.auth_context()) or ""
        except Exception:  # a test context without one
            caller = ""
        self.emitter.call(
            SIDE_SERVER, span.trace_id, span.span_id, parent_span_id, caller, self.instance,
            self.address, site[0], site[1], _code_number(exc, context), started[0], duration,
        )  # fmt: skip


def _site(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    _, service, name = [*method.split("/"), "", ""][:3]
    return service, name


class _TraceScope:
    """Around one call: the caller's trace (a new span id in it), or a new trace, current
    for the handler, so its calls and events carry it. (A class, not a generator-based
    context manager: every call enters one.)"""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Any) -> None:
        self._context = context
        self._token: object = None

    async def __aenter__(self) -> None:
        caller = tracecontext.from_carrier(self._context.invocation_metadata() or ())
        self._token = tracecontext.attach(tracecontext.child_of(caller))

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        tracecontext.detach(self._token)


class _RecordedTraceScope:
    """`_TraceScope`, and the call's svc.trace record when its trace is sampled."""

    __slots__ = ("_context", "_parent", "_records", "_site", "_span", "_started", "_token")

    def __init__(self, records: ServerRecords, site: tuple[str, str], context: Any) -> None:
        self._records = records
        self._site = site
        self._context = context
        self._token: object = None
        self._span: Any = None
        self._parent = 0
        self._started = (0, 0)

    async def __aenter__(self) -> None:
        caller = tracecontext.from_carrier(self._context.invocation_metadata() or ())
        own = tracecontext.child_of(caller)
        self._token = tracecontext.attach(own)
        if self._records.emitter.sampled(own.trace_id):
            self._span = own
            self._parent = caller.span_id if caller is not None else 0
            self._started = (time.time_ns(), time.perf_counter_ns())

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        tracecontext.detach(self._token)
        if self._span is not None:
            self._records.emit(
                self._site, self._span, self._parent, self._started, exc=exc, context=self._context
            )


_TRACE_SCOPE = Around(scope=_TraceScope)


class TraceContextInterceptor(AroundInterceptor):
    """W3C trace context without spans: the incoming ``traceparent``/``tracestate`` (or a new
    trace) is current while the handler runs (sync handlers, in the thread pool, are left
    alone); with `records`, a sampled call is recorded too."""

    def __init__(self, records: ServerRecords | None = None) -> None:
        super().__init__()
        self.records = records

    def around(self, method: str) -> Around:
        records = self.records
        if records is None or not recorded(method):
            return _TRACE_SCOPE
        site = _site(method)
        return Around(scope=lambda context: _RecordedTraceScope(records, site, context))


class _RecordScope:
    """With OpenTelemetry's spans: the current span is the hop's; the caller's comes in the
    metadata (read only for a sampled trace)."""

    __slots__ = ("_context", "_records", "_site", "_span", "_started")

    def __init__(self, records: ServerRecords, site: tuple[str, str], context: Any) -> None:
        self._records = records
        self._site = site
        self._context = context
        self._span: Any = None
        self._started = (0, 0)

    async def __aenter__(self) -> None:
        span = tracecontext.current_span_context()
        if span is not None and self._records.emitter.sampled(span.trace_id):
            self._span = span
            self._started = (time.time_ns(), time.perf_counter_ns())

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._span is None:
            return
        caller = tracecontext.from_carrier(self._context.invocation_metadata() or ())
        parent = caller.span_id if caller is not None else 0
        self._records.emit(
            self._site, self._span, parent, self._started, exc=exc, context=self._context
        )


class CallRecordInterceptor(AroundInterceptor):
    """svc.trace records of the calls served, under OpenTelemetry's server interceptor."""

    def __init__(self, records: ServerRecords) -> None:
        super().__init__()
        self.records = records

    def around(self, method: str) -> Around | None:
        if not recorded(method):
            return None
        records, site = self.records, _site(method)
        return Around(scope=lambda context: _RecordScope(records, site, context))


def serve_metrics(registry: CollectorRegistry, port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve `registry` as Prometheus text on host:port (0: a free port); returns the port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


class CallMetrics:
    """Per service, method and status code: requests, latency and calls in flight, for one
    side (`mesh_client_*` fed by the channel's telemetry layer, `mesh_server_*` by the server
    interceptor)."""

    side = "call"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        prefix = f"mesh_{self.side}"
        self.requests = Counter(
            f"{prefix}_requests", f"Calls ({self.side} side), by final status",
            ["service", "method", "code"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            f"{prefix}_request_seconds", f"Call latency ({self.side} side, all attempts)",
            ["service", "method"], buckets=_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            f"{prefix}_in_flight", "Calls in flight", ["service"], registry=registry
        )


class ClientMetrics(CallMetrics):
    """Retries and ejections are read from the channel at scrape time (ChannelCollector)."""

    side = "client"


class ServerMetrics(CallMetrics):
    side = "server"


class ChannelCollector(Collector):
    """Retries, budget refusals and ejections, read from a MeshChannel when scraped."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def collect(self) -> Iterable[Any]:
        stats = self.channel.stats()
        retries = CounterMetricFamily("mesh_client_retries", "Retries and hedges sent")
        retries.add_metric([], stats.retries)
        refused = CounterMetricFamily(
            "mesh_client_retry_budget_refusals", "Retries not sent: budget exhausted"
        )
        refused.add_metric([], stats.budget_refusals)
        ejections = CounterMetricFamily(
            "mesh_client_ejections", "Instances ejected by outlier detection", labels=["service"]
        )
        endpoints = GaugeMetricFamily(
            "mesh_client_endpoints", "Known instances", labels=["service"]
        )
        ejected = GaugeMetricFamily(
            "mesh_client_endpoints_ejected",
            "Known instances ejected by outlier detection now (or on probation)",
            labels=["service"],
        )
        by_version = CounterMetricFamily(
            "mesh_client_version_attempts",
            "Attempts per instance version and status code (a canary's errors beside the old's)",
            labels=["service", "version", "code"],
        )
        redistributed = CounterMetricFamily(
            "mesh_client_split_redistributed",
            "Calls whose traffic-split subset had no ready instance: its share went elsewhere",
            labels=["service"],
        )
        for service in stats.services:
            ejections.add_metric([service.service], service.ejections_total)
            endpoints.add_metric([service.service], service.instances)
            ejected.add_metric([service.service], service.ejected)
            for version, code, count in service.attempts_by_version:
                by_version.add_metric([service.service, version, code], count)
            redistributed.add_metric([service.service], service.split_redistributed)
        return [retries, refused, ejections, endpoints, ejected, by_version, redistributed]


def _code_of(exc: BaseException | None, context: Any) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, MeshError):
        return exc.code.name
    code = context.code() if hasattr(context, "code") else None  # set by context.abort()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, "UNKNOWN") if isinstance(code, int) else "UNKNOWN"


_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}


def _code_number(exc: BaseException | None, context: Any) -> int:
    """The status code number a served call ended with (0 OK, 2 UNKNOWN if unknown)."""
    if exc is None:
        return 0
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.value[0]
    return _CODE_NUMBERS.get(_code_of(exc, context), 2)


class _MethodMetrics:
    """The server metrics of one method, their labelled children looked up once, not per
    call; called with a call's context, it gives the scope that times that call."""

    def __init__(self, metrics: ServerMetrics, service: str, method: str) -> None:
        self.metrics, self.service, self.method = metrics, service, method
        self.requests_ok = metrics.requests.labels(service, method, "OK")
        self.latency = metrics.latency.labels(service, method)
        self.in_flight = metrics.in_flight.labels(service)

    def __call__(self, context: Any) -> _Timed:
        return _Timed(self, context)

    def record(self, started: float, exc: BaseException | None, context: Any) -> None:
        if exc is None:
            self.requests_ok.inc()
        else:
            code = _code_of(exc, context)
            self.metrics.requests.labels(self.service, self.method, code).inc()
        self.latency.observe(time.perf_counter() - started)


class _Timed:
    """Around one call: in flight while it runs, then counted by its code and timed. (A
    class, not an @asynccontextmanager: every call enters one.)"""

    __slots__ = ("_context", "_method", "_started")

    def __init__(self, method: _MethodMetrics, context: Any) -> None:
        self._method = method
        self._context = context
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()
        self._method.in_flight.inc()

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._method.in_flight.dec()
        self._method.record(self._started, exc, self._context)


class ServerMetricsInterceptor(AroundInterceptor):
    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def around(self, method: str) -> Around:
        _, service, name = [*method.split("/"), "", ""][:3]
        return Around(scope=_MethodMetrics(self.metrics, service, name))
