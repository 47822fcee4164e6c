"""hms_gateway.errors: the complete gRPC -> HTTP table, the Status body, the gateway's errors."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2
from google.rpc import error_details_pb2

from hms_gateway.errors import GatewayError, http_status, status_body
from hms_gateway.jsonpb import JsonOptions
from hms_gateway.reflection import build_pool

C = grpc.StatusCode

# grpc-gateway v2, runtime/errors.go, HTTPStatusFromCode.
GRPC_GATEWAY_TABLE = [
    pytest.param(C.OK, 200, id="ok"),
    pytest.param(C.CANCELLED, 499, id="cancelled-client-closed"),
    pytest.param(C.UNKNOWN, 500, id="unknown"),
    pytest.param(C.INVALID_ARGUMENT, 400, id="invalid-argument"),
    pytest.param(C.DEADLINE_EXCEEDED, 504, id="deadline-exceeded-gateway-timeout"),
    pytest.param(C.NOT_FOUND, 404, id="not-found"),
    pytest.param(C.ALREADY_EXISTS, 409, id="already-exists"),
    pytest.param(C.PERMISSION_DENIED, 403, id="permission-denied"),
    pytest.param(C.UNAUTHENTICATED, 401, id="unauthenticated"),
    pytest.param(C.RESOURCE_EXHAUSTED, 429, id="resource-exhausted"),
    pytest.param(C.FAILED_PRECONDITION, 400, id="failed-precondition-not-412"),
    pytest.param(C.ABORTED, 409, id="aborted"),
    pytest.param(C.OUT_OF_RANGE, 400, id="out-of-range"),
    pytest.param(C.UNIMPLEMENTED, 501, id="unimplemented"),
    pytest.param(C.INTERNAL, 500, id="internal"),
    pytest.param(C.UNAVAILABLE, 503, id="unavailable"),
    pytest.param(C.DATA_LOSS, 500, id="data-loss"),
]


@pytest.mark.parametrize(("code", "expected"), GRPC_GATEWAY_TABLE)
def test_http_status_follows_grpc_gateway(code: grpc.StatusCode, expected: int) -> None:
    assert http_status(code) == expected


def test_every_status_code_is_mapped() -> None:
    unmapped = []
    for code in grpc.StatusCode:
        try:
            status = http_status(code)
        except KeyError:
            unmapped.append(code.name)
        else:
            assert 200 <= status <= 599, code
    assert unmapped == []


def test_table_above_covers_every_code() -> None:
    listed = {param.values[0] for param in GRPC_GATEWAY_TABLE}
    assert listed == set(grpc.StatusCode)


def _packed_unknown_type() -> any_pb2.Any:
    return any_pb2.Any(type_url="type.example.com/acme.Secret", value=b"\x01\x02")


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        pytest.param((), [], id="no-details"),
        pytest.param(
            [
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="shelf", description="bad"
                        )
                    ]
                )
            ],
            [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    # grpc-gateway's default: unpopulated fields written, a message one null.
                    "fieldViolations": [
                        {
                            "field": "shelf",
                            "description": "bad",
                            "reason": "",
                            "localizedMessage": None,
                        }
                    ],
                }
            ],
            id="message-is-packed-into-any",
        ),
        pytest.param(
            [error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))],
            [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}],
            id="well-known-field-in-json-form",
        ),
        pytest.param(
            [_packed_unknown_type()],
            [{"@type": "type.example.com/acme.Secret", "value": "AQI="}],
            id="any-of-unknown-type-keeps-its-bytes",
        ),
        pytest.param(
            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA"}],
            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA"}],
            id="json-form-passes-through",
        ),
    ],
)
def test_status_body_details(details: Any, expected: list[dict[str, Any]]) -> None:
    body = status_body(C.FAILED_PRECONDITION, "shelf is closed", details)
    assert body == {"code": 9, "message": "shelf is closed", "details": expected}


def test_status_body_details_follow_the_json_options() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(field="shelf", description="bad")
    detail = error_details_pb2.BadRequest(field_violations=[violation])
    options = JsonOptions(use_proto_names=True, emit_unpopulated=False)
    body = status_body(C.INVALID_ARGUMENT, "bad", [detail], options=options)
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [{"field": "shelf", "description": "bad"}],
        }
    ]


def test_status_body_resolves_a_services_own_detail_type_in_its_pool() -> None:
    """A detail type the service defines is known to the pool learnt with it, not to the
    gateway's process: without that pool it keeps its bytes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="acme/quota.proto", package="acme.v1", syntax="proto3"
    )
    file.message_type.add(name="Quota").field.add(
        name="left", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32, json_name="left"
    )
    detail = any_pb2.Any(type_url="type.googleapis.com/acme.v1.Quota", value=b"\x08\x05")
    learnt = status_body(C.RESOURCE_EXHAUSTED, "x", [detail], pool=build_pool([file]))
    assert learnt["details"] == [{"@type": "type.googleapis.com/acme.v1.Quota", "left": 5}]
    unknown = status_body(C.RESOURCE_EXHAUSTED, "x", [detail])
    assert unknown["details"] == [{"@type": "type.googleapis.com/acme.v1.Quota", "value": "CAU="}]


def test_status_body_code_is_the_number() -> None:
    assert status_body(C.UNAUTHENTICATED, "no token")["code"] == 16


def test_status_body_detail_without_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="@type"):
        status_body(C.INTERNAL, "x", [{"reason": "QUOTA"}])


@pytest.mark.parametrize(
    ("error", "status", "code", "words", "headers"),
    [
        pytest.param(
            GatewayError.bad_json("Expecting value: line 1 column 9"),
            400,
            C.INVALID_ARGUMENT,
            ["request body", "line 1 column 9"],
            (),
            id="bad-json",
        ),
        pytest.param(
            GatewayError.bad_query_value("page_size", "ten", "not an integer"),
            400,
            C.INVALID_ARGUMENT,
            ["'page_size'", "'ten'", "not an integer"],
            (),
            id="bad-query-value-names-field-and-value",
        ),
        pytest.param(
            GatewayError.bad_path_value("name", "a%zz", "malformed percent-encoding"),
            400,
            C.INVALID_ARGUMENT,
            ["'name'", "'a%zz'", "percent"],
            (),
            id="bad-path-value",
        ),
        pytest.param(
            GatewayError.unknown_field("colour"),
            400,
            C.INVALID_ARGUMENT,
            ["request body", "unknown field 'colour'"],
            (),
            id="unknown-body-field-strict",
        ),
        pytest.param(
            GatewayError.unknown_field("colour", where="query"),
            400,
            C.INVALID_ARGUMENT,
            ["query", "'colour'"],
            (),
            id="unknown-query-field-strict",
        ),
        pytest.param(
            GatewayError.bad_header("grpc-timeout", "soon", "expected digits and a unit"),
            400,
            C.INVALID_ARGUMENT,
            ["'grpc-timeout'", "'soon'"],
            (),
            id="bad-header",
        ),
        pytest.param(
            GatewayError.no_route("GET", "/v1/nowhere"),
            404,
            C.NOT_FOUND,
            ["GET /v1/nowhere"],
            (),
            id="no-route",
        ),
        pytest.param(
            GatewayError.method_not_allowed("PUT", "/v1/shelves/1", ["PATCH", "GET", "GET"]),
            405,
            C.UNIMPLEMENTED,
            ["PUT", "/v1/shelves/1", "GET, PATCH"],
            (("allow", "GET, PATCH"),),
            id="method-not-allowed-405-not-501-with-allow",
        ),
        pytest.param(
            GatewayError.body_too_large(1_048_576),
            413,
            C.RESOURCE_EXHAUSTED,
            ["1048576 bytes"],
            (),
            id="body-too-large-413",
        ),
        pytest.param(
            GatewayError.no_backend("library.v1.Library"),
            503,
            C.UNAVAILABLE,
            ["library.v1.Library", "no ready instance"],
            (),
            id="no-backend-503",
        ),
        pytest.param(
            GatewayError.rate_limited(2.5),
            429,
            C.RESOURCE_EXHAUSTED,
            ["rate limit", "3 s"],
            (("retry-after", "3"),),
            id="rate-limited-rounds-up",
        ),
        pytest.param(
            GatewayError.rate_limited(0.01),
            429,
            C.RESOURCE_EXHAUSTED,
            ["1 s"],
            (("retry-after", "1"),),
            id="rate-limited-never-zero",
        ),
    ],
)
def test_gateway_errors(
    error: GatewayError,
    status: int,
    code: grpc.StatusCode,
    words: list[str],
    headers: tuple[tuple[str, str], ...],
) -> None:
    assert error.http_status == status
    assert error.code is code
    for word in words:
        assert word in error.message
    assert str(error) == error.message
    assert error.headers == headers
    assert error.body() == {"code": code.value[0], "message": error.message, "details": []}


def test_long_client_values_are_cut_short_in_messages() -> None:
    error = GatewayError.bad_query_value("q", "x" * 10_000, "too odd")
    assert len(error.message) < 200
    assert "10000 characters" in error.message


@pytest.mark.parametrize(
    "retry_after",
    [pytest.param(float("inf"), id="infinite"), pytest.param(float("nan"), id="nan")],
)
def test_rate_limited_needs_a_finite_delay(retry_after: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        GatewayError.rate_limited(retry_after)


def test_gateway_error_is_catchable_as_exception() -> None:
    with pytest.raises(GatewayError) as info:
        raise GatewayError.no_backend("svc")
    assert "503" in repr(info.value)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


_TOO_LARGE = error_details_pb2.ErrorInfo(reason="PAYLOAD_TOO_LARGE", domain="hms.documents.v1")
_MEDIA = error_details_pb2.ErrorInfo(reason="UNSUPPORTED_MEDIA_TYPE", domain="hms.documents.v1")


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        pytest.param(C.RESOURCE_EXHAUSTED, [_TOO_LARGE], 413, id="too-large"),
        pytest.param(C.RESOURCE_EXHAUSTED, [_packed(_TOO_LARGE)], 413, id="too-large-in-any"),
        pytest.param(C.INVALID_ARGUMENT, [_packed(_MEDIA)], 415, id="unsupported-media"),
        pytest.param(
            C.INVALID_ARGUMENT,
            [_packed(error_details_pb2.BadRequest()), _packed(_MEDIA)],
            415,
            id="media-after-another-detail",
        ),
        # A reason sharpens only its own code.
        pytest.param(C.INVALID_ARGUMENT, [_TOO_LARGE], 400, id="too-large-on-another-code"),
        pytest.param(C.RESOURCE_EXHAUSTED, [_MEDIA], 429, id="media-on-another-code"),
        pytest.param(
            C.RESOURCE_EXHAUSTED,
            [error_details_pb2.ErrorInfo(reason="RATE_LIMITED")],
            429,
            id="other-reason",
        ),
        pytest.param(
            C.RESOURCE_EXHAUSTED,
            [any_pb2.Any(type_url=_packed(_TOO_LARGE).type_url, value=b"\xff\xff")],
            429,
            id="undecodable-error-info",
        ),
        pytest.param(C.RESOURCE_EXHAUSTED, [_packed_unknown_type()], 429, id="unknown-detail"),
    ],
)
def test_an_error_info_reason_sharpens_its_code(
    code: grpc.StatusCode, details: list[Any], expected: int
) -> None:
    assert http_status(code, details) == expected
