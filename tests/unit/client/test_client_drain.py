"""The caller's side of a drain, on fakes: an instance that leaves takes no new call but its
calls in flight finish (its channel closes with a grace); a CancelledError that grpc.aio raises
because a channel closed under a call becomes UNAVAILABLE and is retried where safe, while the
caller's own cancellation passes through; a call waits for a first instance once, not once per
retry."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, GuardedStream, service_of
from mesh.client.endpoint import Endpoint
from mesh.client.middleware import PickLayer, RetryLayer, build_chain, transport
from mesh.client.pool import ServicePool
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.backoff import BackoffPolicy
from mesh.resilience.budget import RetryBudget
from mesh.resilience.outlier import OutlierConfig
from mesh.resilience.retry import Idempotency, RetryPolicy
from mesh.testing import VirtualClock, eventually

Code = grpc.StatusCode
METHOD = "/hms.test.v1.Echo/Say"
SERVICE = service_of(METHOD)
GRACE = 7.5


def instance(n: int) -> Instance:
    return Instance(SERVICE, f"i-{n}", f"10.0.0.{n}:50051", "echo")


def make_call(idempotency: Idempotency = Idempotency.IDEMPOTENT) -> CallInfo:
    return CallInfo(
        kind=CallKind.UNARY_UNARY,
        method=METHOD,
        service=SERVICE,
        request=b"request",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=idempotency,
    )


class FakeGrpcChannel:
    """A per-instance grpc.aio channel: each call answers with the next scripted outcome
    (a value, an exception to raise, or an asyncio.Event to wait for); `close` records its
    grace and, like grpc.aio without one, cuts the calls in flight with CancelledError."""

    def __init__(self, address: str, outcomes: list[Any]) -> None:
        self.address = address
        self.outcomes = outcomes
        self.closed_with: list[float | None] = []
        self.in_flight: set[asyncio.Future[Any]] = set()

    def unary_unary(self, method: str, **_: Any) -> Any:
        return self._call

    def _call(self, request: Any, **_: Any) -> Any:
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        future = asyncio.ensure_future(self._answer(outcome))
        self.in_flight.add(future)
        future.add_done_callback(self.in_flight.discard)
        return future

    async def _answer(self, outcome: Any) -> Any:
        if isinstance(outcome, asyncio.Event):
            await outcome.wait()
            return f"answered by {self.address}"
        if isinstance(outcome, BaseException):
            raise outcome
        return f"{outcome} from {self.address}"

    async def close(self, grace: float | None = None) -> None:
        self.closed_with.append(grace)
        if grace and self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=grace)
        for future in list(self.in_flight):
            future.cancel()  # what grpc.aio does: the awaiting caller sees CancelledError


class Harness:
    """A pool of fake instances behind the real chain: retry -> pick -> transport."""

    def __init__(self, outcomes: dict[int, list[Any]] | None = None, wait: float = 0.05):
        self.outcomes = outcomes or {}
        self.channels: dict[str, FakeGrpcChannel] = {}
        clock = VirtualClock()
        self.pool = ServicePool(
            SERVICE,
            self._open,
            outlier=OutlierConfig(),
            clock=clock,
            rand=random.Random(1).random,
            watch_health=False,
            drain_grace=GRACE,
        )
        self.waits = 0
        real_wait = self.pool.wait_changed

        async def counted_wait(timeout: float) -> bool:
            self.waits += 1
            return await real_wait(timeout)

        self.pool.wait_changed = counted_wait  # type: ignore[method-assign]
        policy = RetryPolicy(max_attempts=3, backoff=BackoffPolicy(base=0.001, cap=0.001))

        async def no_sleep(_: float) -> None:
            await asyncio.sleep(0)

        retry = RetryLayer(lambda _m: policy, RetryBudget(clock), sleep=no_sleep)
        pick = PickLayer(self._pool_for, no_instance_wait=wait)
        self.chain = build_chain([retry, pick], transport)

    def _open(self, inst: Instance) -> Any:
        n = int(inst.instance_id.removeprefix("i-"))
        channel = FakeGrpcChannel(inst.address, self.outcomes.get(n, []))
        self.channels[inst.instance_id] = channel
        return channel

    async def _pool_for(self, service: str) -> ServicePool:
        return self.pool

    def add(self, *numbers: int) -> None:
        for n in numbers:
            self.pool.apply(Change(ChangeKind.ADDED, instance(n)))
            self.pool.endpoints[f"i-{n}"].observed = True

    def remove(self, n: int) -> None:
        self.pool.apply(Change(ChangeKind.REMOVED, instance(n)))


# -- an instance that leaves ---------------------------------------------------------------


async def test_a_call_in_flight_on_a_departing_instance_finishes() -> None:
    answer = asyncio.Event()
    h = Harness({1: [answer]})
    h.add(1)
    call = asyncio.create_task(h.chain(make_call()))
    await eventually(lambda: "i-1" in h.channels and bool(h.channels["i-1"].in_flight))

    h.remove(1)  # the registry dropped it: no new calls, the one in flight goes on
    assert "i-1" not in h.pool.endpoints
    answer.set()

    assert await call == "answered by 10.0.0.1:50051"
    await h.pool.close()
    assert h.channels["i-1"].closed_with == [GRACE]


async def test_a_departing_instance_takes_no_new_call() -> None:
    h = Harness()
    h.add(1, 2)
    h.remove(1)
    results = [await h.chain(make_call()) for _ in range(5)]
    assert results == ["ok from 10.0.0.2:50051"] * 5
    await h.pool.close()


async def test_closing_the_whole_pool_cuts_calls_at_once() -> None:
    h = Harness()
    h.add(1)
    endpoint = h.pool.endpoints["i-1"]
    endpoint.channel()
    await h.pool.close()
    assert h.channels["i-1"].closed_with == [None]


async def test_a_closed_endpoint_refuses_to_reopen_its_channel() -> None:
    endpoint = Endpoint(instance(1), lambda i: FakeGrpcChannel(i.address, []), VirtualClock())
    endpoint.channel()
    await endpoint.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        endpoint.channel()
    assert caught.value.code() is Code.UNAVAILABLE
    assert "has left: call not sent" in (caught.value.details() or "")


async def test_rotation_closes_the_old_channel_with_the_grace() -> None:
    opened: list[FakeGrpcChannel] = []

    def open_channel(i: Instance) -> Any:
        opened.append(FakeGrpcChannel(i.address, []))
        return opened[-1]

    endpoint = Endpoint(instance(1), open_channel, VirtualClock(), drain_grace=GRACE)
    endpoint.channel()
    endpoint.rotate()
    await endpoint.close()
    assert [c.closed_with for c in opened] == [[GRACE], [GRACE]]


# -- a channel closed under a call ---------------------------------------------------------


@pytest.mark.parametrize(
    ("idempotency", "expected"),
    [
        pytest.param(Idempotency.IDEMPOTENT, "ok from 10.0.0.2:50051", id="idempotent-retried"),
        pytest.param(Idempotency.UNKNOWN, Code.UNAVAILABLE, id="unsafe-not-retried"),
    ],
)
async def test_a_channel_closed_under_a_call_is_unavailable_and_retried_where_safe(
    idempotency: Idempotency, expected: Any
) -> None:
    h = Harness({1: [asyncio.CancelledError()], 2: ["ok"]})
    h.add(1, 2)
    h.pool.endpoints["i-2"].outstanding = 1  # so that i-1 is picked first
    h.pool.endpoints["i-1"].ewma.observe(0.0)

    if isinstance(expected, str):
        assert await h.chain(make_call(idempotency)) == expected
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await h.chain(make_call(idempotency))
        assert caught.value.code() is expected
        assert "closed with the call in flight" in (caught.value.details() or "")
        assert "10.0.0.1:50051" in (caught.value.details() or "")
    await h.pool.close()


async def test_the_callers_own_cancellation_passes_through() -> None:
    never = asyncio.Event()
    h = Harness({1: [never]})
    h.add(1)
    task = asyncio.create_task(h.chain(make_call()))
    await eventually(lambda: "i-1" in h.channels and bool(h.channels["i-1"].in_flight))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.pool.endpoints["i-1"].outstanding == 0
    await h.pool.close()


class FakeStreamRpc:
    def __init__(self, outcome: BaseException) -> None:
        self.outcome = outcome
        self.cancel_calls = 0

    async def read(self) -> Any:
        raise self.outcome

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        yield "first"
        raise self.outcome

    def cancel(self) -> bool:
        self.cancel_calls += 1
        return True

    def initial_metadata(self) -> str:
        return "delegated"


async def read_all(stream: GuardedStream, iterate: bool) -> list[Any]:
    if iterate:
        return [message async for message in stream]
    return [await stream.read()]


@pytest.mark.parametrize("iterate", [False, True], ids=["read", "async-for"])
async def test_a_stream_cut_by_its_channel_is_unavailable(iterate: bool) -> None:
    stream = GuardedStream(FakeStreamRpc(asyncio.CancelledError()), METHOD, "10.0.0.1:1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(stream, iterate)
    assert caught.value.code() is Code.UNAVAILABLE
    assert METHOD in (caught.value.details() or "")
    assert stream.initial_metadata() == "delegated"


async def test_a_stream_cancelled_by_its_caller_stays_cancelled() -> None:
    rpc = FakeStreamRpc(asyncio.CancelledError())
    stream = GuardedStream(rpc, METHOD, "10.0.0.1:1")
    assert stream.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await stream.read()
    assert rpc.cancel_calls == 1


# -- no instance ---------------------------------------------------------------------------


async def test_no_instance_waits_once_per_call_not_per_attempt() -> None:
    h = Harness(wait=0.02)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.chain(make_call())
    assert caught.value.code() is Code.UNAVAILABLE
    assert h.waits == 1
    await h.pool.close()


async def test_every_instance_draining_waits_for_its_replacement() -> None:
    h = Harness(wait=5.0)
    h.add(1)
    h.pool.endpoints["i-1"].serving = False  # said NOT_SERVING; its replacement is starting
    call = asyncio.create_task(h.chain(make_call()))
    await eventually(lambda: h.waits > 0)
    h.add(2)
    assert await asyncio.wait_for(call, 1.0) == "ok from 10.0.0.2:50051"
    await h.pool.close()


async def test_a_change_without_a_usable_instance_keeps_waiting() -> None:
    h = Harness(wait=5.0)
    call = asyncio.create_task(h.chain(make_call()))
    await eventually(lambda: h.waits > 0)
    h.add(1)
    h.pool.endpoints["i-1"].serving = False
    h.remove(1)  # came and went
    await eventually(lambda: h.waits >= 2)
    h.add(2)
    assert await asyncio.wait_for(call, 1.0) == "ok from 10.0.0.2:50051"
    await h.pool.close()
