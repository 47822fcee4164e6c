"""Traffic shaping against real processes and etcd (docs/traffic.md): a split set live with
`mesh traffic set` moves the calls of a channel under steady load, a pinned caller never
reaches the other version, a pin nothing matches fails fast, and a malformed policy in etcd
is kept out while the last good one holds."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools.devstack import EtcdProcess
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.client.traffic import TrafficPolicy, traffic_key
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery
from mesh.testing import eventually

from .conftest import ServiceFactory

pytestmark = pytest.mark.integration

ECHO = "hms.testing.v1.EchoService"
OLD, NEW = "0.1.0", "0.2.0"
DEPLOYMENTS = {"echo-v1-a": OLD, "echo-v1-b": OLD, "echo-v1-c": OLD, "echo-v2": NEW}
CALLS = 2000


@pytest.fixture
async def versions(start_service: ServiceFactory, discovery: Discovery) -> dict[str, str]:
    """Three replicas of 0.1.0 and one of 0.2.0, all serving EchoService."""
    procs = {
        name: start_service("echo", deployment=name, ttl=3, extra=(f"--version={version}",))
        for name, version in DEPLOYMENTS.items()
    }

    def all_up(instances: list[object]) -> bool:
        for name, proc in procs.items():
            if not proc.running:
                raise AssertionError(f"{name} exited:\n{proc.log_tail()}")
        return {i.deployment for i in discovery.instances(ECHO)} >= set(DEPLOYMENTS)

    await discovery.wait_for(all_up, 30)
    return DEPLOYMENTS


@pytest.fixture
async def channel(etcd: EtcdProcess, tls_dir: Path) -> AsyncIterator[MeshChannel]:
    config = ClientConfig(etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"))
    async with await MeshChannel.connect(config) as mesh:
        yield mesh


async def mesh_traffic(etcd: EtcdProcess, *args: str) -> str:
    """`mesh traffic ARGS` as its own process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hms_tools.cli", "traffic", *args, f"--etcd={etcd.endpoint}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def shares(stub: echo_pb2_grpc.EchoServiceStub, calls: int, **kw: object) -> Counter[str]:
    """Which version answered each of `calls` calls (16 callers at once)."""
    seen: Counter[str] = Counter()
    todo = iter(range(calls))

    async def caller() -> None:
        for _ in todo:
            reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5, **kw)
            seen[DEPLOYMENTS[reply.served_by]] += 1

    await asyncio.gather(*(caller() for _ in range(16)))
    return seen


async def test_a_split_set_live_moves_the_calls_with_none_failed(
    versions: dict[str, str], channel: MeshChannel, etcd: EtcdProcess
) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    before = await shares(stub, 400)
    assert set(before) == {OLD, NEW}  # no policy: every instance takes calls
    failures: Counter[str] = Counter()
    stop = asyncio.Event()

    async def steady() -> None:  # load throughout, to show a change fails nothing
        while not stop.is_set():
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                failures[exc.code().name] += 1

    background = [asyncio.create_task(steady()) for _ in range(4)]
    try:
        for split in ({OLD: 90, NEW: 10}, {OLD: 0, NEW: 100}):
            words = [f"{v}={w}" for v, w in split.items()]
            changed = time.monotonic()
            shown = await mesh_traffic(etcd, "set", ECHO, *words)
            assert ECHO in shown
            policy = TrafficPolicy.of(split)
            assert channel.traffic is not None
            await eventually(lambda p=policy: channel.traffic.get(ECHO) == p, 5, interval=0.01)
            print(f"\nsplit {split} in force {time.monotonic() - changed:.2f} s after `set`")
            seen = await shares(stub, CALLS)
            for version, weight in split.items():
                share = seen[version] / CALLS
                assert abs(share - weight / 100) <= 0.03, (split, seen)
    finally:
        stop.set()
        await asyncio.gather(*background)
    assert failures == Counter(), failures

    assert "cleared" in await mesh_traffic(etcd, "clear", ECHO)
    await eventually(lambda: channel.traffic.get(ECHO) is None, 5, interval=0.01)
    assert set(await shares(stub, 400)) == {OLD, NEW}


async def test_a_pinned_caller_never_reaches_the_other_version(
    versions: dict[str, str], channel: MeshChannel, etcd: EtcdProcess, tls_dir: Path
) -> None:
    await mesh_traffic(etcd, "set", ECHO, f"{OLD}=0", f"{NEW}=100")
    config = ClientConfig(
        etcd=(etcd.endpoint,), tls=tls.TlsFiles(tls_dir, "ops"), version_pins={ECHO: "<0.2"}
    )
    async with await MeshChannel.connect(config) as pinned:
        await eventually(lambda: pinned.traffic.get(ECHO) is not None, 5, interval=0.01)
        seen = await shares(echo_pb2_grpc.EchoServiceStub(pinned), 500)
    assert seen == Counter({OLD: 500})
    # Per call, through metadata (what the gateway forwards from X-Hms-Version): it wins.
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    assert await shares(stub, 300, metadata=(("x-hms-version", "~0.1"),)) == Counter({OLD: 300})


async def test_a_pin_no_instance_matches_fails_fast_naming_what_exists(
    versions: dict[str, str], channel: MeshChannel
) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Echo(echo_pb2.EchoRequest(), timeout=5, metadata=(("x-hms-version", ">=9"),))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'>=9'" in (failed.value.details() or "")
    assert f"registered: {OLD}, {NEW}" in (failed.value.details() or "")
    assert time.monotonic() - started < 1  # no wait for an instance that cannot come
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.Echo(echo_pb2.EchoRequest(), timeout=5, metadata=(("x-hms-version", ">=x"),))
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-hms-version" in (malformed.value.details() or "")


async def test_a_malformed_policy_is_kept_out_and_the_last_good_one_holds(
    versions: dict[str, str],
    channel: MeshChannel,
    etcd: EtcdProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await mesh_traffic(etcd, "set", ECHO, f"{OLD}=0", f"{NEW}=100")
    assert channel.traffic is not None
    good = TrafficPolicy.of({OLD: 0, NEW: 100})
    await eventually(lambda: channel.traffic.get(ECHO) == good, 5, interval=0.01)
    async with Etcd([etcd.endpoint]) as raw:  # a hostile or broken writer
        for garbage in (b"not json", b'{"latest": 5}', b'{"0.1.0": -3}', b"[" * 10_000):
            await raw.put(traffic_key("hms", ECHO), garbage)
            await eventually(lambda: "refused" in caplog.text, 5, interval=0.01)
            caplog.clear()
            assert channel.traffic.get(ECHO) == good
    seen = await shares(echo_pb2_grpc.EchoServiceStub(channel), 300)
    assert seen == Counter({NEW: 300})
    assert "REFUSED" in await mesh_traffic(etcd, "show", ECHO)
