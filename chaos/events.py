"""Scenario 6: NATS down while events go through the outbox; every event applied exactly once,
in order per aggregate.

A producer service writes `events` business changes, each in its own SQLite transaction with its
event in the outbox (`mesh.events.Outbox`), round robin over `aggregates` aggregates, at a steady
pace; an `OutboxRelay` publishes them. A consumer service applies them through a durable
`Subscriber` and an `IdempotentHandler` (processed ids in its own SQLite database). About 5 s into
the writing NATS is stopped, stays down `outage` seconds while the writing goes on (events pile up
in the outbox), and is started again on the same port and data directory; then the scenario waits
until every event is applied and returns what it saw:

    figures = await outbox_through_outage(stack.nats, workdir, events=5000, outage=30.0)
    figures["applied"] == figures["events"]                         # none lost
    figures["applied_twice"] == 0 and figures["out_of_order"] == 0  # once each, in order

The two services run in this process, but each on an event loop of its own (the producer's on a
thread) with a NATS connection of its own that keeps reconnecting through the outage
(`max_reconnect_attempts=-1`, as docs/events.md prescribes): as separate processes would, so
that one service's SQLite commits, which block their loop while the disk syncs, do not slow the
other. The relay and the subscriber keep their defaults, so the drain time is what a service
would see. Each run uses a subject prefix of its own (hence a stream and a consumer of its own),
so events of earlier runs or of the stack's services neither reach this consumer nor are
disturbed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import nats as nats_py
from nats.aio.client import Client
from nats.js import JetStreamContext

from chaos import ScenarioFailed
from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.devstack import NatsCluster, NatsProcess
from mesh.events import (
    EventMeta,
    IdempotentHandler,
    Outbox,
    OutboxRelay,
    Publisher,
    StreamSpec,
    Subscriber,
    ensure_stream,
    events_stream,
)

__all__ = ["NatsDown", "NodeLoss", "outbox_through_outage"]

#: A client that must outlive an outage: never give up, and notice the server's return quickly
#: (nats-py's defaults give up after 60 attempts 2 s apart).
RECONNECT: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2}
#: Writing starts this long before NATS is stopped.
LEAD = 5.0
#: The writing lasts `outage + TAIL` seconds in all.
TAIL = 10.0
PRODUCER = "chaos-outbox"
CONSUMER = "chaos-ledger"

# Set by the apply function in the task that delivers the event, read by the same task's handler
# wrapper: tells a delivery that was applied from one the IdempotentHandler skipped, even while
# other deliveries wait for the handler's lock.
_applied_here: contextvars.ContextVar[bool] = contextvars.ContextVar("applied_here", default=False)


@dataclass
class _Ledger:
    """The consumer's in-memory state and what it counted."""

    expected: int
    applied: int = 0  # times the handler body applied an event
    deliveries: int = 0
    redelivered: int = 0  # deliveries with delivery_count > 1
    skipped: int = 0  # deliveries the idempotent handler did not apply (id seen before)
    failed: int = 0  # deliveries whose handler raised
    out_of_order: int = 0
    times_applied: dict[str, int] = field(default_factory=dict)  # event id -> applications
    last: dict[str, int] = field(default_factory=dict)  # aggregate -> last number applied
    # (publish time, apply time) in time.monotonic() terms, per applied event
    latencies: list[tuple[float, float]] = field(default_factory=list)
    last_applied_at: float = 0.0
    # Events written before NATS came back, and when as many had been applied.
    backlog: int | None = None
    caught_up_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    first: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, conn: sqlite3.Connection, event: VoucherSubmitted, meta: EventMeta) -> None:
        """The handler body: runs inside the IdempotentHandler's transaction."""
        conn.execute(
            "INSERT INTO ledger (aggregate, number, event_id) VALUES (?, ?, ?)",
            (event.voucher_id, event.amount_pence, meta.id),
        )
        now = time.monotonic()
        if meta.time is not None:  # ce-time, stamped by the publisher (same machine's clock)
            latency = (datetime.now(UTC) - meta.time).total_seconds()
            self.latencies.append((now - latency, now))
        _applied_here.set(True)
        self.applied += 1
        self.times_applied[meta.id] = self.times_applied.get(meta.id, 0) + 1
        previous = self.last.get(event.voucher_id, 0)
        if event.amount_pence != previous + 1:
            self.out_of_order += 1
        self.last[event.voucher_id] = max(previous, event.amount_pence)
        self.last_applied_at = now
        self.first.set()
        self._check_caught_up(now)
        if self.applied >= self.expected:
            self.done.set()

    def _check_caught_up(self, now: float) -> None:
        # Stream order is outbox order, so once as many are applied as were written before the
        # restart, the backlog is through (approximately, should an event be redelivered).
        if self.caught_up_at is None and self.backlog is not None and self.applied >= self.backlog:
            self.caught_up_at = now

    def restarted(self, written: int) -> None:
        self.backlog = written
        self._check_caught_up(time.monotonic())


class _LogCounter(logging.Handler):
    """Counts the warnings of mesh.events (relay rounds and fetches retried while NATS is down).

    Being a handler on "mesh.events" it also keeps Python's last-resort handler from printing
    each retry with its traceback when the runner configured no logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.name] = self.counts.get(record.name, 0) + 1


async def _connect(url: str, name: str, reconnects: list[float]) -> Client:
    async def on_error(exc: Exception) -> None:
        pass  # connection refused while NATS is down: expected, and retried

    async def on_reconnected() -> None:
        reconnects.append(time.monotonic())

    return await nats_py.connect(
        url.split(","),
        name=name,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
        connect_timeout=2,
        **RECONNECT,
    )


async def _close_client(nc: Client, reconnect: float = 5.0) -> None:
    """Close `nc`, first letting it reconnect if it is reconnecting (for at most `reconnect` s):
    nats-py closing a lost connection with data still buffered fails half way and leaves its
    subscription tasks behind."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(reconnect):
            while nc.is_reconnecting:  # noqa: ASYNC110 (no event announces it)
                await asyncio.sleep(0.05)
    with contextlib.suppress(Exception):
        await nc.close()


def _aggregate(n: int) -> str:
    return f"agg-{n:04d}"


class _Producer:
    """The producing service, on a thread with an event loop of its own: a business table and
    the outbox in one SQLite database, the relay, and its own NATS connection.

    Its methods are called from the scenario's loop; what it tells that loop (events below,
    `finished`) goes through `call_soon_threadsafe`.
    """

    def __init__(
        self, *, url: str, spec: StreamSpec, prefix: str, db: Path, reconnects: list[float]
    ) -> None:
        self.url = url
        self.spec = spec
        self.prefix = prefix
        self.db = db
        self.reconnects = reconnects
        self.written = 0
        self.pending_peak = 0
        self.started_at = self.written_at = 0.0
        self._main = asyncio.get_running_loop()
        self.ready = asyncio.Event()  # relay running
        self.reached = asyncio.Event()  # the milestone is written
        self.finished: asyncio.Future[None] = self._main.create_future()  # thread ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, events: int, aggregates: int, interval: float, milestone: int) -> None:
        self._thread = threading.Thread(
            target=self._run,
            args=(events, aggregates, interval, milestone),
            name="chaos-outbox-producer",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the producer to stop writing (if it still is) and close everything it opened."""
        self._stop_requested.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(stop.set)

    async def join(self) -> None:
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def wait(self, event: asyncio.Event) -> None:
        """Wait for `event`; raise the producer's error if it ends first."""
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self.finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not event.is_set():
            self.finished.result()  # raises what ended the producer, if anything
            raise ScenarioFailed("the producer ended before it was told to")

    def pending(self) -> int:
        """Events not yet marked sent, read from this thread through a connection of its own."""
        with contextlib.closing(sqlite3.connect(str(self.db))) as conn:
            (count,) = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(count)

    # Below: the producer's own thread.

    def _signal(self, callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the scenario's loop is gone
            self._main.call_soon_threadsafe(callback)

    def _run(self, events: int, aggregates: int, interval: float, milestone: int) -> None:
        error: BaseException | None = None
        try:
            asyncio.run(self._serve(events, aggregates, interval, milestone))
        except BaseException as exc:
            error = exc

        def finish() -> None:
            if not self.finished.done():
                if error is None:
                    self.finished.set_result(None)
                else:
                    self.finished.set_exception(error)

        self._signal(finish)

    async def _serve(self, events: int, aggregates: int, interval: float, milestone: int) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop_requested.is_set():
            return
        conn = sqlite3.connect(str(self.db))
        try:
            with conn:
                conn.execute("CREATE TABLE vouchers (id TEXT PRIMARY KEY, submitted INTEGER)")
                conn.executemany(
                    "INSERT INTO vouchers VALUES (?, 0)",
                    [(_aggregate(n),) for n in range(aggregates)],
                )
            nc = await _connect(self.url, PRODUCER, self.reconnects)
            try:
                outbox = Outbox(self.db)
                try:
                    publisher = Publisher(nc.jetstream(), PRODUCER, prefix=self.prefix)
                    relay = OutboxRelay(outbox, publisher, stream=self.spec)
                    relay.start()
                    try:
                        self._signal(self.ready.set)
                        await self._write_until_stopped(
                            conn, events, aggregates, interval, milestone
                        )
                    finally:
                        await relay.stop()
                finally:
                    outbox.close()
            finally:
                await _close_client(nc)
        finally:
            conn.close()

    async def _write_until_stopped(
        self,
        conn: sqlite3.Connection,
        events: int,
        aggregates: int,
        interval: float,
        milestone: int,
    ) -> None:
        assert self._stop is not None
        writer = asyncio.create_task(self._write(conn, events, aggregates, interval, milestone))
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({writer, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                writer.result()  # the writer's error, if any
                await stopped  # the relay goes on until the scenario has seen every event
        finally:
            for task in (writer, stopped):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _write(
        self,
        conn: sqlite3.Connection,
        events: int,
        aggregates: int,
        interval: float,
        milestone: int,
    ) -> None:
        """Write `events` events on a fixed schedule, one every `interval` s (a late write does
        not shift the ones after it), each with its business change in one transaction."""
        self.started_at = time.monotonic()
        for index in range(events):
            delay = self.started_at + index * interval - time.monotonic()
            # Pacing the writes (a steady business), not waiting for a condition.
            await asyncio.sleep(max(0.0, delay))
            aggregate = _aggregate(index % aggregates)
            with conn:
                (number,) = conn.execute(
                    "UPDATE vouchers SET submitted = submitted + 1 WHERE id = ?"
                    " RETURNING submitted",
                    (aggregate,),
                ).fetchone()
                event = VoucherSubmitted(
                    voucher_id=aggregate, applicant_id="chaos", amount_pence=number
                )
                Outbox.add(conn, event, aggregate=aggregate)
            self.written = index + 1
            (pending,) = conn.execute(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
            ).fetchone()
            self.pending_peak = max(self.pending_peak, pending)
            if self.written == milestone:
                self._signal(self.reached.set)
        self.written_at = time.monotonic()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def _settled(js: JetStreamContext, stream: str, consumer: str, timeout: float = 5.0) -> int:
    """Wait until the consumer has nothing pending or unacked; returns what is left then."""
    left = -1
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                info = await js.consumer_info(stream, consumer)
                left = info.num_pending + info.num_ack_pending
                if left == 0:
                    break
                await asyncio.sleep(0.05)  # polling JetStream's counters: no event announces it
    return left


class NatsDown(Protocol):
    """What goes down in the scenario: `stop` takes it down, `start` brings it back (on its
    ports and data); clients connect to `url` (several, comma-separated, for a cluster)."""

    @property
    def url(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


class NodeLoss:
    """One node of a NATS cluster killed (kill -9, as when its machine dies) and started
    again, while the clients know every node: the cluster carries on without it. The node is
    the one leading `stream` when the loss comes (the hardest to lose: its replicas elect a
    new leader while publishes wait), else node `index`."""

    def __init__(self, cluster: NatsCluster, *, stream: str = "", index: int = 0) -> None:
        self.cluster = cluster
        self.stream = stream
        self.node = cluster.nodes[index]
        self.lost: str = ""

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def running(self) -> bool:
        return self.node.running

    def stop(self) -> None:
        leader = self.cluster.stream_leader(self.stream) if self.stream else None
        if leader is not None:
            self.node = self.cluster.nodes[leader]
        self.lost = self.node.server_name
        self.node.kill()

    def start(self) -> None:
        self.node.start()


class _Run:
    """One run of the scenario: what it started (closed by `close`) and the times it noted."""

    def __init__(
        self, nats: NatsDown, run_dir: Path, events: int, aggregates: int, replicas: int = 1
    ) -> None:
        self.nats = nats
        self.replicas = replicas
        self.run_dir = run_dir
        self.events = events
        self.aggregates = aggregates
        self.ledger = _Ledger(expected=events)
        self.counter = _LogCounter()
        self.reconnects: list[float] = []
        self.client: Client | None = None
        self.store: IdempotentHandler[VoucherSubmitted] | None = None
        self.subscriber: Subscriber | None = None
        self.producer: _Producer | None = None
        self.consumer = ""
        self.stopped = False  # NATS stopped by us and not started again yet
        self.down_at = self.back_at = 0.0

    async def start(self, prefix: str, *, interval: float, milestone: int) -> None:
        """Connect the consumer, declare the stream, subscribe; start the producer service."""
        spec = events_stream(prefix, replicas=self.replicas)
        self.stream = spec.name
        self.client = await _connect(self.nats.url, CONSUMER, self.reconnects)
        self.js = self.client.jetstream()
        await ensure_stream(self.js, spec)

        self.ledger_db = self.run_dir / "ledger.sqlite3"
        with contextlib.closing(sqlite3.connect(str(self.ledger_db))) as setup, setup:
            setup.execute("CREATE TABLE ledger (aggregate TEXT, number INTEGER, event_id TEXT)")
        self.store = IdempotentHandler(self.ledger_db, CONSUMER, self.ledger.apply)
        self.subscriber = Subscriber(self.js, CONSUMER, prefix=prefix)
        subscription = await self.subscriber.subscribe(VoucherSubmitted, self._handle)
        self.consumer = subscription.consumer

        self.producer = _Producer(
            url=self.nats.url,
            spec=spec,
            prefix=prefix,
            db=self.run_dir / "producer.sqlite3",
            reconnects=self.reconnects,
        )
        self.producer.start(
            events=self.events, aggregates=self.aggregates, interval=interval, milestone=milestone
        )
        await self.producer.wait(self.producer.ready)

    async def _handle(self, event: VoucherSubmitted, meta: EventMeta) -> None:
        """The subscriber's handler: counts deliveries around the idempotent handler."""
        assert self.store is not None
        ledger = self.ledger
        ledger.deliveries += 1
        if meta.delivery_count > 1:
            ledger.redelivered += 1
        _applied_here.set(False)
        try:
            await self.store(event, meta)
        except Exception:
            ledger.failed += 1
            raise
        if not _applied_here.get():
            ledger.skipped += 1

    async def stop_nats_after_lead(self) -> None:
        """Once the producer has written its lead and an event is applied, stop NATS."""
        producer = self.producer
        assert producer is not None
        await producer.wait(producer.reached)
        try:
            async with asyncio.timeout(10.0):
                await producer.wait(self.ledger.first)
        except TimeoutError:
            raise ScenarioFailed(
                f"no event applied in {time.monotonic() - producer.started_at:.0f} s of writing, "
                f"before any outage ({producer.written} written, {producer.pending()} unsent): "
                "the pipeline does not flow"
            ) from None
        self.down_at = time.monotonic()
        self.stopped = True
        await asyncio.to_thread(self.nats.stop)

    async def start_nats_at(self, moment: float) -> int:
        """Keep NATS down until `moment` (monotonic), then start it; returns the outbox backlog."""
        assert self.producer is not None
        # The outage itself: NATS stays down this long while the writing goes on.
        await asyncio.sleep(max(0.0, moment - time.monotonic()))
        backlog = self.producer.pending()
        await asyncio.to_thread(self.nats.start)  # same port and data dir
        self.stopped = False
        self.back_at = time.monotonic()
        self.ledger.restarted(self.producer.written)
        return backlog

    async def wait_all_applied(self, timeout: float) -> None:
        """Wait until every event is applied, within `timeout` s of NATS coming back."""
        producer = self.producer
        assert producer is not None
        ledger = self.ledger
        try:
            async with asyncio.timeout(max(0.0, self.back_at + timeout - time.monotonic())):
                await producer.wait(ledger.done)
        except TimeoutError:
            raise ScenarioFailed(
                f"only {ledger.applied} of {self.events} events applied {timeout:g} s after "
                f"NATS came back ({producer.written} written, {producer.pending()} still unsent "
                f"in the outbox, {ledger.deliveries} deliveries, {ledger.failed} failed handler "
                "runs)"
            ) from None

    async def figures(self) -> dict[str, Any]:
        producer = self.producer
        assert producer is not None
        ledger = self.ledger
        # Every delivery settled (acked), so no redelivery is still to come: bounded, since an
        # ack lost in the outage is only settled by a redelivery after the consumer's ack wait.
        unacked = await _settled(self.js, self.stream, self.consumer)
        info = await self.js.stream_info(self.stream)
        with contextlib.closing(sqlite3.connect(str(self.ledger_db))) as check:
            (rows,) = check.execute("SELECT count(*) FROM ledger").fetchone()
            (recorded,) = check.execute(
                "SELECT count(*) FROM processed_events WHERE consumer = ?", (CONSUMER,)
            ).fetchone()
        # Publish-to-apply of the events the outage did not hold up: published and applied
        # before NATS went down, or published once the backlog was through.
        caught_up = ledger.caught_up_at
        steady = sorted(
            applied - published
            for published, applied in ledger.latencies
            if applied < self.down_at or (caught_up is not None and published > caught_up)
        )
        return {
            "events": self.events,
            "applied": ledger.applied,
            "applied_twice": sum(1 for n in ledger.times_applied.values() if n > 1),
            "duplicates_skipped": ledger.skipped,
            "out_of_order": ledger.out_of_order,
            "missing": self.events - len(ledger.times_applied),
            "deliveries": ledger.deliveries,
            "redelivered": ledger.redelivered,
            "handler_failures": ledger.failed,
            "ledger_rows": rows,
            "processed_ids": recorded,
            "stream_messages": info.state.messages,
            "unacked_at_end": unacked,
            "pending_at_peak": producer.pending_peak,
            "outage_s": round(self.back_at - self.down_at, 2),
            "reconnected_s": (
                round(max(self.reconnects) - self.down_at, 2) if self.reconnects else None
            ),
            "drain_s": round(ledger.last_applied_at - self.back_at, 2),
            "backlog_drained_s": None if caught_up is None else round(caught_up - self.back_at, 2),
            "write_s": round(producer.written_at - producer.started_at, 2),
            "publish_to_apply_p50_ms": round(_percentile(steady, 50) * 1000, 1),
            "publish_to_apply_p99_ms": round(_percentile(steady, 99) * 1000, 1),
            "latency_samples": len(steady),
            "relay_retries": self.counter.counts.get("mesh.events.outbox", 0),
            "fetch_retries": self.counter.counts.get("mesh.events.subscriber", 0),
        }

    async def close(self) -> None:
        """Stop and close everything started, whatever state the run is in. NATS is started
        again first if the run stopped it (leaving the stack as found, and letting the clients
        close cleanly)."""
        try:
            if self.stopped and not self.nats.running:
                await asyncio.to_thread(self.nats.start)
                self.stopped = False
        finally:
            try:
                if self.producer is not None:
                    self.producer.stop()
                    await self.producer.join()
                    if self.producer.finished.done():
                        # Retrieved: an error that mattered was raised by the wait it ended.
                        self.producer.finished.exception()
                if self.subscriber is not None:
                    await self.subscriber.close()
                if self.client is not None:
                    await _close_client(self.client)
            finally:
                if self.store is not None:
                    self.store.close()


async def outbox_through_outage(
    nats: NatsProcess | NatsDown,
    workdir: Path,
    *,
    events: int = 5000,
    aggregates: int = 50,
    outage: float = 30.0,
    report: Callable[[str], None] = print,
    drain_timeout: float = 120.0,
    prefix: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Run scenario 6 against the running `nats`; returns its figures.

    `nats` is a server (stopped and started), or `NodeLoss`: one node of a cluster killed
    and started, the stream kept on `replicas` nodes.

    `workdir` receives the two SQLite databases (in a new directory of their own). `prefix` is
    the events' subject prefix, by default one of this run's own. Raises `ScenarioFailed` if
    nothing is applied before the outage or not every event is applied within `drain_timeout`
    seconds of NATS coming back. Whatever happens, everything it started is closed and NATS is
    running again when it returns or raises.
    """
    if events < 1 or aggregates < 1 or outage <= 0:
        raise ValueError(
            f"need events >= 1, aggregates >= 1, outage > 0; got {events}, {aggregates}, {outage}"
        )
    run_dir = Path(await asyncio.to_thread(_make_run_dir, workdir))
    interval = (outage + TAIL) / events
    milestone = max(1, min(events, round(LEAD / interval)))
    run = _Run(nats, run_dir, events, aggregates, replicas)
    events_log = logging.getLogger("mesh.events")
    events_log.addHandler(run.counter)
    try:
        report(
            f"writing {events} events over {aggregates} aggregates for {outage + TAIL:g} s "
            f"(one every {interval * 1000:.1f} ms); NATS goes down after ~{LEAD:g} s for "
            f"{outage:g} s"
        )
        await run.start(
            prefix or f"chaos{uuid.uuid4().hex[:8]}", interval=interval, milestone=milestone
        )
        await run.stop_nats_after_lead()
        producer = run.producer
        assert producer is not None
        report(
            f"NATS down after {run.down_at - producer.started_at:.1f} s of writing: "
            f"{producer.written} written, {run.ledger.applied} applied"
        )
        backlog = await run.start_nats_at(run.down_at + outage)
        report(
            f"NATS back after {run.back_at - run.down_at:.1f} s: {backlog} events waiting in the "
            f"outbox, {run.ledger.applied} applied"
        )
        await run.wait_all_applied(drain_timeout)
        report(
            f"all {events} applied in {run.ledger.last_applied_at - run.back_at:.1f} s after NATS "
            "came back"
        )
        return await run.figures()
    finally:
        try:
            await run.close()
        finally:
            events_log.removeHandler(run.counter)


def _make_run_dir(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="outbox-outage-", dir=workdir)
