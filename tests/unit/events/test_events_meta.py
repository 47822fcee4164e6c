"""`EventMeta.trace_id`: the trace an event came with, read from its trace context."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate

from mesh.events import EventMeta


def _meta(trace_context: otel_context.Context) -> EventMeta:
    return EventMeta(
        id="e1",
        type="hms.testing.v1.VoucherSubmitted",
        source="test",
        time=None,
        delivery_count=1,
        subject="hms.events.hms.testing.v1.VoucherSubmitted",
        stream_sequence=1,
        trace_context=trace_context,
    )


@pytest.mark.parametrize(
    ("headers", "trace_id"),
    [
        pytest.param(
            {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            "4bf92f3577b34da6a3ce929d0e0e4736",
            id="traced",
        ),
        pytest.param(
            {"traceparent": "00-000000000000000000000000000000aa-00f067aa0ba902b7-00"},
            "000000000000000000000000000000aa",
            id="leading-zeros-kept",
        ),
        pytest.param({}, "", id="none"),
        pytest.param({"traceparent": "00-nonsense"}, "", id="invalid"),
    ],
)
def test_trace_id(headers: dict[str, str], trace_id: str) -> None:
    assert _meta(propagate.extract(headers)).trace_id == trace_id
