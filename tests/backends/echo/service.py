"""gRPC handlers of hms.testing.v1.EchoService, the mesh's test and benchmark backend.

A request shapes the server's behaviour (a delay, a status code to fail with) and the answer
reports what the server saw (who served it, the deadline left, earlier attempts), so tests of
deadlines, retries and balancing can observe the mesh from the server's side. SetFault (and
SetFailure, its older all-or-nothing form) makes one instance slow or flaky for every caller,
so a chaos test can degrade one replica by calling its address directly.

Unlike the other services, Echo fails on purpose with arbitrary status codes that have no
`mesh.errors` class (UNAVAILABLE, RESOURCE_EXHAUSTED, ...), so it uses `context.abort`;
a bad request is still an `InvalidArgument` like everywhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from mesh import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TypeAlias

    import grpc.aio

    _Context: TypeAlias = grpc.aio.ServicerContext[echo_pb2.EchoRequest, echo_pb2.EchoResponse]

__all__ = ["PREVIOUS_ATTEMPTS_KEY", "EchoService"]

# Set by grpc's own retry machinery on every attempt after the first (gRFC A6).
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_MAX_STATUS = max(_STATUS_BY_NUMBER)
_MAX_STREAM = 10_000
_MAX_FAULT_DELAY_MS = 60_000
# Decides which calls fail under a partial fault; not for anything secret.
_DRAWS = random.Random()


@dataclasses.dataclass(frozen=True)
class _Fault:
    """The instance's fault switch: extra delay on every answer, and calls failing at random."""

    delay_ms: int = 0
    fail_code: int = 0
    fail_percent: int = 0


class EchoService(echo_pb2_grpc.EchoServiceServicer):
    """Answers with the request, served by `deployment`, optionally after a delay or failing.

    Example::

        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoService("echo-a"), server)
    """

    def __init__(
        self,
        deployment: str,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        forward: Callable[[], Awaitable[echo_pb2_grpc.EchoServiceStub]] | None = None,
        rand: Callable[[], float] = _DRAWS.random,
    ) -> None:
        self._deployment = deployment
        self._sleep = sleep  # a parameter so that unit tests run on virtual time
        # Opens (once) the stub used to forward along a chain; None: forwarding refused.
        self._forward = forward
        # Draws in [0, 1) deciding which calls fail under a fail_percent; a parameter so that
        # unit tests choose the draws.
        self._rand = rand
        self._fault = _Fault()  # set by SetFault and SetFailure

    async def EchoStream(
        self, request: echo_pb2.EchoRequest, context: _Context
    ) -> AsyncIterator[echo_pb2.EchoResponse]:
        if request.count < 0:
            raise InvalidArgument.field("count", f"must not be negative, got {request.count}")
        if request.count > _MAX_STREAM:
            raise InvalidArgument.field("count", f"at most {_MAX_STREAM}, got {request.count}")
        for index in range(max(1, request.count)):
            # The fault's delay holds up every answer; whether to fail is drawn once per call.
            response = await self._echo(request, context, draw=index == 0)
            response.message = f"{request.message} {index + 1}"
            yield response

    async def Collect(
        self, requests: AsyncIterator[echo_pb2.EchoRequest], context: object
    ) -> echo_pb2.EchoResponse:
        messages = [request.message async for request in requests]
        return echo_pb2.EchoResponse(message=" ".join(messages), served_by=self._deployment)

    async def SetFault(
        self, request: echo_pb2.SetFaultRequest, context: object
    ) -> echo_pb2.SetFaultResponse:
        if not 0 <= request.delay_ms <= _MAX_FAULT_DELAY_MS:
            raise InvalidArgument.field(
                "delay_ms", f"must be from 0 to {_MAX_FAULT_DELAY_MS}, got {request.delay_ms}"
            )
        _check_status("fail_code", request.fail_code)
        if not 0 <= request.fail_percent <= 100:
            raise InvalidArgument.field(
                "fail_percent", f"must be from 0 to 100, got {request.fail_percent}"
            )
        if request.fail_percent > 0 and request.fail_code == 0:
            raise InvalidArgument.field(
                "fail_code",
                f"must name the status code to fail with when fail_percent is "
                f"{request.fail_percent}, got 0 (OK)",
            )
        self._fault = _Fault(request.delay_ms, request.fail_code, request.fail_percent)
        return echo_pb2.SetFaultResponse(
            served_by=self._deployment,
            delay_ms=self._fault.delay_ms,
            fail_code=self._fault.fail_code,
            fail_percent=self._fault.fail_percent,
        )

    async def SetFailure(
        self, request: echo_pb2.SetFailureRequest, context: object
    ) -> echo_pb2.SetFailureResponse:
        # The older switch, kept for its callers: a SetFault that fails every call, no delay.
        _check_status("code", request.code)
        if request.code == 0:
            fault = echo_pb2.SetFaultRequest()  # healthy again
        else:
            fault = echo_pb2.SetFaultRequest(fail_code=request.code, fail_percent=100)
        await self.SetFault(fault, context)
        return echo_pb2.SetFailureResponse(served_by=self._deployment, code=request.code)

    async def Echo(self, request: echo_pb2.EchoRequest, context: _Context) -> echo_pb2.EchoResponse:
        return await self._echo(request, context)

    async def EchoOnce(
        self, request: echo_pb2.EchoRequest, context: _Context
    ) -> echo_pb2.EchoResponse:
        # Same behaviour as Echo; only the proto's idempotency mark differs, which is the point.
        return await self._echo(request, context)

    async def _echo(
        self, request: echo_pb2.EchoRequest, context: _Context, *, draw: bool = True
    ) -> echo_pb2.EchoResponse:
        # Read before the delay: the response reports the deadline as the call arrived.
        remaining = context.time_remaining()
        deadline_left_ms = -1 if remaining is None else int(remaining * 1000)
        if request.delay_ms < 0:
            raise InvalidArgument.field("delay_ms", f"must not be negative, got {request.delay_ms}")
        _check_status("fail_code", request.fail_code)
        if request.forward_hops < 0:
            raise InvalidArgument.field(
                "forward_hops", f"must not be negative, got {request.forward_hops}"
            )
        # The instance's fault comes first, on arrival and before any forwarding: its delay on
        # top of the request's own, then (once per call) the draw that may fail it.
        fault = self._fault
        if fault.delay_ms > 0:
            await self._sleep(fault.delay_ms / 1000)
        if draw and self._fails(fault):
            code = _STATUS_BY_NUMBER[fault.fail_code]
            await context.abort(code, f"{self._deployment} is switched to fail with {code.name}")
        here = echo_pb2.Hop(
            served_by=self._deployment, deadline_left_ms=deadline_left_ms, trace_id=_trace_id()
        )
        if request.forward_hops > 0:
            return await self._forward_along(request, here)
        if request.delay_ms > 0:
            await self._sleep(request.delay_ms / 1000)
        if request.fail_code != 0:
            code = _STATUS_BY_NUMBER[request.fail_code]
            await context.abort(code, f"echo asked to fail with {code.name}")
        return echo_pb2.EchoResponse(
            message=request.message,
            served_by=self._deployment,
            deadline_left_ms=deadline_left_ms,
            previous_attempts=_previous_attempts(context.invocation_metadata() or ()),
            hops=[here],
            pid=os.getpid(),
        )

    def _fails(self, fault: _Fault) -> bool:
        """Whether this call is one of the fault's fail_percent; draws only when it is partial."""
        if fault.fail_percent <= 0 or fault.fail_code == 0:
            return False
        return fault.fail_percent >= 100 or self._rand() < fault.fail_percent / 100

    async def _forward_along(
        self, request: echo_pb2.EchoRequest, here: echo_pb2.Hop
    ) -> echo_pb2.EchoResponse:
        if self._forward is None:
            raise FailedPrecondition(f"{self._deployment} has no mesh channel to forward with")
        stub = await self._forward()
        onward = echo_pb2.EchoRequest()
        onward.CopyFrom(request)
        onward.forward_hops = request.forward_hops - 1
        # No timeout given: the mesh channel inherits what is left of this call's deadline.
        answer = await stub.Echo(onward)
        response = echo_pb2.EchoResponse()
        response.CopyFrom(answer)
        del response.hops[:]
        response.hops.extend([here, *answer.hops])
        return response


def _check_status(field: str, code: int) -> None:
    """Refuses a status code that grpc does not know (0, OK, is allowed)."""
    if code != 0 and code not in _STATUS_BY_NUMBER:
        raise InvalidArgument.field(
            field, f"must be a gRPC status code from 0 (OK) to {_MAX_STATUS}, got {code}"
        )


def _trace_id() -> str:
    """The current W3C trace id ("" only outside any trace: the host always sets one)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def _previous_attempts(metadata: Iterable[tuple[str, str | bytes]]) -> int:
    """The client's count of earlier attempts; 0 when absent or not a non-negative integer."""
    for key, value in metadata:
        if key.lower() != PREVIOUS_ATTEMPTS_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        # str.isdigit accepts e.g. "²", which int() rejects; isascii keeps the check honest.
        if text.isascii() and text.isdigit():
            return min(int(text), 2**31 - 1)  # the response field is an int32
        return 0
    return 0
