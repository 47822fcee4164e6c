"""gRPC, server side: a handler called directly, without a server (re-exported by mesh.testing)."""

from __future__ import annotations

from collections.abc import (
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, NoReturn

import grpc

from mesh.testing.clock import VirtualClock

#: gRPC metadata as grpc.aio takes it: (key, value) pairs (bytes for `-bin` keys) or Metadata.
_Metadata = grpc.aio.Metadata | Sequence[tuple[str, str | bytes]]


class Aborted(grpc.aio.AbortError):
    """What `FakeContext.abort` raises, as grpc.aio's context raises `AbortError`: the status
    the handler ended the call with (`code`, `details`, `trailing_metadata`)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: _Metadata = ()
    ) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class FakeContext(grpc.aio.ServicerContext[Any, Any]):
    """A `grpc.aio.ServicerContext` for calling a handler directly, without a server: it
    answers what the real one does and writes down what the handler did to the call.

    What it answers (all optional):

        time_remaining     seconds left of the caller's deadline; None (the default): the
                           caller set none, as grpc.aio answers. It runs down as `clock` moves
                           (a `VirtualClock`, the context's own unless given: pass the same
                           clock to a `FakeSleep` and a handler's sleeps spend the deadline)
        metadata           the caller's metadata, from `invocation_metadata()` as a tuple of
                           (key, value) pairs, as grpc.aio gives it
        peer               `peer()`
        auth_context       `auth_context()`: {} (an unauthenticated peer) unless given, e.g.
                           {"peer_spiffe_id": [b"spiffe://hms.local/svc/ops"]}
        requests           what `read()` hands out, then `grpc.aio.EOF` (client streaming)

    What it writes down: `aborted` (each (code, details) a handler aborted with; `abort()`
    then raises `Aborted`, as grpc.aio raises AbortError), `written` (the messages given to
    `write()`), `sent_initial_metadata`, and the code, details and trailing metadata the
    handler set, read back with `code()`, `details()` and `trailing_metadata()`.

    `allow_abort=False` is for handlers that must raise `mesh.errors` instead of aborting (the
    mesh's error interceptor turns those into the call's status): any `abort()` then fails the
    test with an AssertionError saying so.

    >>> context = FakeContext(time_remaining=2.0, metadata=[("grpc-previous-rpc-attempts", "1")])
    >>> response = await EchoService("echo-a", sleep=FakeSleep(context.clock)).Echo(
    ...     echo_pb2.EchoRequest(delay_ms=250), context)
    >>> context.time_remaining()   # 1.75: the handler's sleep spent a quarter of a second
    """

    def __init__(
        self,
        time_remaining: float | None = None,
        metadata: _Metadata = (),
        *,
        clock: VirtualClock | None = None,
        peer: str = "ipv4:127.0.0.1:50000",
        auth_context: Mapping[str, Iterable[bytes]] | None = None,
        requests: Iterable[Any] = (),
        allow_abort: bool = True,
    ) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self._deadline_left = time_remaining
        self._deadline_set_at = self.clock()
        self._metadata = tuple(metadata)
        self._peer = peer
        self._auth_context = dict(auth_context or {})
        self._requests = list(requests)
        self._allow_abort = allow_abort
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._done_callbacks: list[Callable[..., None]] = []
        #: Each (code, details) a handler aborted with.
        self.aborted: list[tuple[grpc.StatusCode, str]] = []
        #: The messages a streaming handler wrote with `write()`.
        self.written: list[Any] = []
        #: The metadata given to `send_initial_metadata()`, or None if it was not called.
        self.sent_initial_metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self.compression: grpc.Compression | None = None

    # -- what the handler reads ----------------------------------------------------------------

    # grpc.aio answers None when the caller set no deadline; the stubs say float.
    def time_remaining(self) -> float | None:  # type: ignore[override]
        if self._deadline_left is None:
            return None
        return max(0.0, self._deadline_left - (self.clock() - self._deadline_set_at))

    # grpc.aio answers a tuple of (key, value) pairs, not the stubs' Metadata: code under
    # test must not rely on Metadata's methods, which the real call does not have.
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self._auth_context

    def peer_identity_key(self) -> str | None:
        """As grpc's TLS transport: the certificate's SANs if any, else its common name."""
        for key in ("x509_subject_alternative_name", "x509_common_name"):
            if key in self._auth_context:
                return key
        return None

    def peer_identities(self) -> Iterable[bytes] | None:
        key = self.peer_identity_key()
        return None if key is None else list(self._auth_context[key])

    async def read(self) -> Any:
        return self._requests.pop(0) if self._requests else grpc.aio.EOF

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return bool(self.aborted)

    # -- what the handler does to the call ---------------------------------------------------

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: _Metadata = ()
    ) -> NoReturn:
        self.aborted.append((code, details))
        if not self._allow_abort:
            raise AssertionError(f"handlers must raise mesh errors, not abort ({code}, {details})")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise Aborted(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def send_initial_metadata(self, initial_metadata: _Metadata) -> None:
        self.sent_initial_metadata = tuple(initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: _Metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_compression(self, compression: grpc.Compression) -> None:
        self.compression = compression

    def disable_next_message_compression(self) -> None:
        pass

    def add_done_callback(self, callback: Callable[..., None]) -> None:
        """Kept, never called: a handler called directly has no end of call to report."""
        self._done_callbacks.append(callback)

    # -- what the handler set, read back -----------------------------------------------------

    # grpc.aio answers None until a code is set; the stubs say StatusCode.
    def code(self) -> grpc.StatusCode | None:  # type: ignore[override]
        return self._code

    def details(self) -> str:
        return self._details

    # grpc.aio answers the pairs as set, not the stubs' Metadata.
    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return self._trailing
