"""EchoService handlers, called directly with a fake context and a fake sleep (no waiting)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from hms.testing.v1 import echo_pb2
from mesh.errors import FailedPrecondition, InvalidArgument
from mesh.testing import Aborted, FakeContext, FakeSleep
from tests.backends.echo.service import EchoService

METHODS = [pytest.param("Echo", id="Echo"), pytest.param("EchoOnce", id="EchoOnce")]


async def call(
    method: str,
    request: echo_pb2.EchoRequest,
    context: FakeContext | None = None,
    sleep: FakeSleep | None = None,
) -> echo_pb2.EchoResponse:
    service = EchoService("echo-a", sleep=sleep or FakeSleep())
    ctx: Any = context or FakeContext()
    response: echo_pb2.EchoResponse = await getattr(service, method)(request, ctx)
    return response


@pytest.mark.parametrize("method", METHODS)
async def test_echoes_the_message_and_who_served_it(method: str) -> None:
    sleep = FakeSleep()
    response = await call(method, echo_pb2.EchoRequest(message="hi ✓"), sleep=sleep)
    assert response == echo_pb2.EchoResponse(
        message="hi ✓",
        served_by="echo-a",
        deadline_left_ms=-1,
        previous_attempts=0,
        hops=[echo_pb2.Hop(served_by="echo-a", deadline_left_ms=-1)],
        pid=os.getpid(),
    )
    assert sleep.delays == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("remaining", "expected_ms"),
    [
        pytest.param(None, -1, id="no-deadline"),
        pytest.param(1.5, 1500, id="1.5s"),
        pytest.param(0.0004, 0, id="under-a-millisecond"),
    ],
)
async def test_reports_the_deadline_left(
    method: str, remaining: float | None, expected_ms: int
) -> None:
    response = await call(method, echo_pb2.EchoRequest(), FakeContext(time_remaining=remaining))
    assert response.deadline_left_ms == expected_ms


@pytest.mark.parametrize("method", METHODS)
async def test_delay_sleeps_and_deadline_is_read_on_arrival(method: str) -> None:
    context = FakeContext(time_remaining=2.0)
    sleep = FakeSleep(context.clock)
    response = await call(method, echo_pb2.EchoRequest(delay_ms=250), context, sleep)
    assert sleep.delays == [0.25]
    assert response.deadline_left_ms == 2000


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param((), 0, id="absent"),
        pytest.param((("grpc-previous-rpc-attempts", "2"),), 2, id="two"),
        pytest.param((("x-other", "9"), ("grpc-previous-rpc-attempts", "1")), 1, id="among-others"),
        pytest.param((("grpc-previous-rpc-attempts", b"3"),), 3, id="bytes"),
        pytest.param((("grpc-previous-rpc-attempts", "abc"),), 0, id="not-a-number"),
        pytest.param((("grpc-previous-rpc-attempts", "-1"),), 0, id="negative"),
        pytest.param((("grpc-previous-rpc-attempts", ""),), 0, id="empty"),
        pytest.param((("grpc-previous-rpc-attempts", "²"),), 0, id="unicode-digit"),
        pytest.param((("grpc-previous-rpc-attempts", "9" * 20),), 2**31 - 1, id="huge-clamped"),
    ],
)
async def test_reports_previous_attempts(
    method: str, metadata: Sequence[tuple[str, str | bytes]], expected: int
) -> None:
    response = await call(method, echo_pb2.EchoRequest(), FakeContext(metadata=metadata))
    assert response.previous_attempts == expected


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "code",
    [pytest.param(c, id=c.name) for c in grpc.StatusCode if c is not grpc.StatusCode.OK],
)
async def test_fail_code_aborts_with_that_status(method: str, code: grpc.StatusCode) -> None:
    context = FakeContext()
    with pytest.raises(Aborted) as caught:
        await call(method, echo_pb2.EchoRequest(fail_code=code.value[0]), context)
    assert caught.value.code is code
    assert caught.value.details == f"echo asked to fail with {code.name}"


@pytest.mark.parametrize("method", METHODS)
async def test_delay_comes_before_the_failure(method: str) -> None:
    context = FakeContext()
    sleep = FakeSleep()
    with pytest.raises(Aborted):
        await call(method, echo_pb2.EchoRequest(delay_ms=30, fail_code=14), context, sleep)
    assert sleep.delays == [0.03]
    assert context.aborted == [(grpc.StatusCode.UNAVAILABLE, "echo asked to fail with UNAVAILABLE")]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        pytest.param({"fail_code": -1}, "fail_code", id="fail_code-negative"),
        pytest.param({"fail_code": 17}, "fail_code", id="fail_code-just-above-16"),
        pytest.param({"fail_code": 1000}, "fail_code", id="fail_code-large"),
        pytest.param({"delay_ms": -5}, "delay_ms", id="delay_ms-negative"),
    ],
)
async def test_rejects_invalid_input_without_sleeping_or_aborting(
    method: str, request_fields: dict[str, int], field: str
) -> None:
    context = FakeContext()
    sleep = FakeSleep()
    with pytest.raises(InvalidArgument) as caught:
        await call(
            method, echo_pb2.EchoRequest(**{"delay_ms": 100, **request_fields}), context, sleep
        )
    assert [f for f, _ in caught.value.violations] == [field]
    assert caught.value.message.startswith(f"{field}: ")
    assert context.aborted == []
    assert sleep.delays == []


async def test_default_sleep_is_asyncio_sleep() -> None:
    # A real, short delay once, so the default wiring is covered too.
    context: Any = FakeContext()
    response = await EchoService("echo-b").Echo(echo_pb2.EchoRequest(delay_ms=1), context)
    assert response.served_by == "echo-b"


@pytest.mark.parametrize("method", METHODS)
async def test_set_failure_switches_every_echo_to_fail_until_switched_back(method: str) -> None:
    service = EchoService("echo-a")
    switched = await service.SetFailure(echo_pb2.SetFailureRequest(code=14), object())
    assert switched == echo_pb2.SetFailureResponse(served_by="echo-a", code=14)
    context = FakeContext()
    with pytest.raises(Aborted) as failed:
        await getattr(service, method)(echo_pb2.EchoRequest(message="x"), context)
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    await service.SetFailure(echo_pb2.SetFailureRequest(code=0), object())
    answer = await getattr(service, method)(echo_pb2.EchoRequest(message="x"), FakeContext())
    assert answer.message == "x"


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        pytest.param("code", echo_pb2.SetFailureRequest(code=99), id="set-failure-unknown-code"),
        pytest.param("forward_hops", echo_pb2.EchoRequest(forward_hops=-1), id="negative-hops"),
    ],
)
async def test_bad_switch_and_hop_values_name_the_field(field: str, request_: object) -> None:
    service = EchoService("echo-a")
    if isinstance(request_, echo_pb2.SetFailureRequest):
        call = service.SetFailure(request_, object())
    else:
        call = service.Echo(request_, FakeContext())
    with pytest.raises(InvalidArgument) as bad:
        await call
    assert field in str(bad.value)


class ScriptedRand:
    """Hands out the given draws in order; a draw nobody scripted fails the test."""

    def __init__(self, draws: Sequence[float] = ()) -> None:
        self.draws = list(draws)
        self.used = 0

    def __call__(self) -> float:
        assert self.used < len(self.draws), "drew more often than scripted"
        self.used += 1
        return self.draws[self.used - 1]


def faulty(
    fault: echo_pb2.SetFaultRequest | None = None,
    sleep: FakeSleep | None = None,
    rand: ScriptedRand | None = None,
) -> EchoService:
    """An EchoService on fake sleep and scripted draws (SetFault applied by the caller)."""
    return EchoService("echo-a", sleep=sleep or FakeSleep(), rand=rand or ScriptedRand())


async def outcome(service: EchoService, method: str) -> str:
    """'ok' or the status code's name, for one call on `service`."""
    try:
        await getattr(service, method)(echo_pb2.EchoRequest(message="x"), FakeContext())
    except Aborted as failed:
        return failed.code.name
    return "ok"


@pytest.mark.parametrize(
    ("fields", "field", "bad"),
    [
        pytest.param({"delay_ms": -1}, "delay_ms", "-1", id="delay_ms-negative"),
        pytest.param({"delay_ms": 60_001}, "delay_ms", "60001", id="delay_ms-above-60000"),
        pytest.param({"fail_percent": -1, "fail_code": 14}, "fail_percent", "-1", id="percent-neg"),
        pytest.param(
            {"fail_percent": 101, "fail_code": 14}, "fail_percent", "101", id="percent-above-100"
        ),
        pytest.param({"fail_code": -1}, "fail_code", "-1", id="fail_code-negative"),
        pytest.param({"fail_code": 17}, "fail_code", "17", id="fail_code-just-above-16"),
        pytest.param({"fail_code": 17, "fail_percent": 50}, "fail_code", "17", id="unknown-code"),
        pytest.param({"fail_percent": 50}, "fail_code", "got 0", id="percent-without-code"),
        pytest.param({"fail_percent": 100}, "fail_code", "got 0", id="all-without-code"),
    ],
)
async def test_set_fault_refuses_bad_values_naming_the_field_and_keeps_the_old_fault(
    fields: dict[str, int], field: str, bad: str
) -> None:
    sleep = FakeSleep()
    service = faulty(sleep=sleep)
    await service.SetFault(echo_pb2.SetFaultRequest(delay_ms=5), object())
    with pytest.raises(InvalidArgument) as caught:
        await service.SetFault(echo_pb2.SetFaultRequest(**fields), object())
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.violations] == [field]
    assert caught.value.message.startswith(f"{field}: ")
    assert bad in caught.value.message
    # The fault in force before the refused request still holds.
    assert await outcome(service, "Echo") == "ok"
    assert sleep.delays == [0.005]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="all-zero"),
        pytest.param({"delay_ms": 60_000}, id="longest-delay"),
        pytest.param({"fail_code": 16, "fail_percent": 100}, id="always-UNAUTHENTICATED"),
        pytest.param({"fail_code": 1, "fail_percent": 1}, id="one-percent-CANCELLED"),
        pytest.param({"fail_code": 14}, id="code-armed-at-zero-percent"),
        pytest.param({"delay_ms": 250, "fail_code": 8, "fail_percent": 30}, id="slow-and-flaky"),
    ],
)
async def test_set_fault_answers_with_the_fault_now_in_force(fields: dict[str, int]) -> None:
    answer = await faulty().SetFault(echo_pb2.SetFaultRequest(**fields), object())
    assert answer == echo_pb2.SetFaultResponse(served_by="echo-a", **fields)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("fault_ms", "request_ms", "expected"),
    [
        pytest.param(0, 0, [], id="none"),
        pytest.param(0, 250, [0.25], id="request-only"),
        pytest.param(40, 0, [0.04], id="fault-only"),
        pytest.param(40, 250, [0.04, 0.25], id="fault-then-request"),
    ],
)
async def test_fault_delay_is_added_to_the_request_delay(
    method: str, fault_ms: int, request_ms: int, expected: list[float]
) -> None:
    context = FakeContext(time_remaining=2.0)
    sleep = FakeSleep(context.clock)
    service = faulty(sleep=sleep)
    await service.SetFault(echo_pb2.SetFaultRequest(delay_ms=fault_ms), object())
    response = await getattr(service, method)(echo_pb2.EchoRequest(delay_ms=request_ms), context)
    assert sleep.delays == expected
    assert response.deadline_left_ms == 2000  # still read on arrival


async def test_fault_delay_holds_up_every_stream_answer() -> None:
    sleep = FakeSleep()
    service = faulty(sleep=sleep)
    await service.SetFault(echo_pb2.SetFaultRequest(delay_ms=20), object())
    request = echo_pb2.EchoRequest(message="m", count=3, delay_ms=10)
    replies = [r.message async for r in service.EchoStream(request, FakeContext())]
    assert replies == ["m 1", "m 2", "m 3"]
    assert sleep.delays == [0.02, 0.01] * 3


async def test_fault_delay_applies_where_it_is_set_not_at_the_last_hop() -> None:
    seen: list[echo_pb2.EchoRequest] = []

    class NextHop:
        async def Echo(self, request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
            seen.append(request)
            return echo_pb2.EchoResponse(served_by="echo-b", hops=[echo_pb2.Hop(served_by="b")])

    async def forward() -> Any:
        return NextHop()

    sleep = FakeSleep()
    service = EchoService("echo-a", sleep=sleep, forward=forward)
    await service.SetFault(echo_pb2.SetFaultRequest(delay_ms=40), object())
    await service.Echo(echo_pb2.EchoRequest(delay_ms=10, forward_hops=1), FakeContext())
    assert sleep.delays == [0.04]  # the request's own delay is the last hop's
    assert [(r.delay_ms, r.forward_hops) for r in seen] == [(10, 0)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("percent", "draws", "expected"),
    [
        pytest.param(
            50, [0.1, 0.9, 0.4, 0.6], ["UNAVAILABLE", "ok", "UNAVAILABLE", "ok"], id="half"
        ),
        pytest.param(
            25, [0.25, 0.2499, 0.0, 0.99], ["ok", "UNAVAILABLE", "UNAVAILABLE", "ok"], id="quarter"
        ),
        pytest.param(1, [0.009, 0.01, 0.5], ["UNAVAILABLE", "ok", "ok"], id="one-percent"),
        pytest.param(100, [], ["UNAVAILABLE"] * 3, id="all-without-drawing"),
    ],
)
async def test_fail_percent_fails_the_calls_drawn_below_it(
    method: str, percent: int, draws: list[float], expected: list[str]
) -> None:
    rand = ScriptedRand(draws)
    service = faulty(rand=rand)
    await service.SetFault(echo_pb2.SetFaultRequest(fail_code=14, fail_percent=percent), object())
    assert [await outcome(service, method) for _ in expected] == expected
    assert rand.used == len(draws)


async def test_a_partial_fault_is_drawn_once_per_stream_not_per_answer() -> None:
    rand = ScriptedRand([0.9, 0.1])
    service = faulty(rand=rand)
    await service.SetFault(echo_pb2.SetFaultRequest(fail_code=8, fail_percent=50), object())
    request = echo_pb2.EchoRequest(message="m", count=3)
    whole = [r.message async for r in service.EchoStream(request, FakeContext())]
    assert whole == ["m 1", "m 2", "m 3"]
    with pytest.raises(Aborted) as failed:
        await anext(service.EchoStream(request, FakeContext()))
    assert failed.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rand.used == 2


@pytest.mark.parametrize("method", METHODS)
async def test_fault_delay_comes_before_the_failure_and_the_request_delay_never(
    method: str,
) -> None:
    context = FakeContext()
    sleep = FakeSleep()
    service = faulty(sleep=sleep)
    fault = echo_pb2.SetFaultRequest(delay_ms=30, fail_code=14, fail_percent=100)
    await service.SetFault(fault, object())
    with pytest.raises(Aborted):
        await getattr(service, method)(echo_pb2.EchoRequest(delay_ms=500), context)
    assert sleep.delays == [0.03]
    assert context.aborted == [
        (grpc.StatusCode.UNAVAILABLE, "echo-a is switched to fail with UNAVAILABLE")
    ]


@pytest.mark.parametrize("method", METHODS)
async def test_a_bad_request_is_refused_before_the_fault_applies(method: str) -> None:
    sleep = FakeSleep()
    rand = ScriptedRand()
    service = faulty(sleep=sleep, rand=rand)
    fault = echo_pb2.SetFaultRequest(delay_ms=30, fail_code=14, fail_percent=50)
    await service.SetFault(fault, object())
    with pytest.raises(InvalidArgument):
        await getattr(service, method)(echo_pb2.EchoRequest(delay_ms=-1), FakeContext())
    assert sleep.delays == []
    assert rand.used == 0


@pytest.mark.parametrize("method", METHODS)
async def test_an_all_zero_set_fault_switches_back_to_healthy(method: str) -> None:
    sleep = FakeSleep()
    rand = ScriptedRand([0.1])
    service = faulty(sleep=sleep, rand=rand)
    fault = echo_pb2.SetFaultRequest(delay_ms=30, fail_code=14, fail_percent=50)
    await service.SetFault(fault, object())
    assert await outcome(service, method) == "UNAVAILABLE"
    healthy = await service.SetFault(echo_pb2.SetFaultRequest(), object())
    assert healthy == echo_pb2.SetFaultResponse(served_by="echo-a")
    assert [await outcome(service, method) for _ in range(3)] == ["ok"] * 3
    assert sleep.delays == [0.03]  # only the call made under the fault
    assert rand.used == 1


@pytest.mark.parametrize(
    ("before", "code", "expected"),
    [
        pytest.param(
            echo_pb2.SetFaultRequest(delay_ms=40),
            14,
            "UNAVAILABLE",
            id="fails-every-call-and-drops-the-delay",
        ),
        pytest.param(
            echo_pb2.SetFaultRequest(delay_ms=40, fail_code=8, fail_percent=30),
            0,
            "ok",
            id="zero-clears-the-whole-fault",
        ),
    ],
)
async def test_set_failure_is_set_fault_failing_every_call_without_delay(
    before: echo_pb2.SetFaultRequest, code: int, expected: str
) -> None:
    sleep = FakeSleep()
    rand = ScriptedRand()  # SetFailure never needs a draw
    service = faulty(sleep=sleep, rand=rand)
    await service.SetFault(before, object())
    switched = await service.SetFailure(echo_pb2.SetFailureRequest(code=code), object())
    assert switched == echo_pb2.SetFailureResponse(served_by="echo-a", code=code)
    assert [await outcome(service, "Echo") for _ in range(3)] == [expected] * 3
    assert sleep.delays == []
    assert rand.used == 0


async def test_forwarding_without_a_channel_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        await EchoService("echo-a").Echo(echo_pb2.EchoRequest(forward_hops=1), FakeContext())


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(0, ["m 1"], id="zero-means-one"),
        pytest.param(1, ["m 1"], id="one"),
        pytest.param(3, ["m 1", "m 2", "m 3"], id="three"),
    ],
)
async def test_echo_stream_sends_count_responses(count: int, expected: list[str]) -> None:
    service = EchoService("echo-a")
    request = echo_pb2.EchoRequest(message="m", count=count)
    replies = [r.message async for r in service.EchoStream(request, FakeContext())]
    assert replies == expected


@pytest.mark.parametrize(
    "count", [pytest.param(-1, id="negative"), pytest.param(10_001, id="huge")]
)
async def test_echo_stream_refuses_a_bad_count_naming_it(count: int) -> None:
    stream = EchoService("echo-a").EchoStream(echo_pb2.EchoRequest(count=count), FakeContext())
    with pytest.raises(InvalidArgument) as bad:
        await anext(stream)
    assert "count" in str(bad.value)


async def test_collect_joins_the_streamed_messages() -> None:
    async def requests() -> Any:
        for word in ("a", "b"):
            yield echo_pb2.EchoRequest(message=word)

    answer = await EchoService("echo-a").Collect(requests(), FakeContext())
    assert answer.message == "a b"
