"""Idempotent event handlers: processed event ids kept in the service's own SQLite database.

Delivery is at least once, so a handler may see an event again (its replica died before the ack,
or the ack was lost). `IdempotentHandler` runs the handler's effect and the record of the event
id in one transaction: either both commit or neither does, and a redelivered event whose id is
recorded is acked without being applied again.

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

from mesh.events.subscriber import EventMeta
from mesh.policy.backoff import Backoff, BackoffPolicy

__all__ = ["Apply", "IdempotentHandler"]

M = TypeVar("M", bound=Message)

Apply = Callable[[sqlite3.Connection, M, EventMeta], Awaitable[None] | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
);
"""
# Waiting for another process's write lock: poll without blocking the event loop.
_LOCKED = BackoffPolicy(base=0.005, cap=0.2)


class IdempotentHandler(Generic[M]):
    """A subscriber handler that applies each event id at most once per `consumer`.

    Per event: BEGIN IMMEDIATE (take the write lock, so two replicas cannot both find the id
    unseen); if `(consumer, event id)` is recorded, roll back and return (the event gets acked);
    else run `apply(conn, message, meta)` (sync or async), record the id and commit. If `apply`
    raises, everything rolls back and the error reaches the subscriber (nak, retry).

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
                await asyncio.sleep(retry.next_delay())

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
                result = self._apply(self._conn, message, meta)
                if inspect.isawaitable(result):
                    await result
                self._conn.execute(
                    "INSERT INTO processed_events (consumer, event_id) VALUES (?, ?)",
                    (self.consumer, meta.id),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
