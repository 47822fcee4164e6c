"""Routes learnt live: a service that registers while the gateway runs is served within 1 s
(also one written in plain grpcio that joins by writing its own registry key), and a killed
backend answers 503 while other services keep answering, then 200 again when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.certs import spiffe_id
from hms_tools.devstack import GatewayProcess
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery
from mesh.testing import eventually
from tests.backends.echo.service import EchoService

from .conftest import GatewayStack, wait_ready

pytestmark = pytest.mark.integration

ECHO = "hms.testing.v1.EchoService"
MIRROR = "hms.testing.v1.MirrorService"


@pytest.fixture
def gateway(gateway_stack: GatewayStack) -> Iterator[GatewayProcess]:
    """A gateway of its own, so that no other test has taught it the echo service yet."""
    process = gateway_stack.start_gateway(name="gateway-live")
    try:
        wait_ready(process.url, {MIRROR})
        yield process
    finally:
        process.stop(timeout=5)


@pytest.fixture
async def registry(gateway_stack: GatewayStack) -> AsyncIterator[Discovery]:
    client = Etcd([gateway_stack.etcd.endpoint])
    await client.connect()
    watcher = Discovery(client, "hms")
    await watcher.start(timeout=10)
    try:
        yield watcher
    finally:
        await watcher.stop()
        await client.close()


async def _echo_status(client: httpx.AsyncClient, message: str = "hi") -> httpx.Response:
    return await client.post("/v1/echo", json={"message": message})


async def _until(
    client: httpx.AsyncClient, status: int, timeout: float, path: str = "/v1/echo"
) -> httpx.Response:
    """Poll the route until it answers `status`; the last answer either way, for the asserts."""
    last: list[httpx.Response] = []

    async def answers() -> bool:
        last[:] = [await client.post(path, json={"message": "poll"})]
        return last[0].status_code == status

    with contextlib.suppress(AssertionError):  # the caller's assert shows the last answer
        await eventually(answers, timeout, interval=0.01)
    return last[0]


async def test_new_service_reachable_within_one_second_and_in_openapi(
    gateway_stack: GatewayStack, gateway: GatewayProcess, registry: Discovery
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as client:
        assert (await _echo_status(client)).status_code == 404  # not learnt: no such route
        echo = gateway_stack.start_service("echo", "echo-live")
        try:
            await registry.wait_for(lambda found: any(i.service == ECHO for i in found), 20)
            registered = time.monotonic()
            response = await _until(client, 200, timeout=5)
            took = time.monotonic() - registered
            assert response.status_code == 200, response.text
            assert response.json()["servedBy"] == "echo-live"
            assert took < 1.0, f"reachable {took:.3f} s after its key appeared"
            document = (await client.get("/openapi.json")).json()
            assert "/v1/echo" in document["paths"]
            assert "hms.testing.v1.EchoResponse" in document["components"]["schemas"]
        finally:
            echo.stop(timeout=5)


async def test_plain_grpcio_server_joins_by_writing_its_key(
    gateway_stack: GatewayStack, gateway: GatewayProcess
) -> None:
    tls_dir = gateway_stack.tls_dir
    credentials = grpc.ssl_server_credentials(
        [((tls_dir / "echo-key.pem").read_bytes(), (tls_dir / "echo.pem").read_bytes())],
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoService("plain-grpcio"), server)
    reflection.enable_server_reflection(
        [ECHO, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    etcd = Etcd([gateway_stack.etcd.endpoint])
    await etcd.connect()
    try:
        # What a server in another language does (docs/registry.md): one leased JSON value.
        lease = await etcd.grant(5)
        value = {
            "address": f"127.0.0.1:{port}",
            "deployment": "plain-grpcio",
            "identity": spiffe_id("echo"),
        }
        key = f"/hms/services/{ECHO}/plain-grpcio-1".encode()
        await etcd.put(key, json.dumps(value).encode(), lease=lease)
        registered = time.monotonic()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as client:
            response = await _until(client, 200, timeout=5)
            took = time.monotonic() - registered
            assert response.status_code == 200, response.text
            assert response.json()["servedBy"] == "plain-grpcio"
            assert took < 1.0, f"reachable {took:.3f} s after its key appeared"
        await etcd.revoke(lease)
    finally:
        await etcd.close()
        await server.stop(0)


async def test_killed_backend_answers_503_while_others_answer_200_then_recovers(
    gateway_stack: GatewayStack, gateway: GatewayProcess, registry: Discovery
) -> None:
    echo = gateway_stack.start_service("echo", "echo-doomed")
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await _until(client, 200, timeout=20)).status_code == 200
            echo.kill()  # kill -9: no deregistration, its key stays until the lease expires
            down = await _until(client, 503, timeout=10)
            assert down.status_code == 503, down.text
            body = down.json()
            assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert ECHO in body["message"], body
            # Other services keep answering while echo is down.
            mirror = await client.get("/v1/shelves/s1/books/b1")
            assert mirror.status_code == 200, mirror.text
            # Once its lease is gone the route is still known: 503, not 404.
            await registry.wait_for(lambda found: not any(i.service == ECHO for i in found), 10)
            gone = await _echo_status(client)
            assert gone.status_code == 503, gone.text
            assert gone.json()["message"] == f"no instance of {ECHO} is registered"

            echo = gateway_stack.start_service("echo", "echo-doomed")
            back = await _until(client, 200, timeout=20)
            assert back.status_code == 200, back.text
            assert back.json()["servedBy"] == "echo-doomed"
    finally:
        echo.stop(timeout=5)


async def test_static_mode_serves_a_descriptor_set(
    gateway_stack: GatewayStack, registry: Discovery
) -> None:
    """No registry: routes from the descriptor set `make proto` builds, a fixed upstream."""
    descriptor_set = Path(echo_pb2.__file__).parents[3] / "hms.binpb"  # gen/hms.binpb
    (mirror,) = await registry.wait_for(lambda found: any(i.service == MIRROR for i in found), 20)
    process = await asyncio.to_thread(
        gateway_stack.start_gateway,
        f"--descriptor-set={descriptor_set}",
        f"--upstream={MIRROR}={mirror.address}@mirror",
        name="gateway-static",
    )
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=5) as client:
            ready = (await client.get("/readyz")).json()
            assert MIRROR in ready["services"]
            response = await client.get("/v1/shelves/s1/books/b1")
            assert response.status_code == 200, response.text
            assert response.json()["received"]["name"] == "shelves/s1/books/b1"
            # A service in the descriptor set without an upstream: 503 naming it, not a hang.
            echo = await client.post("/v1/echo", json={"message": "hi"})
            assert echo.status_code == 503, echo.text
            assert ECHO in echo.json()["message"]
    finally:
        process.stop(timeout=5)
