"""Scopes at the gate: what a token grants, what a method needs, and the gateway's answers
(401, 403 naming the scope and the method, 200), in process with a fake mesh channel; and the
OpenAPI document's security per operation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from google.rpc import error_details_pb2
from openapi_spec_validator import validate

from hms.eligibility.v1 import eligibility_pb2
from hms.testing.v1 import mirror_pb2
from hms_gateway.access import Access
from hms_gateway.app import Gateway
from hms_gateway.auth import (
    SCOPE_ERROR_DOMAIN,
    AuthError,
    Identity,
    JwtConfig,
    JwtVerifier,
    ScopeError,
    VerificationKey,
    granted_scopes,
    require_scopes,
)
from hms_gateway.config import GatewayConfig
from hms_gateway.endpoint import endpoints_of
from hms_gateway.openapi import BEARER_SCHEME, build_openapi
from hms_gateway.routes import RouteTable
from mesh.client.call import CallInfo
from mesh.testing import FakeRpc

from .test_gateway_app import FakeChannel

SECRET = b"0123456789abcdef0123456789abcdef"
ELIGIBILITY = "hms.eligibility.v1.EligibilityService"
MIRROR = "hms.testing.v1.MirrorService"
CHECK_PATH = f"/{ELIGIBILITY}/Check"
CHECK = "/v1/eligibility:check"
LACKS_CHECK = f"the token lacks scope 'eligibility:check', needed by {CHECK_PATH}"
_ELIGIBILITY = eligibility_pb2.DESCRIPTOR.services_by_name["EligibilityService"]
_MIRROR = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]
APPLICANT = {"applicantId": "A1", "annualIncomePence": "100", "householdSize": 1}


# -- what a token grants ------------------------------------------------------------------------

GRANTED = {
    "scope-string": ({"scope": "housing:apply housing:read"}, {"housing:apply", "housing:read"}),
    "scope-extra-spaces": ({"scope": "  a:x   b:y "}, {"a:x", "b:y"}),
    "scope-empty": ({"scope": ""}, set()),
    "scp-list": ({"scp": ["audit:read", "reports:create"]}, {"audit:read", "reports:create"}),
    "scp-string": ({"scp": "audit:read reports:create"}, {"audit:read", "reports:create"}),
    "scp-empty-list": ({"scp": []}, set()),
    "both-are-joined": ({"scope": "a:x", "scp": ["b:y"]}, {"a:x", "b:y"}),
    "none": ({"sub": "alice"}, set()),
}


@pytest.mark.parametrize("case", sorted(GRANTED))
def test_granted_scopes(case: str) -> None:
    claims, expected = GRANTED[case]
    assert granted_scopes(claims) == frozenset(expected)


MALFORMED = {
    "scope-number": ({"scope": 7}, "'scope' must be a string of space-separated scopes"),
    "scope-list": ({"scope": ["a:x"]}, "'scope' must be a string of space-separated scopes"),
    "scp-number": ({"scp": 7}, "'scp' must be a list of scopes or a space-separated string"),
    "scp-object": ({"scp": {"a": 1}}, "'scp' must be a list of scopes or a space-separated"),
    "scp-list-of-numbers": ({"scp": [1]}, "'scp' must be a list of non-empty strings"),
    "scp-list-with-empty": ({"scp": ["a:x", ""]}, "'scp' must be a list of non-empty strings"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_scope_claims(case: str) -> None:
    claims, message = MALFORMED[case]
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        granted_scopes(claims)


def _token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "maya", "iat": now, "exp": now + 300, **claims}, SECRET, "HS256")


def _jwt_config() -> JwtConfig:
    return JwtConfig((VerificationKey("HS256", SECRET),))


def test_verified_identity_carries_its_scopes() -> None:
    identity = JwtVerifier(_jwt_config()).verify(
        f"Bearer {_token(scope='housing:apply', scp=['audit:read'])}"
    )
    assert identity.scopes == {"housing:apply", "audit:read"}


def test_a_token_with_a_malformed_scope_claim_is_401() -> None:
    with pytest.raises(AuthError) as caught:
        JwtVerifier(_jwt_config()).verify(f"Bearer {_token(scope=['housing:apply'])}")
    assert caught.value.http_status == 401
    assert caught.value.message == (
        "invalid claim: 'scope' must be a string of space-separated scopes"
    )


# -- what a method needs ------------------------------------------------------------------------

REQUIRED = {
    # name: (required, granted, missing)
    "no-scope-needed": ((), set(), ()),
    "one-held": (("housing:apply",), {"housing:apply"}, ()),
    "one-held-among-others": (("housing:apply",), {"a:x", "housing:apply", "b:y"}, ()),
    "one-missing": (("housing:apply",), {"housing:read"}, ("housing:apply",)),
    "one-of-two-missing": (("a:x", "b:y"), {"b:y"}, ("a:x",)),
    "both-missing-in-order": (("b:y", "a:x"), set(), ("b:y", "a:x")),
    "case-matters": (("housing:apply",), {"Housing:Apply"}, ("housing:apply",)),
    "no-prefix-match": (("housing:apply",), {"housing:apply:all", "housing"}, ("housing:apply",)),
}


@pytest.mark.parametrize("case", sorted(REQUIRED))
def test_require_scopes(case: str) -> None:
    required, granted, missing = REQUIRED[case]
    identity = Identity("maya", {"sub": "maya"}, frozenset(granted))
    access = Access(scopes=required)
    if not missing:
        require_scopes(identity, access, CHECK_PATH)
        return
    with pytest.raises(ScopeError) as caught:
        require_scopes(identity, access, CHECK_PATH)
    error = caught.value
    assert error.missing == missing
    assert error.http_status == 403
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    listed = ", ".join(repr(scope) for scope in missing)
    noun = "scope" if len(missing) == 1 else "scopes"
    assert error.message == f"the token lacks {noun} {listed}, needed by {CHECK_PATH}"
    assert error.headers == (
        (
            "www-authenticate",
            f'Bearer realm="hms", error="insufficient_scope", scope="{" ".join(required)}"',
        ),
    )
    (info,) = error.details
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INSUFFICIENT_SCOPE"
    assert info.domain == SCOPE_ERROR_DOMAIN
    assert dict(info.metadata) == {"method": CHECK_PATH, "missing_scopes": " ".join(missing)}


# -- the gateway's answers ----------------------------------------------------------------------


async def _answer(call: CallInfo) -> Any:
    call.rpc = FakeRpc()
    if isinstance(call.request, eligibility_pb2.CheckRequest):
        return eligibility_pb2.CheckResponse(applicant_id=call.request.applicant_id)
    if isinstance(call.request, eligibility_pb2.ListRulesRequest):
        return eligibility_pb2.ListRulesResponse(rules=[eligibility_pb2.Rule(rule_id="R1")])
    return mirror_pb2.MirrorResponse(received=call.request, method=call.method)


def _table() -> RouteTable:
    table = RouteTable()
    table.set_service(ELIGIBILITY, endpoints_of(_ELIGIBILITY))
    table.set_service(MIRROR, endpoints_of(_MIRROR))
    return table


async def _client(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FakeChannel]]:
    channel = FakeChannel(_answer)
    config = GatewayConfig(**settings)
    gateway = Gateway(config, _table(), channel)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gw"
    ) as client:
        yield client, channel


@pytest.fixture
async def gated() -> AsyncIterator[tuple[httpx.AsyncClient, FakeChannel]]:
    async for pair in _client(jwt=_jwt_config()):
        yield pair


GATE = {
    # name: (method, path, authorization, status, message); the authorization is claims of a
    # token minted when the test runs (a token made at collection would expire in a long run),
    # a raw header value, or None for none.
    "scoped-no-token": ("POST", CHECK, None, 401, "missing authorization header"),
    "scoped-bad-token": ("POST", CHECK, "Bearer x.y.z", 401, None),
    "scoped-wrong-scope": ("POST", CHECK, {"scope": "housing:apply"}, 403, LACKS_CHECK),
    "scoped-no-scope": ("POST", CHECK, {}, 403, LACKS_CHECK),
    "scoped-right-scope": ("POST", CHECK, {"scope": "a:b eligibility:check"}, 200, None),
    "scoped-right-scp": ("POST", CHECK, {"scp": ["eligibility:check"]}, 200, None),
    "public-no-token": ("GET", "/v1/rules", None, 200, None),
    "public-any-token": ("GET", "/v1/rules", {"scope": "x:y"}, 200, None),
    "unannotated-no-token": ("GET", "/v1/items/x", None, 401, "missing authorization header"),
    "unannotated-any-token": ("GET", "/v1/items/x", {}, 200, None),
}


@pytest.mark.parametrize("case", sorted(GATE))
async def test_the_gate(gated: tuple[httpx.AsyncClient, FakeChannel], case: str) -> None:
    client, channel = gated
    method, path, authorization, status, message = GATE[case]
    headers: dict[str, str] = {}
    if isinstance(authorization, dict):
        headers["authorization"] = f"Bearer {_token(**authorization)}"
    elif authorization is not None:
        headers["authorization"] = authorization
    body = APPLICANT if method == "POST" else None
    response = await client.request(method, path, headers=headers, json=body)
    assert response.status_code == status, response.text
    if status == 200:
        assert len(channel.calls) == 1
        return
    assert channel.calls == []  # refused before the backend is called
    answer = response.json()
    assert answer["code"] == (16 if status == 401 else 7)
    if message is not None:
        assert answer["message"] == message
    if status == 403:
        challenge = response.headers["www-authenticate"]
        assert challenge == (
            'Bearer realm="hms", error="insufficient_scope", scope="eligibility:check"'
        )
        (detail,) = answer["details"]
        assert detail == {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "INSUFFICIENT_SCOPE",
            "domain": SCOPE_ERROR_DOMAIN,
            "metadata": {"method": CHECK_PATH, "missing_scopes": "eligibility:check"},
        }


async def test_public_flag_opens_a_scoped_method() -> None:
    async for client, channel in _client(jwt=_jwt_config(), public=frozenset({ELIGIBILITY})):
        response = await client.post(CHECK, json=APPLICANT)
        assert response.status_code == 200, response.text
        assert len(channel.calls) == 1
        # Not the other services.
        assert (await client.get("/v1/items/x")).status_code == 401


async def test_without_the_gate_every_route_is_open() -> None:
    async for client, channel in _client():
        assert (await client.post(CHECK, json=APPLICANT)).status_code == 200
        assert (await client.get("/v1/items/x")).status_code == 200
        assert len(channel.calls) == 2


async def test_a_403_comes_before_the_body_is_read(
    gated: tuple[httpx.AsyncClient, FakeChannel],
) -> None:
    """A caller without the scope learns nothing about the body: not even that it is bad."""
    client, _ = gated
    response = await client.post(
        CHECK,
        content=b"{not json",
        headers={
            "authorization": f"Bearer {_token(scope='x:y')}",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 403, response.text


# -- OpenAPI ------------------------------------------------------------------------------------


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["summary"]: operation
        for item in document["paths"].values()
        for operation in item.values()
    }


SECURITY = {
    # summary: (security, responses beyond 200 and default)
    "hms.eligibility.v1.EligibilityService.Check": (
        [{BEARER_SCHEME: ["eligibility:check"]}],
        {"401", "403"},
    ),
    "hms.eligibility.v1.EligibilityService.ListRules": ([], set()),
    "hms.eligibility.v1.EligibilityService.GetRule": ([], set()),
    "hms.testing.v1.MirrorService.GetItem": ([{BEARER_SCHEME: []}], {"401"}),
}


@pytest.mark.parametrize("summary", sorted(SECURITY))
def test_openapi_security_per_operation(summary: str) -> None:
    document = build_openapi([*endpoints_of(_ELIGIBILITY), *endpoints_of(_MIRROR)])
    validate(document)
    operation = _operations(document)[summary]
    security, responses = SECURITY[summary]
    assert operation["security"] == security
    assert set(operation["responses"]) - {"200", "default"} == responses
    if "403" in responses:
        assert operation["description"] == "Needs a bearer token with the scope eligibility:check."
    scheme = document["components"]["securitySchemes"][BEARER_SCHEME]
    assert {k: v for k, v in scheme.items() if k != "description"} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert "'scope' claim" in scheme["description"]


def test_openapi_without_the_gate_says_nothing_of_security() -> None:
    document = build_openapi(endpoints_of(_ELIGIBILITY), access=None)
    validate(document)
    assert "securitySchemes" not in document["components"]
    assert all("security" not in op for op in _operations(document).values())


async def test_openapi_served_follows_the_gate_and_the_public_flag() -> None:
    async for client, _ in _client(jwt=_jwt_config(), public=frozenset({f"{MIRROR}/GetItem"})):
        operations = _operations((await client.get("/openapi.json")).json())
        assert operations[f"{MIRROR}.GetItem"]["security"] == []
        assert operations[f"{MIRROR}.GetBook"]["security"] == [{BEARER_SCHEME: []}]
        check = operations[f"{ELIGIBILITY}.Check"]["security"]
        assert check == [{BEARER_SCHEME: ["eligibility:check"]}]
    async for client, _ in _client():
        document = (await client.get("/openapi.json")).json()
        assert "securitySchemes" not in document["components"]
