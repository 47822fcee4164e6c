"""The JSON options, each set on the command line of a gateway of its own: proto field names,
unpopulated fields omitted, enums as numbers, and strict mode (400 naming an unknown field)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

MIRROR = "hms.testing.v1.MirrorService"


@pytest.fixture(scope="module")
def options_http(gateway_stack: GatewayStack) -> Iterator[httpx.Client]:
    process = gateway_stack.start_gateway(
        "--proto-names",
        "--omit-unpopulated",
        "--enums-as-ints",
        "--strict",
        name="gateway-json-options",
    )
    try:
        wait_ready(process.url, {MIRROR})
        with httpx.Client(base_url=process.url, timeout=10) as client:
            yield client
    finally:
        process.stop(timeout=5)


def test_proto_names_enums_as_numbers_and_unpopulated_omitted(options_http: httpx.Client) -> None:
    response = options_http.get("/v1/shelves/s1/books?color=COLOR_GREEN&int64_value=7")
    assert response.status_code == 200, response.text
    received = response.json()["received"]
    # Only what was set, under proto names; the enum as its number; int64 still a string.
    assert received == {"shelf": "s1", "color": 2, "int64_value": "7"}


def test_strict_mode_refuses_an_unknown_body_field(options_http: httpx.Client) -> None:
    response = options_http.post(
        "/v1/shelves/s1/books/b1:publish", json={"shelf": "x", "nmae": "typo"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3
    assert "nmae" in response.json()["message"]


def test_strict_mode_refuses_an_unknown_query_parameter(options_http: httpx.Client) -> None:
    response = options_http.get("/v1/shelves/s1/books?colour=COLOR_RED")
    assert response.status_code == 400, response.text
    assert response.json()["message"] == "query: unknown field 'colour'"


def test_default_gateway_ignores_both(http: httpx.Client) -> None:
    """The same requests on the default gateway: unknown fields dropped, as grpc-gateway."""
    body = http.post("/v1/shelves/s1/books/b1:publish", json={"nmae": "typo"})
    query = http.get("/v1/shelves/s1/books?colour=COLOR_RED")
    assert (body.status_code, query.status_code) == (200, 200), (body.text, query.text)
    assert query.json()["received"]["color"] == "COLOR_UNSPECIFIED"


def test_error_details_follow_the_options(options_http: httpx.Client) -> None:
    """A backend's details are written as responses are: proto names, unpopulated left out."""
    detail = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "field_violations": [{"field": "book.title", "description": "empty"}],
    }
    response = options_http.post("/v1/shape", json={"fail_code": 3, "fail_details": [detail]})
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 3, "message": "shaped", "details": [detail]}
