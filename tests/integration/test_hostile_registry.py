"""A registry written by someone hostile or broken, against real etcd, a real service and mTLS:
entries whose identity is no SPIFFE ID are skipped (callers get neither a crash nor a 500),
and thousands of dead keys beside one live instance do not stop idempotent calls: the
instances nothing answers at are probed, gated, and not picked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import EtcdProcess
from mesh import tls
from mesh.authz.serving import ServingPolicy
from mesh.client import ClientConfig, MeshChannel
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery
from mesh.testing import eventually

from .conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration

ECHO = "hms.testing.v1.EchoService"
DEAD = 3000


def dead_entry(n: int, **override: object) -> tuple[bytes, bytes]:
    # 127.0.x.y:9 on loopback: nothing listens, the connection is refused at once.
    address = f"127.0.{1 + n // 250}.{1 + n % 250}:9"
    value = {
        "address": address,
        "deployment": "echo",
        "identity": "spiffe://hms.local/svc/echo",
        "weight": 10000,  # as heavy as allowed: they would win the balancer if picked
        **override,
    }
    return keys.instance_key("hms", ECHO, f"dead-{n}"), json.dumps(value).encode()


async def test_thousands_of_dead_keys_and_bad_identities_leave_the_live_instance_serving(  # noqa: PLR0917 - fixtures
    etcd: EtcdProcess,
    etcd_client: Etcd,
    discovery: Discovery,
    start_service: ServiceFactory,
    tls_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = start_service("echo", deployment="echo")
    await wait_for_deployment(discovery, "echo", proc)
    for start in range(0, DEAD, 100):  # etcd takes at most 128 operations per transaction
        await etcd_client.put_all([dead_entry(n) for n in range(start, start + 100)])
    bad_key, bad_value = dead_entry(DEAD, identity="not-a-spiffe-id")
    await etcd_client.put(bad_key, bad_value)

    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    with caplog.at_level(logging.WARNING, logger="mesh.registry.watch"):
        async with await MeshChannel.connect(config) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            request = echo_pb2.EchoRequest(message="x")
            await channel.pool(ECHO)  # the registry watch, and a probe of each instance

            def gated() -> bool:
                (stats,) = channel.stats().services
                return stats.instances == DEAD + 1 and stats.unreachable == DEAD

            await eventually(gated, timeout=60, interval=0.05)
            answers = [await stub.Echo(request, timeout=2) for _ in range(100)]

    assert {a.served_by for a in answers} == {"echo"}
    # Each watcher of the registry (this test's, the channel's) skips it once, naming it.
    skipped = [r.getMessage() for r in caplog.records if "skipping malformed" in r.getMessage()]
    assert skipped
    assert all("dead-3000" in m and "'not-a-spiffe-id' is malformed" in m for m in skipped)


async def test_a_certificate_holder_cannot_hijack_a_service_it_may_not_serve(
    etcd: EtcdProcess,
    discovery: Discovery,
    start_service: ServiceFactory,
    tls_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attack: a valid mesh certificate of its own (`evil`), an echo server registered as
    EchoService with the heaviest weight. With the serving policy, callers never use it."""
    certs.ensure(tls_dir, ["evil"])
    good = start_service("echo", deployment="echo")
    evil = start_service("echo", deployment="evil", extra=("--cert-name=evil", "--weight=10000"))
    await wait_for_deployment(discovery, "echo", good)
    await wait_for_deployment(discovery, "evil", evil)
    serving = ServingPolicy.parse(f'[serve]\n"{ECHO}" = ["spiffe://hms.local/svc/echo"]')

    async def served_by(policy: ServingPolicy | None) -> set[str]:
        config = ClientConfig(
            etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"), serving=policy
        )
        async with await MeshChannel.connect(config) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            answers = [await stub.Echo(echo_pb2.EchoRequest(), timeout=5) for _ in range(40)]
        return {a.served_by for a in answers}

    assert "evil" in await served_by(None)  # what the attack got before the binding
    with caplog.at_level(logging.WARNING, logger="mesh.client.pool"):
        assert await served_by(serving) == {"echo"}
    (warning,) = [
        r.getMessage() for r in caplog.records if "ignoring registry entry" in r.getMessage()
    ]
    assert "spiffe://hms.local/svc/evil may not serve hms.testing.v1.EchoService" in warning
