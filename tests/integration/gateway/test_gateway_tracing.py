"""With tracing on, the gateway continues the REST caller's W3C trace into the backend call."""

from __future__ import annotations

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
    seen = _seen(traced_http.get("/v1/items/x", headers={"traceparent": TRACEPARENT}))
    version, trace_id, parent_span, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    # The gateway's own span (or its client span) is the parent now, not the caller's.
    assert parent_span != CALLER_SPAN


def test_a_request_without_a_trace_starts_one(traced_http: httpx.Client) -> None:
    seen = _seen(traced_http.get("/v1/items/x"))
    assert len(seen["traceparent"].split("-")[1]) == 32


def test_without_tracing_no_trace_context_is_forwarded(http: httpx.Client) -> None:
    """Tracing off: the header is not a Grpc-Metadata- one, so it is not passed through."""
    seen = _seen(http.get("/v1/items/x", headers={"traceparent": TRACEPARENT}))
    assert "traceparent" not in seen
