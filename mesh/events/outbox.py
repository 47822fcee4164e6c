"""A transactional outbox in the service's own SQLite database, and the relay that empties it.

A service writes its business change and the event in one transaction of its own database, so
both commit or neither does; the relay publishes committed events in `seq` order and marks them
sent. While NATS is down events pile up in the table and are published after recovery: nothing is
lost, and nothing is published ahead of an earlier unsent event (so order per aggregate holds).

The outbox row's event id is the event's `Nats-Msg-Id`. A publish whose ack was lost is retried
with the same id and JetStream stores it once, provided the retry comes within the stream's
duplicate window; `OutboxRelay` refuses a stream whose window is not longer than its longest
backoff.

>>> outbox = Outbox("fee-calc.sqlite3")
>>> with conn:                                   # the caller's transaction
...     conn.execute("UPDATE vouchers SET state = 'submitted' WHERE id = ?", ("v1",))
...     outbox.add(conn, VoucherSubmitted(voucher_id="v1"), aggregate="v1")
>>> relay = OutboxRelay(outbox, publisher, stream=events_stream())
>>> relay.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from opentelemetry import propagate

from mesh.aio import back_off, cancel_and_wait
from mesh.errors import Unavailable
from mesh.events.publisher import BatchResult, OutgoingEvent
from mesh.events.subjects import Headers, StreamSpec, format_time
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["EventPublisher", "Outbox", "OutboxRelay", "OutboxRow"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    payload    BLOB NOT NULL,
    aggregate  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at    TEXT,
    trace      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS outbox_sequences (
    aggregate TEXT PRIMARY KEY,
    last_seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _current_trace() -> str:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":"))


def _now() -> str:
    # Always with microseconds: the stamps are compared as text when sent rows are pruned.
    return format_time(datetime.now(UTC))


class EventPublisher(Protocol):
    """What the relay needs of `mesh.events.Publisher`."""

    async def publish_batch(
        self, events: Sequence[OutgoingEvent], *, window: int = 64
    ) -> BatchResult: ...


@dataclass(frozen=True)
class OutboxRow:
    """One stored event."""

    seq: int
    event_id: str
    type: str  # Protobuf full name
    payload: bytes
    aggregate: str
    created_at: str
    sent_at: str | None
    #: W3C trace context (JSON of traceparent/tracestate) of the span that added the event.
    trace: str = "{}"
    #: Its place among this outbox's events of its aggregate (1, 2, ...); None for a row
    #: written before outboxes numbered them.
    aggregate_seq: int | None = None


class Outbox:
    """The `outbox` table of one SQLite database; creates it if missing.

    Given a path, the outbox opens its own connection for the relay (WAL mode, so the relay's
    reads never wait for a writer). Given a connection, it shares the caller's; the relay then
    leaves it alone while the caller has a transaction open on it, rather than commit that
    transaction half done.
    """

    def __init__(self, path_or_connection: str | Path | sqlite3.Connection) -> None:
        if isinstance(path_or_connection, sqlite3.Connection):
            self._conn = path_or_connection
            self._owned = False
        else:
            # timeout=0: a locked database raises at once instead of blocking the event loop;
            # the relay retries later.
            self._conn = sqlite3.connect(str(path_or_connection), timeout=0, isolation_level=None)
            self._owned = True
            self._conn.execute("PRAGMA journal_mode=WAL")
        if self._conn.in_transaction:
            # executescript would commit the caller's transaction first.
            raise ValueError("create the Outbox outside a transaction (it creates its table)")
        try:
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(outbox)")}
            if "aggregate_seq" not in columns:  # a table made before events were numbered
                self._conn.execute("ALTER TABLE outbox ADD COLUMN aggregate_seq INTEGER")
            with self._conn:
                self._conn.execute(
                    "INSERT OR IGNORE INTO outbox_meta (key, value) VALUES ('outbox_id', ?)",
                    (uuid.uuid4().hex,),
                )
            (self.outbox_id,) = self._conn.execute(
                "SELECT value FROM outbox_meta WHERE key = 'outbox_id'"
            ).fetchone()
        except BaseException:
            if self._owned:
                self._conn.close()
            raise

    def close(self) -> None:
        """Close the connection the outbox opened (a shared one stays open)."""
        if self._owned:
            self._conn.close()

    @staticmethod
    def add(
        conn: sqlite3.Connection | sqlite3.Cursor,
        message: Message,
        *,
        aggregate: str,
        event_id: str | None = None,
    ) -> str:
        """Write `message` to the outbox in the caller's transaction; returns its event id.

        It is published only if that transaction commits. `aggregate` names the entity the event
        is about: events of one aggregate are numbered 1, 2, 3, ... in the order they were added,
        published in that order, and applied in that order by an `IdempotentHandler`.
        """
        if not aggregate or "\n" in aggregate or "\r" in aggregate:
            raise ValueError(f"aggregate {aggregate!r} must be a non-empty single line")
        event_id = str(uuid.uuid4()) if event_id is None else event_id
        if not event_id or "\n" in event_id or "\r" in event_id:
            raise ValueError(f"event id {event_id!r} must be a non-empty single line")
        # The number lives apart from the rows: sent rows are pruned, numbers never reused.
        (aggregate_seq,) = conn.execute(
            "INSERT INTO outbox_sequences (aggregate, last_seq) VALUES (?, 1)"
            " ON CONFLICT (aggregate) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
            (aggregate,),
        ).fetchone()
        conn.execute(
            "INSERT INTO outbox"
            " (event_id, type, payload, aggregate, created_at, trace, aggregate_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                message.DESCRIPTOR.full_name,
                message.SerializeToString(),
                aggregate,
                _now(),
                _current_trace(),
                aggregate_seq,
            ),
        )
        return event_id

    @property
    def busy(self) -> bool:
        """True while a caller's transaction is open on a shared connection."""
        return self._conn.in_transaction

    def pending(self) -> int:
        """How many events are not yet marked sent."""
        (count,) = self._conn.execute(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
        ).fetchone()
        return int(count)

    def unsent(self, *, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unsent rows with `seq > after`, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, event_id, type, payload, aggregate, created_at, sent_at, trace,"
            " aggregate_seq FROM outbox"
            " WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def prune(self, sent_before: datetime, *, limit: int = 10_000) -> int:
        """Delete up to `limit` rows marked sent before `sent_before`; returns how many.

        Unsent rows are never touched. In batches, so one call never holds the write lock long.
        """
        if self._conn.in_transaction:
            raise sqlite3.OperationalError("the shared connection is in a transaction")
        with self._conn:
            cursor = self._conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                " WHERE sent_at IS NOT NULL AND sent_at < ? ORDER BY seq LIMIT ?)",
                (format_time(sent_before), limit),
            )
        return cursor.rowcount

    def mark_sent(self, seqs: list[int]) -> None:
        """Mark rows sent, in one transaction of their own."""
        if not seqs:
            return
        if self._conn.in_transaction:
            raise sqlite3.OperationalError("the shared connection is in a transaction")
        marks = [(_now(), seq) for seq in seqs]
        with self._conn:
            self._conn.executemany("UPDATE outbox SET sent_at = ? WHERE seq = ?", marks)


class OutboxRelay:
    """Publishes an outbox's events strictly in `seq` order and marks them sent.

    A failed publish (NATS down) is retried with `backoff`, starting again from the first unsent
    event, so no event overtakes an earlier one. Rows published but not yet marked (the database
    was locked) are marked at the next round and not published again meanwhile. `poll` is how
    often an empty outbox is checked. Types are looked up by name in `pool` (the default pool
    holds every generated module imported in this process).

    The stream's duplicate window must be longer than the longest backoff, or a retry of an event
    whose ack was lost could be stored twice: checked here, against `stream`.

    Sent rows are kept `keep_sent` seconds (for a look at what went out), then deleted by the
    running relay, at most every `prune_every` seconds, so the table does not grow for ever.
    """

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        stream: StreamSpec,
        batch: int = 100,
        backoff: BackoffPolicy | None = None,
        poll: float = 0.2,
        pool: DescriptorPool | None = None,
        keep_sent: float = 3600.0,
        prune_every: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.backoff = backoff or BackoffPolicy(base=0.05, cap=5.0)
        if batch < 1:
            raise ValueError(f"relay batch must be >= 1, got {batch}")
        if poll <= 0:
            raise ValueError(f"relay poll must be > 0 s, got {poll}")
        if keep_sent < 0 or prune_every <= 0:
            raise ValueError(
                f"keep_sent must be >= 0 s and prune_every > 0 s, got {keep_sent}, {prune_every}"
            )
        if stream.duplicate_window <= self.backoff.cap:
            raise ValueError(
                f"stream {stream.name} duplicate_window {stream.duplicate_window} s must exceed "
                f"the relay's longest backoff (backoff.cap {self.backoff.cap} s)"
            )
        self.outbox = outbox
        self.publisher = publisher
        self.batch = batch
        self.poll = poll
        self._pool = pool or descriptor_pool.Default()
        self._classes: dict[str, type[Message]] = {}
        self._published_upto = 0  # highest seq published in this run
        self._unmarked: list[int] = []  # published, not yet marked sent
        self._task: asyncio.Task[None] | None = None
        self.keep_sent = keep_sent
        self.prune_every = prune_every
        self._clock = clock
        self._last_prune: datetime | None = None

    def prune_sent(self) -> int:
        """Delete the rows sent more than `keep_sent` seconds ago; returns how many."""
        if self.outbox.busy:
            return 0
        now = self._clock()
        self._last_prune = now
        try:
            return self.outbox.prune(now - timedelta(seconds=self.keep_sent))
        except sqlite3.OperationalError:
            return 0  # locked by a writer: next time

    def _prune_due(self) -> bool:
        last = self._last_prune
        return last is None or (self._clock() - last).total_seconds() >= self.prune_every

    def pending(self) -> int:
        """Events not yet marked sent."""
        return self.outbox.pending()

    def _decode(self, row: OutboxRow) -> Message:
        cls = self._classes.get(row.type)
        if cls is None:
            try:
                descriptor = self._pool.FindMessageTypeByName(row.type)
            except KeyError as exc:
                raise LookupError(
                    f"outbox event {row.event_id}: type {row.type} is not in the descriptor pool "
                    "(import its generated module)"
                ) from exc
            cls = message_factory.GetMessageClass(descriptor)
            self._classes[row.type] = cls
        return cls.FromString(row.payload)

    def _order(self, row: OutboxRow) -> dict[str, str] | None:
        """The headers that let a consumer apply the aggregate's events in order."""
        if row.aggregate_seq is None:
            return None
        return {
            Headers.AGGREGATE: row.aggregate,
            Headers.SEQUENCE: f"{self.outbox.outbox_id}:{row.aggregate_seq}",
        }

    def _mark(self) -> None:
        if self._unmarked:
            self.outbox.mark_sent(self._unmarked)
            self._unmarked = []

    async def relay_once(self) -> int:
        """Publish one batch of unsent events in order; returns how many were published.

        Raises the first failure (`Unavailable` from the publisher); what was published before it
        stays published and is marked.
        """
        if self.outbox.busy:
            return 0
        try:
            self._mark()
        except sqlite3.OperationalError:
            return 0  # locked by a writer: mark next round
        rows = self.outbox.unsent(after=self._published_upto, limit=self.batch)
        events: list[OutgoingEvent] = []
        unreadable: Exception | None = None
        for row in rows:
            try:
                message = self._decode(row)
            except Exception as exc:  # published up to it; raised after (the loop logs it)
                unreadable = exc
                break
            # Under the trace of the transaction that added the event, so the publisher's and
            # the handler's spans join the writer's trace.
            context = propagate.extract(json.loads(row.trace or "{}"))
            events.append(OutgoingEvent(message, row.event_id, self._order(row), context))
        try:
            # Pipelined, in seq order: the acks come back for the rows stored in order up to
            # the first failure; those are marked, the rest is published again next round
            # (with the same ids: stored once).
            result = await self.publisher.publish_batch(events, window=self.batch)
            for row in rows[: len(result.acks)]:
                self._published_upto = row.seq
                self._unmarked.append(row.seq)
        finally:
            with contextlib.suppress(sqlite3.OperationalError):
                if not self.outbox.busy:
                    self._mark()
        if result.failure is not None:
            raise result.failure
        if unreadable is not None:
            raise unreadable
        return len(result.acks)

    async def _run(self) -> None:
        retry = Backoff(self.backoff)
        while True:
            try:
                published = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, Unavailable) else logging.ERROR
                await back_off(retry, log.log, level, "outbox relay: %s; again in %.2f s", exc)
                continue
            retry.reset()
            if self._prune_due():
                pruned = self.prune_sent()
                if pruned:
                    log.debug("outbox relay: pruned %d sent event(s)", pruned)
            if published < self.batch:
                await asyncio.sleep(self.poll)  # polling the table for new rows

    def start(self) -> None:
        """Run the relay in a task until `stop()`."""
        if self._task is not None:
            raise RuntimeError("the relay is already running")
        self._task = asyncio.create_task(self._run(), name="events:outbox-relay")

    async def stop(self) -> None:
        """Stop the relay (an event being published may be published again next start)."""
        if self._task is not None:
            await cancel_and_wait(self._task)  # lets a cancellation of our caller through
            self._task = None
