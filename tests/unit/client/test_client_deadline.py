"""DeadlineLayer on a virtual clock: the outbound deadline is the least of the caller's timeout
(or the method's default: exact method, then `/svc/*`, then the global default) and the inbound
deadline of the request being served; with less than `minimum` left the call is not sent."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, service_of
from mesh.client.middleware import DeadlineLayer
from mesh.deadline import DeadlineConfig, inbound_scope
from mesh.resilience.retry import Idempotency

NOW = 1000.0
CONFIG = DeadlineConfig(
    default=10.0,
    per_method={"/hms.test.v1.Echo/Say": 1.0, "/hms.test.v1.Echo/*": 2.0},
    minimum=0.005,
)
SAY = "/hms.test.v1.Echo/Say"
SHOUT = "/hms.test.v1.Echo/Shout"
OTHER = "/hms.other.v1.Other/Get"


def make_call(method: str, timeout: float | None) -> CallInfo:
    return CallInfo(
        kind=CallKind.UNARY_UNARY,
        method=method,
        service=service_of(method),
        request=b"",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=Idempotency.UNKNOWN,
        timeout=timeout,
    )


class RecordingNext:
    """The rest of the chain: remembers the deadline each call arrived with."""

    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    async def __call__(self, call: CallInfo) -> Any:
        self.deadlines.append(call.deadline)
        return "response"


def served_with(time_remaining: float | None) -> contextlib.AbstractContextManager[None]:
    """The scope of an inbound request with `time_remaining` left (no scope when "none")."""
    return inbound_scope(time_remaining, now=NOW)


@pytest.mark.parametrize(
    ("method", "timeout", "inbound_left", "left"),
    [
        pytest.param(SAY, 3.0, None, 3.0, id="own-timeout-beats-method-default"),
        pytest.param(SAY, None, None, 1.0, id="exact-method-default"),
        pytest.param(SHOUT, None, None, 2.0, id="service-wildcard-default"),
        pytest.param(OTHER, None, None, 10.0, id="global-default"),
        pytest.param(SAY, 3.0, 0.5, 0.5, id="inbound-earlier-than-own-timeout"),
        pytest.param(SHOUT, None, 0.25, 0.25, id="inbound-earlier-than-method-default"),
        pytest.param(SAY, 3.0, 20.0, 3.0, id="inbound-later-than-own-timeout"),
        pytest.param(OTHER, None, 60.0, 10.0, id="inbound-later-than-default"),
        pytest.param(SAY, 0.2, 0.2, 0.2, id="inbound-equal-to-own"),
    ],
)
async def test_outbound_deadline(
    method: str, timeout: float | None, inbound_left: float | None, left: float
) -> None:
    layer = DeadlineLayer(CONFIG, clock=lambda: NOW)
    next_ = RecordingNext()
    call = make_call(method, timeout)

    with served_with(inbound_left):
        assert await layer(call, next_) == "response"

    assert call.deadline == pytest.approx(NOW + left)
    assert next_.deadlines == [call.deadline]


@pytest.mark.parametrize(
    ("method", "timeout", "inbound_left"),
    [
        pytest.param(SAY, 0.001, None, id="own-timeout-below-minimum"),
        pytest.param(SAY, 0.0, None, id="zero-timeout"),
        pytest.param(SAY, -1.0, None, id="negative-timeout"),
        pytest.param(SAY, 3.0, 0.004, id="inbound-nearly-spent"),
        pytest.param(OTHER, None, 0.0, id="inbound-spent"),
    ],
)
async def test_below_minimum_is_not_sent(
    method: str, timeout: float | None, inbound_left: float | None
) -> None:
    layer = DeadlineLayer(CONFIG, clock=lambda: NOW)
    next_ = RecordingNext()

    with served_with(inbound_left), pytest.raises(grpc.aio.AioRpcError) as caught:
        await layer(make_call(method, timeout), next_)

    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not sent" in (caught.value.details() or "")
    assert method in (caught.value.details() or "")
    assert next_.deadlines == [], "the next handler must not be called"


async def test_inbound_scope_ends_with_its_block() -> None:
    layer = DeadlineLayer(CONFIG, clock=lambda: NOW)
    with served_with(0.5):
        inside = make_call(SAY, 3.0)
        await layer(inside, RecordingNext())
    outside = make_call(SAY, 3.0)
    await layer(outside, RecordingNext())

    assert inside.deadline == pytest.approx(NOW + 0.5)
    assert outside.deadline == pytest.approx(NOW + 3.0)


async def test_deadline_follows_the_clock() -> None:
    now = [NOW]
    layer = DeadlineLayer(CONFIG, clock=lambda: now[0])
    first, second = make_call(SAY, None), make_call(SAY, None)

    await layer(first, RecordingNext())
    now[0] += 7.0
    await layer(second, RecordingNext())

    assert second.deadline == pytest.approx(first.deadline + 7.0)  # type: ignore[operator]
