"""Scopes from the contract, enforced by a real `mesh gateway` in front of the real eligibility
service and the mirror backend, both learnt by server reflection (the gateway's process imports
no generated code: the (hms.api.v1.access) option comes with the reflected descriptors).

The gateway is gated as `mesh up` gates it: the public half of a development signing key and
its issuer (tools/devjwt.py), with tokens from `mint_token`, what `mesh token` prints. One
`--public` flag shows the flag still opens a method its contract does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from hms_tools.devjwt import DEV_ISSUER, ensure_signing_key, mint_token
from hms_tools.devstack import ServiceProcess

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

ELIGIBILITY = "hms.eligibility.v1.EligibilityService"
MIRROR = "hms.testing.v1.MirrorService"
CHECK = "/v1/eligibility:check"
CHECK_RPC = f"/{ELIGIBILITY}/Check"
APPLICANT = {
    "applicantId": "HV-7",
    "annualIncomePence": "2800000",
    "householdSize": 2,
    "residenceMonths": 24,
}


@pytest.fixture(scope="module")
def eligibility(gateway_stack: GatewayStack) -> Iterator[ServiceProcess]:
    process = gateway_stack.start_service("eligibility", "eligibility")
    try:
        yield process
    finally:
        process.stop(timeout=5)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state_dir = tmp_path_factory.mktemp("scopes-state")
    ensure_signing_key(state_dir)
    return state_dir


@pytest.fixture(scope="module")
def gateway(
    gateway_stack: GatewayStack, eligibility: ServiceProcess, keys_dir: Path
) -> Iterator[str]:
    process = gateway_stack.start_gateway(
        f"--jwt-public-key={ensure_signing_key(keys_dir)}",
        f"--jwt-issuer={DEV_ISSUER}",
        f"--public={MIRROR}/GetItem",
        name="gateway-scopes",
    )
    try:
        try:
            wait_ready(process.url, {ELIGIBILITY, MIRROR})
        except AssertionError:
            raise AssertionError(
                f"gateway:\n{process.log_tail()}\neligibility:\n{eligibility.log_tail()}"
            ) from None
        yield process.url
    finally:
        process.stop(timeout=5)


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        yield client


def _bearer(keys_dir: Path, *scopes: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(keys_dir, 'maya', scopes, ttl=300)}"}


def _status(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["code"] == code, body
    return body


def test_no_token_is_401(http: httpx.Client) -> None:
    response = http.post(CHECK, json=APPLICANT)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="hms"'
    assert _status(response, 16)["message"] == "missing authorization header"


@pytest.mark.parametrize(
    "scopes",
    [pytest.param((), id="no-scope"), pytest.param(("housing:apply", "audit:read"), id="others")],
)
def test_a_token_without_the_scope_is_403_naming_it(
    http: httpx.Client, keys_dir: Path, scopes: tuple[str, ...]
) -> None:
    response = http.post(CHECK, json=APPLICANT, headers=_bearer(keys_dir, *scopes))
    assert response.status_code == 403, response.text
    body = _status(response, 7)
    assert body["message"] == f"the token lacks scope 'eligibility:check', needed by {CHECK_RPC}"
    assert response.headers["www-authenticate"] == (
        'Bearer realm="hms", error="insufficient_scope", scope="eligibility:check"'
    )
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["reason"] == "INSUFFICIENT_SCOPE"
    assert detail["metadata"] == {"method": CHECK_RPC, "missing_scopes": "eligibility:check"}


def test_a_token_with_the_scope_is_200(http: httpx.Client, keys_dir: Path) -> None:
    headers = _bearer(keys_dir, "housing:apply", "eligibility:check")
    response = http.post(CHECK, json=APPLICANT, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["applicantId"] == "HV-7"


@pytest.mark.parametrize("path", ["/v1/rules", "/v1/rules/MAX_INCOME"])
def test_a_public_method_needs_no_token(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200, response.text


def test_a_method_without_the_option_needs_any_valid_token(
    http: httpx.Client, keys_dir: Path
) -> None:
    book = "/v1/shelves/s1/books/b1"
    assert http.get(book).status_code == 401
    response = http.get(book, headers=_bearer(keys_dir))
    assert response.status_code == 200, response.text
    seen = {entry["key"]: entry["value"] for entry in response.json()["metadata"]}
    assert seen["x-hms-subject"] == "maya"


def test_the_public_flag_still_opens_a_method(http: httpx.Client) -> None:
    assert http.get("/v1/items/x").status_code == 200
    assert http.get("/v1/items/special").status_code == 401  # its sibling is not named


def test_another_key_is_401(http: httpx.Client, tmp_path: Path) -> None:
    ensure_signing_key(tmp_path)
    response = http.post(CHECK, json=APPLICANT, headers=_bearer(tmp_path, "eligibility:check"))
    assert response.status_code == 401, response.text


SECURITY = {
    # operation summary: its security requirement
    f"{ELIGIBILITY}.Check": [{"bearer": ["eligibility:check"]}],
    f"{ELIGIBILITY}.ListRules": [],
    f"{ELIGIBILITY}.GetRule": [],
    f"{MIRROR}.GetBook": [{"bearer": []}],
    f"{MIRROR}.GetItem": [],  # --public
}


def test_openapi_says_what_each_operation_needs(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    validate(document)
    operations = {
        operation["summary"]: operation
        for item in document["paths"].values()
        for operation in item.values()
    }
    assert {name: operations[name]["security"] for name in SECURITY} == SECURITY
    assert "403" in operations[f"{ELIGIBILITY}.Check"]["responses"]
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
