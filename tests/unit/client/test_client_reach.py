"""Connectivity gating: the gate's growth and reset, a pool that never picks an instance nothing
answers at (whatever the outlier cap or the warm-up rule), and its probes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from mesh.client.pool import ServicePool
from mesh.client.reach import Reachability, tcp_reachable
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.outlier import OutlierConfig
from mesh.testing import DummyChannel, VirtualClock, eventually

SERVICE = "hms.test.v1.Echo"


@pytest.mark.parametrize(
    ("failures", "gate"),
    [
        pytest.param(1, 0.5, id="first"),
        pytest.param(2, 1.0, id="second-doubles"),
        pytest.param(7, 30.0, id="capped"),
        pytest.param(200, 30.0, id="many-still-capped"),
    ],
)
def test_the_gate_grows_with_failures(failures: int, gate: float) -> None:
    reach = Reachability()
    delays = [reach.failed(100.0) for _ in range(failures)]
    assert delays[-1] == gate
    assert not reach.usable(100.0 + gate - 0.01)
    assert reach.usable(100.0 + gate)
    reach.succeeded()
    assert reach.usable(100.0)
    assert reach.failed(100.0) == 0.5


def pool(clock: VirtualClock, probe: Any = None) -> ServicePool:
    return ServicePool(
        SERVICE,
        lambda _i: DummyChannel(),  # type: ignore[arg-type,return-value]
        outlier=OutlierConfig(max_ejection_percent=10.0),
        clock=clock,
        rand=random.Random(1).random,
        watch_health=False,
        probe=probe,
    )


def instance(n: int) -> Instance:
    return Instance(SERVICE, f"i-{n}", f"127.0.0.1:{1000 + n}", "echo")


async def test_unreachable_instances_are_not_picked_whatever_the_cap() -> None:
    clock = VirtualClock()
    p = pool(clock)
    for n in range(1, 11):
        p.apply(Change(ChangeKind.ADDED, instance(n)))
    for n in range(1, 10):  # nine of ten: far past the 10 % ejection cap
        p.endpoints[f"i-{n}"].reach.failed(clock())
    # i-1..i-9 are fresh (the warm-up rule would pick them first): still never picked.
    assert {p.pick(set()).key for _ in range(20)} == {"i-10"}  # type: ignore[union-attr]
    p.endpoints["i-10"].reach.failed(clock())
    assert p.pick(set()) is None
    assert p.why_unavailable() == f"no ready instance of {SERVICE}: 10 unreachable"
    clock.advance(0.5)  # the gates open: they may be tried again
    assert p.pick(set()) is not None
    await p.close()


async def test_probes_gate_what_does_not_answer_and_free_what_does() -> None:
    clock = VirtualClock()
    answering = {"127.0.0.1:1002"}
    probed: list[str] = []

    async def probe(address: str) -> bool:
        probed.append(address)
        return address in answering

    p = pool(clock, probe)
    for n in (1, 2):
        p.apply(Change(ChangeKind.ADDED, instance(n)))
    await eventually(lambda: len(probed) >= 2)
    await eventually(lambda: p.endpoints["i-1"].reach.failures == 1)
    assert not p.endpoints["i-1"].reach.usable(clock())
    clock.advance(3600)  # a failed probe's gate opens only when a probe answers
    assert not p.endpoints["i-1"].reach.usable(clock())
    assert p.endpoints["i-2"].reach.usable(clock())
    assert {p.pick(set()).key for _ in range(10)} == {"i-2"}  # type: ignore[union-attr]
    p.apply(Change(ChangeKind.REMOVED, instance(1)))  # its probing stops with it
    await p.close()


async def test_tcp_reachable_tells_a_listener_from_nothing() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_reachable(f"127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
    assert not await tcp_reachable(f"127.0.0.1:{port}", timeout=1.0)
    assert not await tcp_reachable("not-an-address")
