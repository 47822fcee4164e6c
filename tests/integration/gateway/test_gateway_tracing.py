"""The gateway continues the REST caller's W3C trace into the backend call and names it in
every answer's ``traceparent``, with tracing on (a span per request) and off (ids only)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module")
def traced_http(gateway_stack: GatewayStack) -> Iterator[httpx.Client]:
    process = gateway_stack.start_gateway("--tracing=console", name="gateway-tracing")
    try:
        wait_ready(process.url, {"hms.testing.v1.MirrorService"})
        with httpx.Client(base_url=process.url, timeout=10) as client:
            yield client
    finally:
        process.stop(timeout=5)


def _seen(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {entry["key"]: entry["value"] for entry in response.json()["metadata"]}


def test_the_backend_call_continues_the_callers_trace(traced_http: httpx.Client) -> None:
    response = traced_http.get("/v1/items/x", headers={"traceparent": TRACEPARENT})
    seen = _seen(response)
    version, trace_id, parent_span, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    # The gateway's own span (or its client span) is the parent now, not the caller's.
    assert parent_span != CALLER_SPAN
    # The answer names the gateway's SERVER span in the caller's trace.
    version, trace_id, own_span, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert own_span not in (CALLER_SPAN, "0" * 16)


def test_a_request_without_a_trace_starts_one(traced_http: httpx.Client) -> None:
    response = traced_http.get("/v1/items/x")
    trace_id = _seen(response)["traceparent"].split("-")[1]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert response.headers["traceparent"].split("-")[1] == trace_id


def test_an_error_of_the_gateway_names_the_trace(traced_http: httpx.Client) -> None:
    response = traced_http.get("/v1/nowhere", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 404
    assert response.headers["traceparent"].split("-")[1] == TRACE_ID


def test_without_tracing_the_trace_context_is_forwarded_too(http: httpx.Client) -> None:
    """Tracing off: no spans, but the caller's trace goes on with a span id of the gateway's,
    the one the answer names."""
    response = http.get("/v1/items/x", headers={"traceparent": TRACEPARENT})
    seen = _seen(response)
    assert seen["traceparent"] == response.headers["traceparent"]
    version, trace_id, parent_span, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_span != CALLER_SPAN
