"""`--workers N` (mesh/server/workers.py) with real processes, etcd and mTLS: each worker its own
registry entry, calls spread over the workers by request, a worker that dies started again, a
SIGTERM drains them all, and no worker outlives its supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.devstack import EtcdProcess, ServiceProcess
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.registry import keys
from mesh.registry.watch import Discovery
from mesh.testing import eventually

from .conftest import ServiceFactory

pytestmark = pytest.mark.integration

ECHO = "hms.testing.v1.EchoService"
DEPLOYMENT = "echo-workers"


@pytest.fixture
async def channel(etcd: EtcdProcess, tls_dir: Path) -> AsyncIterator[MeshChannel]:
    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    mesh = await MeshChannel.connect(config)
    try:
        yield mesh
    finally:
        await mesh.close()


def workers_of(discovery: Discovery) -> list[keys.Instance]:
    return sorted(
        (i for i in discovery.instances(ECHO) if i.deployment == DEPLOYMENT),
        key=lambda i: i.instance_id,
    )


async def start_workers(
    start_service: ServiceFactory, discovery: Discovery, count: int
) -> tuple[ServiceProcess, list[keys.Instance]]:
    proc = start_service(
        "echo",
        deployment=DEPLOYMENT,
        ttl=3,
        extra=(f"--workers={count}", f"--instance-id={DEPLOYMENT}-1-feed"),
    )

    def all_registered(instances: list[keys.Instance]) -> bool:
        if not proc.running:
            raise AssertionError(f"the supervisor exited:\n{proc.log_tail()}")
        return len([i for i in instances if i.deployment == DEPLOYMENT]) == count

    await discovery.wait_for(all_registered, 30)
    return proc, workers_of(discovery)


async def pids_answering(
    stub: echo_pb2_grpc.EchoServiceStub, calls: int, concurrency: int = 1
) -> Counter[int]:
    """Which processes answered `calls` calls, made by `concurrency` callers at once."""
    answers: Counter[int] = Counter()
    todo = iter(range(calls))

    async def caller() -> None:
        for _ in todo:
            reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
            answers[reply.pid] += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return answers


async def test_each_worker_registers_and_takes_its_share_of_calls(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    proc, workers = await start_workers(start_service, discovery, 3)

    assert [w.instance_id for w in workers] == [f"{DEPLOYMENT}-1-feed-w{i}" for i in (1, 2, 3)]
    assert len({w.address for w in workers}) == 3  # a port each
    # Under concurrent load the balancer (P2C on outstanding calls and latency) spreads the
    # calls of one caller, on one channel, over every worker: by request, not by connection.
    answers = await pids_answering(echo_pb2_grpc.EchoServiceStub(channel), 600, concurrency=24)
    assert len(answers) == 3, answers
    assert proc.pid not in answers  # the supervisor serves nothing
    assert min(answers.values()) > 60, answers


async def test_a_worker_that_dies_is_started_again_and_calls_go_on(
    start_service: ServiceFactory,
    discovery: Discovery,
    channel: MeshChannel,
    tls_dir: Path,
) -> None:
    proc, workers = await start_workers(start_service, discovery, 2)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    victim = workers[0]  # worker 1
    victim_pid = await pid_at(victim, tls_dir)
    failures: Counter[str] = Counter()
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                failures[exc.code().name] += 1

    callers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        os.kill(victim_pid, signal.SIGKILL)

        # Started again (a new process on a new port) and registered under its old id.
        def restarted() -> bool:
            now = {w.instance_id: w for w in workers_of(discovery)}
            again = now.get(victim.instance_id)
            return again is not None and again.address != victim.address

        await eventually(restarted, 30, interval=0.05)
        again = {w.instance_id: w for w in workers_of(discovery)}[victim.instance_id]
        assert await pid_at(again, tls_dir) not in (victim_pid, proc.pid)
    finally:
        stop.set()
        await asyncio.gather(*callers)
    log = proc.log_tail(20_000)
    assert f"worker 1 (pid {victim_pid}) exited on its own with status -9" in log, log
    assert proc.running
    # Calls on the killed worker were retried on the other (Echo is idempotent).
    assert failures == Counter(), failures


async def pid_at(instance: keys.Instance, tls_dir: Path) -> int:
    """The pid of the process serving at the instance's own address (not through the mesh)."""
    files = tls.TlsFiles(tls_dir, "ops")
    async with tls.instance_channel(instance.address, instance.identity, files) as direct:
        stub = echo_pb2_grpc.EchoServiceStub(direct)
        reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
    return reply.pid


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    proc, _ = await start_workers(start_service, discovery, 2)
    pids = set(await pids_answering(echo_pb2_grpc.EchoServiceStub(channel), 50))

    proc.terminate()

    assert await asyncio.wait_for(proc.exited(), 30) == 0
    assert workers_of(discovery) == []  # leases revoked, not left to expire
    log = proc.log_tail(20_000)
    assert log.count("SIGTERM, draining") == 2
    for pid in pids:
        await eventually(lambda pid=pid: not _alive(pid), 5, interval=0.05)


async def test_no_worker_outlives_a_killed_supervisor(
    start_service: ServiceFactory, discovery: Discovery, channel: MeshChannel
) -> None:
    proc, _ = await start_workers(start_service, discovery, 2)
    pids = set(await pids_answering(echo_pb2_grpc.EchoServiceStub(channel), 50))
    assert len(pids) == 2

    proc.kill()  # kill -9: no chance to pass anything on

    for pid in pids:  # the kernel sends each SIGTERM (PR_SET_PDEATHSIG): they drain and go
        await eventually(lambda pid=pid: not _alive(pid), 20, interval=0.05)
    await eventually(lambda: workers_of(discovery) == [], 10, interval=0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
