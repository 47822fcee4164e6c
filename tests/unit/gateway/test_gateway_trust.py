"""Who may speak for the user, in process: the gate forwards exactly the Authorization it
verified, and the operations endpoints are served where the configuration says."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from hms_gateway.app import Gateway
from hms_gateway.auth import JwtConfig
from hms_gateway.config import GatewayConfig
from hms_gateway.limits import ServerLimits
from mesh.client.call import CallInfo

from .test_gateway_app import FakeChannel, _gateway, _status

SECRET = b"s" * 32
ECHO = "hms.testing.v1.EchoService"


def _token(sub: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


def _jwt_config(**kwargs: Any) -> GatewayConfig:
    return GatewayConfig(jwt=JwtConfig.load(SECRET, [], None, None, None), **kwargs)


async def _send(
    gateway: Gateway, method: str, url: str, headers: list[tuple[str, str]], **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gw"
    ) as client:
        return await client.request(method, url, headers=headers, **kwargs)


def _sent_metadata(channel: FakeChannel) -> list[tuple[str, Any]]:
    (call,) = channel.calls
    assert isinstance(call, CallInfo)
    return list(call.metadata)


# -- Authorization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(_jwt_config(), id="gated"),
        pytest.param(_jwt_config(public=frozenset({ECHO})), id="public-route"),
        pytest.param(GatewayConfig(), id="no-gate"),
    ],
)
async def test_two_authorization_headers_are_400(config: GatewayConfig) -> None:
    channel = FakeChannel()
    token = _token()
    response = await _send(
        _gateway(channel, config),
        "POST",
        "/v1/echo",
        [("authorization", f"Bearer {token}"), ("authorization", "Bearer FORGED")],
        json={"message": "x"},
    )
    assert response.status_code == 400, response.text
    body = _status(response)
    assert body["message"] == "header 'authorization' is sent 2 times; send it once"
    assert token not in response.text
    assert channel.calls == []


async def test_two_authorization_headers_forged_first_are_400() -> None:
    channel = FakeChannel()
    response = await _send(
        _gateway(channel, _jwt_config()),
        "POST",
        "/v1/echo",
        [("authorization", "Bearer FORGED"), ("authorization", f"Bearer {_token()}")],
        json={"message": "x"},
    )
    assert response.status_code == 400, response.text
    assert channel.calls == []


async def test_grpc_metadata_authorization_is_not_forwarded() -> None:
    channel = FakeChannel()
    token = _token()
    response = await _send(
        _gateway(channel, _jwt_config()),
        "POST",
        "/v1/echo",
        [("authorization", f"Bearer {token}"), ("grpc-metadata-authorization", "Bearer FORGED")],
        json={"message": "x"},
    )
    assert response.status_code == 200, response.text
    metadata = _sent_metadata(channel)
    assert [v for k, v in metadata if k == "authorization"] == [f"Bearer {token}"]
    assert [v for k, v in metadata if k == "x-hms-subject"] == ["alice"]


async def test_grpc_metadata_authorization_alone_does_not_pass_the_gate() -> None:
    channel = FakeChannel()
    response = await _send(
        _gateway(channel, _jwt_config()),
        "POST",
        "/v1/echo",
        [("grpc-metadata-authorization", f"Bearer {_token()}")],
        json={"message": "x"},
    )
    assert response.status_code == 401, response.text
    assert channel.calls == []


async def test_token_with_a_400_digit_exp_is_401() -> None:
    # PyJWT signs what it is given; the gate must refuse it, not fail on float(exp).
    channel = FakeChannel()
    token = jwt.encode({"sub": "alice", "exp": int("9" * 400)}, SECRET, "HS256")
    response = await _send(
        _gateway(channel, _jwt_config()),
        "POST",
        "/v1/echo",
        [("authorization", f"Bearer {token}")],
        json={"message": "x"},
    )
    assert response.status_code == 401, response.text
    assert _status(response)["message"] == (
        "invalid claim: 'exp' is a number out of range (64-bit integers)"
    )
    assert 'error_description="invalid claim"' in response.headers["www-authenticate"]


# -- operations endpoints -----------------------------------------------------------------------


PROBES = ["/healthz", "/readyz"]
DOCUMENTS = ["/metrics", "/openapi.json"]


@pytest.mark.parametrize("path", PROBES + DOCUMENTS)
async def test_ops_open_by_default(path: str) -> None:
    response = await _send(_gateway(FakeChannel()), "GET", path, [])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", PROBES)
async def test_ops_gate_leaves_the_probes_open(path: str) -> None:
    response = await _send(_gateway(FakeChannel(), _jwt_config(ops="gate")), "GET", path, [])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", DOCUMENTS)
async def test_ops_gate_needs_a_token(path: str) -> None:
    gateway = _gateway(FakeChannel(), _jwt_config(ops="gate"))
    refused = await _send(gateway, "GET", path, [])
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == 'Bearer realm="hms"'
    forged = await _send(gateway, "GET", path, [("authorization", "Bearer a.b.c")])
    assert forged.status_code == 401, forged.text
    twice = await _send(
        gateway,
        "GET",
        path,
        [("authorization", f"Bearer {_token()}"), ("authorization", f"Bearer {_token()}")],
    )
    assert twice.status_code == 400, twice.text
    allowed = await _send(gateway, "GET", path, [("authorization", f"Bearer {_token()}")])
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize("path", DOCUMENTS)
async def test_ops_listener_moves_the_documents_off_the_public_listener(path: str) -> None:
    gateway = _gateway(FakeChannel(), GatewayConfig(ops="listener"))
    public = await _send(gateway, "GET", path, [])
    assert public.status_code == 404, public.text
    assert _status(public)["message"] == f"no route for GET {path}"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.ops), base_url="http://ops"
    ) as ops:
        served = await ops.get(path)
    assert served.status_code == 200, served.text


@pytest.mark.parametrize("path", PROBES)
async def test_ops_listener_keeps_the_probes_on_both(path: str) -> None:
    gateway = _gateway(FakeChannel(), GatewayConfig(ops="listener"))
    assert (await _send(gateway, "GET", path, [])).status_code == 200
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.ops), base_url="http://ops"
    ) as ops:
        assert (await ops.get(path)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/v1/echo", 404, id="api-not-on-ops"),
        pytest.param("POST", "/v1/echo", 404, id="api-post-not-on-ops"),
        pytest.param("POST", "/metrics", 405, id="post-metrics"),
    ],
)
async def test_ops_listener_serves_nothing_else(method: str, path: str, status: int) -> None:
    channel = FakeChannel()
    gateway = _gateway(channel, GatewayConfig(ops="listener"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.ops), base_url="http://ops"
    ) as ops:
        response = await ops.request(method, path)
    assert response.status_code == status, response.text
    _status(response)
    assert channel.calls == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"ops": "somewhere"}, "ops must be one of open, gate, listener", id="unknown"),
        pytest.param({"ops": "gate"}, "needs jwt", id="gate-without-jwt"),
    ],
)
def test_ops_config_is_checked(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        GatewayConfig(**kwargs)


# -- server limits ------------------------------------------------------------------------------


def test_server_limits_defaults() -> None:
    limits = ServerLimits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_header_count) == (
        8192,
        32768,
        100,
    )
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (10, 30, 5)
    assert (limits.max_connections, limits.max_in_flight) == (1000, 256)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"max_request_line": 0}, "max_request_line", id="request-line-zero"),
        pytest.param({"max_header_bytes": -1}, "max_header_bytes", id="header-bytes-negative"),
        pytest.param({"max_header_count": 1.5}, "max_header_count", id="header-count-float"),
        pytest.param({"max_connections": True}, "max_connections", id="connections-bool"),
        pytest.param({"max_in_flight": 0}, "max_in_flight", id="in-flight-zero"),
        pytest.param({"header_timeout": 0}, "header_timeout", id="header-timeout-zero"),
        pytest.param({"body_timeout": float("nan")}, "body_timeout", id="body-timeout-nan"),
        pytest.param(
            {"keepalive_timeout": float("inf")}, "keepalive_timeout", id="keepalive-infinite"
        ),
    ],
)
def test_server_limits_are_checked(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ServerLimits(**kwargs)
