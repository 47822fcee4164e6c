"""EchoService handlers, called directly with a fake context and a fake sleep (no waiting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from hms.testing.v1 import echo_pb2
from mesh.errors import FailedPrecondition, InvalidArgument
from services.echo.service import EchoService

METHODS = [pytest.param("Echo", id="Echo"), pytest.param("EchoOnce", id="EchoOnce")]


class Aborted(Exception):
    """What FakeContext.abort raises, as grpc.aio's raises AbortError."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """Only what EchoService uses of grpc.aio.ServicerContext."""

    def __init__(
        self,
        time_remaining: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        self.remaining = time_remaining
        self.metadata = tuple(metadata)
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.aborted.append((code, details))
        raise Aborted(code, details)


class FakeSleep:
    """Records the delays asked for; advances the context's deadline instead of waiting."""

    def __init__(self, context: FakeContext | None = None) -> None:
        self.context = context
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.context is not None and self.context.remaining is not None:
            self.context.remaining -= seconds


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
    )
    assert sleep.calls == []


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
    sleep = FakeSleep(context)
    response = await call(method, echo_pb2.EchoRequest(delay_ms=250), context, sleep)
    assert sleep.calls == [0.25]
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
    assert sleep.calls == [0.03]
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
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")
    assert context.aborted == []
    assert sleep.calls == []


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
