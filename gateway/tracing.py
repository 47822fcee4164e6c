"""The trace of each HTTP request: the caller's W3C trace continued, or a new one, always.

Every request gets a trace when it arrives (:meth:`Tracing.begin`): the caller's
``traceparent`` (and ``tracestate``) continued with a span of the gateway's, or a new trace
when there is none or it is invalid. The answer, error or not, carries that span's
``traceparent``, so a caller can quote the trace; the backend call runs with it current
(:meth:`RequestTrace.current`), so the mesh channel sends it on and one trace runs from the
REST client through every service.

With tracing on (``mesh gateway --tracing console|otlp``, :class:`RequestTracer`) the span is
an OpenTelemetry SERVER span, named ``<METHOD>`` and, once routed, ``<METHOD> <route
template>`` (OpenTelemetry's HTTP server conventions: the route, not the raw path, so names
stay few). With tracing off (:data:`NO_TRACING`) nothing is recorded: the span is only ids, at
a few microseconds a request (mesh.tracecontext).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace

from mesh import tracecontext

__all__ = ["NO_TRACING", "RequestTrace", "RequestTracer", "Tracing"]

_SERVER_ERROR = 500


class RequestTrace:
    """The trace of one request: its span, and the ``traceparent`` every answer carries."""

    __slots__ = ("_method", "_token", "span", "traceparent")

    def __init__(self, span: trace.Span, method: str) -> None:
        self.span = span
        self._method = method
        self._token: object = None
        self.traceparent = tracecontext.format_traceparent(span.get_span_context())

    def current(self, route: str) -> RequestTrace:
        """Used as ``with trace.current(route):`` around the backend call: names the span by
        `route` and makes it current, so the call carries the trace."""
        if self.span.is_recording():
            self.span.update_name(f"{self._method} {route}")
            self.span.set_attribute("http.route", route)
        return self

    def __enter__(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]

    def end(self, status: int) -> None:
        """The request is answered with HTTP `status` (0: nothing was sent)."""
        if self.span.is_recording():
            self.span.set_attribute("http.response.status_code", status)
            if status >= _SERVER_ERROR:
                self.span.set_status(trace.StatusCode.ERROR)
            self.span.end()


class Tracing(Protocol):
    def begin(self, method: str, path: str, headers: Sequence[tuple[str, str]]) -> RequestTrace:
        """The trace of a request that just arrived with `headers` (lower-case names)."""
        ...


class _TraceContextOnly:
    """Tracing off: the span is a context of ids, nothing is recorded."""

    def begin(self, method: str, path: str, headers: Sequence[tuple[str, str]]) -> RequestTrace:
        own = tracecontext.child_of(tracecontext.from_carrier(headers))
        return RequestTrace(trace.NonRecordingSpan(own), method)


#: No spans recorded; the trace context still travels (the default).
NO_TRACING: Tracing = _TraceContextOnly()


class RequestTracer:
    """SERVER spans from the installed tracer provider (see mesh.telemetry.setup_tracing)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("hms.gateway", tracer_provider=tracer_provider)

    def begin(self, method: str, path: str, headers: Sequence[tuple[str, str]]) -> RequestTrace:
        caller = tracecontext.from_carrier(headers)
        # An empty context, not None (which means "the current one"): no caller, a new trace.
        parent = otel_context.Context()
        if caller is not None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(caller), parent)
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return RequestTrace(span, method)
