"""svc.trace and svc.mesh: the mesh's own call records and decisions, on core NATS.

Every hop of a sampled call (the service host's server side, the mesh channel's client side
per attempt, the gateway) hands a `TraceEmitter` one record; the emitter's background task sends
them as `CallRecordBatch` messages (protos/hms/mesh/v1/trace.proto) on ``svc.trace.<service>``
every `interval` seconds, or sooner once `batch_size` are waiting. Balancer and breaker
decisions (`decision`) go one `MeshDecision` per message on ``svc.mesh.<service>``.

Best effort, never a cost on the call path beyond appending a tuple to a bounded queue:

- core NATS ``publish`` (no JetStream, no server acknowledgement awaited);
- a full queue drops the record; so does a batch taken while NATS is not connected or while
  the client's outgoing buffer is backed up (NATS slow). Every drop is counted
  (``mesh_trace_records_dropped_total``) and told in the next batch's ``dropped``;
- protobuf messages and hex ids are made by the background task, not by the caller.

Sampling is by trace id, so every hop of one request makes the same choice (given the same
rate): the trace id's low 64 bits below ``rate * 2**64`` (`sample_threshold`). The rate is
``MESH_TRACE_SAMPLE`` (``--trace-sample``): 0 (the default) makes no emitter at all, `mesh up`
sets 1.0, 0.01 is the figure for production.

    emitter = TraceEmitter("notify", connect=runtime.nats, sample=0.01, identity=spiffe)
    emitter.start()                                   # in the service's loop
    if emitter.sampled(trace_id):
        emitter.call(SIDE_SERVER, trace_id, span_id, parent, caller, ...)
    await emitter.close()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hms.mesh.v1 import trace_pb2

__all__ = [
    "BATCH_SIZE",
    "BUDGET_REFUSED",
    "DRAINING",
    "EJECTED",
    "INTERVAL",
    "MESH_PREFIX",
    "QUEUE_SIZE",
    "READMITTED",
    "SIDE_CLIENT",
    "SIDE_GATEWAY",
    "SIDE_HANDLER",
    "SIDE_SERVER",
    "TRACE_PREFIX",
    "UNREACHABLE",
    "DecisionSink",
    "TraceEmitter",
    "check_sample_rate",
    "decision_subject",
    "new_span_id",
    "recorded",
    "sample_threshold",
    "trace_subject",
]

log = logging.getLogger(__name__)

TRACE_PREFIX = "svc.trace"
MESH_PREFIX = "svc.mesh"
# hms.mesh.v1.Side and DecisionKind, as numbers: the generated module is loaded only by the
# background task that builds the messages, so a process that records nothing (the gateway's
# route learner, a client) never imports generated code (tests check both).
SIDE_GATEWAY = 1
SIDE_CLIENT = 2
SIDE_SERVER = 3
SIDE_HANDLER = 4
EJECTED = 1
READMITTED = 2
BUDGET_REFUSED = 3
DRAINING = 4
UNREACHABLE = 5

QUEUE_SIZE = 8192
BATCH_SIZE = 256
INTERVAL = 0.1
#: Decisions waiting at most (a storm of budget refusals must not grow without bound).
DECISION_QUEUE_SIZE = 1024
#: Bytes waiting in the NATS client's own buffer beyond which NATS counts as slow: batches
#: are then dropped instead of piling up there (and being sent stale after an outage).
MAX_PENDING_BYTES = 1 << 20
#: How long `close` waits to send what is queued.
CLOSE_TIMEOUT = 1.0
_LOW_64 = (1 << 64) - 1

#: What the pool and the retry layer call with a decision: kind (trace_pb2.DecisionKind),
#: service, instance id, address, reason.
DecisionSink = Callable[[int, str, str, str, str], None]
#: Opens (or returns) the NATS connection to publish on.
Connect = Callable[[], Awaitable[Any]]


def trace_subject(service: str) -> str:
    return f"{TRACE_PREFIX}.{service}"


def decision_subject(service: str) -> str:
    return f"{MESH_PREFIX}.{service}"


#: Methods of these packages are the mesh's plumbing (health watches, reflection), not calls
#: of the application: never recorded.
_PLUMBING = "/grpc."


def recorded(method: str) -> bool:
    """Are calls of `method` (``/pkg.Service/Method``) recorded? Not the plumbing's.

    >>> recorded("/hms.notify.v1.NotifyService/Send"), recorded("/grpc.health.v1.Health/Watch")
    (True, False)
    """
    return not method.startswith(_PLUMBING)


def check_sample_rate(rate: float) -> float:
    """`rate` if it is a sampling rate (0.0 to 1.0), else ValueError naming it."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"trace sample rate must be from 0.0 to 1.0, got {rate!r}")
    return float(rate)


def sample_threshold(rate: float) -> int:
    """The bound a trace id's low 64 bits must stay below to be sampled at `rate`.

    >>> sample_threshold(1.0) == 2**64, sample_threshold(0.0)
    (True, 0)
    """
    return int(check_sample_rate(rate) * 2**64)


def new_span_id() -> int:
    """A random, non-zero 64-bit span id (as mesh.tracecontext makes them)."""
    return random.getrandbits(64) or 1


class TraceEmitter:
    """One process's records, queued and sent in the background (see the module doc).

    `deployment` and `identity` (its SPIFFE ID) are the emitter's own: every record and
    decision carries the deployment, client and gateway records the identity as caller.
    `connect` gives the NATS connection, opened on first use (a service's
    ``Runtime.nats``); until it is connected, what the task takes from the queue is dropped.
    """

    def __init__(
        self,
        deployment: str,
        *,
        connect: Connect,
        sample: float = 1.0,
        identity: str = "",
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
        interval: float = INTERVAL,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or interval <= 0:
            raise ValueError("queue_size and batch_size must be >= 1 and interval > 0")
        self.deployment = deployment
        self.identity = identity
        self.rate = check_sample_rate(sample)
        self._threshold = sample_threshold(sample)
        self._connect = connect
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = interval
        self._calls: collections.deque[tuple[Any, ...]] = collections.deque()
        self._decisions: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._nats: Any = None
        self._task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        #: Records (and decisions) dropped, all told, and since the last batch sent.
        self.dropped = 0
        self._unreported = 0
        self.sent = 0
        self.decisions_sent = 0
        if registry is not None:
            registry.register(EmitterCollector(self))

    # -- the call path: cheap, never blocking ---------------------------------------------

    def sampled(self, trace_id: int) -> bool:
        """Is the trace with this id (an int) recorded? The same answer in every process
        with the same rate."""
        return (trace_id & _LOW_64) < self._threshold

    def call(  # noqa: PLR0917 (positional: the call path pays for every keyword)
        self,
        side: int,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        caller: str,
        callee_instance: str,
        callee_address: str,
        service: str,
        method: str,
        code: int,
        start_unix_nanos: int,
        duration_nanos: int,
        attempt: int = 0,
        hedge: bool = False,
        http_method: str = "",
        http_route: str = "",
        http_status: int = 0,
    ) -> None:
        """Queue one hop's record (ids as ints, `parent_span_id` 0 at the root); dropped
        and counted when the queue is full. Call it only for a `sampled` trace."""
        calls = self._calls
        if len(calls) >= self._queue_size:
            self.dropped += 1
            self._unreported += 1
            return
        calls.append(
            (side, trace_id, span_id, parent_span_id, caller, callee_instance, callee_address,
             service, method, code, start_unix_nanos, duration_nanos, attempt, hedge,
             http_method, http_route, http_status)
        )  # fmt: skip
        if len(calls) == self._batch_size and self._wake is not None:
            self._wake.set()

    def decision(self, kind: int, service: str, instance: str, address: str, reason: str) -> None:
        """Queue a balancer or breaker decision (a `DecisionSink`)."""
        if len(self._decisions) >= DECISION_QUEUE_SIZE:
            self.dropped += 1
            self._unreported += 1
            return
        self._decisions.append((kind, service, instance, address, reason, time.time_ns()))

    @property
    def queued(self) -> int:
        return len(self._calls) + len(self._decisions)

    # -- the background task --------------------------------------------------------------

    def start(self) -> None:
        """Start sending (inside the running loop); the connection is opened meanwhile."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._connecting = asyncio.create_task(self._open(), name="mesh-trace-connect")
        self._task = asyncio.create_task(self._run(), name="mesh-trace-send")

    async def _open(self) -> None:
        delay = 0.5
        while True:
            try:
                self._nats = await self._connect()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("svc.trace: cannot connect to NATS (%s); records are dropped", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    def _available(self) -> Any:
        """The connection if a batch may go out on it now, else None (records dropped)."""
        nats = self._nats
        if nats is None or not nats.is_connected:
            return None
        if nats.pending_data_size > MAX_PENDING_BYTES:
            return None
        return nats

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    async def flush(self) -> None:
        """Send what is queued now (or drop it, counted, if NATS cannot take it)."""
        from hms.mesh.v1 import trace_pb2

        calls, self._calls = self._calls, collections.deque()
        decisions, self._decisions = self._decisions, collections.deque()
        if not calls and not decisions:
            return
        nats = self._available()
        if nats is None:
            self._drop(len(calls) + len(decisions))
            return
        by_service: dict[str, list[tuple[Any, ...]]] = {}
        for record in calls:
            by_service.setdefault(record[7], []).append(record)
        for service, records in by_service.items():
            subject = trace_subject(service)
            for at in range(0, len(records), self._batch_size):
                chunk = records[at : at + self._batch_size]
                unreported = self._unreported
                data = self._batch(chunk, unreported).SerializeToString()
                if not await self._publish(nats, subject, data, len(chunk)):
                    continue
                self._unreported -= unreported
                self.sent += len(chunk)
        for kind, service, instance, address, reason, at_ns in decisions:
            message = trace_pb2.MeshDecision(
                kind=kind,
                deployment=self.deployment,
                service=service,
                instance=instance,
                address=address,
                reason=reason,
                time_unix_nanos=at_ns,
            )
            if await self._publish(nats, decision_subject(service), message.SerializeToString(), 1):
                self.decisions_sent += 1

    async def _publish(self, nats: Any, subject: str, data: bytes, count: int) -> bool:
        if self._available() is None:
            self._drop(count)
            return False
        try:
            await nats.publish(subject, data)
        except Exception as exc:  # closed, reconnecting with a full buffer, too large: dropped
            log.debug("svc.trace: publish on %s failed: %s", subject, exc)
            self._drop(count)
            return False
        return True

    def _batch(self, chunk: Iterable[tuple[Any, ...]], dropped: int) -> trace_pb2.CallRecordBatch:
        from hms.mesh.v1 import trace_pb2

        batch = trace_pb2.CallRecordBatch(dropped=dropped)
        add = batch.records.add
        deployment = self.deployment
        for record in chunk:
            (
                side,
                trace_id,
                span_id,
                parent,
                caller,
                instance,
                address,
                service,
                method,
                code,
                start,
                duration,
                attempt,
                hedge,
                http_method,
                http_route,
                http_status,
            ) = record
            add(
                trace_id=f"{trace_id:032x}",
                span_id=f"{span_id:016x}",
                parent_span_id=f"{parent:016x}" if parent else "",
                side=side,
                caller=caller,
                callee_instance=instance,
                callee_address=address,
                deployment=deployment,
                service=service,
                method=method,
                code=code,
                start_unix_nanos=start,
                duration_nanos=duration,
                attempt=attempt,
                hedge=hedge,
                http_method=http_method,
                http_route=http_route,
                http_status=http_status,
            )
        return batch

    async def close(self) -> None:
        """Stop sending: what is queued goes out if NATS takes it within a second. The
        connection is its owner's to close."""
        tasks = [t for t in (self._task, self._connecting) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._connecting = None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.flush()
                if self._available() is not None:
                    await self._nats.flush(timeout=CLOSE_TIMEOUT)
        except Exception as exc:
            log.debug("svc.trace: final flush failed: %s", exc)


class EmitterCollector(Collector):
    """The emitter's counts, read when scraped (nothing is counted on the call path)."""

    def __init__(self, emitter: TraceEmitter) -> None:
        self.emitter = emitter

    def collect(self) -> Iterable[Any]:
        emitter = self.emitter
        dropped = CounterMetricFamily(
            "mesh_trace_records_dropped",
            "svc.trace records and svc.mesh decisions dropped: queue full, NATS down or slow",
        )
        dropped.add_metric([], emitter.dropped)
        sent = CounterMetricFamily("mesh_trace_records_sent", "svc.trace records published")
        sent.add_metric([], emitter.sent)
        decisions = CounterMetricFamily("mesh_trace_decisions_sent", "svc.mesh decisions published")
        decisions.add_metric([], emitter.decisions_sent)
        queued = GaugeMetricFamily("mesh_trace_queued", "Records and decisions waiting")
        queued.add_metric([], emitter.queued)
        return [dropped, sent, decisions, queued]
