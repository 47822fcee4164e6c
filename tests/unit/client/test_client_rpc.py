"""MeshCall, the call object a mesh channel gives its caller: awaited or iterated like grpc.aio's,
and answering initial/trailing metadata, code and details from the attempt that decided it (or
the mesh's own refusal); and `MeshChannel.call()` building it as a generated stub would."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mesh.client import ClientConfig, MeshChannel
from mesh.client.call import CallInfo, CallKind, rpc_error, service_of
from mesh.client.rpc import MeshCall
from mesh.resilience.retry import Idempotency
from mesh.testing import FakeRpc

METHOD = "/hms.test.v1.Echo/Say"
Code = grpc.StatusCode


def info(kind: CallKind = CallKind.UNARY_UNARY) -> CallInfo:
    return CallInfo(
        kind=kind,
        method=METHOD,
        service=service_of(METHOD),
        request=b"req",
        metadata=[],
        serializer=None,
        deserializer=None,
        idempotency=Idempotency.IDEMPOTENT,
    )


def attempt_rpc(messages: list[Any] | None = None) -> FakeRpc:
    """The grpc.aio call of the attempt that answered."""
    return FakeRpc(messages or [], initial=[("x-initial", "1")], trailing=[("x-trailing", "2")])


def answering(response: Any, rpc: FakeRpc | None = None) -> Any:
    starts: list[CallInfo] = []

    async def start(call: CallInfo) -> Any:
        starts.append(call)
        call.rpc = rpc or attempt_rpc()
        return response

    start.starts = starts  # type: ignore[attr-defined]
    return start


def failing(error: grpc.aio.AioRpcError) -> Any:
    async def start(call: CallInfo) -> Any:
        raise error

    return start


async def test_unary_answer_and_its_metadata() -> None:
    start = answering("the response")
    call = MeshCall(info(), start)
    assert await call == "the response"
    assert await call == "the response"  # awaited again: the same answer, no second attempt
    assert len(start.starts) == 1
    assert await call.initial_metadata() == grpc.aio.Metadata(("x-initial", "1"))
    assert await call.trailing_metadata() == grpc.aio.Metadata(("x-trailing", "2"))
    assert (await call.code(), await call.details()) == (Code.OK, "")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(rpc_error(Code.UNAVAILABLE, "no instance of x is registered"), id="refused"),
        pytest.param(
            grpc.aio.AioRpcError(
                Code.NOT_FOUND,
                grpc.aio.Metadata(("x-initial", "a")),
                grpc.aio.Metadata(("x-trailing", "b")),
                details="no such rule",
            ),
            id="answered-with-an-error",
        ),
    ],
)
async def test_a_failed_unary_call_reports_the_error(error: grpc.aio.AioRpcError) -> None:
    call = MeshCall(info(), failing(error))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value is error
    assert await call.code() is error.code()
    assert await call.details() == error.details()
    assert await call.initial_metadata() == error.initial_metadata()
    assert await call.trailing_metadata() == error.trailing_metadata()
    with pytest.raises(grpc.aio.AioRpcError):  # awaited again: the same error
        await call


async def test_metadata_first_waits_for_the_answer() -> None:
    call = MeshCall(info(), answering("r"))
    assert await call.initial_metadata() == grpc.aio.Metadata(("x-initial", "1"))
    assert await call == "r"


@pytest.mark.parametrize("iterate", [True, False], ids=["async-for", "read"])
async def test_a_response_stream(iterate: bool) -> None:
    rpc = attempt_rpc(["a", "b"])
    call = MeshCall(info(CallKind.UNARY_STREAM), answering(rpc))
    if iterate:
        got = [m async for m in call]
    else:
        got = []
        while (message := await call.read()) is not grpc.aio.EOF:
            got.append(message)
    assert got == ["a", "b"]
    assert await call.initial_metadata() == grpc.aio.Metadata(("x-initial", "1"))
    with pytest.raises(TypeError, match="streams its response"):
        await call


async def test_a_refused_stream_raises_on_first_read_and_reports_it() -> None:
    error = rpc_error(Code.UNAVAILABLE, "no ready instance")
    call = MeshCall(info(CallKind.UNARY_STREAM), failing(error))
    with pytest.raises(grpc.aio.AioRpcError):
        await call.read()
    assert await call.code() is Code.UNAVAILABLE
    assert await call.initial_metadata() == grpc.aio.Metadata()


async def test_cancel_before_the_stream_opens_cancels_it_once_open() -> None:
    rpc = attempt_rpc(["a"])
    call = MeshCall(info(CallKind.UNARY_STREAM), answering(rpc))
    assert call.cancel() is False  # nothing under way yet
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert rpc.cancelled()


async def test_channel_call_is_what_a_stub_would_make() -> None:
    channel = MeshChannel(None, ClientConfig(etcd=("127.0.0.1:1",), rotation_check=0))
    seen: list[CallInfo] = []

    async def chain(call: CallInfo) -> Any:
        seen.append(call)
        call.rpc = attempt_rpc()
        return "ok"

    channel._chain = chain  # the chain is what this test replaces: no etcd, no instance
    call = channel.call(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        b"req",
        serializer=None,
        deserializer=None,
        timeout=2.0,
        metadata=[("k", "v")],
        version="2.0",
        service="hms.fees.v1.FeeService",
    )
    assert await call == "ok"
    (made,) = seen
    assert (made.service, made.version, made.timeout, made.metadata) == (
        "hms.fees.v1.FeeService", "2.0", 2.0, [("k", "v")],
    )  # fmt: skip
    assert made.idempotency is Idempotency.UNKNOWN  # from the method's options: none known
    await channel.close()
