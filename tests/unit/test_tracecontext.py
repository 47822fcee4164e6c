"""W3C trace context by hand (mesh.tracecontext): parsing, formatting, new ids, the current
trace, and what a mesh call's metadata carries."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from mesh import tracecontext
from mesh.tracecontext import (
    child_of,
    current_trace_id,
    current_traceparent,
    format_traceparent,
    from_carrier,
    inject_metadata,
    new_traceparent,
    parse_traceparent,
    parse_tracestate,
    trace_id_of,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"
TRACEPARENT_FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@pytest.fixture
def current() -> Iterator[SpanContext]:
    """The VALID trace, current for the test."""
    context = parse_traceparent(VALID)
    assert context is not None
    token = tracecontext.attach(context)
    try:
        yield context
    finally:
        tracecontext.detach(token)


@pytest.mark.parametrize(
    ("value", "trace_id", "span_id", "flags"),
    [
        pytest.param(VALID, TRACE, SPAN, 1, id="sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-00", TRACE, SPAN, 0, id="not-sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-03", TRACE, SPAN, 3, id="other-flags-kept"),
        pytest.param(f" {VALID}\t", TRACE, SPAN, 1, id="optional-whitespace"),
        pytest.param(f"01-{TRACE}-{SPAN}-01", TRACE, SPAN, 1, id="later-version"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01-what-comes", TRACE, SPAN, 1, id="later-version-more"),
    ],
)
def test_a_valid_traceparent_is_read(value: str, trace_id: str, span_id: str, flags: int) -> None:
    context = parse_traceparent(value)
    assert context is not None
    assert (context.trace_id, context.span_id) == (int(trace_id, 16), int(span_id, 16))
    assert context.trace_flags == flags
    assert context.is_remote


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param(VALID.upper(), id="upper-case"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="zero-span-id"),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", id="version-ff"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-extra", id="version-00-with-more"),
        pytest.param(f"01-{TRACE}-{SPAN}-01x", id="later-version-no-dash"),
        pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", id="short-trace-id"),
        pytest.param(f"00-{TRACE}-{SPAN}1-01", id="long-span-id"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", id="short-flags"),
        pytest.param(f"00_{TRACE}_{SPAN}_01", id="wrong-separator"),
        pytest.param(f"0x-{TRACE}-{SPAN}-01", id="bad-version"),
        pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", id="not-hex"),
    ],
)
def test_an_invalid_traceparent_is_none(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_format_is_version_00_and_reads_back() -> None:
    context = parse_traceparent(f"01-{TRACE}-{SPAN}-00-more")
    assert context is not None
    assert format_traceparent(context) == f"00-{TRACE}-{SPAN}-00"
    assert parse_traceparent(format_traceparent(context)) == context


@pytest.mark.parametrize(
    ("values", "members"),
    [
        pytest.param(["a=1,b=2"], [("a", "1"), ("b", "2")], id="one-header"),
        pytest.param(["a=1", "b=2"], [("a", "1"), ("b", "2")], id="headers-joined"),
        pytest.param(["a=1, ,b=2 "], [("a", "1"), ("b", "2")], id="empty-members-and-spaces"),
        pytest.param(["tenant@vendor=x"], [("tenant@vendor", "x")], id="multi-tenant-key"),
        pytest.param([], [], id="absent"),
        pytest.param(["A=1"], [], id="upper-case-key"),
        pytest.param(["a=1,a=2"], [], id="duplicate-key"),
        pytest.param(["a=1,b"], [], id="member-without-value"),
        pytest.param(["a=x,y"], [], id="value-with-comma"),
        pytest.param([",".join(f"k{i}=v" for i in range(33))], [], id="over-32-members"),
        pytest.param([",".join(f"k{i}={'v' * 40}" for i in range(20))], [], id="over-512-chars"),
    ],
)
def test_tracestate(values: list[str], members: list[tuple[str, str]]) -> None:
    assert list(parse_tracestate(values).items()) == members


def test_a_child_keeps_the_trace_flags_and_state_with_a_new_span() -> None:
    parent = SpanContext(
        int(TRACE, 16), int(SPAN, 16), True, TraceFlags(0), TraceState([("a", "1")])
    )
    children = [child_of(parent) for _ in range(50)]
    assert {c.trace_id for c in children} == {parent.trace_id}
    assert all(c.trace_flags == 0 and c.trace_state == parent.trace_state for c in children)
    assert not any(c.is_remote for c in children)
    spans = {c.span_id for c in children}
    assert len(spans) == 50  # random: no two alike, and never the parent's
    assert parent.span_id not in spans


def test_without_a_parent_a_new_sampled_trace_starts() -> None:
    roots = [child_of(None) for _ in range(50)]
    assert len({r.trace_id for r in roots}) == 50
    assert all(r.is_valid and r.trace_flags == 1 for r in roots)
    invalid = trace.INVALID_SPAN_CONTEXT
    assert child_of(invalid).is_valid
    assert TRACEPARENT_FORMAT.fullmatch(new_traceparent())
    assert new_traceparent() != new_traceparent()


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        pytest.param([("traceparent", VALID)], VALID, id="one"),
        pytest.param([("x", "y"), ("traceparent", VALID), ("tracestate", "a=1")], VALID, id="mid"),
        pytest.param([], None, id="none"),
        pytest.param([("traceparent", VALID), ("traceparent", VALID)], None, id="twice"),
        pytest.param([("traceparent", b"00-...")], None, id="binary"),
        pytest.param([("traceparent", "garbage")], None, id="invalid"),
        pytest.param([("Traceparent", VALID)], None, id="names-are-lower-case"),
    ],
)
def test_from_carrier(pairs: list[tuple[str, object]], expected: str | None) -> None:
    found = from_carrier(pairs)
    assert (None if found is None else format_traceparent(found)) == expected


def test_from_carrier_reads_the_tracestate_of_a_valid_traceparent_only() -> None:
    found = from_carrier([("tracestate", "a=1"), ("traceparent", VALID), ("tracestate", "b=2")])
    assert found is not None
    assert found.trace_state.to_header() == "a=1,b=2"
    assert from_carrier([("tracestate", "a=1")]) is None


def test_nothing_is_current_outside_a_trace() -> None:
    assert current_trace_id() == ""
    assert current_traceparent() == ""
    assert tracecontext.current_span_context() is None


def test_the_attached_trace_is_current(current: SpanContext) -> None:
    assert current_trace_id() == TRACE
    assert current_traceparent() == VALID
    assert trace_id_of(None) == TRACE


def test_detach_restores_what_was_current(current: SpanContext) -> None:
    token = tracecontext.attach(child_of(None))
    assert current_trace_id() != TRACE
    tracecontext.detach(token)
    assert current_trace_id() == TRACE


def test_metadata_carries_the_current_trace(current: SpanContext) -> None:
    metadata: list[tuple[str, str | bytes]] = [("x-request-id", "r1")]
    inject_metadata(metadata)
    assert metadata == [("x-request-id", "r1"), ("traceparent", VALID)]


def test_metadata_carries_the_tracestate_too() -> None:
    state = TraceState([("vendor", "v1")])
    token = tracecontext.attach(
        SpanContext(int(TRACE, 16), int(SPAN, 16), False, TraceFlags(1), state)
    )
    try:
        metadata: list[tuple[str, str | bytes]] = []
        inject_metadata(metadata)
    finally:
        tracecontext.detach(token)
    assert metadata == [("traceparent", VALID), ("tracestate", "vendor=v1")]


def test_the_current_trace_replaces_one_in_the_callers_metadata(current: SpanContext) -> None:
    forged = f"00-{'1' * 32}-{'2' * 16}-01"
    metadata: list[tuple[str, str | bytes]] = [
        ("traceparent", forged),
        ("a", "b"),
        ("tracestate", "x=y"),
    ]
    inject_metadata(metadata)
    assert metadata == [("a", "b"), ("traceparent", VALID)]


def test_without_a_current_trace_metadata_is_left_alone() -> None:
    metadata: list[tuple[str, str | bytes]] = [("traceparent", VALID)]
    inject_metadata(metadata)
    assert metadata == [("traceparent", VALID)]


def test_no_tracer_is_installed_by_default() -> None:
    # The test process never installs one globally (tests pass providers explicitly).
    assert not tracecontext.tracer_installed()
