"""Who may speak for the user, over real mTLS: a service host believes x-hms-subject and
x-hms-claims only from the gateway's certificate; any other mesh peer sending them (the attack:
`x-hms-subject: admin` straight to a backend) is seen as no user at all."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from mesh import end_user, tls
from mesh.server import HostConfig, ServiceHost
from tests.backends.echo.service import EchoService

pytestmark = pytest.mark.integration


class WhoAmI(EchoService):
    """Echo that answers with the end user the host let through (or "-")."""

    async def Echo(self, request: echo_pb2.EchoRequest, context: object) -> echo_pb2.EchoResponse:
        user = end_user()
        seen = "-" if user is None else f"{user.subject} {json.dumps(dict(user.claims))}"
        return echo_pb2.EchoResponse(message=seen, served_by="echo")


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[tuple[ServiceHost, Path]]:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["echo", "gateway", "ops"])
    config = HostConfig(
        deployment="echo", tls=tls.TlsFiles(tls_dir, "echo"), drain_delay=0, grace=0
    )
    server = ServiceHost(config)
    server.add_servicer(WhoAmI("echo"))
    await server.start()
    try:
        yield server, tls_dir
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("caller", "metadata", "seen"),
    [
        pytest.param("gateway", [("x-hms-subject", "alice"), ("x-hms-claims", '{"sub":"alice"}')],
                     'alice {"sub": "alice"}', id="the-gateway-is-believed"),
        pytest.param("ops", [("x-hms-subject", "admin"), ("x-hms-claims", '{"sub":"admin"}')],
                     "-", id="another-peer-is-not"),
        pytest.param("gateway", [], "-", id="no-user-sent"),
        pytest.param("gateway", [("x-hms-claims", '{"sub":"x"}')], "-", id="claims-only"),
    ],
)  # fmt: skip
async def test_only_the_gateway_speaks_for_the_user(
    host: tuple[ServiceHost, Path], caller: str, metadata: list[tuple[str, str]], seen: str
) -> None:
    server, tls_dir = host
    files = tls.TlsFiles(tls_dir, caller)
    channel = tls.instance_channel(server.address, server.identity, files)
    try:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        answer = await stub.Echo(echo_pb2.EchoRequest(message="?"), metadata=metadata, timeout=5)
    finally:
        await channel.close()
    assert answer.message == seen


async def test_a_plaintext_peer_is_not_believed_either(tmp_path: Path) -> None:
    server = ServiceHost(HostConfig(deployment="echo", tls=None, drain_delay=0, grace=0))
    server.add_servicer(WhoAmI("echo"))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            answer = await stub.Echo(
                echo_pb2.EchoRequest(), metadata=[("x-hms-subject", "admin")], timeout=5
            )
    finally:
        await server.stop()
    assert answer.message == "-"
