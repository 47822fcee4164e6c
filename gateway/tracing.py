"""One OpenTelemetry SERVER span per HTTP request, continuing the caller's W3C trace.

With tracing on (``mesh gateway --tracing console|otlp``), the gateway extracts ``traceparent``
and ``tracestate`` from the request headers, opens a span named ``<METHOD> <route template>``
(OpenTelemetry's HTTP server conventions: the route, not the raw path, so names stay few), and
calls the backend inside it; the mesh channel's gRPC client interceptor then sends the span's
context on, so one trace runs from the REST client through every service. With tracing off
this module costs a request nothing (:data:`NO_TRACING`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from opentelemetry import propagate, trace

__all__ = ["NO_TRACING", "RequestTracer", "Tracing"]


class Tracing(Protocol):
    def request_span(
        self, method: str, route: str, path: str, headers: Sequence[tuple[str, str]]
    ) -> contextlib.AbstractContextManager[Any]: ...


class _NoTracing:
    def request_span(
        self, method: str, route: str, path: str, headers: Sequence[tuple[str, str]]
    ) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


NO_TRACING: Tracing = _NoTracing()


class RequestTracer:
    """Spans from the installed tracer provider (see mesh.telemetry.setup_tracing)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("hms.gateway", tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def request_span(
        self, method: str, route: str, path: str, headers: Sequence[tuple[str, str]]
    ) -> Iterator[trace.Span]:
        carrier = {name: value for name, value in headers if name in ("traceparent", "tracestate")}
        parent = propagate.extract(carrier)
        with self._tracer.start_as_current_span(
            f"{method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": path},
        ) as span:
            yield span
