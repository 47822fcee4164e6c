"""The call object a mesh channel hands its caller, shaped like grpc.aio's.

`await call` gives a unary response; `async for message in call` (or `await call.read()`) the
messages of a response stream. Like `grpc.aio.Call`, it answers `initial_metadata()`,
`trailing_metadata()`, `code()` and `details()` (each waits until it is known) and `cancel()`.
What they report is the attempt that decided the call: the one that answered, or the last one
that failed. A call the mesh refused before sending it (no instance, a deadline already spent)
has empty metadata and the refusal's code and details.

    call = channel.call("/hms.fees.v1.FeeService/Quote", request, serializer=..., deserializer=...)
    quote = await call
    headers = await call.initial_metadata()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Protocol

import grpc

from mesh.client.call import CallInfo

__all__ = ["MeshCall"]

_EMPTY = grpc.aio.Metadata()


class _Settled(Protocol):
    """What `MeshCall` reads of the grpc.aio call that decided it (a `grpc.aio.Call`, or the
    `GuardedStream` around a streaming one)."""

    async def initial_metadata(self) -> grpc.aio.Metadata: ...
    async def trailing_metadata(self) -> grpc.aio.Metadata: ...
    async def code(self) -> grpc.StatusCode: ...
    async def details(self) -> str: ...


class MeshCall:
    def __init__(self, info: CallInfo, start: Callable[[CallInfo], Awaitable[Any]]) -> None:
        self._info = info
        self._start = start
        self._done = False
        self._response: Any = None
        self._error: grpc.aio.AioRpcError | None = None
        self._stream: Any = None  # the response stream, once the call is under way
        self._cancelled = False

    def __repr__(self) -> str:
        return f"MeshCall({self._info.method}, {self._info.kind.value})"

    @property
    def instance(self) -> tuple[str, str]:
        """(instance id, address) of the instance the latest attempt went to; ("", "")
        before one was picked."""
        endpoint = self._info.endpoint
        return ("", "") if endpoint is None else (endpoint.key, endpoint.instance.address)

    @property
    def error(self) -> grpc.aio.AioRpcError | None:
        """The error the call (or the opening of its stream) ended with, once it has; None
        while it has not, or when it succeeded."""
        return self._error

    # -- unary response --------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._unary().__await__()

    async def _unary(self) -> Any:
        if self._info.kind.response_streaming:
            raise TypeError(f"{self._info.method} streams its response: iterate over the call")
        if not self._done:
            try:
                self._response = await self._start(self._info)
            except grpc.aio.AioRpcError as exc:
                self._error = exc
                raise
            finally:
                self._done = True
        if self._error is not None:
            raise self._error
        return self._response

    # -- response stream -------------------------------------------------------------------

    async def _open(self) -> Any:
        if self._stream is None:
            try:
                self._stream = await self._start(self._info)
            except grpc.aio.AioRpcError as exc:
                self._error = exc
                self._done = True
                raise
            if self._cancelled:
                self._stream.cancel()
        return self._stream

    async def read(self) -> Any:
        """The next message of the response stream, or grpc.aio.EOF after the last."""
        return await (await self._open()).read()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for message in await self._open():
            yield message

    # -- like grpc.aio.Call ----------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call (what is in flight is cut; a stream's reads raise CancelledError)."""
        self._cancelled = True
        if self._stream is not None:
            return bool(self._stream.cancel())
        rpc = self._info.rpc
        return bool(rpc.cancel()) if rpc is not None else False

    async def _settled(self) -> _Settled | None:
        """The grpc.aio call that decided this one, once it is known; None if none was made."""
        if self._info.kind.response_streaming:
            if self._error is None:
                try:
                    stream: _Settled = await self._open()
                except grpc.aio.AioRpcError:
                    return None
                return stream
            return None
        try:
            await self._unary()
        except grpc.aio.AioRpcError:
            return None
        rpc: _Settled | None = self._info.rpc
        return rpc

    async def initial_metadata(self) -> grpc.aio.Metadata:
        rpc = await self._settled()
        if rpc is None:
            return self._error.initial_metadata() if self._error is not None else _EMPTY
        return await rpc.initial_metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        rpc = await self._settled()
        if rpc is None:
            return self._error.trailing_metadata() if self._error is not None else _EMPTY
        return await rpc.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        rpc = await self._settled()
        if rpc is None:
            return self._error.code() if self._error is not None else grpc.StatusCode.UNKNOWN
        return await rpc.code()

    async def details(self) -> str:
        rpc = await self._settled()
        if rpc is None:
            return (self._error.details() or "") if self._error is not None else ""
        return str(await rpc.details() or "")
