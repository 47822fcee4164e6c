"""The gateway's gate and limits against real `mesh gateway` processes and the mirror backend.

Each configuration runs as its own gateway (module-scoped, stopped at teardown): a JWT gateway
(an HS256 secret file and an RS256 public key, issuer, audience, one public method, and
/metrics and /openapi.json behind the gate), a gateway with an ops listener, a
rate-limited gateway used by one test only (every test comes from 127.0.0.1, so the bucket is
shared), and a gateway with a body limit and CORS. The operations endpoints are checked on the
session gateway. The mirror backend answers with the metadata it saw, so each case checks
what the gateway vouched for, not only the status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_spec_validator import validate

from mesh.testing import wait_until

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

MIRROR = "hms.testing.v1.MirrorService"
ISSUER = "https://id.hms.test"
AUDIENCE = "hms-api"
BOOK = "/v1/shelves/s1/books/b1"
PUBLIC_ITEM = "/v1/items/x"
BARE_CHALLENGE = 'Bearer realm="hms"'
APP_ORIGIN = "https://app.example"
EVIL_ORIGIN = "https://evil.example"
BODY_LIMIT = 1024


# -- keys and tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    hs256_secret: bytes
    rsa_private: rsa.RSAPrivateKey = field(repr=False)
    rsa_public_pem: bytes


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now - 10,
        "exp": now + 600,
        "role": "reader",
    }
    claims.update(overrides)
    return claims


def _hs256(keys: Keys, claims: dict[str, Any], *, secret: bytes | None = None) -> str:
    return jwt.encode(claims, secret or keys.hs256_secret, algorithm="HS256")


def _rs256(keys: Keys, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, keys.rsa_private, algorithm="RS256")


def _hand_signed_hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses a PEM as an HMAC secret)."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


@pytest.fixture(scope="module")
def keys() -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Keys(secrets.token_urlsafe(48).encode("ascii"), private, pem)


# -- gateways -----------------------------------------------------------------------------------


def _gateway(stack: GatewayStack, name: str, *args: str) -> Iterator[str]:
    process = stack.start_gateway(*args, name=name)
    try:
        wait_ready(process.url, {MIRROR})
        yield process.url
    finally:
        process.stop(timeout=5)


@pytest.fixture(scope="module")
def jwt_url(
    gateway_stack: GatewayStack, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("gate-keys")
    secret_file = directory / "hs256.secret"
    # As `echo` writes it: the CLI strips the trailing newline.
    secret_file.write_bytes(keys.hs256_secret + b"\n")
    public_key = directory / "rs256.pem"
    public_key.write_bytes(keys.rsa_public_pem)
    yield from _gateway(
        gateway_stack,
        "gateway-gate-jwt",
        f"--jwt-hs256-secret-file={secret_file}",
        f"--jwt-public-key={public_key}",
        f"--jwt-issuer={ISSUER}",
        f"--jwt-audience={AUDIENCE}",
        f"--public={MIRROR}/GetItem",
        # /metrics and /openapi.json behind the gate too (/healthz and /readyz stay open).
        "--ops-gate",
    )


@pytest.fixture(scope="module")
def rate_url(gateway_stack: GatewayStack) -> Iterator[str]:
    """Only for the rate test: every request from this host draws on one bucket."""
    yield from _gateway(
        gateway_stack,
        "gateway-gate-rate",
        "--rate=1",
        "--burst=3",
        f"--body-limit={BODY_LIMIT}",
        f"--cors-origin={APP_ORIGIN}",
    )


@pytest.fixture(scope="module")
def limits_url(gateway_stack: GatewayStack) -> Iterator[str]:
    yield from _gateway(
        gateway_stack,
        "gateway-gate-limits",
        f"--body-limit={BODY_LIMIT}",
        f"--cors-origin={APP_ORIGIN}",
    )


@pytest.fixture
def jwt_http(jwt_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=jwt_url, timeout=10) as client:
        yield client


@pytest.fixture
def limits_http(limits_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limits_url, timeout=10) as client:
        yield client


# -- helpers ------------------------------------------------------------------------------------


def _assert_status_body(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    return body


def _metadata(response: httpx.Response) -> list[tuple[str, str]]:
    return [(entry["key"], entry["value"]) for entry in response.json()["metadata"]]


def _values(response: httpx.Response, key: str) -> list[str]:
    return [value for name, value in _metadata(response) if name == key]


# -- the JWT gate -------------------------------------------------------------------------------


def test_missing_authorization_is_a_bare_challenge(jwt_http: httpx.Client) -> None:
    response = jwt_http.get(BOOK)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == BARE_CHALLENGE
    _assert_status_body(response, 16)


def _expired(keys: Keys) -> str:
    now = int(time.time())
    return _hs256(keys, _claims(iat=now - 7200, exp=now - 3600))


def _not_yet_valid(keys: Keys) -> str:
    return _hs256(keys, _claims(nbf=int(time.time()) + 3600))


def _wrong_audience(keys: Keys) -> str:
    return _hs256(keys, _claims(aud="someone-else"))


def _wrong_issuer(keys: Keys) -> str:
    return _hs256(keys, _claims(iss="https://evil.test"))


def _bad_signature(keys: Keys) -> str:
    return _hs256(keys, _claims(), secret=secrets.token_bytes(32))


def _rs256_bad_signature(keys: Keys) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(_claims(), other, algorithm="RS256")


def _alg_none(keys: Keys) -> str:
    return _unsigned(_claims())


def _alg_confusion(keys: Keys) -> str:
    # The classic: an HS256 token whose "secret" is the RS256 public key everybody may have.
    return _hand_signed_hs256(keys.rsa_public_pem, _claims(sub="mallory"))


def _no_subject(keys: Keys) -> str:
    claims = _claims()
    del claims["sub"]
    return _hs256(keys, claims)


REFUSED = {
    "expired": (_expired, "token expired"),
    "not-yet-valid": (_not_yet_valid, "token not yet valid"),
    "wrong-audience": (_wrong_audience, "wrong audience"),
    "wrong-issuer": (_wrong_issuer, "wrong issuer"),
    "bad-signature": (_bad_signature, "bad signature"),
    "rs256-bad-signature": (_rs256_bad_signature, "bad signature"),
    "alg-none": (_alg_none, None),
    "alg-confusion-hs256-with-rsa-pem": (_alg_confusion, "bad signature"),
    "no-subject": (_no_subject, "missing claim"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_invalid_bearer_token_is_refused(jwt_http: httpx.Client, keys: Keys, case: str) -> None:
    make, description = REFUSED[case]
    response = jwt_http.get(BOOK, headers={"authorization": f"Bearer {make(keys)}"})
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="hms"'), challenge
    assert 'error="invalid_token"' in challenge, challenge
    if description is not None:
        assert f'error_description="{description}"' in challenge, challenge
    _assert_status_body(response, 16)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer garbage", id="garbage"),
        pytest.param("Bearer a.b", id="two-segments"),
        pytest.param("Bearer !!!.???.###", id="not-base64url"),
        pytest.param("Bearer " + "a" * 9000 + ".b.c", id="too-long"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Basic YWxpY2U6c2VjcmV0", id="basic-scheme"),
        pytest.param("Basic xxx", id="basic-xxx"),
    ],
)
def test_malformed_authorization_is_refused(jwt_http: httpx.Client, authorization: str) -> None:
    response = jwt_http.get(BOOK, headers={"authorization": authorization})
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    body = _assert_status_body(response, 16)
    assert "YWxpY2U6c2VjcmV0" not in body["message"]  # credentials never echoed


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
def test_valid_token_identity_reaches_the_backend(
    jwt_http: httpx.Client, keys: Keys, algorithm: str
) -> None:
    claims = _claims(sub=f"user-{algorithm.lower()}")
    token = _hs256(keys, claims) if algorithm == "HS256" else _rs256(keys, claims)
    response = jwt_http.get(BOOK, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["received"]["name"] == "shelves/s1/books/b1"
    assert _values(response, "x-hms-subject") == [claims["sub"]]
    (claims_json,) = _values(response, "x-hms-claims")
    assert json.loads(claims_json) == claims
    # The token itself is passed on, as grpc-gateway does.
    assert _values(response, "authorization") == [f"Bearer {token}"]


def test_lower_case_bearer_scheme_is_accepted(jwt_http: httpx.Client, keys: Keys) -> None:
    response = jwt_http.get(BOOK, headers={"authorization": f"bearer {_hs256(keys, _claims())}"})
    assert response.status_code == 200, response.text
    assert _values(response, "x-hms-subject") == ["alice"]


def test_forged_identity_headers_do_not_override_the_token(
    jwt_http: httpx.Client, keys: Keys
) -> None:
    response = jwt_http.get(
        BOOK,
        headers={
            "authorization": f"Bearer {_hs256(keys, _claims())}",
            "grpc-metadata-x-hms-subject": "admin",
            "grpc-metadata-x-hms-claims": '{"sub":"admin","role":"root"}',
        },
    )
    assert response.status_code == 200, response.text
    assert _values(response, "x-hms-subject") == ["alice"]
    (claims_json,) = _values(response, "x-hms-claims")
    assert json.loads(claims_json)["role"] == "reader"


def test_grpc_metadata_authorization_is_dropped(jwt_http: httpx.Client, keys: Keys) -> None:
    """The attack: a forged bearer as Grpc-Metadata-Authorization beside a valid token reached
    the backend as a second authorization value. Now only the verified one does."""
    token = _hs256(keys, _claims())
    response = jwt_http.get(
        BOOK,
        headers=[
            ("authorization", f"Bearer {token}"),
            ("grpc-metadata-authorization", "Bearer FORGED"),
        ],
    )
    assert response.status_code == 200, response.text
    assert _values(response, "authorization") == [f"Bearer {token}"]
    assert _values(response, "x-hms-subject") == ["alice"]


def test_grpc_metadata_authorization_does_not_pass_the_gate(
    jwt_http: httpx.Client, keys: Keys
) -> None:
    response = jwt_http.get(
        BOOK, headers={"grpc-metadata-authorization": f"Bearer {_hs256(keys, _claims())}"}
    )
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == BARE_CHALLENGE


@pytest.mark.parametrize("forged_first", [False, True], ids=["valid-first", "forged-first"])
@pytest.mark.parametrize("route", [BOOK, PUBLIC_ITEM], ids=["gated", "public"])
def test_two_authorization_headers_are_400(
    jwt_http: httpx.Client, keys: Keys, route: str, forged_first: bool
) -> None:
    """The attack: two Authorization headers; only the first was verified and both were
    forwarded. Now neither is: 400, and the backend is not called."""
    token = _hs256(keys, _claims())
    values = [f"Bearer {token}", "Bearer FORGED"]
    if forged_first:
        values.reverse()
    response = jwt_http.get(route, headers=[("authorization", value) for value in values])
    assert response.status_code == 400, response.text
    body = _assert_status_body(response, 3)
    assert body["message"] == "header 'authorization' is sent 2 times; send it once"
    assert token not in response.text


def test_a_valid_token_with_a_400_digit_exp_is_401(jwt_http: httpx.Client, keys: Keys) -> None:
    """The attack: a validly signed token whose exp has 400 digits was a 500."""
    token = _hs256(keys, _claims(exp=int("9" * 400)))
    response = jwt_http.get(BOOK, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert 'error_description="invalid claim"' in response.headers["www-authenticate"]
    body = _assert_status_body(response, 16)
    assert body["message"] == "invalid claim: 'exp' is a number out of range (64-bit integers)"


def test_a_huge_number_in_another_claim_is_401(jwt_http: httpx.Client, keys: Keys) -> None:
    token = _hs256(keys, _claims(level=int("9" * 400)))
    response = jwt_http.get(BOOK, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert "out of range" in _assert_status_body(response, 16)["message"]


def test_public_method_needs_no_token(jwt_http: httpx.Client) -> None:
    response = jwt_http.get(PUBLIC_ITEM)
    assert response.status_code == 200, response.text
    assert response.json()["received"]["id"] == "x"
    keys_seen = {name for name, _ in _metadata(response)}
    assert not keys_seen & {"x-hms-subject", "x-hms-claims"}, keys_seen


def test_public_method_drops_a_forged_identity(jwt_http: httpx.Client) -> None:
    response = jwt_http.get(PUBLIC_ITEM, headers={"grpc-metadata-x-hms-subject": "admin"})
    assert response.status_code == 200, response.text
    assert _values(response, "x-hms-subject") == []


def test_public_is_per_method(jwt_http: httpx.Client) -> None:
    # /v1/items/special is GetSpecialItem, a sibling of the public GetItem: not public.
    response = jwt_http.get("/v1/items/special")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == BARE_CHALLENGE


# -- the rate limit -----------------------------------------------------------------------------


def test_rate_limit_burst_then_429(rate_url: str) -> None:
    with httpx.Client(base_url=rate_url, timeout=10) as client:
        responses = [client.get(PUBLIC_ITEM) for _ in range(10)]
    statuses = [response.status_code for response in responses]
    # A fresh bucket holds the burst; at 1 token/s the rest of a quick burst is refused.
    assert statuses[:3] == [200, 200, 200], statuses
    assert set(statuses[3:]) <= {200, 429}, statuses
    refused = [response for response in responses if response.status_code == 429]
    assert refused, statuses
    for response in refused:
        retry_after = response.headers["retry-after"]
        assert re.fullmatch(r"[0-9]+", retry_after), retry_after
        assert int(retry_after) >= 1
        body = _assert_status_body(response, 8)  # RESOURCE_EXHAUSTED
        assert "rate limit" in body["message"]


# -- body limit and CORS ------------------------------------------------------------------------


def _body_of_size(size: int) -> bytes:
    prefix, suffix = b'{"failMessage":"', b'"}'
    data = prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix
    assert len(data) == size
    return data


def test_body_over_the_limit_is_413(limits_http: httpx.Client) -> None:
    response = limits_http.post(
        "/v1/shape", content=_body_of_size(2000), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    body = _assert_status_body(response, 8)
    assert str(BODY_LIMIT) in body["message"], body


def test_chunked_body_over_the_limit_is_413(limits_http: httpx.Client) -> None:
    data = _body_of_size(2000)
    # A generator: sent chunked, without Content-Length, so the limit is counted while reading.
    chunks = (data[i : i + 100] for i in range(0, len(data), 100))
    response = limits_http.post(
        "/v1/shape", content=chunks, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert str(BODY_LIMIT) in _assert_status_body(response, 8)["message"]


def test_body_at_the_limit_is_accepted(limits_http: httpx.Client) -> None:
    response = limits_http.post(
        "/v1/shape", content=_body_of_size(BODY_LIMIT), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["received"]["failMessage"] == "x" * (BODY_LIMIT - 18)


def test_cors_preflight_from_an_allowed_origin(limits_http: httpx.Client) -> None:
    response = limits_http.options(
        "/v1/shape",
        headers={
            "origin": APP_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
    )
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.content == b""


def test_cors_preflight_from_another_origin_is_403(limits_http: httpx.Client) -> None:
    response = limits_http.options(
        "/v1/shape",
        headers={"origin": EVIL_ORIGIN, "access-control-request-method": "POST"},
    )
    assert response.status_code == 403, response.text
    assert "access-control-allow-origin" not in response.headers
    _assert_status_body(response, 7)


def test_cors_simple_request_carries_the_origin(limits_http: httpx.Client) -> None:
    response = limits_http.get(PUBLIC_ITEM, headers={"origin": APP_ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "origin" in response.headers["vary"].lower()


def test_cors_simple_request_from_another_origin_gets_no_cors(limits_http: httpx.Client) -> None:
    response = limits_http.get(PUBLIC_ITEM, headers={"origin": EVIL_ORIGIN})
    assert response.status_code == 200, response.text
    assert "access-control-allow-origin" not in response.headers


# -- operations endpoints -----------------------------------------------------------------------


def test_healthz(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_readyz_lists_services(http: httpx.Client) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200, response.text
    assert MIRROR in response.json()["services"]


_GET_ITEM_200 = re.compile(
    r'^gateway_requests_total\{(?=[^}]*method="GetItem")(?=[^}]*service="'
    + re.escape(MIRROR)
    + r'")(?=[^}]*status="200")[^}]*\} ([0-9.e+]+)$',
    re.MULTILINE,
)


def _get_item_count(client: httpx.Client) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert "gateway_requests_total" in response.text
    match = _GET_ITEM_200.search(response.text)
    return float(match[1]) if match else 0.0


def test_metrics_count_a_request(http: httpx.Client) -> None:
    before = _get_item_count(http)
    assert http.get("/v1/items/counted").status_code == 200
    # The count is taken once the answer is sent: wait for it, bounded.
    wait_until(lambda: _get_item_count(http) >= before + 1, timeout=10)


def test_openapi_is_a_valid_document(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    validate(document)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    expected = {
        "/v1/{name}": {"get", "delete"},  # GetBook, DeleteBook: {name=shelves/*/books/*}
        "/v1/{parent}/books": {"post"},
        "/v1/{book.name}": {"patch"},
        "/v1/{name}:publish": {"post"},
        "/v1/items/{id}": {"get"},
        "/v1/files/{path}": {"get"},
        "/v1/shape": {"post"},
    }
    for path, verbs in expected.items():
        assert path in paths, sorted(paths)
        assert verbs <= set(paths[path]), (path, sorted(paths[path]))


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json"])
def test_ops_documents_behind_the_gate(jwt_http: httpx.Client, keys: Keys, path: str) -> None:
    refused = jwt_http.get(path)
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == BARE_CHALLENGE
    allowed = jwt_http.get(path, headers={"authorization": f"Bearer {_hs256(keys, _claims())}"})
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_stay_open_behind_the_gate(jwt_http: httpx.Client, path: str) -> None:
    assert jwt_http.get(path).status_code == 200


def _ops_url(log: Path) -> str:
    """The ops listener's URL, from the gateway's log (printed before its main line)."""
    prefix = "gateway ops listening on "
    lines = [line for line in log.read_text().splitlines() if line.startswith(prefix)]
    assert lines, log.read_text()[-2000:]
    return lines[-1][len(prefix) :].strip()


def test_ops_listener_serves_the_documents_apart(gateway_stack: GatewayStack) -> None:
    name = "gateway-gate-ops-listener"
    process = gateway_stack.start_gateway("--ops-port=0", name=name)
    try:
        wait_ready(process.url, {MIRROR})
        ops_url = _ops_url(gateway_stack.base / "logs" / f"{name}.log")
        assert ops_url != process.url
        with (
            httpx.Client(base_url=process.url, timeout=10) as public,
            httpx.Client(base_url=ops_url, timeout=10) as ops,
        ):
            for path in ("/metrics", "/openapi.json"):
                response = public.get(path)
                assert response.status_code == 404, response.text
                assert response.json()["message"] == f"no route for GET {path}"
                assert ops.get(path).status_code == 200
            for path in ("/healthz", "/readyz"):
                assert public.get(path).status_code == 200
                assert ops.get(path).status_code == 200
            # The API is not on the ops listener, and works on the public one.
            assert ops.get(PUBLIC_ITEM).status_code == 404
            assert public.get(PUBLIC_ITEM).status_code == 200
            assert "gateway_open_connections" in ops.get("/metrics").text
    finally:
        process.stop(timeout=5)


def test_secret_is_not_in_the_gateway_log(
    gateway_stack: GatewayStack, keys: Keys, jwt_http: httpx.Client
) -> None:
    refused = jwt_http.get(BOOK, headers={"authorization": f"Bearer {_expired(keys)}"})
    assert refused.status_code == 401
    log: Path = gateway_stack.base / "logs" / "gateway-gate-jwt.log"
    assert log.exists(), log
    assert keys.hs256_secret.decode() not in log.read_text(errors="replace")
