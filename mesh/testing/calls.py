"""gRPC, client side: the mesh's transport without a channel (re-exported by mesh.testing)."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

import grpc

from mesh.registry.keys import Instance

#: gRPC metadata as grpc.aio takes it: (key, value) pairs (bytes for `-bin` keys) or Metadata.
_Metadata = grpc.aio.Metadata | Sequence[tuple[str, str | bytes]]


class FakeRpc(grpc.aio.Call):
    """A grpc.aio call as its caller holds it (what a multicallable returns, what
    `CallInfo.rpc` keeps): awaited for a unary answer, or read as a response stream; either
    way it answers its metadata, code and details.

    - `await rpc` gives `response`, or raises `error`;
    - `await rpc.read()` gives the next of `messages`, then `grpc.aio.EOF`; `async for` the
      same; an exception among the messages is raised when its turn comes;
    - `cancel()` counts in `cancel_calls`; reads after it raise CancelledError, as grpc.aio's;
    - `initial_metadata()`, `trailing_metadata()`: as given, or the `error`'s when that is an
      `AioRpcError` (as grpc.aio answers for a failed call); `code()`, `details()`: OK and ""
      or the error's (CANCELLED once cancelled).

    >>> rpc = FakeRpc(["a", "b"], initial=[("x-initial", "1")])
    >>> [m async for m in rpc], await rpc.initial_metadata()
    """

    def __init__(
        self,
        messages: Iterable[Any] = (),
        *,
        response: Any = None,
        error: BaseException | None = None,
        initial: _Metadata = (),
        trailing: _Metadata = (),
    ) -> None:
        #: What is left to read, in order.
        self.messages = list(messages)
        self.response = response
        self.error = error
        self.initial = tuple(initial)
        self.trailing = tuple(trailing)
        #: How often `cancel()` was called.
        self.cancel_calls = 0
        self._done_callbacks: list[Callable[[Any], None]] = []

    def __repr__(self) -> str:
        return f"FakeRpc(response={self.response!r}, error={self.error!r})"

    # -- unary -------------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._answer().__await__()

    async def _answer(self) -> Any:
        if self.cancel_calls:
            raise asyncio.CancelledError
        if self.error is not None:
            raise self.error
        return self.response

    # -- response stream ---------------------------------------------------------------------

    async def read(self) -> Any:
        if self.cancel_calls:
            raise asyncio.CancelledError
        item = self.messages.pop(0) if self.messages else grpc.aio.EOF
        if isinstance(item, BaseException):
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    # -- grpc.aio.Call -----------------------------------------------------------------------

    def cancel(self) -> bool:
        self.cancel_calls += 1
        return True

    def cancelled(self) -> bool:
        return self.cancel_calls > 0

    def done(self) -> bool:
        """True once cancelled or failing; an answering call is not tracked to its end."""
        return self.cancelled() or self.error is not None

    def time_remaining(self) -> float | None:
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Kept, never called."""
        self._done_callbacks.append(callback)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if isinstance(self.error, grpc.aio.AioRpcError):
            return self.error.initial_metadata()
        return grpc.aio.Metadata(*self.initial)

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        if isinstance(self.error, grpc.aio.AioRpcError):
            return self.error.trailing_metadata()
        return grpc.aio.Metadata(*self.trailing)

    async def code(self) -> grpc.StatusCode:
        if self.cancel_calls:
            return grpc.StatusCode.CANCELLED
        if isinstance(self.error, grpc.aio.AioRpcError):
            return self.error.code()
        return grpc.StatusCode.OK

    async def details(self) -> str:
        if isinstance(self.error, grpc.aio.AioRpcError):
            return self.error.details() or ""
        return ""

    async def wait_for_connection(self) -> None:
        pass


@dataclass
class SentCall:
    """One call made on a `FakeMulticallable`: what the caller passed."""

    request: Any
    timeout: float | None
    metadata: list[tuple[str, str | bytes]]
    wait_for_ready: bool | None


class FakeMulticallable:
    """What a per-instance grpc.aio channel's `unary_unary(method, ...)` (or `unary_stream`,
    ...) returns: each call answers with the next of `outcomes` and is written down in `sent`.

    An outcome is the call itself if it is a `FakeRpc` (a stream to read, metadata to
    answer), else a `FakeRpc` failing with it if it is an exception, else one answering it.
    A call beyond the script fails the test.

    >>> multicallable = FakeMulticallable(rpc_error(grpc.StatusCode.UNAVAILABLE, "down"), "ok")
    >>> call.endpoint = FakeEndpoint(multicallable)   # the first attempt fails, the next answers
    >>> [sent.metadata for sent in multicallable.sent]   # after the calls: what each carried
    """

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[SentCall] = []

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: _Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> FakeRpc:
        self.sent.append(SentCall(request, timeout, list(metadata or ()), wait_for_ready))
        if not self.outcomes:
            raise AssertionError(f"called {len(self.sent)} times, more than scripted")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, FakeRpc):
            return outcome
        if isinstance(outcome, BaseException):
            return FakeRpc(error=outcome)
        return FakeRpc(response=outcome)


class FakeEndpoint:
    """Stands in for `mesh.client.endpoint.Endpoint` as the transport uses it: its `key`, its
    `instance` and `callable()`, which hands out the one `multicallable` whatever the kind and
    method (each asked for is written down in `asked`)."""

    def __init__(
        self,
        multicallable: FakeMulticallable,
        key: str = "i-1",
        *,
        service: str = "hms.test.v1.Echo",
        address: str = "10.0.0.1:50051",
    ) -> None:
        self.key = key
        self.instance = Instance(service, key, address, "echo")
        self.multicallable = multicallable
        #: Each (kind, method) `callable()` was asked for.
        self.asked: list[tuple[str, str]] = []

    def callable(
        self,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> FakeMulticallable:
        self.asked.append((kind, method))
        return self.multicallable


class DummyChannel:
    """Stands in for a per-instance grpc.aio channel where only `close()` is used."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True
