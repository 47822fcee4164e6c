"""The mesh channel against real replicas in separate processes, real etcd and real mTLS."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.devstack import EtcdProcess, ServiceProcess
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.registry import keys
from mesh.registry.watch import ChangeKind, Discovery
from mesh.resilience.outlier import OutlierConfig

from .conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration

ECHO = "hms.testing.v1.EchoService"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


async def start_replicas(
    start_service: ServiceFactory, discovery: Discovery, names: list[str], ttl: int = 3
) -> dict[str, tuple[ServiceProcess, keys.Instance]]:
    procs = {name: start_service("echo", deployment=name, ttl=ttl) for name in names}
    return {
        name: (proc, await wait_for_deployment(discovery, name, proc))
        for name, proc in procs.items()
    }


def client_config(etcd: EtcdProcess, tls_dir: Path, **overrides: object) -> ClientConfig:
    settings: dict[str, object] = {
        "etcd": (etcd.endpoint,),
        "tls": tls.TlsFiles(tls_dir, "ops"),
        "outlier": OutlierConfig(base_ejection=1.0, max_ejection_percent=50.0),
    }
    settings.update(overrides)
    return ClientConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def channel(etcd: EtcdProcess, tls_dir: Path) -> AsyncIterator[MeshChannel]:
    mesh = await MeshChannel.connect(client_config(etcd, tls_dir))
    try:
        yield mesh
    finally:
        await mesh.close()


async def set_failure(instance: keys.Instance, tls_dir: Path, code: int) -> None:
    """Flip one replica's test switch directly (not through the mesh)."""
    files = tls.TlsFiles(tls_dir, "ops")
    async with tls.instance_channel(instance.address, instance.identity, files) as direct:
        stub = echo_pb2_grpc.EchoServiceStub(direct)
        await stub.SetFailure(echo_pb2.SetFailureRequest(code=code), timeout=5)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Call `condition` (which itself makes calls) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                pass
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def test_a_generated_stub_works_unchanged_and_calls_spread(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    await start_replicas(start_service, discovery, ["echo-a", "echo-b"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    seen: Counter[str] = Counter()

    async def one() -> None:
        reply = await stub.Echo(echo_pb2.EchoRequest(message="hi"), timeout=5)
        assert reply.message == "hi"
        seen[reply.served_by] += 1

    for _ in range(10):  # 16 in flight: P2C spreads load across both
        await asyncio.gather(*(one() for _ in range(16)))
    assert set(seen) == {"echo-a", "echo-b"}


async def test_kill9_one_of_three_under_steady_idempotent_calls_loses_nothing(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    replicas = await start_replicas(start_service, discovery, ["echo-a", "echo-b", "echo-c"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    results: list[tuple[float, str]] = []
    failures: list[str] = []
    killed_at: list[float] = []
    b_busy = asyncio.Event()  # echo-b has served 20 calls: it is in the rotation

    async def worker() -> None:
        while not killed_at or time.monotonic() < killed_at[0] + 1.5:
            try:
                reply = await stub.Echo(echo_pb2.EchoRequest(message="x", delay_ms=2), timeout=5)
                results.append((time.monotonic(), reply.served_by))
                if sum(1 for _, who in results if who == "echo-b") >= 20:
                    b_busy.set()
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    async with asyncio.timeout(10):
        await b_busy.wait()
    replicas["echo-b"][0].kill()
    killed_at.append(time.monotonic())
    await asyncio.gather(*workers)

    assert failures == []
    after_kill = [who for at, who in results if at > killed_at[0] + 0.05]
    assert len(after_kill) > 100
    assert "echo-b" not in after_kill
    # The first connection failure ejected it: it was not tried call after call until its
    # lease expired (3 s, longer than this test ran after the kill).
    pool = await channel.pool(ECHO)
    dead = replicas["echo-b"][1].instance_id
    assert dead in pool.endpoints
    assert pool.detector.health(dead).ejections >= 1
    assert channel.retry_layer.retries <= 8 + 5  # the calls in flight, then a few probes


async def test_a_failing_replica_is_ejected_and_readmitted_after_it_recovers(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel, tls_dir: Path
) -> None:
    replicas = await start_replicas(start_service, discovery, ["echo-a", "echo-b", "echo-c"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    pool = await channel.pool(ECHO)
    bad = replicas["echo-b"][1]
    await set_failure(bad, tls_dir, UNAVAILABLE)

    served: Counter[str] = Counter()

    async def burst(n: int) -> None:
        replies = await asyncio.gather(
            *(stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5) for _ in range(n))
        )
        served.update(r.served_by for r in replies)  # retries hide the failures from callers

    # Until ejected, echo-b fails calls (retried elsewhere); after 5 in a row it is ejected.
    async def ejected() -> bool:
        await burst(8)
        return not pool.detector.eligible(bad.instance_id, time.monotonic())

    await until(ejected, 10, "echo-b ejected")
    assert pool.detector.health(bad.instance_id).ejections == 1
    served.clear()
    await burst(30)
    assert "echo-b" not in served  # no calls while ejected (1 s here)

    await set_failure(bad, tls_dir, 0)

    async def readmitted() -> bool:
        await burst(8)
        return served["echo-b"] > 0

    await until(readmitted, 10, "echo-b takes calls again")


async def test_a_new_replica_takes_calls_within_100ms_of_registering(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    await start_replicas(start_service, discovery, ["echo-a"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    await stub.Echo(echo_pb2.EchoRequest(message="warm"), timeout=5)
    registered_at: list[float] = []
    discovery.subscribe(
        lambda c: (
            registered_at.append(time.monotonic())
            if c.kind is ChangeKind.ADDED and c.instance.deployment == "echo-new"
            else None
        )
    )
    first_served: list[float] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
            if reply.served_by == "echo-new" and not first_served:
                first_served.append(time.monotonic())
                stop.set()

    workers = [asyncio.create_task(steady()) for _ in range(4)]
    proc = start_service("echo", deployment="echo-new")
    try:
        async with asyncio.timeout(20):
            await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert proc.running
    assert registered_at, "the test's watcher never saw echo-new"
    # Measured from the test's own watcher seeing the key (both watch the same etcd).
    assert first_served[0] - registered_at[0] < 0.1


async def test_deadline_propagates_along_a_chain_and_bounds_it(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    await start_replicas(start_service, discovery, ["echo-a", "echo-b"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    reply = await stub.Echo(echo_pb2.EchoRequest(message="x", forward_hops=2), timeout=0.2)
    left = [hop.deadline_left_ms for hop in reply.hops]
    assert len(left) == 3
    assert all(0 < ms < 200 for ms in left)
    assert left == sorted(left, reverse=True)  # each hop sees less than the one before

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as slow:
        await stub.Echo(
            echo_pb2.EchoRequest(message="x", forward_hops=2, delay_ms=1000), timeout=0.2
        )
    assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.2 + 0.1


async def test_a_call_below_the_minimum_budget_fails_fast_without_being_sent(
    etcd: EtcdProcess, tls_dir: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    await start_replicas(start_service, discovery, ["echo-a"])
    from mesh.deadline import DeadlineConfig

    config = client_config(etcd, tls_dir, deadlines=DeadlineConfig(minimum=0.05))
    async with await MeshChannel.connect(config) as mesh:
        stub = echo_pb2_grpc.EchoServiceStub(mesh)
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=0.01)
    assert fast.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not sent" in (fast.value.details() or "")


async def test_when_every_replica_fails_retries_stay_within_the_budget(
    etcd: EtcdProcess, tls_dir: Path, start_service: ServiceFactory, discovery: Discovery
) -> None:
    replicas = await start_replicas(start_service, discovery, ["echo-a", "echo-b", "echo-c"])
    for _, instance in replicas.values():
        await set_failure(instance, tls_dir, UNAVAILABLE)
    config = client_config(etcd, tls_dir, budget_min_per_second=1.0)
    async with await MeshChannel.connect(config) as mesh:
        stub = echo_pb2_grpc.EchoServiceStub(mesh)
        calls = 200
        codes = Counter[str]()
        for _ in range(calls // 20):
            outcomes = await asyncio.gather(
                *(stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5) for _ in range(20)),
                return_exceptions=True,
            )
            codes.update(type(o).__name__ for o in outcomes)
        retries = mesh.retry_layer.retries
    assert codes == {"AioRpcError": calls}
    # 20 % of 200 requests, plus a floor of 1/s over the 10 s window.
    assert retries <= 0.2 * calls + 10
    assert mesh.retry_layer.budget_refusals > 0


async def test_a_non_idempotent_call_that_reached_a_server_is_not_retried(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel, tls_dir: Path
) -> None:
    replicas = await start_replicas(start_service, discovery, ["echo-a", "echo-b"])
    for _, instance in replicas.values():
        await set_failure(instance, tls_dir, UNAVAILABLE)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as once:
        await stub.EchoOnce(echo_pb2.EchoRequest(message="x"), timeout=5)
    assert once.value.code() == grpc.StatusCode.UNAVAILABLE
    assert channel.retry_layer.retries == 0
    # The idempotent twin of the same call is retried.
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
    assert channel.retry_layer.retries >= 1


async def test_calls_keep_flowing_while_etcd_is_down_for_30s(
    etcd: EtcdProcess, start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    await start_replicas(start_service, discovery, ["echo-a", "echo-b"], ttl=5)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    await stub.Echo(echo_pb2.EchoRequest(message="warm"), timeout=5)
    await asyncio.to_thread(etcd.stop)
    down_until = time.monotonic() + 30
    served: Counter[str] = Counter()
    while time.monotonic() < down_until:
        replies = await asyncio.gather(
            *(stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5) for _ in range(8))
        )
        served.update(r.served_by for r in replies)
    await asyncio.to_thread(etcd.start)
    assert set(served) == {"echo-a", "echo-b"}
    # When etcd is back nothing is lost: both replicas re-register and calls go on.
    await discovery.wait_for(lambda xs: {i.deployment for i in xs} == {"echo-a", "echo-b"}, 10)
    reply = await stub.Echo(echo_pb2.EchoRequest(message="after"), timeout=5)
    assert reply.message == "after"


async def test_streaming_calls_go_through_the_mesh(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    await start_replicas(start_service, discovery, ["echo-a"])
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    replies = [r.message async for r in stub.EchoStream(echo_pb2.EchoRequest(message="m", count=3))]
    assert replies == ["m 1", "m 2", "m 3"]

    async def requests() -> AsyncIterator[echo_pb2.EchoRequest]:
        for word in ("a", "b", "c"):
            yield echo_pb2.EchoRequest(message=word)

    collected = await stub.Collect(requests(), timeout=5)
    assert collected.message == "a b c"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        async for _ in stub.EchoStream(echo_pb2.EchoRequest(message="m", count=-1)):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "count" in (bad.value.details() or "")


async def test_a_replica_that_goes_silent_is_left_within_seconds_not_at_its_deadline(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    """A host that vanishes without a word (its link cut, its machine off) sends no RST: the
    calls in flight on it would wait out their deadlines, and its lease keeps it listed. A
    stopped process (SIGSTOP) is such a peer: its kernel keeps the connection open, nothing
    answers on it. HTTP/2 keepalive finds it dead in seconds; the calls in flight on it fail
    as UNAVAILABLE and, being idempotent, are retried on the others. (Without the keepalive,
    the calls in flight when it stopped fail at their 8 s deadline: 4 to 6 per run.)"""
    replicas = await start_replicas(start_service, discovery, ["echo-a", "echo-b", "echo-c"], 30)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    await until(
        lambda: _served_by_all(stub, {"echo-a", "echo-b", "echo-c"}), 20, "calls reach all three"
    )
    silent, _ = replicas["echo-c"]
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=8)
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1

    workers = [asyncio.create_task(caller()) for _ in range(8)]
    try:
        await until(_true_after(lambda: outcomes["ok"] > 50), 10, "load under way")
        os.kill(silent.pid, signal.SIGSTOP)
        started = time.monotonic()
        # Past a keepalive's detection (~3 s) and more, well inside the lease (30 s).
        await until(_true_after(lambda: time.monotonic() - started > 10), 15, "10 s of load")
        stop.set()
        await asyncio.gather(*workers)
    finally:
        stop.set()
        os.kill(silent.pid, signal.SIGCONT)
        for task in workers:
            task.cancel()
    assert set(outcomes) == {"ok"}, outcomes


async def _served_by_all(stub: echo_pb2_grpc.EchoServiceStub, names: set[str]) -> bool:
    seen = set()
    for _ in range(30):
        reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
        seen.add(reply.served_by)
    return seen == names


def _true_after(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await asyncio.sleep(0.05)  # lets the callers run between checks
        return predicate()

    return check
