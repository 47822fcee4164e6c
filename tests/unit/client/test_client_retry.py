"""RetryLayer on a virtual clock, against a scripted `next` that fails as a transport would
(setting `call.sent` and `call.trailers`): which codes and methods are retried, attempts,
server pushback, the deadline, the retry budget; and `grpc-previous-rpc-attempts` on the wire.
Jitter is off, so backoff delays are exact: 0.1, 0.2, 0.4 ..."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.middleware import Handler, RetryLayer, build_chain, transport
from mesh.resilience.backoff import BackoffPolicy
from mesh.resilience.budget import RetryBudget
from mesh.resilience.retry import Idempotency, RetryPolicy
from mesh.testing import FakeEndpoint, FakeMulticallable, FakeSleep, VirtualClock

Code = grpc.StatusCode
IDEM, NSE, UNK = Idempotency.IDEMPOTENT, Idempotency.NO_SIDE_EFFECTS, Idempotency.UNKNOWN
METHOD = "/hms.test.v1.Echo/Say"
PUSHBACK = "grpc-retry-pushback-ms"
NO_JITTER = BackoffPolicy(base=0.1, cap=1.0, multiplier=2.0, jitter=0.0)
POLICY = RetryPolicy(max_attempts=3, backoff=NO_JITTER)  # UNAVAILABLE only


@dataclass(frozen=True)
class Fail:
    """One failed attempt, as the transport leaves it on the call."""

    code: Code = Code.UNAVAILABLE
    sent: bool = True
    trailers: tuple[tuple[str, Any], ...] = ()


class ScriptedNext:
    """The rest of the chain: answers attempt n with step n (a `Fail` or a response)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.attempts: list[int] = []

    async def __call__(self, call: CallInfo) -> Any:
        self.attempts.append(call.attempt)
        step = self.steps[len(self.attempts) - 1]
        if isinstance(step, Fail):
            call.sent = step.sent
            call.trailers = step.trailers
            raise rpc_error(step.code, f"attempt {call.attempt} failed")
        call.sent = True
        return step


def make_call(idempotency: Idempotency = IDEM, kind: CallKind = CallKind.UNARY_UNARY) -> CallInfo:
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


def make_layer(
    clock: VirtualClock, policy: RetryPolicy = POLICY, budget: RetryBudget | None = None
) -> tuple[RetryLayer, FakeSleep]:
    sleep = FakeSleep(clock)
    layer = RetryLayer(
        lambda _method: policy,
        budget if budget is not None else RetryBudget(clock),
        rand=lambda: 0.5,
        sleep=sleep,
        clock=clock,
    )
    return layer, sleep


async def outcome(layer: RetryLayer, call: CallInfo, next_: Handler) -> Any:
    """The response, or the status code the call failed with."""
    try:
        return await layer(call, next_)
    except grpc.aio.AioRpcError as exc:
        return exc.code()


def pushback(value: Any) -> Fail:
    return Fail(trailers=((PUSHBACK, value),))


WIDE = RetryPolicy(
    max_attempts=5,
    retryable_codes={Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED},
    backoff=NO_JITTER,
)


@pytest.mark.parametrize(
    ("policy", "idempotency", "steps", "expected", "attempts", "delays"),
    [
        pytest.param(POLICY, IDEM, ["ok"], "ok", [0], [], id="success-not-retried"),
        pytest.param(
            POLICY, IDEM, [Fail(), "ok"], "ok", [0, 1], [0.1], id="unavailable-retried"
        ),
        pytest.param(
            POLICY, IDEM, [Fail(Code.INTERNAL), "ok"], Code.INTERNAL, [0], [],
            id="internal-not-retried-by-default",
        ),
        pytest.param(
            POLICY, IDEM, [Fail(Code.DEADLINE_EXCEEDED), "ok"], Code.DEADLINE_EXCEEDED, [0], [],
            id="deadline-exceeded-not-retried-by-default",
        ),
        pytest.param(
            POLICY, IDEM, [Fail(Code.RESOURCE_EXHAUSTED), "ok"], Code.RESOURCE_EXHAUSTED, [0],
            [], id="resource-exhausted-not-retried-by-default",
        ),
        pytest.param(
            WIDE, IDEM, [Fail(Code.RESOURCE_EXHAUSTED), "ok"], "ok", [0, 1], [0.1],
            id="policy-codes-retried",
        ),
        pytest.param(
            POLICY, NSE, [Fail(sent=True), "ok"], "ok", [0, 1], [0.1],
            id="no-side-effects-retried-after-reaching-server",
        ),
        pytest.param(
            POLICY, IDEM, [Fail(sent=True), "ok"], "ok", [0, 1], [0.1],
            id="idempotent-retried-after-reaching-server",
        ),
        pytest.param(
            POLICY, UNK, [Fail(sent=True), "ok"], Code.UNAVAILABLE, [0], [],
            id="unknown-not-retried-after-reaching-server",
        ),
        pytest.param(
            POLICY, UNK, [Fail(sent=False), "ok"], "ok", [0, 1], [0.1],
            id="unknown-retried-when-never-sent",
        ),
        pytest.param(
            POLICY, UNK, [Fail(sent=False), Fail(sent=True), "ok"], Code.UNAVAILABLE, [0, 1],
            [0.1], id="unknown-stops-once-an-attempt-was-sent",
        ),
        pytest.param(
            POLICY, IDEM, [Fail(), Fail(), Fail(), "ok"], Code.UNAVAILABLE, [0, 1, 2],
            [0.1, 0.2], id="max-attempts-honoured",
        ),
        pytest.param(
            RetryPolicy(max_attempts=1), IDEM, [Fail(), "ok"], Code.UNAVAILABLE, [0], [],
            id="max-attempts-one-never-retries",
        ),
        pytest.param(
            WIDE, IDEM, [Fail()] * 4 + ["ok"], "ok", [0, 1, 2, 3, 4], [0.1, 0.2, 0.4, 0.8],
            id="five-attempts-with-exponential-backoff",
        ),
        pytest.param(
            POLICY, IDEM, [pushback("250"), "ok"], "ok", [0, 1], [0.25],
            id="pushback-sets-the-delay",
        ),
        pytest.param(
            POLICY, IDEM, [pushback(b"1500"), "ok"], "ok", [0, 1], [1.5],
            id="pushback-as-bytes-beyond-backoff-cap",
        ),
        pytest.param(
            POLICY, IDEM, [pushback("0"), "ok"], "ok", [0, 1], [0.0], id="pushback-zero"
        ),
        pytest.param(
            POLICY, IDEM, [pushback("-1"), "ok"], Code.UNAVAILABLE, [0], [],
            id="negative-pushback-stops",
        ),
        pytest.param(
            POLICY, IDEM, [pushback("soon"), "ok"], Code.UNAVAILABLE, [0], [],
            id="malformed-pushback-stops",
        ),
        pytest.param(
            POLICY, IDEM, [pushback("1.5"), "ok"], Code.UNAVAILABLE, [0], [],
            id="fractional-pushback-stops",
        ),
        pytest.param(
            POLICY, IDEM, [pushback(""), "ok"], Code.UNAVAILABLE, [0], [],
            id="empty-pushback-stops",
        ),
        pytest.param(
            POLICY, IDEM, [pushback(str(2**31)), "ok"], Code.UNAVAILABLE, [0], [],
            id="pushback-beyond-int32-stops",
        ),
        pytest.param(
            POLICY, UNK, [Fail(sent=True, trailers=((PUSHBACK, "10"),)), "ok"], Code.UNAVAILABLE,
            [0], [], id="pushback-does-not-make-unknown-safe",
        ),
    ],
)  # fmt: skip
async def test_retry_table(
    *,
    policy: RetryPolicy,
    idempotency: Idempotency,
    steps: list[Any],
    expected: Any,
    attempts: list[int],
    delays: list[float],
) -> None:
    clock = VirtualClock()
    layer, sleep = make_layer(clock, policy)
    next_ = ScriptedNext(*steps)

    assert await outcome(layer, make_call(idempotency), next_) == expected
    assert next_.attempts == attempts
    assert sleep.delays == pytest.approx(delays)
    assert layer.retries == len(attempts) - 1
    assert layer.budget_refusals == 0


@pytest.mark.parametrize(
    ("left", "steps", "attempts", "delays"),
    [
        pytest.param(
            0.15, [Fail(), Fail(), "ok"], [0, 1], [0.1],
            id="second-backoff-would-pass-the-deadline",
        ),
        pytest.param(
            0.1, [Fail(), "ok"], [0], [], id="backoff-equal-to-what-is-left",
        ),
        pytest.param(
            0.3, [pushback("500"), "ok"], [0], [], id="pushback-past-the-deadline",
        ),
        pytest.param(
            0.6, [pushback("500"), "ok"], [0, 1], [0.5], id="pushback-within-the-deadline",
        ),
        pytest.param(
            -1.0, [Fail(), "ok"], [0], [], id="deadline-already-passed",
        ),
    ],
)  # fmt: skip
async def test_no_retry_that_would_end_past_the_deadline(
    left: float, steps: list[Any], attempts: list[int], delays: list[float]
) -> None:
    clock = VirtualClock(0.0)  # deadline - now is then exactly `left`
    layer, sleep = make_layer(clock)
    next_ = ScriptedNext(*steps)
    call = make_call()
    call.deadline = clock() + left

    await outcome(layer, call, next_)

    assert next_.attempts == attempts
    assert sleep.delays == pytest.approx(delays)


async def test_budget_exhausted_refuses_the_retry() -> None:
    clock = VirtualClock()
    budget = RetryBudget(clock, ratio=0.0, min_per_second=0.0)
    layer, sleep = make_layer(clock, budget=budget)
    next_ = ScriptedNext(Fail(), "ok")

    assert await outcome(layer, make_call(), next_) is Code.UNAVAILABLE
    assert next_.attempts == [0]
    assert sleep.delays == []
    assert layer.budget_refusals == 1
    assert layer.retries == 0


async def test_budget_buys_as_many_retries_as_it_holds() -> None:
    clock = VirtualClock()
    budget = RetryBudget(clock, ratio=1.0, min_per_second=0.0)  # each call buys one retry
    layer, _ = make_layer(clock, budget=budget)
    next_ = ScriptedNext(Fail(), Fail(), "ok")

    assert await outcome(layer, make_call(), next_) is Code.UNAVAILABLE
    assert next_.attempts == [0, 1]
    assert (layer.retries, layer.budget_refusals) == (1, 1)


async def test_budget_not_spent_on_failures_that_are_not_retried() -> None:
    clock = VirtualClock()
    budget = RetryBudget(clock, ratio=0.0, min_per_second=0.5)  # 5 tokens per window
    layer, _ = make_layer(clock, budget=budget)
    before = budget.balance()

    await outcome(layer, make_call(), ScriptedNext(Fail(Code.INTERNAL)))
    await outcome(layer, make_call(UNK), ScriptedNext(Fail(sent=True)))

    assert budget.balance() == before
    assert layer.budget_refusals == 0


async def test_every_call_deposits_in_the_budget() -> None:
    clock = VirtualClock()
    budget = RetryBudget(clock, ratio=1.0, min_per_second=0.0)
    layer, _ = make_layer(clock, budget=budget)

    for _ in range(3):
        await outcome(layer, make_call(), ScriptedNext("ok"))

    assert budget.balance() == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("sent", "attempts", "expected"),
    [
        pytest.param(False, [0, 1], "ok", id="never-sent-retried-once"),
        pytest.param(True, [0], Code.UNAVAILABLE, id="sent-never-retried"),
    ],
)
async def test_streaming_calls_are_retried_only_when_never_sent(
    sent: bool, attempts: list[int], expected: Any
) -> None:
    clock = VirtualClock()
    layer, _ = make_layer(clock)
    next_ = ScriptedNext(Fail(sent=sent), "ok")

    assert await outcome(layer, make_call(kind=CallKind.UNARY_STREAM), next_) == expected
    assert next_.attempts == attempts


# -- regressions: bugs found while writing these tests ------------------------------------


async def test_pushback_sent_twice_stops() -> None:
    clock = VirtualClock()
    layer, _ = make_layer(clock)
    twice = Fail(trailers=((PUSHBACK, "10"), (PUSHBACK, "20")))
    next_ = ScriptedNext(twice, "ok")

    assert await outcome(layer, make_call(), next_) is Code.UNAVAILABLE
    assert next_.attempts == [0]


async def test_pushback_applies_only_to_the_attempt_that_carried_it() -> None:
    clock = VirtualClock()
    layer, sleep = make_layer(clock)

    class PickFailsSecond(ScriptedNext):
        async def __call__(self, call: CallInfo) -> Any:
            if call.attempt == 1:  # fails like PickLayer: trailers untouched
                self.attempts.append(call.attempt)
                call.sent = False
                raise rpc_error(Code.UNAVAILABLE, "no ready instance")
            return await super().__call__(call)

    next_ = PickFailsSecond(pushback("900"), None, "ok")

    assert await outcome(layer, make_call(), next_) == "ok"
    assert sleep.delays == pytest.approx([0.9, 0.2]), "the second retry waits its own backoff"


async def test_streaming_honours_max_attempts_one() -> None:
    clock = VirtualClock()
    layer, _ = make_layer(clock, RetryPolicy(max_attempts=1))
    next_ = ScriptedNext(Fail(sent=False), "ok")

    assert await outcome(layer, make_call(kind=CallKind.UNARY_STREAM), next_) is Code.UNAVAILABLE
    assert next_.attempts == [0]


# -- RetryLayer and transport together: the attempt number reaches the wire ----------------


class UseEndpoint:
    """Stands in for PickLayer: every attempt goes to the one fake endpoint."""

    def __init__(self, endpoint: FakeEndpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        call.endpoint = self.endpoint
        return await next(call)


def unavailable(trailers: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        Code.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailers),
        details="server going away",
        debug_error_string=None,
    )


async def test_retries_send_grpc_previous_rpc_attempts() -> None:
    clock = VirtualClock()
    layer, sleep = make_layer(clock)
    multicallable = FakeMulticallable(unavailable(), unavailable(((PUSHBACK, "30"),)), "ok")
    chain = build_chain([layer, UseEndpoint(FakeEndpoint(multicallable))], transport)

    assert await chain(make_call()) == "ok"

    previous = [
        [v for k, v in sent.metadata if k == "grpc-previous-rpc-attempts"]
        for sent in multicallable.sent
    ]
    assert previous == [[], ["1"], ["2"]]
    assert sleep.delays == pytest.approx([0.1, 0.03]), "the pushback trailer reached the layer"
    assert [sent.timeout for sent in multicallable.sent] == [None, None, None]
