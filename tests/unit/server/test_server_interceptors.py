"""The interceptors every service runs (errors, deadline, metrics), in the host's order, on a
real grpc.aio server on loopback: what each does to every handler shape and kind, on success,
on a MeshError and on a bug. (Authorization has its own tests: tests/unit/authz/.)"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mesh.deadline import inbound_deadline
from mesh.errors import NotFound
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.errors import ErrorInterceptor
from mesh.telemetry import ServerMetrics, ServerMetricsInterceptor

SERVICE = "test.Shapes"
UU, US, SU, SS = (False, False), (False, True), (True, False), (True, True)
OUTCOMES = ("ok", "mesh-error", "bug")


def answer(outcome: str) -> bytes:
    """What every behaviour answers: whether it saw the call's deadline, or its failure."""
    if outcome == "mesh-error":
        raise NotFound("no such thing")
    if outcome == "bug":
        raise ValueError("secret internals")
    return b"deadline" if inbound_deadline() is not None else b"no deadline"


def behaviours(outcome: str) -> dict[str, tuple[Callable[..., Any], tuple[bool, bool]]]:
    """One behaviour per handler shape and kind; streamed requests are read to the end first
    (a client write racing an early status makes grpc.aio report INTERNAL: grpc/grpc#36066)."""

    async def unary_coroutine(_request: bytes, _context: Any) -> bytes:
        return answer(outcome)

    async def unary_stream_async_gen(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        yield answer(outcome)

    async def unary_stream_writer(_request: bytes, context: Any) -> None:
        await context.write(answer(outcome))

    async def stream_unary_coroutine(requests: AsyncIterator[bytes], _context: Any) -> bytes:
        _ = [r async for r in requests]
        return answer(outcome)

    async def stream_stream_async_gen(
        requests: AsyncIterator[bytes], _context: Any
    ) -> AsyncIterator[bytes]:
        _ = [r async for r in requests]
        yield answer(outcome)

    async def stream_stream_writer(requests: AsyncIterator[bytes], context: Any) -> None:
        _ = [r async for r in requests]
        await context.write(answer(outcome))

    def unary_sync(_request: bytes, _context: Any) -> bytes:
        return answer(outcome)

    def unary_stream_sync(_request: bytes, _context: Any) -> Iterator[bytes]:
        yield answer(outcome)

    def stream_unary_sync(requests: Iterator[bytes], _context: Any) -> bytes:
        _ = list(requests)
        return answer(outcome)

    def stream_stream_sync(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
        _ = list(requests)
        yield answer(outcome)

    return {
        "UnaryCoroutine": (unary_coroutine, UU),
        "UnaryStreamAsyncGen": (unary_stream_async_gen, US),
        "UnaryStreamWriter": (unary_stream_writer, US),
        "StreamUnaryCoroutine": (stream_unary_coroutine, SU),
        "StreamStreamAsyncGen": (stream_stream_async_gen, SS),
        "StreamStreamWriter": (stream_stream_writer, SS),
        "UnarySync": (unary_sync, UU),
        "UnaryStreamSync": (unary_stream_sync, US),
        "StreamUnarySync": (stream_unary_sync, SU),
        "StreamStreamSync": (stream_stream_sync, SS),
    }


_FACTORIES = {
    UU: grpc.unary_unary_rpc_method_handler,
    US: grpc.unary_stream_rpc_method_handler,
    SU: grpc.stream_unary_rpc_method_handler,
    SS: grpc.stream_stream_rpc_method_handler,
}


@dataclass
class Server:
    port: int
    registry: CollectorRegistry


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """Every shape and outcome as method `<Shape>-<outcome>`, behind the interceptors in the
    order a service runs them (host: errors, deadline; runner: metrics)."""
    registry = CollectorRegistry()
    interceptors = [
        ErrorInterceptor(),
        DeadlineInterceptor(),
        ServerMetricsInterceptor(ServerMetrics(registry)),
    ]
    pool = ThreadPoolExecutor(max_workers=2)  # runs the sync behaviours
    grpc_server = grpc.aio.server(interceptors=interceptors, migration_thread_pool=pool)
    handlers = {
        f"{name}-{outcome}": _FACTORIES[streaming](behaviour)
        for outcome in OUTCOMES
        for name, (behaviour, streaming) in behaviours(outcome).items()
    }
    grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    yield Server(port, registry)
    await grpc_server.stop(None)
    pool.shutdown(wait=True)


async def call(port: int, method: str, streaming: tuple[bool, bool]) -> tuple[str, Any]:
    """The call's status code name and its answer (its details when it failed)."""
    path = f"/{SERVICE}/{method}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            if streaming == UU:
                return "OK", await ch.unary_unary(path)(b"a", timeout=5)
            if streaming == US:
                return "OK", [r async for r in ch.unary_stream(path)(b"a", timeout=5)]
            if streaming == SU:
                return "OK", await ch.stream_unary(path)(iter([b"a", b"b"]), timeout=5)
            return "OK", [r async for r in ch.stream_stream(path)(iter([b"a", b"b"]), timeout=5)]
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details()


ASYNC = ["UnaryCoroutine", "UnaryStreamAsyncGen", "StreamUnaryCoroutine", "StreamStreamAsyncGen"]
WRITERS = ["UnaryStreamWriter", "StreamStreamWriter"]
SYNC = ["UnarySync", "UnaryStreamSync", "StreamUnarySync", "StreamStreamSync"]


def _expected_ok(name: str) -> Any:
    # The deadline reaches async behaviours; sync ones run in the thread pool, unwrapped.
    seen = b"no deadline" if name in SYNC else b"deadline"
    return seen if behaviours("ok")[name][1] in (UU, SU) else [seen]


@dataclass(frozen=True)
class Expect:
    """What the caller sees (its status code, and the answer or the details when given), and
    the code metrics count the call under (None: not counted)."""

    code: str
    answer: Any
    counted_as: str | None


def _cases() -> list[Any]:
    cases = []
    for name in [*ASYNC, *WRITERS, *SYNC]:
        counted = name not in SYNC  # sync behaviours run in the thread pool, unwrapped
        ok = Expect("OK", _expected_ok(name), "OK" if counted else None)
        if name in ASYNC:  # translated: a MeshError by its code, a bug as INTERNAL
            mesh_error = Expect("NOT_FOUND", "no such thing", "NOT_FOUND")
            # Metrics sit inside the error interceptor: they see the bug, not INTERNAL.
            bug = Expect("INTERNAL", f"internal error in /{SERVICE}/{name}-bug", "UNKNOWN")
        elif name in WRITERS:  # writers keep their errors: grpc.aio's UNKNOWN
            mesh_error = Expect("UNKNOWN", None, "NOT_FOUND")
            bug = Expect("UNKNOWN", None, "UNKNOWN")
        else:
            mesh_error = bug = Expect("UNKNOWN", None, None)
        cases.append(pytest.param(name, "ok", ok, id=f"{name}-ok"))
        cases.append(pytest.param(name, "mesh-error", mesh_error, id=f"{name}-mesh-error"))
        cases.append(pytest.param(name, "bug", bug, id=f"{name}-bug"))
    return cases


@pytest.mark.parametrize(("name", "outcome", "expect"), _cases())
async def test_every_shape_through_the_interceptors(
    server: Server, caplog: pytest.LogCaptureFixture, name: str, outcome: str, expect: Expect
) -> None:
    method = f"{name}-{outcome}"
    streaming = behaviours(outcome)[name][1]
    with caplog.at_level(logging.ERROR, logger="mesh.server.errors"):
        code, answered = await call(server.port, method, streaming)
    assert code == expect.code
    if expect.answer is not None:
        assert answered == expect.answer
    logged = [
        (r.getMessage(), r.exc_info and r.exc_info[1])
        for r in caplog.records
        if r.name == "mesh.server.errors"
    ]
    if outcome == "bug" and name in ASYNC:  # logged with its traceback
        [(message, error)] = logged
        assert message == f"unhandled error in /{SERVICE}/{method}"
        assert isinstance(error, ValueError)
    else:
        assert logged == []

    def sample(metric: str, **labels: str) -> float:
        return server.registry.get_sample_value(metric, {"service": SERVICE, **labels}) or 0.0

    requests = {
        status: sample("mesh_server_requests_total", method=method, code=status)
        for status in ("OK", "NOT_FOUND", "INTERNAL", "UNKNOWN")
    }
    expected = dict.fromkeys(requests, 0.0)
    if expect.counted_as is not None:
        expected[expect.counted_as] = 1.0
    assert requests == expected
    observed = sample("mesh_server_request_seconds_count", method=method)
    assert observed == (0.0 if expect.counted_as is None else 1.0)
    assert sample("mesh_server_in_flight") == 0.0
