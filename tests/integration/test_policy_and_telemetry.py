"""Authorization, certificate rotation, tracing and metrics across real processes."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import EtcdProcess
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.registry.watch import Discovery

from .conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration

ECHO_METHOD = "/hms.testing.v1.EchoService/Echo"


def write_policy(path: Path, callers: list[str]) -> None:
    quoted = ", ".join(f'"{c}"' for c in callers)
    path.write_text(f'[[allow]]\nname = "callers"\ncallers = [{quoted}]\nmethods = ["*"]\n')


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Repeat `check` (each try is a real call, which paces the loop) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                pass
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def outcome(stub: echo_pb2_grpc.EchoServiceStub, **fields: object) -> str:
    try:
        await stub.Echo(echo_pb2.EchoRequest(message="x", **fields), timeout=5)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def test_policy_denies_allows_and_reloads_without_restart(
    etcd: EtcdProcess,
    tls_dir: Path,
    tmp_path: Path,
    start_service: ServiceFactory,
    discovery: Discovery,
) -> None:
    policy = tmp_path / "authz.toml"
    write_policy(policy, ["spiffe://hms.local/svc/notify"])
    proc = start_service("echo", extra=(f"--policy={policy}",))
    await wait_for_deployment(discovery, "echo", proc)
    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    async with await MeshChannel.connect(config) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://hms.local/svc/ops" in (denied.value.details() or "")
        assert ECHO_METHOD in (denied.value.details() or "")
        assert channel.retry_layer.retries == 0  # a refusal is not retried

        write_policy(policy, ["spiffe://hms.local/svc/ops"])

        async def allowed() -> bool:
            return await outcome(stub) == "OK"

        await eventually(allowed, 10, "the edited policy lets ops through")
    assert proc.running  # no restart


async def test_rotated_certificates_are_used_without_restart(
    etcd: EtcdProcess, tmp_path: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    own_tls = tmp_path / "tls"
    certs.ensure(own_tls, ["echo", "ops"])
    policy = tmp_path / "authz.toml"
    write_policy(policy, ["spiffe://hms.local/svc/ops-v2"])
    proc = start_service("echo", extra=(f"--tls-dir={own_tls}", f"--policy={policy}"))
    await wait_for_deployment(discovery, "echo", proc)
    config = ClientConfig(
        etcd=(etcd.endpoint,), tls=tls.TlsFiles(own_tls, "ops"), rotation_check=0.2
    )
    async with await MeshChannel.connect(config) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        assert await outcome(stub) == "PERMISSION_DENIED"  # still the old identity, ops

        # Client rotation: the same files now hold the ops-v2 identity. grpcio cannot reload
        # a channel, so the mesh channel opens new ones and swaps them in.
        certs.issue(own_tls, "ops", deployment="ops-v2")

        async def new_identity_used() -> bool:
            return await outcome(stub) == "OK"

        await eventually(new_identity_used, 10, "the client presents its rotated certificate")

        # Server rotation: a new certificate for the server; new connections get it.
        before = (own_tls / "echo.pem").read_bytes()
        certs.issue(own_tls, "echo")
        assert (own_tls / "echo.pem").read_bytes() != before
    fresh_config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(own_tls, "ops"))
    async with await MeshChannel.connect(fresh_config) as fresh:
        assert await outcome(echo_pb2_grpc.EchoServiceStub(fresh)) == "OK"
    assert proc.running


async def test_one_trace_id_across_a_chain_of_three(
    etcd: EtcdProcess, tls_dir: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    for name in ("echo-a", "echo-b"):
        proc = start_service("echo", deployment=name, extra=("--tracing=console",))
        await wait_for_deployment(discovery, name, proc)
    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    async with await MeshChannel.connect(config) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        reply = await stub.Echo(echo_pb2.EchoRequest(message="x", forward_hops=2), timeout=5)
    trace_ids = [hop.trace_id for hop in reply.hops]
    assert len(trace_ids) == 3
    assert re.fullmatch(r"[0-9a-f]{32}", trace_ids[0])
    assert len(set(trace_ids)) == 1


async def test_metrics_are_served_in_prometheus_text(
    etcd: EtcdProcess, tls_dir: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    proc = start_service("echo")
    instance = await wait_for_deployment(discovery, "echo", proc)
    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    async with await MeshChannel.connect(config) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        for _ in range(3):
            await stub.Echo(echo_pb2.EchoRequest(message="x", forward_hops=1), timeout=5)
        assert await outcome(stub, fail_code=3) == "INVALID_ARGUMENT"
    url = f"http://{instance.metadata['metrics']}/metrics"
    text = ""

    async def counted() -> bool:
        # A call is counted when the server's handling of it ends, which can be just after
        # its caller has the answer: scrape until the last one is in.
        nonlocal text
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        server_ok = re.search(
            r'mesh_server_requests_total\{code="OK",method="Echo",'
            r'service="hms.testing.v1.EchoService"\} (\S+)',
            text,
        )
        # 3 calls, each forwarded once to the same service; then the failed one.
        return (
            server_ok is not None
            and float(server_ok.group(1)) >= 6
            and 'code="INVALID_ARGUMENT"' in text
        )

    await eventually(counted, 10, "the server counted 6 OK calls and the INVALID_ARGUMENT one")
    assert "mesh_server_request_seconds_bucket" in text
    # The forwarding calls went out through the service's own mesh channel.
    assert re.search(r'mesh_client_requests_total\{code="OK",method="Echo"', text)
    assert "mesh_client_retries_total" in text
