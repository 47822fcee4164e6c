"""Idempotent, ordered event handlers: processed event ids, and how far each aggregate has got,
kept in the service's own SQLite database.

Delivery is at least once, so a handler may see an event again (its replica died before the ack,
or the ack was lost). `IdempotentHandler` runs the handler's effect and the record of the event
id in one transaction: either both commit or neither does, and a redelivered event whose id is
recorded is acked without being applied again.

Delivery is not in order either: an event whose handler failed is redelivered later, and one
lost on its way (a NATS server going down mid-fetch) only after the consumer's ack wait, while
later events flow on. An outbox numbers each aggregate's events (`Hms-Sequence`), and the
handler applies them in that order: an event that arrives before its predecessor was applied
is refused (`NotYet`) and redelivered after the consumer's retry delay.

>>> def apply(conn, event, meta):
...     conn.execute("UPDATE balances SET pence = pence + ? WHERE id = ?", (...))
>>> handler = IdempotentHandler("notify.sqlite3", "notify", apply)
>>> await subscriber.subscribe(VoucherSubmitted, handler)
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf.message import Message

from mesh.aio import back_off
from mesh.events.subjects import Headers
from mesh.events.subscriber import EventMeta
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["Apply", "BadSequence", "IdempotentHandler", "NotYet", "sequence_of"]

M = TypeVar("M", bound=Message)

Apply = Callable[[sqlite3.Connection, M, EventMeta], Awaitable[None] | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS aggregate_positions (
    consumer  TEXT NOT NULL,
    outbox    TEXT NOT NULL,
    aggregate TEXT NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (consumer, outbox, aggregate)
);
"""


class NotYet(Exception):
    """An event arrived before an earlier event of its aggregate was applied: the subscriber
    naks it, and it is applied once its predecessors have been."""


class BadSequence(ValueError):
    """An event's `Hms-Sequence` cannot be applied in order (malformed, or behind what was
    applied already, as when a producer's outbox was restored from a backup)."""


def sequence_of(meta: EventMeta) -> tuple[str, str, int] | None:
    """(outbox id, aggregate, n) of an event from an outbox; None for an event without them.
    BadSequence for a malformed header."""
    headers = meta.headers
    sequence = headers.get(Headers.SEQUENCE)
    if sequence is None:
        return None
    outbox, sep, number = sequence.rpartition(":")
    aggregate = headers.get(Headers.AGGREGATE, "")
    if not sep or not outbox or not aggregate or not (number.isascii() and number.isdigit()):
        raise BadSequence(
            f"event {meta.id}: {Headers.SEQUENCE} {sequence!r} with {Headers.AGGREGATE} "
            f"{aggregate!r} is not '<outbox id>:<n>' with an aggregate"
        )
    return outbox, aggregate, int(number)


# Waiting for another process's write lock: poll without blocking the event loop.
_LOCKED = BackoffPolicy(base=0.005, cap=0.2)


class IdempotentHandler(Generic[M]):
    """A subscriber handler that applies each event id at most once per `consumer`.

    Per event: BEGIN IMMEDIATE (take the write lock, so two replicas cannot both find the id
    unseen); if `(consumer, event id)` is recorded, roll back and return (the event gets acked);
    if the event is number n of its aggregate and n - 1 is not applied yet, roll back and raise
    `NotYet` (nak, redelivered later); else run `apply(conn, message, meta)` (sync or async),
    record the id and the aggregate's position, and commit. If `apply` raises, everything rolls
    back and the error reaches the subscriber (nak, retry).

    An aggregate's first event is number 1: a consumer that starts after a stream has dropped
    an aggregate's early events (its age or size limits) waits for them until the subscriber
    gives up and dead-letters the event, naming the number it waits for.

    Events are applied one at a time on one connection; SQLite has one writer anyway.
    """

    def __init__(self, db_path: str | Path, consumer: str, apply: Apply[M]) -> None:
        if not consumer:
            raise ValueError("consumer must be non-empty")
        self.consumer = consumer
        self._apply = apply
        # isolation_level=None: transactions are begun and ended here, explicitly.
        # timeout=0: a lock held by another process raises at once; we wait asynchronously.
        self._conn = sqlite3.connect(str(db_path), timeout=0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self._conn.close()

    def processed(self) -> int:
        """How many events this consumer has applied."""
        (count,) = self._conn.execute(
            "SELECT count(*) FROM processed_events WHERE consumer = ?", (self.consumer,)
        ).fetchone()
        return int(count)

    async def _begin(self) -> None:
        retry = Backoff(_LOCKED)
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                await back_off(retry)

    async def __call__(self, message: M, meta: EventMeta) -> None:
        """Apply `message` unless its id was applied before."""
        if not meta.id:
            raise ValueError("event has no id: cannot tell a redelivery from a new event")
        async with self._lock:
            await self._begin()
            try:
                seen = self._conn.execute(
                    "SELECT 1 FROM processed_events WHERE consumer = ? AND event_id = ?",
                    (self.consumer, meta.id),
                ).fetchone()
                if seen is not None:
                    self._conn.execute("ROLLBACK")
                    return
                order = sequence_of(meta)
                if order is not None:
                    self._check_order(meta, *order)
                result = self._apply(self._conn, message, meta)
                if inspect.isawaitable(result):
                    await result
                self._conn.execute(
                    "INSERT INTO processed_events (consumer, event_id) VALUES (?, ?)",
                    (self.consumer, meta.id),
                )
                if order is not None:
                    self._conn.execute(
                        "INSERT INTO aggregate_positions (consumer, outbox, aggregate, last_seq)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (consumer, outbox, aggregate)"
                        " DO UPDATE SET last_seq = excluded.last_seq",
                        (self.consumer, *order),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _check_order(self, meta: EventMeta, outbox: str, aggregate: str, number: int) -> None:
        row = self._conn.execute(
            "SELECT last_seq FROM aggregate_positions"
            " WHERE consumer = ? AND outbox = ? AND aggregate = ?",
            (self.consumer, outbox, aggregate),
        ).fetchone()
        last = 0 if row is None else int(row[0])
        if number == last + 1:
            return
        if number > last + 1:
            raise NotYet(
                f"event {meta.id} is number {number} of aggregate {aggregate!r}; "
                f"waiting for number {last + 1} to be applied first"
            )
        raise BadSequence(
            f"event {meta.id} is number {number} of aggregate {aggregate!r} from outbox "
            f"{outbox}, but number {last} is applied already (was that outbox restored?)"
        )
