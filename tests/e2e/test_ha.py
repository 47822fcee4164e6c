"""`mesh up --ha` loses nothing when an etcd member dies: a secured 3-member etcd cluster and
3-node NATS cluster, three replicas of eligibility and the gateway, under steady idempotent
load (REST through the gateway, gRPC through a mesh channel).

Every client is given every endpoint and starts on the first; the test makes that first member
the leader before killing it (kill -9), so each service's lease keepalive, the gateway's and
the mesh channel's registry watches and the load's own calls all lose the member they were
using. The NATS side (a node lost while the outbox publishes) is in
tests/integration/events/test_events_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from chaos.load import Recorder, grpc_target, http_target, run_load
from chaos.scenarios import open_policy
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms_tools.devjwt import mint_token
from hms_tools.devstack import EtcdCluster
from hms_tools.stack import Stack, StackConfig
from mesh.client import ClientConfig, MeshChannel
from mesh.controlplane import ClientTls
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.registration import Registration
from mesh.registry.watch import Discovery
from mesh.testing import eventually
from mesh.tls import TlsFiles

pytestmark = pytest.mark.integration

DEPLOYMENT = "eligibility"
SERVICE = "hms.eligibility.v1.EligibilityService"
CHECK = b'{"applicantId":"A1","annualIncomePence":"2800000","householdSize":2,"residenceMonths":24}'
RATE = 100.0  # calls/s on each path


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[Stack]:
    config = StackConfig(
        state_dir=tmp_path / "state",
        deployments=(DEPLOYMENT,),
        scale={DEPLOYMENT: 3},
        ha=True,
        lease_ttl=5,
        # The load calls as `ops`: this test is about availability, not the matrix.
        policy=open_policy(tmp_path),
    )
    stack = Stack(config)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def cluster(stack: Stack) -> EtcdCluster:
    assert stack.dev is not None
    assert isinstance(stack.dev.etcd, EtcdCluster)
    return stack.dev.etcd


async def registered(etcd: Etcd, namespace: str) -> dict[bytes, int]:
    """Every eligibility key, with the lease it hangs on."""
    _, items = await etcd.get_prefix(keys.service_prefix(namespace, SERVICE))
    return {item.key: item.lease for item in items}


async def steady_load(
    exits: AsyncExitStack,
    stack: Stack,
    endpoints: list[str],
    *,
    stop: asyncio.Event,
    rest: Recorder,
    grpc_calls: Recorder,
) -> asyncio.Future[object]:
    """REST through the gateway and gRPC through a mesh channel given `endpoints`, each at
    RATE calls/s until `stop`; returns once both are under way."""
    ops = TlsFiles(stack.tls_dir, "ops")
    channel = await exits.enter_async_context(
        await MeshChannel.connect(ClientConfig(etcd=tuple(endpoints), tls=ops))
    )
    stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)
    request = eligibility_pb2.CheckRequest(
        applicant_id="A1", annual_income_pence=2_800_000, household_size=2, residence_months=24
    )
    token = mint_token(stack.state_dir, "load", ["eligibility:check"])
    bearer = {"authorization": f"Bearer {token}"}
    http = await exits.enter_async_context(
        http_target(stack.info["gateway"], "POST", "/v1/eligibility:check", CHECK, bearer)
    )
    grpc_call = await exits.enter_async_context(grpc_target(lambda: stub.Check(request, timeout=5)))
    load = asyncio.gather(
        run_load(http, rate=RATE, workers=4, until=stop, recorder=rest),
        run_load(grpc_call, rate=RATE, workers=4, until=stop, recorder=grpc_calls),
    )
    await eventually(lambda: len(rest.records) > 20 and len(grpc_calls.records) > 20, 20)
    return load


async def test_killing_the_etcd_leader_fails_no_call_and_keeps_every_lease(
    ha: Stack, tmp_path: Path
) -> None:
    etcd = cluster(ha)
    info = ha.info
    assert info["ha"] is True
    assert len(info["etcd"].split(",")) == len(info["nats"].split(",")) == 3
    # The leader is the member every client starts on.
    await asyncio.to_thread(etcd.move_leader, 0)
    await eventually(lambda: etcd.leader() == 0, 10, interval=0.1)

    ops = TlsFiles(ha.tls_dir, "ops")
    survivors = [m.endpoint for m in etcd.members[1:]]
    async with AsyncExitStack() as exits:
        # Reads the registry from the members that will survive.
        reader = await exits.enter_async_context(Etcd(survivors, tls=ClientTls.of(ops)))
        before = await registered(reader, ha.config.namespace)
        assert len(before) == 3

        # A watcher on the leader (the first endpoint), as the gateway's and channels' are.
        watcher_etcd = await exits.enter_async_context(Etcd(etcd.endpoints, tls=ClientTls.of(ops)))
        watcher = Discovery(watcher_etcd, ha.config.namespace)
        await watcher.start()
        exits.push_async_callback(watcher.stop)

        rest, grpc_calls, stop = Recorder(), Recorder(), asyncio.Event()
        load = await steady_load(
            exits, ha, etcd.endpoints, stop=stop, rest=rest, grpc_calls=grpc_calls
        )

        etcd.members[0].kill()
        killed_at = time.monotonic()
        await eventually(lambda: etcd.leader() in (1, 2), 20, interval=0.1)
        quorum_at = time.monotonic()

        # A new instance registers (as eligibility: its etcd role writes eligibility-* keys)
        # once the quorum is back; the watcher that was on the dead member must see it.
        newcomer = keys.Instance(
            service=SERVICE,
            instance_id=keys.new_instance_id(DEPLOYMENT),
            # A live replica's address: calls the balancer sends there succeed.
            address=watcher.instances(SERVICE)[0].address,
            deployment=DEPLOYMENT,
            identity=watcher.instances(SERVICE)[0].identity,
        )
        writer = await exits.enter_async_context(
            Etcd(survivors, tls=ClientTls.of(TlsFiles(ha.tls_dir, DEPLOYMENT)))
        )
        registration = Registration(writer, ha.config.namespace, [newcomer], ttl=5)
        registration.start()
        exits.push_async_callback(registration.stop)
        await registration.wait_registered(10)
        await eventually(
            lambda: any(i.instance_id == newcomer.instance_id for i in watcher.instances()),
            10,
            interval=0.01,
        )
        seen_at = time.monotonic()
        print(
            f"\nleader killed: quorum again after {quorum_at - killed_at:.2f} s; new instance "
            f"seen by the failed-over watcher {seen_at - quorum_at:.2f} s after the quorum"
        )
        await registration.stop()

        # Load goes on past a whole lease TTL: a lease that failed over late would expire.
        await asyncio.sleep(ha.config.lease_ttl + 1)
        stop.set()
        await load

        assert rest.failures() == {}, rest.window()
        assert grpc_calls.failures() == {}, grpc_calls.window()
        assert min(len(rest.records), len(grpc_calls.records)) > 100
        # Every instance registered once, on the lease it had: no lease expired, none doubled.
        assert await registered(reader, ha.config.namespace) == before

        # The member comes back on its data and catches up; the cluster has one leader.
        await asyncio.to_thread(etcd.members[0].start)
        only_first = await exits.enter_async_context(
            Etcd([etcd.members[0].endpoint], tls=ClientTls.of(ops))
        )

        async def caught_up() -> bool:
            try:
                return await registered(only_first, ha.config.namespace) == before
            except Exception:
                return False

        await eventually(caught_up, 20, interval=0.1)
        statuses = [etcd.status(m) for m in etcd.members]
        assert all(s is not None for s in statuses)
        assert len({s.leader for s in statuses}) == 1
