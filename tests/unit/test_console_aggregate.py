"""The console's aggregation (tools/console/aggregate.py) on recorded svc.trace streams: a
stream is a list of (arrival second, CallRecordBatch) as the console receives them from
`svc.trace.<service>`; each case replays one and reads the snapshot or the traces."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from hms.mesh.v1 import trace_pb2
from hms_tools.console.aggregate import (
    TraceStore,
    TrafficWindow,
    caller_name,
    is_trace_id,
    trace_id_of,
)

SERVER, CLIENT, GATEWAY = trace_pb2.SIDE_SERVER, trace_pb2.SIDE_CLIENT, trace_pb2.SIDE_GATEWAY
IDENTITY = "hms.identity.v1.IdentityService"
REPORT = "hms.report.v1.ReportService"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = 1_700_000_000_000_000_000  # a wall-clock start, ns
_ids = itertools.count(1)


def spiffe(deployment: str) -> str:
    return f"spiffe://hms.local/svc/{deployment}"


def record(
    *,
    side: int = SERVER,
    service: str = IDENTITY,
    method: str = "VerifyCitizen",
    deployment: str = "identity",
    caller: str = "",
    code: int = 0,
    ms: float = 1.0,
    trace: str | None = None,
    span: str | None = None,
    parent: str = "",
    start: int = T0,
    **more: Any,
) -> trace_pb2.CallRecord:
    n = next(_ids)
    return trace_pb2.CallRecord(
        trace_id=trace or f"{n:032x}",
        span_id=span or f"{n:016x}",
        parent_span_id=parent,
        side=side,
        caller=caller,
        deployment=deployment,
        service=service,
        method=method,
        code=code,
        start_unix_nanos=start,
        duration_nanos=int(ms * 1_000_000),
        **more,
    )


Stream = Sequence[tuple[float, Sequence[trace_pb2.CallRecord]]]


def replay(stream: Stream, *, started: float = 0.0, dropped: int = 0) -> TrafficWindow:
    window = TrafficWindow(started)
    for arrival, records in stream:
        batch = trace_pb2.CallRecordBatch(records=records, dropped=dropped)
        window.add_message(batch.SerializeToString(), arrival)
    return window


def method_row(snapshot: dict[str, Any], service: str, method: str) -> dict[str, Any]:
    [row] = [m for m in snapshot["methods"] if (m["service"], m["method"]) == (service, method)]
    return row


def edges(snapshot: dict[str, Any]) -> dict[tuple[str, str], tuple[int, float]]:
    return {(e["caller"], e["callee"]): (e["count"], e["error_rate"]) for e in snapshot["edges"]}


# -- rates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "arrivals", "now", "count", "rps"),
    [
        pytest.param(-100.0, [0.0] * 60, 59.5, 60, 1.0, id="60-in-one-second-a-minute"),
        pytest.param(-100.0, sorted([float(s) for s in range(60)] * 2), 59.9, 120, 2.0, id="2/s"),
        pytest.param(-100.0, [30.0] * 30, 75.0, 30, 0.5, id="half-a-minute-ago"),
        # Started 10 s ago: 10 s of traffic seen, not 60.
        pytest.param(0.0, sorted([float(s) for s in range(10)] * 5), 10.0, 50, 5.0, id="young"),
        # Under a second since the start: the rate divides by at least one second.
        pytest.param(0.0, [0.2, 0.3], 0.5, 2, 2.0, id="first-second"),
    ],
)
def test_rates(started: float, arrivals: list[float], now: float, count: int, rps: float) -> None:
    window = replay([(t, [record()]) for t in arrivals], started=started)
    row = method_row(window.snapshot(now), IDENTITY, "VerifyCitizen")
    assert (row["count"], row["rps"]) == (count, rps)


def test_methods_are_counted_apart_and_only_from_the_server_side() -> None:
    stream = [
        (1.0, [record(method="VerifyCitizen")] * 3),
        (2.0, [record(service=REPORT, method="CreateIdentityCheckReport", deployment="report")]),
        # The caller's attempts and the gateway's request are the same calls, seen twice more.
        (2.0, [record(side=CLIENT, deployment="report"), record(side=GATEWAY, deployment="gw")]),
    ]
    snapshot = replay(stream).snapshot(10.0)
    assert [(m["service"], m["method"], m["count"]) for m in snapshot["methods"]] == [
        (IDENTITY, "VerifyCitizen", 3),
        (REPORT, "CreateIdentityCheckReport", 1),
    ]


# -- error rates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "error_rate"),
    [
        pytest.param([0, 0, 0, 0], 0.0, id="all-ok"),
        pytest.param([0, 14, 0, 14], 0.5, id="unavailable-fails"),
        pytest.param([13, 2, 4, 12, 15, 0, 0, 0, 0, 0], 0.5, id="every-5xx-class-code"),
        # A caller's mistake is an answer, not a failure (as the alerts count).
        pytest.param([5, 3, 7, 16, 9, 6, 0, 0], 0.0, id="4xx-class-codes-are-answers"),
        pytest.param([1, 0, 0, 14], 0.25, id="cancelled-is-the-callers"),
    ],
)
def test_error_rates(codes: list[int], error_rate: float) -> None:
    window = replay([(1.0, [record(code=c) for c in codes])])
    row = method_row(window.snapshot(2.0), IDENTITY, "VerifyCitizen")
    assert row["error_rate"] == error_rate
    assert row["count"] == len(codes)


@pytest.mark.parametrize(
    ("http_status", "code", "failed"),
    [(200, 0, 0.0), (404, 5, 0.0), (401, 16, 0.0), (503, 14, 1.0), (500, 2, 1.0), (0, 14, 1.0)],
)
def test_the_gateways_edge_fails_by_its_http_status(
    http_status: int, code: int, failed: float
) -> None:
    gateway = record(side=GATEWAY, deployment="gateway", http_status=http_status, code=code)
    snapshot = replay([(1.0, [gateway])]).snapshot(2.0)
    assert edges(snapshot) == {("client", "gateway"): (1, failed)}


# -- percentiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durations_ms", "p50", "p99"),
    [
        pytest.param([7.5], 7.5, 7.5, id="one"),
        pytest.param([10, 20], 10.0, 20.0, id="two"),
        pytest.param(list(range(1, 101)), 50.0, 99.0, id="1-to-100"),
        pytest.param(list(range(100, 0, -1)), 50.0, 99.0, id="in-any-order"),
        pytest.param([1] * 98 + [500, 900], 1.0, 500.0, id="two-slow-in-a-hundred"),
        pytest.param([1] * 99 + [900], 1.0, 1.0, id="one-slow-in-a-hundred"),
        pytest.param([0.25] * 3, 0.25, 0.25, id="sub-millisecond"),
    ],
)
def test_percentiles(durations_ms: list[float], p50: float, p99: float) -> None:
    # Spread over several seconds and batches: the window's percentiles span them all.
    stream = [(float(i % 7), [record(ms=ms)]) for i, ms in enumerate(durations_ms)]
    row = method_row(replay(stream).snapshot(8.0), IDENTITY, "VerifyCitizen")
    assert (row["p50_ms"], row["p99_ms"]) == (p50, p99)


def test_a_busy_second_keeps_a_bounded_sample_and_the_exact_count() -> None:
    window = TrafficWindow(0.0, samples_per_second=100)
    batch = trace_pb2.CallRecordBatch(records=[record(ms=5) for _ in range(1000)])
    window.add_batch(batch, 1.0)
    row = method_row(window.snapshot(2.0), IDENTITY, "VerifyCitizen")
    assert row["count"] == 1000
    assert (row["p50_ms"], row["p99_ms"]) == (5.0, 5.0)
    [(_, series)] = window._methods.items()
    assert all(len(bucket.durations) <= 100 for _, bucket in series.seconds)


# -- the window ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "count"),
    [
        pytest.param(30.0, 3, id="all-in"),
        pytest.param(59.99, 3, id="first-second-still-in"),
        pytest.param(60.0, 2, id="first-second-out"),
        pytest.param(89.5, 1, id="only-the-last"),
        pytest.param(120.0, None, id="all-out"),
    ],
)
def test_window_expiry(now: float, count: int | None) -> None:
    window = replay([(0.5, [record()]), (10.0, [record()]), (30.0, [record()])])
    snapshot = window.snapshot(now)
    if count is None:
        assert snapshot["methods"] == []
        assert snapshot["edges"] == []
    else:
        assert method_row(snapshot, IDENTITY, "VerifyCitizen")["count"] == count


def test_emitters_drops_are_summed_over_the_window() -> None:
    window = replay([(1.0, [record()]), (30.0, [record()])], dropped=7)
    assert window.snapshot(31.0)["dropped"] == 14
    assert window.snapshot(61.0)["dropped"] == 7
    assert window.snapshot(100.0)["dropped"] == 0


# -- topology --------------------------------------------------------------------------------


def test_topology_edges_from_callers_to_callees() -> None:
    stream = [
        (
            1.0,
            [
                # REST: the gateway's request, its call to report, report's call to identity
                record(side=GATEWAY, deployment="gateway", http_status=200),
                record(service=REPORT, deployment="report", caller=spiffe("gateway")),
                record(deployment="identity", caller=spiffe("report")),
                record(deployment="identity", caller=spiffe("report"), code=14),
                # an operator's grpcurl, and a caller whose identity is not a mesh one
                record(deployment="identity", caller=spiffe("ops")),
                record(deployment="identity", caller=""),
                record(deployment="identity", caller="CN=someone"),
                # client-side attempts are counted where they land, not again
                record(side=CLIENT, deployment="report", caller=spiffe("report")),
            ],
        )
    ]
    assert edges(replay(stream).snapshot(2.0)) == {
        ("client", "gateway"): (1, 0.0),
        ("gateway", "report"): (1, 0.0),
        ("report", "identity"): (2, 0.5),
        ("ops", "identity"): (1, 0.0),
        ("client", "identity"): (2, 0.0),
    }


def test_edge_rates() -> None:
    stream = [(float(s), [record(caller=spiffe("report"))] * 3) for s in range(20)]
    [edge] = replay(stream).snapshot(20.0)["edges"]
    assert edge == {
        "caller": "report",
        "callee": "identity",
        "count": 60,
        "rps": 3.0,
        "error_rate": 0.0,
    }


@pytest.mark.parametrize(
    ("identity", "name"),
    [
        (spiffe("report"), "report"),
        (spiffe("gateway"), "gateway"),
        ("spiffe://other.domain/svc/billing", "billing"),
        ("", "client"),
        ("spiffe://hms.local/user/x", "client"),
        ("report", "client"),
    ],
)
def test_caller_names(identity: str, name: str) -> None:
    assert caller_name(identity) == name


# -- traces ----------------------------------------------------------------------------------


def test_trace_assembly_across_batches_and_subjects() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    ms = 1_000_000
    gateway = record(
        side=GATEWAY,
        deployment="gateway",
        service=REPORT,
        method="CreateIdentityCheckReport",
        trace=trace,
        span="00000000000000a1",
        start=T0,
        ms=30,
        http_method="POST",
        http_route="/v1/reports/identity-check",
        http_status=200,
    )
    report = record(
        deployment="report",
        service=REPORT,
        method="CreateIdentityCheckReport",
        caller=spiffe("gateway"),
        trace=trace,
        span="00000000000000b2",
        parent="00000000000000a1",
        start=T0 + 2 * ms,
        ms=25,
    )
    attempt = record(
        side=CLIENT,
        deployment="report",
        trace=trace,
        span="00000000000000c3",
        parent="00000000000000b2",
        start=T0 + 5 * ms,
        ms=10,
        callee_instance="identity-1-abc",
    )
    identity = record(
        deployment="identity",
        caller=spiffe("report"),
        trace=trace,
        span="00000000000000d4",
        parent="00000000000000c3",
        start=T0 + 6 * ms,
        ms=8,
    )
    other = record()  # another trace
    window, store = TrafficWindow(0.0), TraceStore()
    # The hops' batches come from different emitters, in any order.
    for arrival, records in [(1.0, [identity, other]), (1.2, [attempt]), (1.5, [gateway, report])]:
        batch = trace_pb2.CallRecordBatch(records=records)
        store.add_records(window.add_message(batch.SerializeToString(), arrival))
    store.add_event(
        trace,
        type="hms.report.v1.ReportCreated",
        subject="hms.events.hms.report.v1.ReportCreated",
        stream_sequence=12,
        time="2023-11-14T22:13:20.000000Z",
    )
    found = store.get(trace)
    assert found is not None
    assert [(s["side"], s["deployment"], s["span_id"][-2:]) for s in found["spans"]] == [
        ("gateway", "gateway", "a1"),
        ("server", "report", "b2"),
        ("client", "report", "c3"),
        ("server", "identity", "d4"),
    ]
    assert found["spans"][0]["http_route"] == "/v1/reports/identity-check"
    assert found["spans"][2]["callee_instance"] == "identity-1-abc"
    assert found["events"] == [
        {
            "type": "hms.report.v1.ReportCreated",
            "subject": "hms.events.hms.report.v1.ReportCreated",
            "stream_sequence": 12,
            "time": "2023-11-14T22:13:20.000000Z",
        }
    ]
    summary = next(s for s in store.recent(10) if s["trace_id"] == trace)
    assert summary == {
        "trace_id": trace,
        "root": "POST /v1/reports/identity-check",
        "start_unix_nanos": T0,
        "duration_nanos": 30 * ms,
        "spans": 4,
        "error": False,
    }
    assert store.get("f" * 32) is None


def test_recent_traces_newest_first_with_errors_and_roots() -> None:
    store = TraceStore()
    a, b, c = (f"{n:032x}" for n in (0xA, 0xB, 0xC))
    store.add_records(
        [
            record(trace=a, start=T0 + 3, method="First"),
            record(trace=b, start=T0 + 1, code=14, parent="00000000000000ff"),
            record(trace=c, start=T0 + 2, code=5),  # NOT_FOUND: an answer
        ]
    )
    store.add_event(b, type="x", subject="s", stream_sequence=1, time="")
    store.add_event("e" * 32, type="x", subject="s", stream_sequence=2, time="")  # no spans yet
    rows = store.recent(2)
    assert [(r["trace_id"], r["error"], r["root"]) for r in rows] == [
        (a, False, f"{IDENTITY}/First"),
        (c, False, f"{IDENTITY}/VerifyCitizen"),
    ]
    assert [r["trace_id"] for r in store.recent(50)] == [a, c, b]
    assert store.recent(50)[2]["error"] is True
    # An event whose spans have not come yet is still found by its id.
    assert store.get("e" * 32) == {"trace_id": "e" * 32, "spans": [], "events": [
        {"type": "x", "subject": "s", "stream_sequence": 2, "time": ""}
    ]}  # fmt: skip


def test_the_store_forgets_the_least_recently_added_to_trace() -> None:
    store = TraceStore(max_traces=2, max_spans=3)
    a, b, c = (f"{n:032x}" for n in (1, 2, 3))
    store.add_records([record(trace=a), record(trace=b)])
    store.add_records([record(trace=a)])  # a is the newer now
    store.add_records([record(trace=c)])
    assert store.get(b) is None
    assert store.get(a) is not None
    assert store.get(c) is not None
    store.add_records([record(trace=a) for _ in range(5)])
    found = store.get(a)
    assert found is not None
    assert len(found["spans"]) == 3


# -- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        pytest.param({"trace": "XYZ"}, "trace id", id="trace-id-not-hex"),
        pytest.param({"trace": "0" * 32}, "trace id", id="trace-id-zero"),
        pytest.param({"trace": "A" * 32}, "trace id", id="trace-id-upper-case"),
        pytest.param({"span": "123"}, "span id", id="span-id-short"),
        pytest.param({"parent": "zz"}, "parent span id", id="parent-not-hex"),
        pytest.param({"side": 0}, "side", id="side-unspecified"),
        pytest.param({"side": 9}, "side", id="side-unknown"),
        pytest.param({"method": ""}, "no service or method", id="no-method"),
        pytest.param({"service": ""}, "no service or method", id="no-service"),
        pytest.param({"deployment": ""}, "no deployment", id="no-deployment"),
        pytest.param({"ms": -1}, "negative duration", id="negative-duration"),
        pytest.param({"start": 0}, "no start", id="no-start"),
    ],
)
def test_malformed_records_are_ignored_and_counted(bad: dict[str, Any], problem: str) -> None:
    window, store = TrafficWindow(0.0), TraceStore()
    batch = trace_pb2.CallRecordBatch(records=[record(), record(**bad), record()])
    store.add_records(window.add_message(batch.SerializeToString(), 1.0))
    snapshot = window.snapshot(2.0)
    assert method_row(snapshot, IDENTITY, "VerifyCitizen")["count"] == 2
    assert snapshot["malformed"] == 1
    assert problem in window.last_problem
    assert len(store) == 2


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05abc", b"not a protobuf at all \x00\x01"],
    ids=["garbage", "truncated", "text"],
)
def test_a_message_that_does_not_decode_is_counted(data: bytes) -> None:
    window = TrafficWindow(0.0)
    assert window.add_message(data, 1.0) == []
    good = trace_pb2.CallRecordBatch(records=[record()]).SerializeToString()
    window.add_message(good, 1.0)
    snapshot = window.snapshot(2.0)
    assert snapshot["malformed"] == 1
    assert method_row(snapshot, IDENTITY, "VerifyCitizen")["count"] == 1


def test_an_empty_batch_is_no_problem() -> None:
    window = TrafficWindow(0.0)
    assert window.add_message(b"", 1.0) == []
    assert window.snapshot(2.0) == {
        "window_s": 60,
        "methods": [],
        "edges": [],
        "dropped": 0,
        "malformed": 0,
    }


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("", None),
    ],
)  # fmt: skip
def test_trace_ids_from_traceparent(header: str, trace_id: str | None) -> None:
    assert trace_id_of(header) == trace_id
    if trace_id is not None:
        assert is_trace_id(trace_id)
