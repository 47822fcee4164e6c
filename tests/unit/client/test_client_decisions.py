"""The balancer's and breakers' decisions, told to the pool's decision sink (svc.mesh): an
ejection, a readmission, an unreachable instance, a draining one (its real health check), a
retry the budget refused; and nothing told, at no cost, when there is no sink."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.client import ClientConfig, MeshChannel
from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.middleware import PickLayer, RetryLayer
from mesh.client.pool import ServicePool
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.budget import RetryBudget
from mesh.resilience.outlier import OutlierConfig
from mesh.resilience.retry import Idempotency, RetryPolicy
from mesh.server.health import DrainingHealth
from mesh.testing import DummyChannel, FakeSleep, VirtualClock, eventually
from mesh.tracerecords import DRAINING, EJECTED, READMITTED, UNREACHABLE, TraceEmitter

Code = grpc.StatusCode
SERVICE = "hms.test.v1.Echo"
METHOD = f"/{SERVICE}/Say"
OUTLIER = OutlierConfig(consecutive_failures=2, base_ejection=30.0, max_ejection_percent=50.0)
NEVER_SENT = "failed to connect to all addresses; last error: connection refused"

Decision = tuple[int, str, str, str, str]


class Told(list[Decision]):
    """The decision sink: what the pool and the retry layer told it, in order."""

    def __call__(self, kind: int, service: str, instance: str, address: str, reason: str) -> None:
        self.append((kind, service, instance, address, reason))

    @property
    def kinds(self) -> list[tuple[int, str]]:
        return [(kind, instance) for kind, _, instance, _, _ in self]


def make_call() -> CallInfo:
    return CallInfo(
        kind=CallKind.UNARY_UNARY,
        method=METHOD,
        service=service_of(METHOD),
        request=b"",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=Idempotency.IDEMPOTENT,
    )


class Harness:
    def __init__(self, told: Told | None) -> None:
        self.clock = VirtualClock()
        self.pool = ServicePool(
            SERVICE,
            lambda _instance: DummyChannel(),  # type: ignore[arg-type,return-value]
            outlier=OUTLIER,
            clock=self.clock,
            rand=random.Random(3).random,
            watch_health=False,
            decisions=told,
        )
        for n in (1, 2):
            instance = Instance(SERVICE, f"i-{n}", f"10.0.0.{n}:1", "echo")
            self.pool.apply(Change(ChangeKind.ADDED, instance))
        self.layer = PickLayer(self.pool_for, no_instance_wait=0.01, clock=self.clock)

    async def pool_for(self, _service: str) -> ServicePool:
        return self.pool

    async def attempt(self, outcome: Any, only: str | None = None) -> Any:
        """One attempt; `only` keeps the other instance out of the pick."""
        call = make_call()
        if only is not None:
            call.tried = {key for key in self.pool.endpoints if key != only}

        async def next_(_call: CallInfo) -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        try:
            return await self.layer(call, next_)
        except grpc.aio.AioRpcError as exc:
            return exc.code()


@pytest.fixture
async def told() -> AsyncIterator[tuple[Harness, Told]]:
    sink = Told()
    harness = Harness(sink)
    yield harness, sink
    await harness.pool.close()


async def test_an_ejection_and_the_readmission_are_told(told: tuple[Harness, Told]) -> None:
    h, sink = told
    for _ in range(2):
        await h.attempt(rpc_error(Code.UNAVAILABLE, "reset"), only="i-1")
    assert sink.kinds == [(EJECTED, "i-1")]
    assert sink[0][1:4] == (SERVICE, "i-1", "10.0.0.1:1")
    assert sink[0][4] == "2 consecutive failures (last UNAVAILABLE)"
    h.clock.advance(31.0)  # the ejection is over: the next pick of i-1 is its probe
    assert await h.attempt("ok", only="i-1") == "ok"
    assert sink.kinds == [(EJECTED, "i-1"), (READMITTED, "i-1")]
    assert await h.attempt("ok", only="i-1") == "ok"
    assert len(sink) == 2  # an ordinary success says nothing


async def test_a_call_that_could_not_connect_tells_unreachable_once_a_streak(
    told: tuple[Harness, Told],
) -> None:
    h, sink = told
    assert await h.attempt(rpc_error(Code.UNAVAILABLE, NEVER_SENT), only="i-1") is Code.UNAVAILABLE
    # A connection failure asks for ejection at once, and the cap (50 % of 2) allows it.
    assert sink.kinds == [(UNREACHABLE, "i-1"), (EJECTED, "i-1")]
    assert sink[1][4] == "a call could not connect (UNAVAILABLE)"


async def test_without_a_sink_nothing_is_told_and_all_works() -> None:
    h = Harness(None)
    try:
        for _ in range(2):
            await h.attempt(rpc_error(Code.UNAVAILABLE, "reset"), only="i-1")
        assert h.pool.detector.ejections_total == 1
    finally:
        await h.pool.close()


async def test_a_retry_refused_by_the_budget_is_told_with_the_last_instance() -> None:
    clock = VirtualClock()
    refused: list[CallInfo] = []
    layer = RetryLayer(
        lambda _method: RetryPolicy(max_attempts=3),
        RetryBudget(clock, ratio=0.0, min_per_second=0.0),
        sleep=FakeSleep(clock),
        clock=clock,
        on_refused=refused.append,
    )

    async def next_(call: CallInfo) -> Any:
        call.sent = True
        raise rpc_error(Code.UNAVAILABLE, "reset")

    with pytest.raises(grpc.aio.AioRpcError):
        await layer(make_call(), next_)
    assert [call.method for call in refused] == [METHOD]
    assert layer.budget_refusals == 1


async def test_the_channel_tells_its_emitter_of_a_refused_retry() -> None:
    instance = Instance(SERVICE, "i-1", "127.0.0.1:1", "echo")
    emitter = TraceEmitter("caller", connect=_no_nats)
    channel = MeshChannel(
        None,
        ClientConfig(etcd=(), upstreams={SERVICE: (instance,)}, budget_min_per_second=0.0,
                     budget_ratio=0.0, rotation_check=0),
        records=emitter,
    )  # fmt: skip
    assert channel.retry_layer.on_refused is not None
    call = make_call()
    channel.retry_layer.on_refused(call)
    assert emitter.queued == 1


async def _no_nats() -> Any:
    raise OSError("no NATS in this test")


# -- draining: the instance's own health check says so -------------------------------------------


async def test_an_instance_whose_health_turns_not_serving_is_told_draining() -> None:
    health = DrainingHealth()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    sink = Told()
    pool = ServicePool(
        SERVICE,
        lambda instance: grpc.aio.insecure_channel(instance.address),
        outlier=OUTLIER,
        clock=VirtualClock(),
        rand=random.random,
        decisions=sink,
    )
    try:
        pool.apply(Change(ChangeKind.ADDED, Instance(SERVICE, "i-1", f"127.0.0.1:{port}", "e")))
        endpoint = pool.endpoints["i-1"]
        endpoint.channel()  # opened on first use, and its health watched from then on
        await health.enter_graceful_shutdown()
        await eventually(lambda: not endpoint.serving, 5)
        assert sink.kinds == [(DRAINING, "i-1")]  # once, and nothing for SERVING
    finally:
        await pool.close()
        await server.stop(None)
