"""PickLayer over a real ServicePool on a virtual clock: the bounded wait for a first instance,
UNAVAILABLE with the pool's reason, and the per-instance accounting around each attempt
(EWMA, outlier detector, calls in flight), cancellation included."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.endpoint import Endpoint
from mesh.client.middleware import PickLayer
from mesh.client.pool import ServicePool
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.outlier import HealthState, OutlierConfig
from mesh.resilience.retry import Idempotency
from mesh.testing import DummyChannel, VirtualClock

Code = grpc.StatusCode
SERVICE = "hms.test.v1.Echo"
METHOD = f"/{SERVICE}/Say"
RTT = 0.2
PENALTY = 1.0  # PeakEwma's default: what a RESOURCE_EXHAUSTED answer counts as
OUTLIER = OutlierConfig(
    consecutive_failures=3, base_ejection=30.0, max_ejection_percent=50.0, probe_timeout=5.0
)


class WatchedPool(ServicePool):
    """A ServicePool that records each wait for a membership change, and when it started."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(
            SERVICE,
            lambda _instance: DummyChannel(),  # type: ignore[arg-type,return-value]
            outlier=OUTLIER,
            clock=clock,
            rand=random.Random(3).random,
            watch_health=False,
        )
        self.waits: list[float] = []
        self.waiting = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        self.waits.append(timeout)
        self.waiting.set()
        return await super().wait_changed(timeout)

    def add(self, n: int) -> Endpoint:
        self.apply(Change(ChangeKind.ADDED, Instance(SERVICE, f"i-{n}", f"10.0.0.{n}:1", "echo")))
        return self.endpoints[f"i-{n}"]


def make_call() -> CallInfo:
    return CallInfo(
        kind=CallKind.UNARY_UNARY,
        method=METHOD,
        service=service_of(METHOD),
        request=b"request",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=Idempotency.IDEMPOTENT,
    )


class Attempt:
    """The rest of the chain: notes the endpoint and its calls in flight, takes RTT seconds of
    virtual time, then answers or fails as told."""

    def __init__(self, clock: VirtualClock, outcome: Any = "response") -> None:
        self.clock = clock
        self.outcome = outcome
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, call: CallInfo) -> Any:
        self.seen.append((call.endpoint.key, call.endpoint.outstanding))
        self.clock.advance(RTT)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class Harness:
    def __init__(self, no_instance_wait: float = 0.05) -> None:
        self.clock = VirtualClock()
        self.pool = WatchedPool(self.clock)
        self.layer = PickLayer(self.pool_for, no_instance_wait=no_instance_wait, clock=self.clock)

    async def pool_for(self, service: str) -> ServicePool:
        assert service == SERVICE
        return self.pool


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.pool.close()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        made.append(Harness(**kwargs))
        return made[-1]

    yield factory
    for harness in made:
        await harness.pool.close()


# -- no instance yet -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_instance_wait", "left", "waits"),
    [
        pytest.param(0.02, None, [0.02], id="no-deadline-waits-the-configured-time"),
        pytest.param(0.02, 0.01, [0.01], id="deadline-sooner-bounds-the-wait"),
        pytest.param(0.02, 5.0, [0.02], id="deadline-later-does-not-extend-it"),
        pytest.param(0.02, 0.0, [], id="deadline-reached-no-wait"),
        pytest.param(0.02, -1.0, [], id="deadline-passed-no-wait"),
    ],
)
async def test_no_instance_waits_bounded_then_unavailable(
    make: Callable[..., Harness], no_instance_wait: float, left: float | None, waits: list[float]
) -> None:
    h = make(no_instance_wait=no_instance_wait)
    call = make_call()
    call.sent = True  # left over from an earlier attempt
    if left is not None:
        call.deadline = h.clock() + left
    attempt = Attempt(h.clock)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.layer(call, attempt)

    assert h.pool.waits == pytest.approx(waits)
    assert caught.value.code() is Code.UNAVAILABLE
    assert caught.value.details() == f"no instance of {SERVICE} is registered"
    assert call.sent is False
    assert attempt.seen == []


async def test_an_instance_added_during_the_wait_is_used(make: Callable[..., Harness]) -> None:
    h = make(no_instance_wait=5.0)
    attempt = Attempt(h.clock)
    call = make_call()

    async with asyncio.timeout(1.0):
        pending = asyncio.create_task(h.layer(call, attempt))
        await h.pool.waiting.wait()
        h.pool.add(1)
        assert await pending == "response"

    assert attempt.seen == [("i-1", 1)]
    assert call.endpoint is h.pool.endpoints["i-1"]


async def test_all_ejected_or_draining_fails_at_once_with_the_reason(h: Harness) -> None:
    for n in (1, 2, 3):
        h.pool.add(n)
    assert h.pool.detector.on_failure("i-1", h.clock(), connection=True)
    h.pool.endpoints["i-2"].serving = False
    h.pool.endpoints["i-3"].serving = False
    call = make_call()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.layer(call, Attempt(h.clock))

    assert caught.value.code() is Code.UNAVAILABLE
    assert caught.value.details() == f"no ready instance of {SERVICE}: 1 ejected, 2 draining"
    assert h.pool.waits == [], "instances are registered: no wait"
    assert call.sent is False


# -- accounting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "estimate", "failures"),
    [
        pytest.param("response", RTT, 0, id="success"),
        pytest.param(rpc_error(Code.UNAVAILABLE, "reset"), RTT, 2, id="unavailable-fails"),
        pytest.param(rpc_error(Code.INTERNAL, "bug"), RTT, 2, id="internal-fails"),
        pytest.param(rpc_error(Code.UNKNOWN, "?"), RTT, 2, id="unknown-fails"),
        pytest.param(rpc_error(Code.DATA_LOSS, "?"), RTT, 2, id="data-loss-fails"),
        pytest.param(
            rpc_error(Code.INVALID_ARGUMENT, "bad"), RTT, 0, id="invalid-argument-is-a-success"
        ),
        pytest.param(rpc_error(Code.NOT_FOUND, "none"), RTT, 0, id="not-found-is-a-success"),
        pytest.param(
            rpc_error(Code.RESOURCE_EXHAUSTED, "slow down"), PENALTY,
            0, id="resource-exhausted-penalizes-ewma",
        ),
    ],
)  # fmt: skip
async def test_outcome_accounting(h: Harness, outcome: Any, estimate: float, failures: int) -> None:
    endpoint = h.pool.add(1)
    h.pool.detector.on_failure("i-1", h.clock())  # a streak of one to start with
    attempt = Attempt(h.clock, outcome)
    call = make_call()

    if isinstance(outcome, grpc.aio.AioRpcError):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await h.layer(call, attempt)
        assert caught.value is outcome
    else:
        assert await h.layer(call, attempt) == outcome

    assert attempt.seen == [("i-1", 1)], "one call in flight during the attempt"
    assert endpoint.outstanding == 0
    assert call.endpoint is endpoint
    assert call.tried == {"i-1"}
    assert endpoint.observed is True
    assert endpoint.ewma.estimate() == pytest.approx(estimate)
    assert h.pool.detector.health("i-1").consecutive_failures == failures


async def test_connection_failure_ejects_at_once(h: Harness) -> None:
    h.pool.add(1)
    h.pool.add(2)
    refused = rpc_error(Code.UNAVAILABLE, "failed to connect to all addresses")
    call = make_call()
    call.tried.add("i-2")  # so that the attempt goes to i-1

    with pytest.raises(grpc.aio.AioRpcError):
        await h.layer(call, Attempt(h.clock, refused))

    assert h.pool.detector.health("i-1").state is HealthState.EJECTED
    assert h.pool.pick(set()) is h.pool.endpoints["i-2"]


async def test_other_exceptions_still_release_the_endpoint(h: Harness) -> None:
    endpoint = h.pool.add(1)

    with pytest.raises(RuntimeError):
        await h.layer(make_call(), Attempt(h.clock, RuntimeError("bug in a layer")))

    assert endpoint.outstanding == 0


class Hang:
    """An attempt that never answers; `entered` is set once it is in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(self, call: CallInfo) -> Any:
        self.entered.set()
        await asyncio.Event().wait()


async def cancel_in_flight(h: Harness, call: CallInfo) -> None:
    hang = Hang()
    async with asyncio.timeout(1.0):
        pending = asyncio.create_task(h.layer(call, hang))
        await hang.entered.wait()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending


async def test_cancellation_releases_the_endpoint(h: Harness) -> None:
    endpoint = h.pool.add(1)
    call = make_call()

    await cancel_in_flight(h, call)

    assert endpoint.outstanding == 0
    assert endpoint.observed is False, "no outcome, so no warm-up done"
    assert call.tried == {"i-1"}


async def test_cancelled_probe_does_not_readmit(h: Harness) -> None:
    h.pool.add(1)
    h.pool.add(2)
    assert h.pool.detector.on_failure("i-1", h.clock(), connection=True)
    h.clock.advance(OUTLIER.base_ejection)
    call = make_call()
    call.tried.add("i-2")  # so that the probe goes to i-1

    await cancel_in_flight(h, call)

    assert call.tried == {"i-1", "i-2"}
    assert h.pool.detector.health("i-1").state is HealthState.PROBING


async def test_cancelled_call_keeps_the_failure_streak(h: Harness) -> None:
    h.pool.add(1)
    h.pool.detector.on_failure("i-1", h.clock())
    h.pool.detector.on_failure("i-1", h.clock())

    await cancel_in_flight(h, make_call())

    assert h.pool.detector.health("i-1").consecutive_failures == 2
