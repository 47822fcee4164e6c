"""hms_gateway.cors: policy validation, preflight answers and headers on normal responses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_gateway.cors import CorsPolicy

APP = "https://app.example"
ADMIN = "https://admin.example:8443"
PREFLIGHT_VARY = ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")

LISTED = CorsPolicy(
    allow_origins=(APP, ADMIN),
    allow_methods=("GET", "POST", "DELETE"),
    allow_headers=("Content-Type", "X-Request-Id"),
    expose_headers=("Grpc-Metadata-Etag",),
    max_age=300,
)
CREDENTIALED = CorsPolicy(
    allow_origins=(APP,),
    allow_methods=("GET", "PATCH"),
    allow_headers=("authorization",),
    allow_credentials=True,
    max_age=60,
)
ANY = CorsPolicy(allow_origins=("*",), allow_headers=("content-type",), max_age=0)
ANY_HEADER = CorsPolicy(allow_origins=(APP,), allow_headers=("*",), allow_credentials=True)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        pytest.param({"allow_origins": ()}, "non-empty", id="no-origins"),
        pytest.param({"allow_origins": [APP]}, "non-empty tuple", id="origins-list"),
        pytest.param({"allow_origins": ("*", APP)}, "alone", id="wildcard-with-others"),
        pytest.param(
            {"allow_origins": ("*",), "allow_credentials": True},
            "allow_credentials",
            id="wildcard-with-credentials",
        ),
        pytest.param({"allow_origins": ("null",)}, "null", id="null-origin"),
        pytest.param({"allow_origins": ("app.example",)}, "origin", id="no-scheme"),
        pytest.param({"allow_origins": ("https://app.example/",)}, "origin", id="trailing-slash"),
        pytest.param({"allow_origins": ("https://app.example/x",)}, "origin", id="path"),
        pytest.param({"allow_origins": ("https://App.example",)}, "lower-case", id="upper-case"),
        pytest.param({"allow_origins": ("https://*.example",)}, "origin", id="pattern"),
        pytest.param({"allow_origins": ("https://u@app.example",)}, "origin", id="userinfo"),
        pytest.param({"allow_origins": ("https://a.example\r\nX: y",)}, "origin", id="crlf"),
        pytest.param({"allow_methods": ()}, "allow_methods", id="no-methods"),
        pytest.param({"allow_methods": ("GET POST",)}, "token", id="method-with-space"),
        pytest.param({"allow_methods": ("*",)}, "alone", id="method-wildcard"),
        pytest.param({"allow_headers": ("x-a", "*")}, "alone", id="header-wildcard-not-alone"),
        pytest.param({"allow_headers": ("x:y",)}, "token", id="header-with-colon"),
        pytest.param({"allow_headers": ["x-a"]}, "tuple", id="headers-list"),
        pytest.param({"expose_headers": ("*",)}, "alone", id="expose-wildcard"),
        pytest.param({"allow_credentials": 1}, "bool", id="credentials-not-bool"),
        pytest.param({"max_age": -1}, "max_age", id="negative-max-age"),
        pytest.param({"max_age": 1.5}, "max_age", id="fractional-max-age"),
    ],
)
def test_policy_refused(settings: dict[str, Any], problem: str) -> None:
    values: dict[str, Any] = {"allow_origins": (APP,)} | settings
    with pytest.raises(ValueError, match=problem):
        CorsPolicy(**values)


@pytest.mark.parametrize(
    "origins",
    [
        pytest.param(("http://localhost:3000",), id="localhost-port"),
        pytest.param(("https://[::1]:8443",), id="ipv6"),
        pytest.param(("https://a.example", "https://b.example"), id="two"),
        pytest.param(("*",), id="wildcard"),
    ],
)
def test_policy_accepted(origins: tuple[str, ...]) -> None:
    assert CorsPolicy(allow_origins=origins).allow_origins == origins


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        pytest.param(
            "OPTIONS",
            {"Origin": APP, "Access-Control-Request-Method": "POST"},
            True,
            id="preflight",
        ),
        pytest.param(
            "OPTIONS",
            {"origin": APP, "access-control-request-method": "POST"},
            True,
            id="lower-case-names",
        ),
        pytest.param("OPTIONS", {"Origin": APP}, False, id="options-without-request-method"),
        pytest.param("OPTIONS", {"Access-Control-Request-Method": "GET"}, False, id="no-origin"),
        pytest.param(
            "POST",
            {"Origin": APP, "Access-Control-Request-Method": "POST"},
            False,
            id="not-options",
        ),
        pytest.param(
            "options",
            {"Origin": APP, "Access-Control-Request-Method": "POST"},
            False,
            id="methods-are-case-sensitive",
        ),
        pytest.param("OPTIONS", {}, False, id="plain-options"),
    ],
)
def test_is_preflight(method: str, headers: dict[str, str], expected: bool) -> None:
    assert LISTED.is_preflight(method, headers) is expected


@pytest.mark.parametrize(
    ("policy", "origin", "method", "request_headers", "expected"),
    [
        pytest.param(
            LISTED,
            APP,
            "POST",
            "content-type, x-request-id",
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-methods", "GET, POST, DELETE"),
                ("access-control-allow-headers", "content-type, x-request-id"),
                ("access-control-max-age", "300"),
                PREFLIGHT_VARY,
            ],
            id="listed-origin",
        ),
        pytest.param(
            LISTED,
            ADMIN,
            "DELETE",
            None,
            [
                ("access-control-allow-origin", ADMIN),
                ("access-control-allow-methods", "GET, POST, DELETE"),
                ("access-control-allow-headers", "content-type, x-request-id"),
                ("access-control-max-age", "300"),
                PREFLIGHT_VARY,
            ],
            id="second-origin-no-request-headers",
        ),
        pytest.param(
            LISTED,
            APP,
            "GET",
            "Content-Type,X-REQUEST-ID",
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-methods", "GET, POST, DELETE"),
                ("access-control-allow-headers", "content-type, x-request-id"),
                ("access-control-max-age", "300"),
                PREFLIGHT_VARY,
            ],
            id="header-names-case-insensitive",
        ),
        pytest.param(
            CREDENTIALED,
            APP,
            "PATCH",
            "Authorization",
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, PATCH"),
                ("access-control-allow-headers", "authorization"),
                ("access-control-max-age", "60"),
                PREFLIGHT_VARY,
            ],
            id="credentials",
        ),
        pytest.param(
            ANY,
            "https://anyone.example",
            "POST",
            "content-type",
            [
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-headers", "content-type"),
                ("access-control-max-age", "0"),
                PREFLIGHT_VARY,
            ],
            id="wildcard",
        ),
        pytest.param(
            ANY_HEADER,
            APP,
            "GET",
            "X-Grpc-Web, x-user-agent",
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-headers", "x-grpc-web, x-user-agent"),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
            id="any-header-echoed",
        ),
        pytest.param(
            ANY_HEADER,
            APP,
            "GET",
            None,
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
            id="any-header-none-requested",
        ),
    ],
)
def test_preflight_allowed(
    policy: CorsPolicy,
    origin: str,
    method: str,
    request_headers: str | None,
    expected: list[tuple[str, str]],
) -> None:
    assert policy.preflight(origin, method, request_headers) == expected


@pytest.mark.parametrize(
    ("policy", "origin", "method", "request_headers"),
    [
        pytest.param(LISTED, "https://evil.example", "GET", None, id="unlisted-origin"),
        pytest.param(LISTED, None, "GET", None, id="no-origin"),
        pytest.param(LISTED, "null", "GET", None, id="null-origin"),
        pytest.param(LISTED, "http://app.example", "GET", None, id="other-scheme"),
        pytest.param(LISTED, "https://app.example:444", "GET", None, id="other-port"),
        pytest.param(LISTED, "https://app.example.evil", "GET", None, id="suffix"),
        pytest.param(LISTED, APP + "/", "GET", None, id="trailing-slash"),
        pytest.param(LISTED, APP, "PUT", None, id="method-not-allowed"),
        pytest.param(LISTED, APP, "post", None, id="method-case-matters"),
        pytest.param(LISTED, APP, None, None, id="no-method"),
        pytest.param(LISTED, APP, "POST", "x-secret", id="header-not-allowed"),
        pytest.param(LISTED, APP, "POST", "content-type, x-secret", id="one-header-not-allowed"),
        pytest.param(ANY_HEADER, APP, "GET", "x-a, bad header", id="echo-refuses-non-token"),
        pytest.param(ANY_HEADER, APP, "GET", "x-a\r\nx-b", id="echo-refuses-crlf"),
        pytest.param(ANY, "https://anyone.example", "DELETE", None, id="wildcard-method"),
    ],
)
def test_preflight_refused(
    policy: CorsPolicy, origin: str | None, method: str | None, request_headers: str | None
) -> None:
    assert policy.preflight(origin, method, request_headers) is None


@pytest.mark.parametrize(
    ("policy", "origin", "expected"),
    [
        pytest.param(
            LISTED,
            APP,
            [
                ("access-control-allow-origin", APP),
                ("access-control-expose-headers", "Grpc-Metadata-Etag"),
                ("vary", "Origin"),
            ],
            id="listed-origin-echoed",
        ),
        pytest.param(
            LISTED,
            "HTTPS://APP.EXAMPLE",
            [
                ("access-control-allow-origin", "HTTPS://APP.EXAMPLE"),
                ("access-control-expose-headers", "Grpc-Metadata-Etag"),
                ("vary", "Origin"),
            ],
            id="origin-echoed-as-sent",
        ),
        pytest.param(LISTED, "https://evil.example", [("vary", "Origin")], id="unlisted-origin"),
        pytest.param(LISTED, None, [("vary", "Origin")], id="no-origin"),
        pytest.param(
            CREDENTIALED,
            APP,
            [
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
                ("vary", "Origin"),
            ],
            id="credentials",
        ),
        pytest.param(
            ANY,
            "https://anyone.example",
            [("access-control-allow-origin", "*")],
            id="wildcard-not-echoed",
        ),
        pytest.param(ANY, None, [("access-control-allow-origin", "*")], id="wildcard-no-origin"),
    ],
)
def test_simple_headers(
    policy: CorsPolicy, origin: str | None, expected: list[tuple[str, str]]
) -> None:
    assert policy.simple_headers(origin) == expected


@given(origin=st.text(), method=st.text(), request_headers=st.none() | st.text())
def test_never_echoes_unlisted_values(
    origin: str, method: str, request_headers: str | None
) -> None:
    for policy in (LISTED, CREDENTIALED, ANY, ANY_HEADER):
        answers = [policy.simple_headers(origin)]
        preflight = policy.preflight(origin, method, request_headers)
        if preflight is not None:
            answers.append(preflight)
        for headers in answers:
            for name, value in headers:
                assert name == name.lower()
                # Nothing a client sent can split a header or smuggle another one.
                assert all(" " <= char <= "~" for char in value), (name, value)
                if name == "access-control-allow-origin":
                    assert value == "*" or value.lower() in policy.allow_origins
