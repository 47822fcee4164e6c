"""W3C trace context (``traceparent``, ``tracestate``) that travels whether or not spans are
exported.

The current trace is OpenTelemetry's current span. With tracing on (``--tracing console|otlp``)
that is the SDK's span and OpenTelemetry's instrumentation propagates it. With tracing off no
tracer provider is installed and nothing is recorded, but the mesh still keeps a trace current:
the gateway, the service host and the event subscriber put a ``NonRecordingSpan`` there (the
caller's trace with a new span id, or a new trace), and the mesh channel and the event
publisher send it on. One notion of "current" serves both modes, and the outbox, publisher and
subscriber, which speak OpenTelemetry's propagation API, need not know which mode they are in.
Without a tracer this costs a few microseconds per hop: no span objects, ids from
``random.getrandbits`` (OpenTelemetry's own generator), parsing by hand.

A handler reads the trace id of the request (or event) it serves with :func:`current_trace_id`:

    audit_row.trace_id = current_trace_id()     # 32 lower-case hex digits, "" if none
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "attach",
    "child_of",
    "current_span_context",
    "current_trace_id",
    "current_traceparent",
    "detach",
    "format_traceparent",
    "from_carrier",
    "inject_metadata",
    "new_traceparent",
    "parse_traceparent",
    "parse_tracestate",
    "trace_id_of",
    "tracer_installed",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only (W3C Trace Context).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VERSION_00_LENGTH = 55
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_FLAGS = {0: TraceFlags(0), 1: _SAMPLED}
_NO_STATE = TraceState()
# W3C tracestate list members: key "=" value (the grammar OpenTelemetry's TraceState checks,
# matched here so that a caller's malformed header is dropped without a log line per request).
_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
# W3C: at most 32 members; a vendor propagates at least 512 characters. Beyond either the
# whole tracestate is dropped rather than cut.
_MAX_MEMBERS = 32
_MAX_TRACESTATE = 512


def parse_traceparent(value: str | None, *, remote: bool = True) -> SpanContext | None:
    """The span context a ``traceparent`` value names, or None if it is not a valid one.

    Version 00 is exactly ``00-<32 hex>-<16 hex>-<2 hex>``; a later version (not ``ff``) may
    add fields after a ``-``, which are ignored. All-zero ids are invalid.

    >>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").trace_id
    100928712660039387548437620282386777910
    >>> parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01") is None
    True
    """
    if not value:
        return None
    value = value.strip(" \t")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version = match.group(1)
    if version == "ff":
        return None
    if len(value) != _VERSION_00_LENGTH and (version == "00" or value[_VERSION_00_LENGTH] != "-"):
        return None
    trace_id = int(match.group(2), 16)
    span_id = int(match.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    flags = int(match.group(4), 16)
    return SpanContext(
        trace_id, span_id, is_remote=remote, trace_flags=_FLAGS.get(flags) or TraceFlags(flags)
    )


def parse_tracestate(values: Sequence[str]) -> TraceState:
    """The ``tracestate`` of one or more header values (joined by ``,``, as HTTP does); empty
    when absent, too long or malformed (W3C: then it is not propagated)."""
    if not values or sum(len(v) for v in values) + len(values) - 1 > _MAX_TRACESTATE:
        return _NO_STATE
    pairs: dict[str, str] = {}
    for value in values:
        for raw in value.split(","):
            member = raw.strip(" \t")
            if not member:
                continue  # empty members are allowed
            match = _MEMBER.fullmatch(member)
            if match is None or match.group(1) in pairs:
                return _NO_STATE
            pairs[match.group(1)] = match.group(2)
    if len(pairs) > _MAX_MEMBERS:
        return _NO_STATE
    return TraceState(list(pairs.items()))


def format_traceparent(context: SpanContext) -> str:
    """The version 00 ``traceparent`` of `context`."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _new_span_id() -> int:
    while True:
        span_id = random.getrandbits(64)
        if span_id:
            return span_id


def _new_trace_id() -> int:
    while True:
        trace_id = random.getrandbits(128)
        if trace_id:
            return trace_id


def new_traceparent() -> str:
    """A ``traceparent`` that starts a new, sampled trace."""
    return f"00-{_new_trace_id():032x}-{_new_span_id():016x}-01"


def child_of(parent: SpanContext | None) -> SpanContext:
    """The context of a span under `parent` (same trace, flags and state, a new span id), or
    of the first span of a new, sampled trace when there is no valid parent."""
    if parent is None or not parent.is_valid:
        return SpanContext(_new_trace_id(), _new_span_id(), is_remote=False, trace_flags=_SAMPLED)
    return SpanContext(
        parent.trace_id,
        _new_span_id(),
        is_remote=False,
        trace_flags=parent.trace_flags,
        trace_state=parent.trace_state,
    )


def from_carrier(pairs: Iterable[tuple[str, Any]]) -> SpanContext | None:
    """The (remote) span context carried by header or metadata pairs with lower-case names;
    None when there is none, it is invalid, or ``traceparent`` comes more than once."""
    traceparent: str | None = None
    states: list[str] = []
    seen = 0
    for key, value in pairs:
        if key == TRACEPARENT:
            seen += 1
            traceparent = value if isinstance(value, str) else None
        elif key == TRACESTATE and isinstance(value, str):
            states.append(value)
    if seen != 1:
        return None
    parent = parse_traceparent(traceparent)
    if parent is None or not states:
        return parent
    return SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=parent.trace_flags,
        trace_state=parse_tracestate(states),
    )


def attach(context: SpanContext) -> object:
    """Make `context` the current span's (a non-recording span); returns the token for
    :func:`detach`."""
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(context)))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def current_span_context() -> SpanContext | None:
    """The current span's context, None when no trace is current."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def trace_id_of(context: otel_context.Context | None) -> str:
    """The trace id of the span in `context` (the current one if None): 32 lower-case hex
    digits, "" if there is none."""
    span_context = trace.get_current_span(context).get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else ""


def current_trace_id() -> str:
    """The trace id of the request or event being handled: 32 lower-case hex digits, "" when
    no trace is current (outside any request or event)."""
    return trace_id_of(None)


def current_traceparent() -> str:
    """The current trace as a ``traceparent`` value, "" when none is current."""
    context = current_span_context()
    return "" if context is None else format_traceparent(context)


def inject_metadata(metadata: list[tuple[str, str | bytes]]) -> None:
    """Put the current trace context into outgoing gRPC `metadata` (in place), replacing any
    there: the caller's current trace is the one that travels. Unchanged when none is
    current."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return
    if metadata and any(key in (TRACEPARENT, TRACESTATE) for key, _ in metadata):
        metadata[:] = [(k, v) for k, v in metadata if k not in (TRACEPARENT, TRACESTATE)]
    metadata.append((TRACEPARENT, format_traceparent(context)))
    if context.trace_state:
        metadata.append((TRACESTATE, context.trace_state.to_header()))


def tracer_installed() -> bool:
    """True once a tracer provider is installed (``--tracing console|otlp``): spans are then
    made and propagated by OpenTelemetry; False while the API's default (no spans) is in
    place."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
