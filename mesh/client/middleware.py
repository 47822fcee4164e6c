"""The client middleware chain. Each layer has one job and the same shape:

    async def __call__(self, call: CallInfo, next: Handler) -> response

`build_chain` composes them in one loop, outermost first (default order in
`mesh.client.config.LAYERS`: deadline -> retry -> pick -> transport):

- DeadlineLayer: gives the call its absolute deadline (the caller's timeout or the method's
  default, never past the inbound deadline it is made under) and bounds the whole chain by it;
- RetryLayer: retries and hedges where safe, within the deadline and the channel's budget;
- PickLayer: chooses the instance (outlier detection, health, P2C over peak EWMA) and does
  the per-instance accounting around the attempt (and tells the pool's decision sink of
  ejections, readmissions and unreachable instances: svc.mesh);
- transport: the per-instance grpc.aio call.

With svc.trace records on (mesh.tracerecords), the channel puts `TraceRecordLayer` between
retry and pick: one SIDE_CLIENT record per attempt of a sampled trace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from opentelemetry.trace import SpanContext

from mesh.aio import cancel_and_wait, cancelled_by_caller
from mesh.client.call import CallInfo, GuardedStream, channel_closed_error, rpc_error
from mesh.deadline import DeadlineConfig, inbound_deadline, outbound_deadline
from mesh.resilience.budget import RetryBudget
from mesh.resilience.outlier import HealthState
from mesh.resilience.retry import (
    Pushback,
    RetryPolicy,
    can_hedge,
    parse_pushback,
    retry_delay,
    should_retry,
)
from mesh.tracecontext import TRACEPARENT, current_span_context, parse_traceparent
from mesh.tracerecords import (
    EJECTED,
    READMITTED,
    SIDE_CLIENT,
    UNREACHABLE,
    TraceEmitter,
    new_span_id,
    recorded,
)

__all__ = [
    "DeadlineLayer",
    "Handler",
    "Layer",
    "PickLayer",
    "RetryLayer",
    "TraceRecordLayer",
    "build_chain",
    "transport",
]

log = logging.getLogger(__name__)

Handler = Callable[[CallInfo], Awaitable[Any]]

# Codes that say the instance is unwell (Envoy's "5xx"); others are the caller's problem.
_INSTANCE_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
     grpc.StatusCode.DATA_LOSS}
)  # fmt: skip
# grpc core begins its status with these when no connection could be made: the request never
# left the client. Only the start counts: a backend's own message may well say "failed to
# connect" (to its database), and a call it received must not be taken for one never sent.
_NOT_SENT_PREFIXES = (
    "failed to connect to all addresses",
    "connections to all backends failed",
)


class Layer(Protocol):
    async def __call__(self, call: CallInfo, next: Handler) -> Any: ...


def build_chain(layers: Sequence[Layer], terminal: Handler) -> Handler:
    """Compose layers around terminal; layers[0] is the outermost."""
    handler = terminal
    for layer in reversed(layers):
        handler = _bind(layer, handler)
    return handler


def _bind(layer: Layer, next_handler: Handler) -> Handler:
    # A partial, not a wrapping coroutine: one frame per layer instead of two, which every
    # resumption of the call walks through.
    return functools.partial(layer, next=next_handler)


def remaining(call: CallInfo, now: float | None = None) -> float | None:
    if call.deadline is None:
        return None
    return call.deadline - (time.monotonic() if now is None else now)


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """True when grpc says no connection was made, so the server never saw the request."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return (error.details() or "").startswith(_NOT_SENT_PREFIXES)


async def transport(call: CallInfo) -> Any:
    """The last step: the per-instance grpc.aio call for this attempt."""
    endpoint = call.endpoint
    multicallable = endpoint.callable(
        call.kind.value, call.method, call.serializer, call.deserializer
    )
    metadata = call.metadata
    if call.attempt > 0:
        metadata = [*metadata, ("grpc-previous-rpc-attempts", str(call.attempt))]
    left = remaining(call)
    rpc = call.rpc = multicallable(
        call.request, timeout=left, metadata=metadata, wait_for_ready=call.wait_for_ready
    )
    if call.kind.response_streaming:
        call.sent = True
        return GuardedStream(rpc, call.method, endpoint.instance.address)
    try:
        response = await rpc
    except grpc.aio.AioRpcError as exc:
        call.sent = not never_sent(exc)
        call.trailers = tuple(exc.trailing_metadata() or ())
        raise
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        # The channel closed under the call (the instance left and its grace ran out, or
        # the owner closed it): no answer came, and the server may have acted on it.
        call.sent = True
        raise channel_closed_error(call.method, endpoint.instance.address) from None
    call.sent = True
    return response


class TelemetryLayer:
    """Counts each call once, as its caller sees it: final status, total latency, in flight."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        m = self.metrics
        method = call.method.rsplit("/", 1)[-1]
        started = time.perf_counter()
        code = "OK"
        m.in_flight.labels(call.service).inc()
        try:
            return await next(call)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            m.in_flight.labels(call.service).dec()
            m.requests.labels(call.service, method, code).inc()
            m.latency.labels(call.service, method).observe(time.perf_counter() - started)


class DeadlineLayer:
    def __init__(self, config: DeadlineConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        now = self.clock()
        call.deadline = outbound_deadline(
            self.config, call.method, call.timeout, now, inbound_deadline()
        )
        left = call.deadline - now
        if left < self.config.minimum:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{call.method}: {left * 1000:.1f} ms left of the deadline, below the "
                f"{self.config.minimum * 1000:.1f} ms minimum: not sent",
            )
        # No asyncio timer here (it was ~40 % of the chain's cost): every attempt carries
        # `timeout=` what is left, which grpc's core enforces; retry backoff and the wait for
        # a first instance are capped by what is left, too.
        return await next(call)


class RetryLayer:
    """Retries (gRFC A6 retryPolicy) and hedging (hedgingPolicy) where safe, within the
    deadline and the channel's retry budget."""

    def __init__(
        self,
        policy_for: Callable[[str], RetryPolicy],
        budget: RetryBudget,
        *,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[CallInfo], object] | None = None,
    ) -> None:
        self.policy_for = policy_for
        self.budget = budget
        self.rand = rand
        self.sleep = sleep
        self.clock = clock
        #: Told of each retry the budget refused (svc.mesh), with the call as it stands.
        self.on_refused = on_refused
        #: Retries and hedges sent, and retries refused by the budget (metrics read these).
        self.retries = 0
        self.budget_refusals = 0

    def _refused(self, call: CallInfo) -> None:
        self.budget_refusals += 1
        if self.on_refused is not None:
            self.on_refused(call)

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        self.budget.record_request()
        if call.kind is not call.kind.UNARY_UNARY:
            return await self._once_unless_unsent(call, next)
        policy = self.policy_for(call.method)
        if policy.hedging_delay is not None and can_hedge(policy, call.idempotency):
            return await self._hedge(call, next, policy)
        while True:
            call.trailers = ()  # each attempt's pushback is its own
            try:
                return await next(call)
            except grpc.aio.AioRpcError as exc:
                delay = self._retry_delay(call, exc, policy)
                if delay is None:
                    raise
            await self.sleep(delay)
            call.attempt += 1
            self.retries += 1

    async def _once_unless_unsent(self, call: CallInfo, next: Handler) -> Any:
        """Streaming calls cannot replay their messages: retried only when never sent."""
        policy = self.policy_for(call.method)
        try:
            return await next(call)
        except grpc.aio.AioRpcError as exc:
            retryable = policy.max_attempts > 1 and exc.code() in policy.retryable_codes
            if call.sent or not retryable:
                raise
            if not self.budget.try_withdraw():
                self._refused(call)
                raise
        call.attempt += 1
        self.retries += 1
        return await next(call)

    def _retry_delay(
        self, call: CallInfo, error: grpc.aio.AioRpcError, policy: RetryPolicy
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with `error`."""
        pushback = _pushback(call.trailers)
        if pushback == "stop":
            return None
        decision = should_retry(
            code=error.code(),
            attempt=call.attempt + 1,
            policy=policy,
            idempotency=call.idempotency,
            reached_server=call.sent,
            pushback_ms=pushback,
        )
        if not decision.retry:
            return None
        delay = retry_delay(policy, call.attempt + 1, self.rand(), pushback)
        left = remaining(call, self.clock())
        if left is not None and delay >= left:
            return None  # the next attempt could not finish in time
        if not self.budget.try_withdraw():
            self._refused(call)
            log.debug("retry budget exhausted: %s not retried", call.method)
            return None
        return delay

    async def _hedge(self, call: CallInfo, next: Handler, policy: RetryPolicy) -> Any:
        """Send the call, and another copy each hedging delay until one answers; the first
        good answer wins and the rest are cancelled. A fatal code ends the call at once."""
        assert policy.hedging_delay is not None
        attempts: list[asyncio.Task[Any]] = []
        last_error: grpc.aio.AioRpcError | None = None

        def launch() -> None:
            n = len(attempts)
            copy = CallInfo(**{**call.__dict__, "attempt": n, "hedge": n > 0, "tried": call.tried})
            attempts.append(asyncio.ensure_future(next(copy)))

        launch()
        pending: set[asyncio.Task[Any]] = set(attempts)
        try:
            while pending:
                # Once every attempt is out there is nothing to hedge: wait without a timer.
                more = len(attempts) < policy.max_attempts
                done, pending = await asyncio.wait(
                    pending,
                    timeout=policy.hedging_delay if more else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    error = task.exception()
                    if error is None:
                        return task.result()
                    if not isinstance(error, grpc.aio.AioRpcError):
                        raise error
                    last_error = error
                    if error.code() not in policy.non_fatal_codes:
                        raise error
                if len(attempts) < policy.max_attempts:
                    if self.budget.try_withdraw():
                        self.retries += 1
                        launch()
                        pending.add(attempts[-1])
                    else:
                        self._refused(call)
        finally:
            for task in attempts:
                if task.done() and not task.cancelled():
                    task.exception()  # a losing attempt's failure is no news: mark it read
            await cancel_and_wait(*attempts)  # lets a cancellation of our caller through
        assert last_error is not None
        raise last_error


def _pushback(metadata: Sequence[tuple[str, Any]]) -> Pushback:
    """The server's retry pushback (gRFC A6); the trailer sent more than once means stop."""
    values = [v for k, v in metadata if k == "grpc-retry-pushback-ms"]
    if not values:
        return None
    if len(values) > 1:
        return "stop"
    value = values[0]
    return parse_pushback(value.decode() if isinstance(value, bytes) else str(value))


class PickLayer:
    """Chooses the instance for each attempt and accounts for its outcome."""

    def __init__(
        self,
        pool_for: Callable[[str], Awaitable[Any]],
        *,
        no_instance_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool_for = pool_for
        self.no_instance_wait = no_instance_wait
        self.clock = clock

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        pool = await self.pool_for(call.service)
        endpoint = pool.pick(call.tried, call.version)
        if endpoint is None and call.version and pool.endpoints and not pool.matches(call.version):
            # Pinned to versions nobody runs: no wait or retry changes that (the caller's to
            # fix), so fail fast naming the range and what exists.
            call.sent = False
            raise rpc_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no instance of {call.service} runs a version in {call.version!r} "
                f"(registered: {', '.join(pool.versions())})",
            )
        if endpoint is None and not call.waited_for_instance and not pool.any_serving(call.version):
            # None registered, or every one draining before its replacement registers: wait
            # a little (bounded) for the membership to change, once per call, not per retry.
            call.waited_for_instance = True
            endpoint = await self._wait_for_instance(pool, call)
        if endpoint is None:
            call.sent = False
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, pool.why_unavailable(call.version))
        call.endpoint = endpoint
        call.tried.add(endpoint.key)
        endpoint.outstanding += 1
        started = self.clock()
        try:
            response = await next(call)
        except grpc.aio.AioRpcError as exc:
            pool.version_attempts[endpoint.instance.version, exc.code().name] += 1
            self._failed(pool, endpoint, exc, started)
            raise
        finally:
            # A cancelled attempt (the caller gave up, or a hedge lost) says nothing about the
            # instance: no success, no failure; a lost probe is given up after probe_timeout.
            endpoint.outstanding -= 1
        now = self.clock()
        pool.version_attempts[endpoint.instance.version, "OK"] += 1
        endpoint.ewma.observe(now - started)
        endpoint.observed = True
        endpoint.reach.succeeded()
        if pool.detector.on_success(endpoint.key, now):
            pool.report(READMITTED, endpoint, "its probe call succeeded")
        return response

    async def _wait_for_instance(self, pool: Any, call: CallInfo) -> Any:
        left = remaining(call, self.clock())
        wait = self.no_instance_wait if left is None else min(self.no_instance_wait, left)
        until = self.clock() + wait
        while wait > 0 and await pool.wait_changed(wait):
            endpoint = pool.pick(call.tried, call.version)
            if endpoint is not None:
                return endpoint
            wait = until - self.clock()  # a change that brought no usable instance
        return None

    def _failed(
        self, pool: Any, endpoint: Any, error: grpc.aio.AioRpcError, started: float
    ) -> None:
        now = self.clock()
        code = error.code()
        endpoint.observed = True
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            endpoint.ewma.penalize()
        else:
            endpoint.ewma.observe(now - started)
        if code in _INSTANCE_FAILURES:
            unreachable = never_sent(error)
            if unreachable:
                endpoint.reach.failed(now)  # not picked again until its gate opens
                if endpoint.reach.failures == 1:
                    pool.report(UNREACHABLE, endpoint, f"a call could not connect: {code.name}")
            probing = _probing(pool, endpoint.key)
            if pool.detector.on_failure(endpoint.key, now, connection=unreachable):
                pool.report(EJECTED, endpoint, _ejection_reason(pool, code, unreachable, probing))
        elif pool.detector.on_success(endpoint.key, now):
            pool.report(READMITTED, endpoint, "its probe call succeeded")


def _probing(pool: Any, key: str) -> bool:
    try:
        return bool(pool.detector.health(key).state is HealthState.PROBING)
    except KeyError:
        return False


def _ejection_reason(pool: Any, code: grpc.StatusCode, unreachable: bool, probing: bool) -> str:
    if probing:
        return f"its probe call failed ({code.name})"
    if unreachable:
        return f"a call could not connect ({code.name})"
    return f"{pool.detector.config.consecutive_failures} consecutive failures (last {code.name})"


class TraceRecordLayer:
    """svc.trace, client side: one SIDE_CLIENT record per attempt of a sampled trace (a
    retry or a hedge is a record of its own, with its attempt number and hedge flag).

    The attempt is a span of its own, under the caller's: with `sends_trace_context` it goes
    out as the attempt's ``traceparent``, so the server's record names it as parent (with
    OpenTelemetry's interceptor, its client span is the parent instead). For a response
    stream the record is made when the stream ends (read to its end, failed or cancelled).
    Unsampled calls pass through untouched.
    """

    def __init__(self, records: TraceEmitter, *, sends_trace_context: bool = True) -> None:
        self.records = records
        self.sends_trace_context = sends_trace_context

    async def __call__(self, call: CallInfo, next: Handler) -> Any:
        if not recorded(call.method):
            return await next(call)
        parent = current_span_context() or _traceparent_in(call.metadata)
        if parent is None or not self.records.sampled(parent.trace_id):
            return await next(call)
        span_id = new_span_id()
        if self.sends_trace_context:
            own = f"00-{parent.trace_id:032x}-{span_id:016x}-{parent.trace_flags:02x}"
            call.metadata = [*((k, v) for k, v in call.metadata if k != TRACEPARENT),
                             (TRACEPARENT, own)]  # fmt: skip
        call.endpoint = None  # this attempt's, once picked
        attempt = _Attempt(self.records, call, parent.trace_id, span_id, parent.span_id)
        try:
            response = await next(call)
        except grpc.aio.AioRpcError as exc:
            attempt.end(exc.code().value[0])
            raise
        except asyncio.CancelledError:
            attempt.end(grpc.StatusCode.CANCELLED.value[0])
            raise
        if call.kind.response_streaming:
            return _RecordedStream(response, attempt)
        attempt.end(0)
        return response


def _traceparent_in(metadata: Sequence[tuple[str, str | bytes]]) -> SpanContext | None:
    """The trace a call's own metadata names (a caller outside any current trace)."""
    for key, value in metadata:
        if key == TRACEPARENT and isinstance(value, str):
            return parse_traceparent(value)
    return None


class _Attempt:
    """One sampled attempt, timed from its start; `end(code)` queues its record once."""

    __slots__ = ("call", "parent", "records", "span_id", "started", "t0", "trace_id")

    def __init__(
        self, records: TraceEmitter, call: CallInfo, trace_id: int, span_id: int, parent: int
    ) -> None:
        self.records: TraceEmitter | None = records
        self.call = call
        self.trace_id, self.span_id, self.parent = trace_id, span_id, parent
        self.started = time.time_ns()
        self.t0 = time.perf_counter_ns()

    def end(self, code: int) -> None:
        if self.records is None:
            return
        duration = time.perf_counter_ns() - self.t0
        records, self.records = self.records, None
        call = self.call
        endpoint = call.endpoint
        instance, address = (
            ("", "") if endpoint is None else (endpoint.key, endpoint.instance.address)
        )
        # The method's own service (a call routed to another's instances is still its own).
        _, service, method = call.method.split("/", 2)
        records.call(
            SIDE_CLIENT, self.trace_id, self.span_id, self.parent, records.identity, instance,
            address, service, method, code, self.started, duration, call.attempt, call.hedge,
        )  # fmt: skip


class _RecordedStream:
    """A response stream whose end (EOF, an error, a cancel) ends its attempt's record."""

    def __init__(self, stream: Any, attempt: _Attempt) -> None:
        self._stream = stream
        self._attempt = attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def cancel(self) -> bool:
        self._attempt.end(grpc.StatusCode.CANCELLED.value[0])
        return bool(self._stream.cancel())

    async def read(self) -> Any:
        try:
            message = await self._stream.read()
        except grpc.aio.AioRpcError as exc:
            self._attempt.end(exc.code().value[0])
            raise
        except asyncio.CancelledError:
            self._attempt.end(grpc.StatusCode.CANCELLED.value[0])
            raise
        if message is grpc.aio.EOF:
            self._attempt.end(0)
        return message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for message in self._stream:
                yield message
        except grpc.aio.AioRpcError as exc:
            self._attempt.end(exc.code().value[0])
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._attempt.end(grpc.StatusCode.CANCELLED.value[0])
            raise
        self._attempt.end(0)
