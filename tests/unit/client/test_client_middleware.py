"""The chain's shape and its last step: `build_chain` runs layers outermost-first as listed,
and `transport` makes one per-instance grpc.aio call (metadata, timeout, sent, trailers),
checked against a fake endpoint whose multicallable records what it was given."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from mesh.client.call import CallInfo, CallKind, GuardedStream, rpc_error, service_of
from mesh.client.middleware import Handler, build_chain, never_sent, remaining, transport
from mesh.resilience.retry import Idempotency
from mesh.testing import FakeEndpoint, FakeMulticallable, FakeRpc, SentCall

Code = grpc.StatusCode
METHOD = "/hms.test.v1.Echo/Say"


def make_call(kind: CallKind = CallKind.UNARY_UNARY, attempt: int = 0) -> CallInfo:
    return CallInfo(
        kind=kind,
        method=METHOD,
        service=service_of(METHOD),
        request=b"request",
        metadata=[("x-caller", "test")],
        serializer=None,
        deserializer=None,
        idempotency=Idempotency.IDEMPOTENT,
        attempt=attempt,
    )


# -- build_chain ---------------------------------------------------------------------------


class Recording:
    """A layer that logs when it is entered and left, around the rest of the chain."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        self.log.append(f"{self.name}>")
        try:
            return await next(call)
        finally:
            self.log.append(f"<{self.name}")


class ShortCircuit:
    """A layer that answers itself and never calls the rest of the chain."""

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        return "short"


def terminal_for(log: list[str]) -> Handler:
    async def terminal(call: CallInfo) -> Any:
        log.append("terminal")
        return "response"

    return terminal


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param([], ["terminal"], id="no-layers-is-the-terminal"),
        pytest.param(["a"], ["a>", "terminal", "<a"], id="one-layer"),
        pytest.param(
            ["deadline", "retry", "pick"],
            ["deadline>", "retry>", "pick>", "terminal", "<pick", "<retry", "<deadline"],
            id="outermost-first-as-listed",
        ),
        pytest.param(
            ["pick", "retry", "deadline"],
            ["pick>", "retry>", "deadline>", "terminal", "<deadline", "<retry", "<pick"],
            id="order-follows-the-list-not-the-names",
        ),
    ],
)
async def test_build_chain_runs_layers_outermost_first(
    names: list[str], expected: list[str]
) -> None:
    log: list[str] = []
    chain = build_chain([Recording(name, log) for name in names], terminal_for(log))

    assert await chain(make_call()) == "response"
    assert log == expected


async def test_build_chain_a_layer_may_answer_without_the_rest() -> None:
    log: list[str] = []
    chain = build_chain(
        [Recording("outer", log), ShortCircuit(), Recording("inner", log)], terminal_for(log)
    )

    assert await chain(make_call()) == "short"
    assert log == ["outer>", "<outer"]


async def test_build_chain_errors_unwind_through_every_outer_layer() -> None:
    log: list[str] = []

    async def failing(call: CallInfo) -> Any:
        raise rpc_error(Code.UNAVAILABLE, "down")

    chain = build_chain([Recording("a", log), Recording("b", log)], failing)

    with pytest.raises(grpc.aio.AioRpcError):
        await chain(make_call())
    assert log == ["a>", "b>", "<b", "<a"]


# -- transport -----------------------------------------------------------------------------


def server_error(
    code: Code, details: str = "boom", trailers: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailers),
        details=details,
        debug_error_string=None,
    )


async def test_transport_first_attempt_sends_the_callers_request_as_is() -> None:
    multicallable = FakeMulticallable("response")
    endpoint = FakeEndpoint(multicallable)
    call = make_call()
    call.endpoint = endpoint
    call.wait_for_ready = True

    assert await transport(call) == "response"

    assert endpoint.asked == [("unary_unary", METHOD)]
    assert multicallable.sent == [SentCall(b"request", None, [("x-caller", "test")], True)]
    assert call.sent is True


@pytest.mark.parametrize(
    "attempt",
    [pytest.param(1, id="first-retry"), pytest.param(4, id="fifth-attempt")],
)
async def test_transport_retries_carry_previous_attempts(attempt: int) -> None:
    multicallable = FakeMulticallable("response")
    call = make_call(attempt=attempt)
    call.endpoint = FakeEndpoint(multicallable)

    await transport(call)

    assert multicallable.sent[0].metadata == [
        ("x-caller", "test"),
        ("grpc-previous-rpc-attempts", str(attempt)),
    ]
    assert call.metadata == [("x-caller", "test")], "the caller's metadata is not changed"


async def test_transport_timeout_is_what_is_left_of_the_deadline() -> None:
    multicallable = FakeMulticallable("response")
    call = make_call()
    call.endpoint = FakeEndpoint(multicallable)
    call.deadline = time.monotonic() + 2.0

    await transport(call)

    timeout = multicallable.sent[0].timeout
    assert timeout is not None
    assert 1.0 < timeout <= 2.0


async def test_transport_failure_after_reaching_the_server_keeps_sent_and_trailers() -> None:
    trailers = (("grpc-retry-pushback-ms", "250"),)
    call = make_call()
    call.endpoint = FakeEndpoint(FakeMulticallable(server_error(Code.UNAVAILABLE, "", trailers)))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await transport(call)

    assert caught.value.code() is Code.UNAVAILABLE
    assert call.sent is True
    assert call.trailers == trailers


async def test_transport_connection_failure_is_not_sent() -> None:
    call = make_call()
    call.sent = True  # left over from an earlier attempt
    call.trailers = (("stale", "x"),)
    call.endpoint = FakeEndpoint(
        FakeMulticallable(server_error(Code.UNAVAILABLE, "failed to connect to all addresses"))
    )

    with pytest.raises(grpc.aio.AioRpcError):
        await transport(call)

    assert call.sent is False
    assert call.trailers == ()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(CallKind.UNARY_STREAM, id="unary-stream"),
        pytest.param(CallKind.STREAM_STREAM, id="stream-stream"),
    ],
)
async def test_transport_streaming_returns_the_call_unawaited(kind: CallKind) -> None:
    rpc = FakeRpc(["a message"])
    multicallable = FakeMulticallable(rpc)
    endpoint = FakeEndpoint(multicallable)
    call = make_call(kind=kind)
    call.endpoint = endpoint

    stream = await transport(call)
    assert isinstance(stream, GuardedStream)
    assert stream._rpc is rpc
    assert rpc.messages == ["a message"], "nothing was read"
    assert endpoint.asked == [(kind.value, METHOD)]
    assert call.sent is True


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        pytest.param(Code.UNAVAILABLE, "failed to connect to all addresses", True, id="connect"),
        pytest.param(
            Code.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            True,
            id="refused",
        ),
        # A backend's own words: it received the call, whatever its message says.
        pytest.param(
            Code.UNAVAILABLE,
            "failed to connect to db: Connection refused",
            False,
            id="backend-says-failed-to-connect",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "ledger down (failed to connect to all addresses)",
            False,
            id="backend-quotes-grpc",
        ),
        pytest.param(
            Code.UNAVAILABLE, "connections to all backends failed", True, id="all-backends"
        ),
        pytest.param(Code.UNAVAILABLE, "Socket closed", False, id="closed-mid-call"),
        pytest.param(Code.UNAVAILABLE, "", False, id="plain-unavailable"),
        pytest.param(Code.INTERNAL, "failed to connect", False, id="other-code"),
    ],
)
def test_never_sent(code: Code, details: str, expected: bool) -> None:
    assert never_sent(server_error(code, details)) is expected


@pytest.mark.parametrize(
    ("deadline", "now", "expected"),
    [
        pytest.param(None, 5.0, None, id="no-deadline"),
        pytest.param(7.5, 5.0, 2.5, id="left"),
        pytest.param(4.0, 5.0, -1.0, id="passed-is-negative"),
    ],
)
def test_remaining(deadline: float | None, now: float, expected: float | None) -> None:
    call = make_call()
    call.deadline = deadline
    assert remaining(call, now) == expected
