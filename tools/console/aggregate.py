"""What the console makes of svc.trace: figures per service and method, per edge of the
topology (who calls whom), and traces assembled by trace id. Pure: the caller passes every
batch with the time it arrived, and asks for a snapshot at a time of its own.

Which records count where (docs: `mesh console`):

- Per method: the server side's records, one per call served (a retry is another call; a
  call that never reached a server is only in its caller's records, and in its answer).
- Per edge: the server side's records too, caller -> callee: the caller's deployment read
  from its SPIFFE ID ("gateway" for the gateway, "client" when unknown), the callee the
  deployment that served it; and "client" -> "gateway" for each REST request the gateway
  forwarded (its own record).
- Failed: what the alerts call a failure (deploy/prometheus/mesh-alerts.yml): a 5xx-class
  gRPC code, or for the gateway's record an HTTP 5xx. A caller's mistake (NOT_FOUND,
  INVALID_ARGUMENT, ...) is an answer, not a failure.

A record that cannot be placed (a bad trace or span id, no service or method, an unknown
side, a negative duration) is ignored and counted, as is a message that does not decode.
"""

from __future__ import annotations

import math
import random
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hms.mesh.v1 import trace_pb2

__all__ = [
    "CLIENT",
    "FAILED_CODES",
    "GATEWAY",
    "WINDOW_S",
    "TraceStore",
    "TrafficWindow",
    "caller_name",
    "code_name",
    "decode_batch",
    "failed",
    "is_trace_id",
    "record_problem",
    "side_name",
    "span_of",
    "trace_id_of",
]

WINDOW_S = 60
#: gRPC codes counted as failures: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
#: UNAVAILABLE, DATA_LOSS (the gateway answers these with a 5xx).
FAILED_CODES = frozenset({2, 4, 12, 13, 14, 15})
#: The edge names that are no deployment.
CLIENT = "client"
GATEWAY = "gateway"

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_SPIFFE = re.compile(r"spiffe://[^/]+/svc/(?P<deployment>[a-z][a-z0-9-]*)")
_SIDES: dict[int, str] = {
    trace_pb2.SIDE_GATEWAY: "gateway",
    trace_pb2.SIDE_CLIENT: "client",
    trace_pb2.SIDE_SERVER: "server",
    trace_pb2.SIDE_HANDLER: "handler",
}
_CODE_NAMES: dict[int, str] = {int(code.value[0]): code.name for code in grpc.StatusCode}


def is_trace_id(text: str) -> bool:
    """A W3C trace id: 32 lower-case hex digits, not all zero."""
    return bool(_TRACE_ID.fullmatch(text)) and text != "0" * 32


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<trace>-<span>-<flags>``)."""
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or not is_trace_id(parts[1]):
        return None
    return parts[1]


def side_name(side: int) -> str:
    return _SIDES.get(side, "unspecified")


def code_name(code: int) -> str:
    return _CODE_NAMES.get(code, f"CODE_{code}")


def caller_name(identity: str) -> str:
    """The deployment a caller's SPIFFE ID names ("gateway" for the gateway's), else "client"."""
    match = _SPIFFE.fullmatch(identity)
    return match["deployment"] if match else CLIENT


def failed(record: trace_pb2.CallRecord) -> bool:
    if record.side == trace_pb2.SIDE_GATEWAY and record.http_status:
        return record.http_status >= 500
    return record.code in FAILED_CODES


def record_problem(record: trace_pb2.CallRecord) -> str | None:
    """Why the record cannot be used, or None."""
    if not is_trace_id(record.trace_id):
        return f"trace id {record.trace_id!r} is not 32 lower-case hex digits"
    if not _SPAN_ID.fullmatch(record.span_id) or record.span_id == "0" * 16:
        return f"span id {record.span_id!r} is not 16 lower-case hex digits"
    if record.parent_span_id and not _SPAN_ID.fullmatch(record.parent_span_id):
        return f"parent span id {record.parent_span_id!r} is not 16 lower-case hex digits"
    if record.side not in _SIDES:
        return f"side {record.side} is not gateway, client, server or handler"
    if not record.service or not record.method:
        return "no service or method"
    if not record.deployment:
        return "no deployment"
    if record.duration_nanos < 0 or record.start_unix_nanos <= 0:
        return "a negative duration or no start"
    return None


def decode_batch(data: bytes) -> trace_pb2.CallRecordBatch | None:
    """The batch in a svc.trace message, or None when it does not decode."""
    try:
        return trace_pb2.CallRecordBatch.FromString(data)
    except (DecodeError, ValueError):
        return None


def span_of(record: trace_pb2.CallRecord) -> dict[str, Any]:
    """One span of a trace, as /api/traces/<id> answers it."""
    return {
        "span_id": record.span_id,
        "parent_span_id": record.parent_span_id,
        "side": side_name(record.side),
        "deployment": record.deployment,
        "service": record.service,
        "method": record.method,
        "code": record.code,
        "code_name": code_name(record.code),
        "start_unix_nanos": record.start_unix_nanos,
        "duration_nanos": record.duration_nanos,
        "attempt": record.attempt,
        "hedge": record.hedge,
        "caller": record.caller,
        "callee_instance": record.callee_instance,
        "callee_address": record.callee_address,
        "http_method": record.http_method,
        "http_route": record.http_route,
        "http_status": record.http_status,
        "failed": failed(record),
    }


# -- traffic: rates, failures, latency -----------------------------------------------------


@dataclass
class _Second:
    """What one key saw in one second of arrival time."""

    count: int = 0
    failures: int = 0
    #: Durations (ns), at most `samples` of them: a uniform sample when there were more.
    durations: list[int] = field(default_factory=list)


class _Series:
    """One key's seconds, oldest first."""

    def __init__(self) -> None:
        self.seconds: deque[tuple[int, _Second]] = deque()

    def at(self, second: int) -> _Second:
        if self.seconds and self.seconds[-1][0] == second:
            return self.seconds[-1][1]
        # Out of order arrival times (a caller's clock stepped back) land in the newest second.
        if self.seconds and self.seconds[-1][0] > second:
            return self.seconds[-1][1]
        bucket = _Second()
        self.seconds.append((second, bucket))
        return bucket

    def expire(self, oldest: int) -> None:
        while self.seconds and self.seconds[0][0] < oldest:
            self.seconds.popleft()


def _percentile(ordered: list[int], fraction: float) -> int:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below."""
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))  # 0.99 * 100 is not 99.0...01
    return ordered[min(rank, len(ordered)) - 1]


class TrafficWindow:
    """Requests per second, failure rate and p50/p99 latency per service and method, and per
    edge, over the last `window_s` seconds of arrival time.

    The rate divides by the window, or by the time since `started` while that is shorter (a
    console opened 10 s ago has seen 10 s of traffic, not 60).
    """

    def __init__(
        self,
        started: float,
        *,
        window_s: int = WINDOW_S,
        samples_per_second: int = 2000,
        rng: random.Random | None = None,
    ) -> None:
        self.started = started
        self.window_s = window_s
        self.samples_per_second = samples_per_second
        self._rng = rng or random.Random(0)
        self._methods: dict[tuple[str, str], _Series] = {}
        self._edges: dict[tuple[str, str], _Series] = {}
        self._dropped: deque[tuple[int, int]] = deque()
        #: Records ignored (and messages that did not decode) since the start.
        self.malformed = 0
        #: Why the last one was ignored.
        self.last_problem = ""

    def add_message(self, data: bytes, now: float) -> list[trace_pb2.CallRecord]:
        """One svc.trace message; returns its usable records (for the trace store)."""
        batch = decode_batch(data)
        if batch is None:
            self.malformed += 1
            self.last_problem = "a svc.trace message that is not a CallRecordBatch"
            return []
        return self.add_batch(batch, now)

    def add_batch(self, batch: trace_pb2.CallRecordBatch, now: float) -> list[trace_pb2.CallRecord]:
        second = int(now)
        if batch.dropped > 0:
            self._dropped.append((second, batch.dropped))
        usable = []
        for record in batch.records:
            problem = record_problem(record)
            if problem is not None:
                self.malformed += 1
                self.last_problem = problem
                continue
            usable.append(record)
            self._count(record, second)
        return usable

    def _count(self, record: trace_pb2.CallRecord, second: int) -> None:
        if record.side == trace_pb2.SIDE_SERVER:
            method = self._methods.setdefault((record.service, record.method), _Series())
            self._add(method.at(second), record, sample=True)
            edge = (caller_name(record.caller), record.deployment)
        elif record.side == trace_pb2.SIDE_GATEWAY:
            edge = (CLIENT, GATEWAY)
        else:
            return  # the client side's attempts are the server side's calls, seen there
        self._add(self._edges.setdefault(edge, _Series()).at(second), record, sample=False)

    def _add(self, bucket: _Second, record: trace_pb2.CallRecord, *, sample: bool) -> None:
        bucket.count += 1
        bucket.failures += failed(record)
        if not sample:
            return
        if len(bucket.durations) < self.samples_per_second:
            bucket.durations.append(record.duration_nanos)
        else:  # reservoir sampling: each duration of the second kept with equal chance
            slot = self._rng.randrange(bucket.count)
            if slot < self.samples_per_second:
                bucket.durations[slot] = record.duration_nanos

    def _expire(self, now: float) -> None:
        oldest = int(now) - self.window_s + 1
        for table in (self._methods, self._edges):
            for key in list(table):
                table[key].expire(oldest)
                if not table[key].seconds:
                    del table[key]
        while self._dropped and self._dropped[0][0] < oldest:
            self._dropped.popleft()

    def snapshot(self, now: float) -> dict[str, Any]:
        """The `stats` event: the window's figures at `now`."""
        self._expire(now)
        span = max(1.0, min(float(self.window_s), now - self.started))
        methods = []
        for (service, method), series in sorted(self._methods.items()):
            count = sum(b.count for _, b in series.seconds)
            failures = sum(b.failures for _, b in series.seconds)
            durations = sorted(d for _, b in series.seconds for d in b.durations)
            methods.append(
                {
                    "service": service,
                    "method": method,
                    "count": count,
                    "rps": round(count / span, 3),
                    "error_rate": round(failures / count, 4) if count else 0.0,
                    "p50_ms": round(_percentile(durations, 0.5) / 1e6, 3) if durations else None,
                    "p99_ms": round(_percentile(durations, 0.99) / 1e6, 3) if durations else None,
                }
            )
        edges = []
        for (caller, callee), series in sorted(self._edges.items()):
            count = sum(b.count for _, b in series.seconds)
            failures = sum(b.failures for _, b in series.seconds)
            edges.append(
                {
                    "caller": caller,
                    "callee": callee,
                    "count": count,
                    "rps": round(count / span, 3),
                    "error_rate": round(failures / count, 4) if count else 0.0,
                }
            )
        return {
            "window_s": self.window_s,
            "methods": methods,
            "edges": edges,
            "dropped": sum(n for _, n in self._dropped),
            "malformed": self.malformed,
        }


# -- traces --------------------------------------------------------------------------------


@dataclass
class _Trace:
    spans: list[trace_pb2.CallRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class TraceStore:
    """The latest `max_traces` traces (least recently added to are forgotten first), each with
    at most `max_spans` spans and `max_events` events."""

    def __init__(self, *, max_traces: int = 5000, max_spans: int = 500, max_events: int = 100):
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.max_events = max_events
        self._traces: OrderedDict[str, _Trace] = OrderedDict()

    def __len__(self) -> int:
        return len(self._traces)

    def _trace(self, trace_id: str) -> _Trace:
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace()
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
        else:
            self._traces.move_to_end(trace_id)
        return trace

    def add_records(self, records: Iterable[trace_pb2.CallRecord]) -> None:
        """Records already checked (`record_problem` is None)."""
        for record in records:
            trace = self._trace(record.trace_id)
            if len(trace.spans) < self.max_spans:
                trace.spans.append(record)

    def add_event(
        self, trace_id: str, *, type: str, subject: str, stream_sequence: int, time: str
    ) -> None:
        """An event published within the trace (its ``traceparent`` names the trace)."""
        if not is_trace_id(trace_id):
            return
        trace = self._trace(trace_id)
        if len(trace.events) < self.max_events:
            trace.events.append(
                {"type": type, "subject": subject, "stream_sequence": stream_sequence, "time": time}
            )

    def get(self, trace_id: str) -> dict[str, Any] | None:
        """The trace's spans (by start) and events, or None if nothing of it was seen."""
        trace = self._traces.get(trace_id)
        if trace is None:
            return None
        spans = sorted(trace.spans, key=lambda r: (r.start_unix_nanos, r.side, r.attempt))
        return {
            "trace_id": trace_id,
            "spans": [span_of(r) for r in spans],
            "events": sorted(trace.events, key=lambda e: e["stream_sequence"]),
        }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The latest traces with spans, newest start first."""
        summaries = [
            _summary(trace_id, trace.spans)
            for trace_id, trace in self._traces.items()
            if trace.spans
        ]
        summaries.sort(key=lambda s: s["start_unix_nanos"], reverse=True)
        return summaries[:limit]


def _summary(trace_id: str, spans: list[trace_pb2.CallRecord]) -> dict[str, Any]:
    start = min(r.start_unix_nanos for r in spans)
    end = max(r.start_unix_nanos + r.duration_nanos for r in spans)
    roots = [r for r in spans if not r.parent_span_id] or spans
    # The gateway's record first: a REST request is named by its route.
    root = min(roots, key=lambda r: (r.side != trace_pb2.SIDE_GATEWAY, r.start_unix_nanos))
    if root.side == trace_pb2.SIDE_GATEWAY and root.http_route:
        name = f"{root.http_method} {root.http_route}".strip()
    else:
        name = f"{root.service}/{root.method}"
    return {
        "trace_id": trace_id,
        "root": name,
        "start_unix_nanos": start,
        "duration_nanos": end - start,
        "spans": len(spans),
        "error": any(failed(r) for r in spans),
    }
