"""The service host across processes: grpcurl, mTLS refusal, health, errors, kill -9, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import binary
from mesh.registry import keys
from mesh.registry.watch import ChangeKind, Discovery

from .conftest import ServiceFactory, mesh_channel, wait_for_deployment

pytestmark = pytest.mark.integration


def _grpcurl(tls_dir: Path, *args: str) -> str:
    command = [
        binary("grpcurl"),
        "-cacert", str(tls_dir / "ca.pem"),
        "-cert", str(tls_dir / "ops.pem"),
        "-key", str(tls_dir / "ops-key.pem"),
        *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"grpcurl {args} failed: {done.stderr}"
    return done.stdout


async def test_grpcurl_lists_describes_and_calls(
    start_service: ServiceFactory, discovery: Discovery, tls_dir: Path
) -> None:
    proc = start_service("eligibility")
    instance = await wait_for_deployment(discovery, "eligibility", proc)
    address = instance.address

    listed = await asyncio.to_thread(_grpcurl, tls_dir, address, "list")
    assert set(listed.split()) >= {
        "hms.eligibility.v1.EligibilityService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    described = await asyncio.to_thread(
        _grpcurl, tls_dir, address, "describe", "hms.eligibility.v1.EligibilityService"
    )
    assert "rpc Check ( .hms.eligibility.v1.CheckRequest )" in described
    rules = await asyncio.to_thread(
        _grpcurl, tls_dir, address, "hms.eligibility.v1.EligibilityService/ListRules"
    )
    # grpcurl prints proto field names (rule_id), not lowerCamelCase.
    assert "MAX_INCOME" in {rule["rule_id"] for rule in json.loads(rules)["rules"]}
    health = await asyncio.to_thread(
        _grpcurl, tls_dir, "-d", '{"service": "hms.eligibility.v1.EligibilityService"}',
        address, "grpc.health.v1.Health/Check",
    )  # fmt: skip
    assert json.loads(health) == {"status": "SERVING"}
    overall = await asyncio.to_thread(_grpcurl, tls_dir, address, "grpc.health.v1.Health/Check")
    assert json.loads(overall) == {"status": "SERVING"}


@pytest.mark.parametrize(
    "client",
    [pytest.param("no-cert", id="without-client-certificate"),
     pytest.param("other-ca", id="certificate-from-another-ca")],
)  # fmt: skip
async def test_untrusted_clients_are_refused(
    client: str, start_service: ServiceFactory, discovery: Discovery, tls_dir: Path, tmp_path: Path
) -> None:
    proc = start_service("eligibility")
    instance = await wait_for_deployment(discovery, "eligibility", proc)
    ca = (tls_dir / "ca.pem").read_bytes()
    if client == "no-cert":
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        other = tmp_path / "other-tls"
        certs.ensure(other, ["ops"])
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(other / "ops-key.pem").read_bytes(),
            certificate_chain=(other / "ops.pem").read_bytes(),
        )
    options = [("grpc.ssl_target_name_override", "eligibility.svc.hms.local")]
    async with grpc.aio.secure_channel(instance.address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def eligibility(start_service: ServiceFactory, discovery: Discovery) -> keys.Instance:
    proc = start_service("eligibility")
    return await wait_for_deployment(discovery, "eligibility", proc)


@pytest.mark.parametrize(
    ("request_fields", "code", "names"),
    [
        pytest.param({"annual_income_pence": 1}, grpc.StatusCode.INVALID_ARGUMENT,
                     "applicant_id", id="missing-applicant-id"),
        pytest.param({"applicant_id": "A1", "household_size": 1, "annual_income_pence": -5},
                     grpc.StatusCode.INVALID_ARGUMENT, "annual_income_pence", id="negative-income"),
        pytest.param({"applicant_id": "A1", "household_size": 1, "rule_ids": ["NOPE"]},
                     grpc.StatusCode.INVALID_ARGUMENT, "NOPE", id="unknown-rule-in-check"),
    ],
)  # fmt: skip
async def test_invalid_requests_answer_with_the_field_named(
    request_fields: dict[str, object],
    code: grpc.StatusCode,
    names: str,
    eligibility: keys.Instance,
    tls_dir: Path,
) -> None:
    instance = eligibility
    async with mesh_channel(instance, tls_dir) as channel:
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Check(eligibility_pb2.CheckRequest(**request_fields), timeout=5)
        assert error.value.code() == code
        assert names in (error.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRule(eligibility_pb2.GetRuleRequest(rule_id="NO_SUCH_RULE"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "NO_SUCH_RULE" in (missing.value.details() or "")


async def test_kill9_keys_vanish_within_ttl_plus_one_second(
    start_service: ServiceFactory, discovery: Discovery
) -> None:
    ttl = 2
    proc = start_service("echo", ttl=ttl)
    instance = await wait_for_deployment(discovery, "echo", proc)
    gone = asyncio.Event()
    discovery.subscribe(
        lambda c: gone.set() if c.kind is ChangeKind.REMOVED and c.instance == instance else None
    )
    killed_at = time.monotonic()
    proc.kill()
    await asyncio.wait_for(gone.wait(), ttl + 1)
    assert time.monotonic() - killed_at <= ttl + 1


async def _until_in_flight(instance: keys.Instance, count: int, timeout: float = 5) -> None:
    url = f"http://{instance.metadata['metrics']}/metrics"
    wanted = f'mesh_server_in_flight{{service="{instance.service}"}} {float(count)}'

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    async with asyncio.timeout(timeout):
        while wanted not in await asyncio.to_thread(scrape):
            pass  # each scrape is an HTTP round trip: no busy spin


async def test_sigterm_deregisters_at_once_and_finishes_in_flight_call(
    start_service: ServiceFactory, discovery: Discovery, tls_dir: Path
) -> None:
    proc = start_service("echo", ttl=10)
    instance = await wait_for_deployment(discovery, "echo", proc)
    gone = asyncio.Event()
    discovery.subscribe(
        lambda c: gone.set() if c.kind is ChangeKind.REMOVED and c.instance == instance else None
    )
    async with mesh_channel(instance, tls_dir) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        await stub.Echo(echo_pb2.EchoRequest(message="warm"), timeout=5)  # connection is up
        in_flight = asyncio.ensure_future(
            stub.Echo(echo_pb2.EchoRequest(message="slow", delay_ms=1500), timeout=10)
        )
        # The signal must come while the server is handling the call: its metrics say when.
        await _until_in_flight(instance, 1)
        sent_at = time.monotonic()
        proc.terminate()
        # With a 10 s lease, vanishing within 1 s proves the lease was revoked, not expired.
        await asyncio.wait_for(gone.wait(), 1.0)
        deregistered_after = time.monotonic() - sent_at
        answer = await in_flight
    assert answer.message == "slow"
    assert deregistered_after < 1.0
    assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_sigterm_during_start_up_drains_instead_of_killing(
    start_service: ServiceFactory, discovery: Discovery
) -> None:
    # Registered and serving, its start-up (here a start hook) not done yet: the window where
    # SIGTERM used to kill the process and leave its entry to the lease's end.
    proc = start_service("echo", ttl=10, extra=("--hold-start",))
    instance = await wait_for_deployment(discovery, "echo", proc)
    gone = asyncio.Event()
    discovery.subscribe(
        lambda c: gone.set() if c.kind is ChangeKind.REMOVED and c.instance == instance else None
    )
    proc.terminate()
    assert await asyncio.wait_for(proc.exited(), 20) == 0  # drained (killed: -15)
    # With a 10 s lease, vanishing within 5 s proves the lease was revoked, not expired.
    await asyncio.wait_for(gone.wait(), 5.0)
    assert "SIGTERM, draining" in proc.log_tail()
