"""The one combinator for server interceptors (mesh.server.wrap): every handler shape (unary or
stream, each way) and kind (coroutine, writer coroutine, async generator, sync), with a scope,
a refusal or both, called directly with fake contexts (no server; the interceptors on a real
server are in test_server_interceptors.py and tests/unit/authz/)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import pytest

from mesh.server.wrap import (
    Around,
    AroundInterceptor,
    Behaviour,
    Kind,
    Refusal,
    kind_of,
    map_behaviour,
    wrap_behaviour,
)

UU, US, SU, SS = (False, False), (False, True), (True, False), (True, True)
DENIED = Refusal(grpc.StatusCode.PERMISSION_DENIED, "not you")


class Aborted(Exception):
    """What the fake async context's abort() raises, as grpc.aio's AbortError."""


class Context:
    """A fake ServicerContext that writes down what happens to the call in `events`."""

    def __init__(self, events: list[Any], *, abort_raises: bool = True) -> None:
        self.events = events
        self.abort_raises = abort_raises
        self.written: list[bytes] = []

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.events.append(("abort", code, message))
        if self.abort_raises:
            raise Aborted(message)

    async def write(self, response: bytes) -> None:
        self.written.append(response)


class SyncContext(Context):
    """grpc.aio's sync context: abort() blocks until aborted and does not raise."""

    def abort(self, code: grpc.StatusCode, message: str) -> None:  # type: ignore[override]
        self.events.append(("abort", code, message))


class Recorded:
    """A scope that writes down its entry and exit (with the exception's type, if any), and
    suppresses the exception when told to (as the error interceptor translates)."""

    def __init__(self, context: Context, *, suppress: bool = False) -> None:
        self.events = context.events
        self.suppress = suppress

    async def __aenter__(self) -> None:
        self.events.append("enter")

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> bool:
        self.events.append(("exit", type(exc).__name__ if exc is not None else None))
        return self.suppress


def recorded(context: Context) -> Recorded:
    return Recorded(context)


def suppressing(context: Context) -> Recorded:
    return Recorded(context, suppress=True)


def refusing(context: Context) -> Refusal:
    context.events.append("decide")
    return DENIED


def admitting(context: Context) -> None:
    context.events.append("decide")


# --- one behaviour per shape and kind ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A behaviour of one shape and kind: `make(fail)` builds it (it appends "ran" to the
    context's events, then answers `expected`, or raises ValueError after the first response
    when `fail`)."""

    make: Callable[[bool], Callable[..., Any]]
    streaming: tuple[bool, bool]
    kind: Kind
    expected: Any

    @property
    def writer(self) -> bool:
        return self.kind is Kind.COROUTINE and self.streaming[1]

    def behaviour(self, fail: bool = False) -> Behaviour:
        return Behaviour(self.make(fail), self.kind, *self.streaming)


def _unary_coroutine(fail: bool) -> Callable[..., Any]:
    async def behaviour(request: bytes, context: Context) -> bytes:
        context.events.append("ran")
        if fail:
            raise ValueError("boom")
        return request + b"!"

    return behaviour


def _unary_stream_async_gen(fail: bool) -> Callable[..., Any]:
    async def behaviour(request: bytes, context: Context) -> AsyncIterator[bytes]:
        context.events.append("ran")
        yield request
        if fail:
            raise ValueError("boom")
        yield request

    return behaviour


def _unary_stream_writer(fail: bool) -> Callable[..., Any]:
    async def behaviour(request: bytes, context: Context) -> None:
        context.events.append("ran")
        await context.write(request)
        if fail:
            raise ValueError("boom")

    return behaviour


def _stream_unary_coroutine(fail: bool) -> Callable[..., Any]:
    async def behaviour(requests: AsyncIterator[bytes], context: Context) -> bytes:
        context.events.append("ran")
        joined = b"".join([r async for r in requests])
        if fail:
            raise ValueError("boom")
        return joined

    return behaviour


def _stream_stream_async_gen(fail: bool) -> Callable[..., Any]:
    async def behaviour(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        context.events.append("ran")
        async for request in requests:
            yield request
            if fail:
                raise ValueError("boom")

    return behaviour


def _stream_stream_writer(fail: bool) -> Callable[..., Any]:
    async def behaviour(requests: AsyncIterator[bytes], context: Context) -> None:
        context.events.append("ran")
        async for request in requests:
            await context.write(request)
            if fail:
                raise ValueError("boom")

    return behaviour


def _unary_sync(fail: bool) -> Callable[..., Any]:
    def behaviour(request: bytes, context: Context) -> bytes:
        context.events.append("ran")
        if fail:
            raise ValueError("boom")
        return request + b"?"

    return behaviour


def _unary_stream_sync(fail: bool) -> Callable[..., Any]:
    def behaviour(request: bytes, context: Context) -> Iterator[bytes]:
        context.events.append("ran")
        yield request
        if fail:
            raise ValueError("boom")

    return behaviour


def _stream_unary_sync(fail: bool) -> Callable[..., Any]:
    def behaviour(requests: Iterator[bytes], context: Context) -> bytes:
        context.events.append("ran")
        joined = b"+".join(requests)
        if fail:
            raise ValueError("boom")
        return joined

    return behaviour


def _stream_stream_sync(fail: bool) -> Callable[..., Any]:
    def behaviour(requests: Iterator[bytes], context: Context) -> Iterator[bytes]:
        context.events.append("ran")
        for request in requests:
            yield request
            if fail:
                raise ValueError("boom")

    return behaviour


CASES = {
    "unary-coroutine": Case(_unary_coroutine, UU, Kind.COROUTINE, b"a!"),
    "unary-stream-async-gen": Case(_unary_stream_async_gen, US, Kind.ASYNC_GENERATOR, [b"a"] * 2),
    "unary-stream-writer": Case(_unary_stream_writer, US, Kind.COROUTINE, [b"a"]),
    "stream-unary-coroutine": Case(_stream_unary_coroutine, SU, Kind.COROUTINE, b"ab"),
    "stream-stream-async-gen": Case(
        _stream_stream_async_gen, SS, Kind.ASYNC_GENERATOR, [b"a", b"b"]
    ),
    "stream-stream-writer": Case(_stream_stream_writer, SS, Kind.COROUTINE, [b"a", b"b"]),
    "unary-sync": Case(_unary_sync, UU, Kind.SYNC, b"a?"),
    "unary-stream-sync": Case(_unary_stream_sync, US, Kind.SYNC, [b"a"]),
    "stream-unary-sync": Case(_stream_unary_sync, SU, Kind.SYNC, b"a+b"),
    "stream-stream-sync": Case(_stream_stream_sync, SS, Kind.SYNC, [b"a", b"b"]),
}
ASYNC_CASES = [pytest.param(c, id=n) for n, c in CASES.items() if c.kind is not Kind.SYNC]
SYNC_CASES = [pytest.param(c, id=n) for n, c in CASES.items() if c.kind is Kind.SYNC]
ALL_CASES = [*ASYNC_CASES, *SYNC_CASES]


async def _requests() -> AsyncIterator[bytes]:
    for request in (b"a", b"b"):
        yield request


async def drive(case: Case, function: Callable[..., Any], context: Context) -> Any:
    """Run `function` as grpc.aio would run a behaviour of `case`'s shape and kind, and
    return its answer: the response, the responses yielded, or those written."""
    if case.kind is Kind.SYNC:
        request: Any = iter([b"a", b"b"]) if case.streaming[0] else b"a"
        result = function(request, context)
        return list(result) if case.streaming[1] and result is not None else result
    request = _requests() if case.streaming[0] else b"a"
    if case.kind is Kind.ASYNC_GENERATOR:
        return [response async for response in function(request, context)]
    result = await function(request, context)
    return context.written if case.writer else result


def context_for(case: Case, events: list[Any], **kwargs: Any) -> Context:
    return (SyncContext if case.kind is Kind.SYNC else Context)(events, **kwargs)


# --- what each kind is wrapped as -------------------------------------------------------------


AROUNDS = [
    pytest.param(Around(scope=recorded), id="scope"),
    pytest.param(Around(refuse=admitting), id="refuse"),
    pytest.param(Around(refuse=admitting, scope=recorded), id="both"),
    pytest.param(Around(scope=recorded, writers=False), id="scope-not-writers"),
]


@pytest.mark.parametrize("around", AROUNDS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_the_wrapper_has_the_kind_of_what_it_wraps(case: Case, around: Around) -> None:
    behaviour = case.behaviour()
    assert kind_of(behaviour.function) is case.kind
    wrapped = wrap_behaviour(behaviour, around)
    assert kind_of(wrapped) is case.kind
    # Left alone: sync behaviours without a refusal (a scope cannot reach the thread pool),
    # and writers when the interceptor says so.
    left_alone = (case.kind is Kind.SYNC and around.refuse is None) or (
        case.writer and not around.writers
    )
    assert (wrapped is behaviour.function) is left_alone


# --- scope ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ASYNC_CASES)
async def test_a_scope_runs_around_the_call(case: Case) -> None:
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(), Around(scope=recorded))
    assert await drive(case, wrapped, Context(events)) == case.expected
    assert events == ["enter", "ran", ("exit", None)]


@pytest.mark.parametrize("case", ASYNC_CASES)
async def test_a_scope_sees_the_error_and_lets_it_through(case: Case) -> None:
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(fail=True), Around(scope=recorded))
    with pytest.raises(ValueError, match="boom"):
        await drive(case, wrapped, Context(events))
    assert events == ["enter", "ran", ("exit", "ValueError")]


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        pytest.param(CASES["unary-coroutine"], None, id="unary-coroutine"),
        pytest.param(CASES["unary-stream-async-gen"], [b"a"], id="unary-stream-async-gen"),
        pytest.param(CASES["unary-stream-writer"], [b"a"], id="unary-stream-writer"),
        pytest.param(CASES["stream-unary-coroutine"], None, id="stream-unary-coroutine"),
        pytest.param(CASES["stream-stream-async-gen"], [b"a"], id="stream-stream-async-gen"),
        pytest.param(CASES["stream-stream-writer"], [b"a"], id="stream-stream-writer"),
    ],
)
async def test_a_scope_that_suppresses_the_error_ends_the_call_quietly(
    case: Case, answer: Any
) -> None:
    # What was answered before the error stays answered; a unary call answers nothing.
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(fail=True), Around(scope=suppressing))
    assert await drive(case, wrapped, Context(events)) == answer
    assert events == ["enter", "ran", ("exit", "ValueError")]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(CASES["unary-stream-async-gen"], id="unary-stream-async-gen"),
        pytest.param(CASES["stream-stream-async-gen"], id="stream-stream-async-gen"),
    ],
)
async def test_a_stream_closed_early_exits_its_scope(case: Case) -> None:
    # A caller that goes away: grpc.aio closes the generator after the first response.
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(), Around(scope=recorded))
    request = _requests() if case.streaming[0] else b"a"
    stream = wrapped(request, Context(events))
    assert await anext(stream) == b"a"
    await stream.aclose()
    assert events == ["enter", "ran", ("exit", "GeneratorExit")]


@pytest.mark.parametrize("case", SYNC_CASES)
async def test_a_scope_leaves_sync_behaviours_alone(case: Case) -> None:
    behaviour = case.behaviour()
    assert wrap_behaviour(behaviour, Around(scope=recorded)) is behaviour.function


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(CASES["unary-stream-writer"], id="unary-stream-writer"),
        pytest.param(CASES["stream-stream-writer"], id="stream-stream-writer"),
    ],
)
async def test_writers_false_leaves_writers_alone_even_with_a_refusal(case: Case) -> None:
    behaviour = case.behaviour()
    around = Around(refuse=refusing, scope=recorded, writers=False)
    assert wrap_behaviour(behaviour, around) is behaviour.function


# --- refusal ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
async def test_a_refused_call_never_runs_its_behaviour_nor_its_scope(case: Case) -> None:
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(), Around(refuse=refusing, scope=recorded))
    context = context_for(case, events)
    if case.kind is Kind.SYNC:
        # The sync context's abort() does not raise: the wrapper returns (or ends) at once.
        assert await drive(case, wrapped, context) == ([] if case.streaming[1] else None)
    else:
        with pytest.raises(Aborted, match="not you"):
            await drive(case, wrapped, context)
    assert events == ["decide", ("abort", DENIED.code, DENIED.message)]


@pytest.mark.parametrize("case", ASYNC_CASES)
async def test_a_refusal_whose_abort_does_not_raise_still_never_runs_the_behaviour(
    case: Case,
) -> None:
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(), Around(refuse=refusing))
    answer = await drive(case, wrapped, Context(events, abort_raises=False))
    assert answer == ([] if case.streaming[1] else None)
    assert events == ["decide", ("abort", DENIED.code, DENIED.message)]


@pytest.mark.parametrize("case", ALL_CASES)
async def test_an_admitted_call_runs_as_it_would_unwrapped(case: Case) -> None:
    events: list[Any] = []
    wrapped = wrap_behaviour(case.behaviour(), Around(refuse=admitting, scope=recorded))
    assert await drive(case, wrapped, context_for(case, events)) == case.expected
    ran = ["ran"] if case.kind is Kind.SYNC else ["enter", "ran", ("exit", None)]
    assert events == ["decide", *ran]


def test_around_needs_a_refusal_or_a_scope() -> None:
    with pytest.raises(ValueError, match="refuse, a scope or both"):
        Around()


# --- the interceptor --------------------------------------------------------------------------


class Counting(AroundInterceptor):
    """Wraps every method but /skip.Me/*; counts how often it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def around(self, method: str) -> Around | None:
        self.asked.append(method)
        return None if method.startswith("/skip.Me/") else Around(scope=recorded)


@dataclass(frozen=True)
class Details:
    method: str


@pytest.mark.parametrize(
    ("method", "wrapped"),
    [
        pytest.param("/pkg.Service/Method", True, id="wrapped"),
        pytest.param("/skip.Me/Method", False, id="left-alone"),
    ],
)
async def test_the_interceptor_wraps_each_method_once(method: str, wrapped: bool) -> None:
    interceptor = Counting()
    handler = grpc.unary_unary_rpc_method_handler(_unary_coroutine(False))

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return handler

    first = await interceptor.intercept_service(continuation, Details(method))
    again = await interceptor.intercept_service(continuation, Details(method))
    assert again is first
    assert (first is not handler) is wrapped
    assert interceptor.asked == [method]  # asked once, not per call


async def test_the_interceptor_passes_an_unknown_method_through() -> None:
    async def continuation(_details: Any) -> None:
        return None

    assert await Counting().intercept_service(continuation, Details("/no.Such/Method")) is None


def test_map_behaviour_puts_the_wrapper_in_the_handlers_field() -> None:
    handler = grpc.stream_stream_rpc_method_handler(_stream_stream_async_gen(False))
    mapped = map_behaviour(handler, lambda b: wrap_behaviour(b, Around(scope=recorded)))
    assert mapped.stream_stream is not handler.stream_stream
    assert kind_of(mapped.stream_stream) is Kind.ASYNC_GENERATOR
    assert (mapped.unary_unary, mapped.unary_stream, mapped.stream_unary) == (None, None, None)
