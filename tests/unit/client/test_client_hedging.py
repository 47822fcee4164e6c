"""Hedging in RetryLayer (RetryPolicy(hedging_delay=...)): a copy of a safe call each delay,
the first good answer wins and the others are cancelled; a fatal code ends the call at once.

Hedging is about timing, so these tests run on the real loop with a 10 ms hedging delay, each
bounded by `asyncio.timeout`; attempts that must hang wait on an event that is never set."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.middleware import RetryLayer
from mesh.resilience.budget import RetryBudget
from mesh.resilience.retry import Idempotency, RetryPolicy

Code = grpc.StatusCode
METHOD = "/hms.test.v1.Echo/Say"
DELAY = 0.01
BOUND = 1.0  # no test here should come near it

Behaviour = Callable[[CallInfo], Awaitable[Any]]


class Attempts:
    """The rest of the chain: attempt n behaves as behaviours[n] (the last one repeats);
    records each copy of the call and which attempts were cancelled."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.calls: list[CallInfo] = []
        self.cancelled: list[int] = []

    async def __call__(self, call: CallInfo) -> Any:
        self.calls.append(call)
        behaviour = self.behaviours[min(call.attempt, len(self.behaviours) - 1)]
        try:
            return await behaviour(call)
        except asyncio.CancelledError:
            self.cancelled.append(call.attempt)
            raise

    @property
    def started(self) -> list[int]:
        return [call.attempt for call in self.calls]


async def hang(call: CallInfo) -> Any:
    await asyncio.Event().wait()


def answer(value: Any, after: float = 0.0) -> Behaviour:
    async def run(call: CallInfo) -> Any:
        if after:
            await asyncio.sleep(after)
        return value

    return run


def fail(code: Code, after: float = 0.0) -> Behaviour:
    async def run(call: CallInfo) -> Any:
        if after:
            await asyncio.sleep(after)
        raise rpc_error(code, f"attempt {call.attempt}: {code.name}")

    return run


def make_call(
    idempotency: Idempotency = Idempotency.IDEMPOTENT, kind: CallKind = CallKind.UNARY_UNARY
) -> CallInfo:
    return CallInfo(
        kind=kind,
        method=METHOD,
        service=service_of(METHOD),
        request=b"request",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=idempotency,
    )


def make_layer(policy: RetryPolicy | None = None, budget: RetryBudget | None = None) -> RetryLayer:
    policy = policy or RetryPolicy(max_attempts=3, hedging_delay=DELAY)
    return RetryLayer(
        lambda _method: policy,
        budget if budget is not None else RetryBudget(time.monotonic),
        rand=lambda: 0.5,
    )


async def test_second_attempt_wins_and_the_first_is_cancelled() -> None:
    attempts = Attempts(hang, answer("second"))
    layer = make_layer()
    call = make_call()

    async with asyncio.timeout(BOUND):
        assert await layer(call, attempts) == "second"

    assert attempts.started == [0, 1]
    assert attempts.cancelled == [0]
    assert layer.retries == 1


async def test_hedges_are_copies_that_share_the_tried_set() -> None:
    attempts = Attempts(hang, hang, answer("third"))
    call = make_call()

    async with asyncio.timeout(BOUND):
        await make_layer()(call, attempts)

    assert attempts.started == [0, 1, 2]
    assert all(copy is not call for copy in attempts.calls), "each attempt has its own state"
    assert all(copy.tried is call.tried for copy in attempts.calls), "so pick avoids repeats"
    assert sorted(attempts.cancelled) == [0, 1]


async def test_a_fast_first_answer_sends_no_hedge() -> None:
    attempts = Attempts(answer("first"))
    layer = make_layer()

    async with asyncio.timeout(BOUND):
        assert await layer(make_call(), attempts) == "first"

    assert attempts.started == [0]
    assert layer.retries == 0


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(Code.INVALID_ARGUMENT, id="invalid-argument"),
        pytest.param(Code.INTERNAL, id="internal"),
        pytest.param(Code.PERMISSION_DENIED, id="permission-denied"),
    ],
)
async def test_fatal_code_ends_the_call_at_once(code: Code) -> None:
    attempts = Attempts(hang, fail(code), answer("too late"))

    async with asyncio.timeout(BOUND):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await make_layer()(make_call(), attempts)

    assert caught.value.code() is code
    assert attempts.started == [0, 1], "no hedge after a fatal answer"
    assert attempts.cancelled == [0]


async def test_non_fatal_codes_come_from_the_policy() -> None:
    policy = RetryPolicy(
        max_attempts=3, hedging_delay=DELAY, non_fatal_codes={Code.UNAVAILABLE, Code.INTERNAL}
    )
    attempts = Attempts(fail(Code.INTERNAL), answer("second"))

    async with asyncio.timeout(BOUND):
        assert await make_layer(policy)(make_call(), attempts) == "second"


async def test_non_fatal_failure_hedges_at_once_and_all_failing_gives_the_last_error() -> None:
    policy = RetryPolicy(max_attempts=3, hedging_delay=BOUND * 10)  # only failures hedge
    attempts = Attempts(fail(Code.UNAVAILABLE))

    async with asyncio.timeout(BOUND):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await make_layer(policy)(make_call(), attempts)

    assert caught.value.code() is Code.UNAVAILABLE
    assert caught.value.details() == "attempt 2: UNAVAILABLE"
    assert attempts.started == [0, 1, 2]


async def test_hedges_stop_at_max_attempts() -> None:
    attempts = Attempts(hang)
    policy = RetryPolicy(max_attempts=2, hedging_delay=DELAY)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(DELAY * 8):
            await make_layer(policy)(make_call(), attempts)

    assert attempts.started == [0, 1]
    assert sorted(attempts.cancelled) == [0, 1], "the caller's timeout cancels every attempt"


async def test_hedges_stop_when_the_budget_refuses() -> None:
    attempts = Attempts(fail(Code.UNAVAILABLE, after=DELAY * 4))
    budget = RetryBudget(time.monotonic, ratio=0.0, min_per_second=0.0)
    layer = make_layer(budget=budget)

    async with asyncio.timeout(BOUND):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await layer(make_call(), attempts)

    assert caught.value.details() == "attempt 0: UNAVAILABLE"
    assert attempts.started == [0]
    assert layer.retries == 0


@pytest.mark.parametrize(
    ("idempotency", "kind"),
    [
        pytest.param(Idempotency.UNKNOWN, CallKind.UNARY_UNARY, id="unknown-idempotency"),
        pytest.param(Idempotency.IDEMPOTENT, CallKind.UNARY_STREAM, id="streaming-response"),
        pytest.param(Idempotency.IDEMPOTENT, CallKind.STREAM_UNARY, id="streaming-request"),
    ],
)
async def test_not_hedged(idempotency: Idempotency, kind: CallKind) -> None:
    attempts = Attempts(answer("slow", after=DELAY * 4))
    layer = make_layer()

    async with asyncio.timeout(BOUND):
        assert await layer(make_call(idempotency, kind), attempts) == "slow"

    assert attempts.started == [0]
    assert layer.retries == 0


async def test_no_side_effects_is_hedged() -> None:
    attempts = Attempts(hang, answer("second"))

    async with asyncio.timeout(BOUND):
        result = await make_layer()(make_call(Idempotency.NO_SIDE_EFFECTS), attempts)

    assert result == "second"


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the timers scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self.timers = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_all_at_once_hedging_does_not_spin() -> None:
    policy = RetryPolicy(max_attempts=2, hedging_delay=0.0)
    attempts = Attempts(answer("first", after=0.02), answer("second", after=0.03))
    loop = CountingLoop()

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        result = runner.run(make_layer(policy)(make_call(), attempts))

    assert result == "first"
    assert attempts.started == [0, 1]
    assert loop.timers < 20, f"{loop.timers} timers scheduled while waiting 20 ms"
