"""hms_gateway.headers: Grpc-Timeout, request headers -> metadata, metadata -> response headers."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_gateway.errors import GatewayError
from hms_gateway.headers import (
    SUCCESS_STATUS_KEY,
    MetadataValue,
    from_metadata,
    parse_grpc_timeout,
    single_header,
    success_status,
    to_metadata,
)

# -- Grpc-Timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("1H", 3600.0, id="hours"),
        pytest.param("2M", 120.0, id="minutes"),
        pytest.param("30S", 30.0, id="seconds"),
        pytest.param("250m", 0.25, id="milliseconds"),
        pytest.param("1m", 0.001, id="one-millisecond-exact"),
        pytest.param("1500u", 0.0015, id="microseconds"),
        pytest.param("1000000n", 0.001, id="nanoseconds"),
        pytest.param("0S", 0.0, id="zero-already-expired"),
        pytest.param("00000010S", 10.0, id="leading-zeros"),
        pytest.param("99999999H", 99_999_999 * 3600.0, id="eight-digits-max"),
    ],
)
def test_parse_grpc_timeout(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("S", id="unit-only"),
        pytest.param("10", id="no-unit"),
        pytest.param("123456789S", id="nine-digits"),
        pytest.param("1.5S", id="fraction"),
        pytest.param("-1S", id="negative"),
        pytest.param("+1S", id="plus-sign"),
        pytest.param("10s", id="lower-case-seconds"),
        pytest.param("10ms", id="two-letter-unit"),
        pytest.param("10h", id="lower-case-hours"),
        pytest.param(" 10S", id="leading-space"),
        pytest.param("10S\n", id="trailing-newline"),
        pytest.param("1 S", id="space-before-unit"),
        pytest.param("١٠S", id="non-ascii-digits"),
        pytest.param("10SS", id="two-units"),
    ],
)
def test_parse_grpc_timeout_refuses(value: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_grpc_timeout(value)
    assert info.value.http_status == 400
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc-timeout" in info.value.message
    assert repr(value) in info.value.message


@given(st.text())
def test_parse_grpc_timeout_any_text(value: str) -> None:
    outcome: float | GatewayError
    try:
        outcome = parse_grpc_timeout(value)
    except GatewayError as exc:  # the only exception allowed
        outcome = exc
    if isinstance(outcome, GatewayError):
        assert outcome.http_status == 400
    else:
        assert math.isfinite(outcome)
        assert outcome >= 0


@given(st.integers(0, 99_999_999), st.sampled_from("HMSmun"))
def test_parse_grpc_timeout_every_valid_form(number: int, unit: str) -> None:
    scale = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}[unit]
    assert parse_grpc_timeout(f"{number}{unit}") == pytest.approx(number * scale)


# -- request headers -> metadata ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], [], id="nothing"),
        pytest.param(
            [("Authorization", "Bearer abc")], [("authorization", "Bearer abc")], id="authorization"
        ),
        pytest.param(
            [("authorization", "Basic x")], [("authorization", "Basic x")], id="lower-case-name"
        ),
        pytest.param(
            [("Grpc-Metadata-Tenant", "acme")], [("tenant", "acme")], id="grpc-metadata-prefix"
        ),
        pytest.param(
            [("grpc-metadata-trace.id_x", "1")], [("trace.id_x", "1")], id="key-dots-underscores"
        ),
        pytest.param(
            [("Grpc-Metadata-A", "1"), ("Grpc-Metadata-A", "2")],
            [("a", "1"), ("a", "2")],
            id="repeated-header-repeated-key",
        ),
        pytest.param(
            [("Grpc-Metadata-Sig-Bin", "AQID")], [("sig-bin", b"\x01\x02\x03")], id="bin-padded"
        ),
        pytest.param([("Grpc-Metadata-Sig-Bin", "AQ")], [("sig-bin", b"\x01")], id="bin-unpadded"),
        pytest.param(
            [("Grpc-Metadata-Sig-Bin", "-_8=")], [("sig-bin", b"\xfb\xff")], id="bin-url-safe"
        ),
        pytest.param([("Grpc-Metadata-Sig-Bin", "")], [("sig-bin", b"")], id="bin-empty"),
        pytest.param([("X-Request-Id", "req-42")], [("x-request-id", "req-42")], id="request-id"),
        pytest.param(
            [("Cookie", "s=1"), ("Accept", "*/*"), ("Content-Type", "application/json")],
            [],
            id="other-headers-dropped",
        ),
        pytest.param(
            [("Grpc-Timeout", "1S"), ("TE", "trailers"), ("User-Agent", "curl")],
            [],
            id="grpc-and-transport-headers-dropped",
        ),
        pytest.param([("Grpc-Metadata-", "x")], [], id="empty-key-dropped"),
        pytest.param([("Grpc-Metadata-Grpc-Status", "0")], [], id="grpc-target-dropped"),
        pytest.param([("Grpc-Metadata-grpc-timeout", "1n")], [], id="grpc-timeout-target-dropped"),
        pytest.param([("Grpc-Metadata-TE", "trailers")], [], id="te-target-dropped"),
        pytest.param(
            [("Grpc-Metadata-Content-Type", "application/grpc+json")],
            [],
            id="content-type-target-dropped",
        ),
        pytest.param([("Grpc-Metadata-User-Agent", "x")], [], id="user-agent-target-dropped"),
        pytest.param([("Grpc-Metadata-Connection", "close")], [], id="connection-target-dropped"),
        pytest.param([("Grpc-Metadata-:authority", "evil")], [], id="pseudo-header-dropped"),
        pytest.param([("Grpc-Metadata-a b", "x")], [], id="invalid-key-dropped"),
        pytest.param(
            [("Grpc-Metadata-X-Forwarded-For", "1.2.3.4")], [], id="forged-forwarded-for-dropped"
        ),
        pytest.param(
            [("Authorization", "Bearer valid"), ("Grpc-Metadata-Authorization", "Bearer FORGED")],
            [("authorization", "Bearer valid")],
            id="grpc-metadata-authorization-dropped",
        ),
        pytest.param(
            [("grpc-metadata-authorization", "Bearer FORGED")],
            [],
            id="grpc-metadata-authorization-alone-dropped",
        ),
        pytest.param(
            [("X-Request-Id", "r1"), ("Grpc-Metadata-X-Request-Id", "r2")],
            [("x-request-id", "r1")],
            id="grpc-metadata-request-id-dropped",
        ),
    ],
)
def test_to_metadata(headers: list[tuple[str, str]], expected: list[tuple[str, object]]) -> None:
    assert to_metadata(headers, client_ip=None, host=None) == expected


@pytest.mark.parametrize(
    ("headers", "client_ip", "host", "expected"),
    [
        pytest.param([], None, None, [], id="nothing-known"),
        pytest.param(
            [],
            "10.0.0.7",
            "api.example",
            [("x-forwarded-for", "10.0.0.7"), ("x-forwarded-host", "api.example")],
            id="client-ip-and-host",
        ),
        pytest.param(
            [("X-Forwarded-For", "203.0.113.9")],
            "10.0.0.7",
            None,
            [("x-forwarded-for", "203.0.113.9, 10.0.0.7")],
            id="client-ip-appended-to-chain",
        ),
        pytest.param(
            [("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 3.3.3.3")],
            None,
            None,
            [("x-forwarded-for", "1.1.1.1, 2.2.2.2, 3.3.3.3")],
            id="repeated-forwarded-for-joined",
        ),
        pytest.param(
            [("X-Forwarded-Host", "public.example")],
            None,
            "internal:8080",
            [("x-forwarded-host", "public.example")],
            id="forwarded-host-kept-over-host",
        ),
        pytest.param(
            [],
            None,
            "api.example:8443",
            [("x-forwarded-host", "api.example:8443")],
            id="host-with-port",
        ),
    ],
)
def test_to_metadata_forwarding(
    headers: list[tuple[str, str]],
    client_ip: str | None,
    host: str | None,
    expected: list[tuple[str, str]],
) -> None:
    assert to_metadata(headers, client_ip=client_ip, host=host) == expected


def test_to_metadata_keeps_order() -> None:
    headers = [
        ("Grpc-Metadata-B", "1"),
        ("Authorization", "Bearer t"),
        ("X-Request-Id", "r"),
        ("Grpc-Metadata-A", "2"),
    ]
    assert to_metadata(headers, client_ip="10.0.0.1", host="h") == [
        ("b", "1"),
        ("authorization", "Bearer t"),
        ("x-request-id", "r"),
        ("a", "2"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "h"),
    ]


def test_to_metadata_reserved_keys_cannot_be_forged() -> None:
    headers = [("Grpc-Metadata-X-Mesh-Subject", "admin"), ("Grpc-Metadata-Tenant", "a")]
    metadata = to_metadata(headers, client_ip=None, host=None, reserved={"x-mesh-subject"})
    assert metadata == [("tenant", "a")]


def test_to_metadata_refuses_two_authorizations() -> None:
    """Which one was verified must not be a question: neither is forwarded, 400."""
    headers = [("Authorization", "Bearer valid"), ("authorization", "Bearer FORGED")]
    with pytest.raises(GatewayError) as info:
        to_metadata(headers, client_ip=None, host=None)
    assert info.value.http_status == 400
    assert info.value.message == "header 'authorization' is sent more than once; send it once"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], None, id="absent"),
        pytest.param([("authorization", "Bearer a")], "Bearer a", id="once"),
        pytest.param([("authorization", "")], "", id="once-empty"),
        pytest.param(
            [("x", "1"), ("authorization", "Bearer a"), ("y", "2")], "Bearer a", id="among-others"
        ),
    ],
)
def test_single_header(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert single_header(headers, "authorization") == expected


@pytest.mark.parametrize("times", [2, 3])
def test_single_header_refuses_repeats(times: int) -> None:
    headers = [("authorization", f"Bearer {i}") for i in range(times)]
    with pytest.raises(GatewayError) as info:
        single_header(headers, "authorization")
    assert info.value.http_status == 400
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == f"header 'authorization' is sent {times} times; send it once"
    assert "Bearer" not in info.value.message  # credentials never echoed


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("Grpc-Metadata-Sig-Bin", "not base64!", id="bin-not-base64"),
        pytest.param("Grpc-Metadata-Sig-Bin", "A", id="bin-impossible-length"),
        pytest.param("Grpc-Metadata-Sig-Bin", "AQ==\u00e9", id="bin-non-ascii"),
        pytest.param("Grpc-Metadata-Note", "caf\u00e9", id="text-non-ascii"),
        pytest.param("Grpc-Metadata-Note", "a\r\nb", id="text-line-break"),
        pytest.param("Authorization", "Bearer \x00", id="authorization-control-char"),
        pytest.param("X-Request-Id", "r\u2028", id="request-id-non-ascii"),
    ],
)
def test_to_metadata_refuses_values_grpc_cannot_carry(header: str, value: str) -> None:
    with pytest.raises(GatewayError) as info:
        to_metadata([(header, value)], client_ip=None, host=None)
    assert info.value.http_status == 400
    assert repr(header) in info.value.message


# -- response metadata -> headers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "trailing", "expected"),
    [
        pytest.param(None, None, [], id="none"),
        pytest.param([], [], [], id="empty"),
        pytest.param([("etag", "7")], [], [("Grpc-Metadata-etag", "7")], id="initial"),
        pytest.param([], [("cost", "3")], [("Grpc-Trailer-cost", "3")], id="trailing"),
        pytest.param(
            [("a", "1")],
            [("b", "2")],
            [("Grpc-Metadata-a", "1"), ("Grpc-Trailer-b", "2")],
            id="initial-before-trailing",
        ),
        pytest.param(
            [("sig-bin", b"\x01\x02\x03")],
            [("t-bin", b"\xff")],
            [("Grpc-Metadata-sig-bin", "AQID"), ("Grpc-Trailer-t-bin", "/w==")],
            id="binary-base64-padded",
        ),
        pytest.param(
            [("odd-bin", "text")],
            None,
            [("Grpc-Metadata-odd-bin", "dGV4dA==")],
            id="bin-key-with-text-value",
        ),
        pytest.param(
            [(SUCCESS_STATUS_KEY, "201"), ("etag", "7")],
            None,
            [("Grpc-Metadata-etag", "7")],
            id="success-status-key-not-echoed",
        ),
        pytest.param(
            None,
            [(SUCCESS_STATUS_KEY, "201")],
            [("Grpc-Trailer-x-http-code", "201")],
            id="success-status-key-in-trailers-is-just-metadata",
        ),
        pytest.param(
            None,
            [("grpc-status-details-bin", b"\x08\x05")],
            [],
            id="status-details-stay-out-of-headers",
        ),
        pytest.param([("note", "a\r\nSet-Cookie: x")], None, [], id="header-injection-dropped"),
        pytest.param([("Mixed-Case", "v")], None, [("Grpc-Metadata-mixed-case", "v")], id="case"),
    ],
)
def test_from_metadata(
    initial: list[tuple[str, MetadataValue]] | None,
    trailing: list[tuple[str, MetadataValue]] | None,
    expected: list[tuple[str, str]],
) -> None:
    assert from_metadata(initial, trailing) == expected


# -- success status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param(None, None, id="no-metadata"),
        pytest.param([], None, id="no-key"),
        pytest.param([("x-http-code", "201")], 201, id="created"),
        pytest.param([("x-http-code", "202")], 202, id="accepted"),
        pytest.param([("x-http-code", "200")], 200, id="ok-lower-bound"),
        pytest.param([("x-http-code", "299")], 299, id="upper-bound"),
        pytest.param([("X-Http-Code", "201")], 201, id="key-case-insensitive"),
        pytest.param([("x-http-code", b"202")], 202, id="bytes-value"),
        pytest.param([("x-http-code", "199")], None, id="below-range-ignored"),
        pytest.param([("x-http-code", "300")], None, id="redirect-ignored"),
        pytest.param([("x-http-code", "404")], None, id="error-ignored"),
        pytest.param([("x-http-code", "2010")], None, id="four-digits-ignored"),
        pytest.param([("x-http-code", "abc")], None, id="not-a-number-ignored"),
        pytest.param([("x-http-code", "")], None, id="empty-ignored"),
        pytest.param([("x-http-code", "٢٠١")], None, id="non-ascii-digits-ignored"),
        pytest.param(
            [("x-http-code", "201"), ("x-http-code", "202")], 201, id="first-value-counts"
        ),
        pytest.param([("other", "201")], None, id="other-key"),
    ],
)
def test_success_status(
    metadata: list[tuple[str, MetadataValue]] | None, expected: int | None
) -> None:
    assert success_status(metadata) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("X-Hms-Version", ">=1.2 <2")], [("x-hms-version", ">=1.2 <2")]),
        ([("x-hms-version", "0.2.0")], [("x-hms-version", "0.2.0")]),
        # Only from its own header: a Grpc-Metadata- copy cannot add a second value.
        ([("Grpc-Metadata-X-Hms-Version", "9")], []),
        (
            [("X-Hms-Version", "1"), ("Grpc-Metadata-X-Hms-Version", "9")],
            [("x-hms-version", "1")],
        ),
    ],
)
def test_the_version_pin_header_is_forwarded_once(
    headers: list[tuple[str, str]], expected: list[tuple[str, object]]
) -> None:
    assert to_metadata(headers, client_ip=None, host=None) == expected


def test_two_version_pins_are_refused() -> None:
    with pytest.raises(GatewayError) as refused:
        to_metadata([("X-Hms-Version", "1"), ("X-Hms-Version", "2")], client_ip=None, host=None)
    assert "x-hms-version" in str(refused.value)
