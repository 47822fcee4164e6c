"""The record of sent notifications, in one SQLite file.

A notification sent because of an event keeps the event's id, unique: a redelivered event
records nothing new (`record_event`).

Listing is newest first in a total order (create_time desc, then id desc), paged by keyset:
a page token is the opaque, URL-safe base64 of the last row's (create_time, id), so a page
never repeats or skips a row even while new notifications arrive.

>>> import datetime
>>> with NotificationStore(":memory:") as store:
...     _ = store.add(
...         notification_id="n1", applicant_id="a1", channel=1, recipient="a@example.org",
...         subject="", body="hello",
...         create_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
...     )
...     items, next_token = store.list(applicant_id="a1", page_size=10)
>>> [n.notification_id for n in items], next_token
(['n1'], '')
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hms_services.sqlite import open_database
from mesh import AlreadyExists, InvalidArgument

__all__ = ["Cursor", "Notification", "NotificationStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id             TEXT    PRIMARY KEY,
    applicant_id   TEXT    NOT NULL,
    channel        INTEGER NOT NULL,
    recipient      TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    create_time_us INTEGER NOT NULL  -- microseconds since the Unix epoch, UTC
);
CREATE INDEX IF NOT EXISTS notifications_by_time
    ON notifications (create_time_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS notifications_by_applicant
    ON notifications (applicant_id, create_time_us DESC, id DESC);
"""
# Added after the first release: files made before it get the column on open.
_EVENT_COLUMN = "ALTER TABLE notifications ADD COLUMN event_id TEXT"  # NULL: sent by a call
_EVENT_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS notifications_by_event
    ON notifications (event_id) WHERE event_id IS NOT NULL;
"""

_COLUMNS = "id, applicant_id, channel, recipient, subject, body, create_time_us"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class Notification:
    """One stored notification; `channel` is the hms.notify.v1.Channel number."""

    notification_id: str
    applicant_id: str
    channel: int
    recipient: str
    subject: str
    body: str
    create_time: datetime.datetime  # timezone-aware, UTC


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the (create_time, id) of its last row, in integer microseconds."""

    create_time_us: int
    notification_id: str

    def encode(self) -> str:
        """The opaque page token for this cursor."""
        raw = json.dumps([self.create_time_us, self.notification_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor in `token`; raises InvalidArgument naming `page_token` if it is malformed."""
        try:
            padded = token + "=" * (-len(token) % 4)
            raw = base64.b64decode(padded, altchars=b"-_", validate=True)
            value = json.loads(raw)
        except (binascii.Error, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise InvalidArgument.field(
                "page_token", "is malformed; pass next_page_token from the previous page as is"
            ) from exc
        match value:
            # bool is an int subclass: exclude it explicitly.
            case [int() as t, str() as notification_id] if not isinstance(t, bool):
                return cls(t, notification_id)
        raise InvalidArgument.field(
            "page_token", "is malformed; pass next_page_token from the previous page as is"
        )


def _to_us(moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("create_time must be timezone-aware")
    # Integer arithmetic on the timedelta keeps microseconds exact (no float timestamps).
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def _from_us(us: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=us)


def _row_to_notification(row: tuple[str, str, int, str, str, str, int]) -> Notification:
    notification_id, applicant_id, channel, recipient, subject, body, create_time_us = row
    return Notification(
        notification_id=notification_id,
        applicant_id=applicant_id,
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        create_time=_from_us(create_time_us),
    )


class NotificationStore:
    """Notifications in one SQLite file (WAL mode), safe to share between threads.

    Calls are synchronous: a local SQLite insert or indexed page read takes microseconds, so
    handlers call it directly rather than paying a thread hop per call. One connection is
    shared and a lock serialises its use. Close it (or use it as a context manager) when done.
    """

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._conn = open_database(path, _prepare)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> NotificationStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(
        self,
        *,
        notification_id: str,
        applicant_id: str,
        channel: int,
        recipient: str,
        subject: str,
        body: str,
        create_time: datetime.datetime,
    ) -> Notification:
        """Store one notification and return it as stored (create_time in UTC, to the µs).

        Raises AlreadyExists if `notification_id` is taken, ValueError if `create_time` is naive.
        """
        create_time_us = _to_us(create_time)
        row = (notification_id, applicant_id, channel, recipient, subject, body, create_time_us)
        try:
            with self._lock:
                self._conn.execute(
                    f"INSERT INTO notifications ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"notification {notification_id!r} already exists") from exc
        return _row_to_notification(row)

    def record_event(
        self,
        *,
        event_id: str,
        notification_id: str,
        applicant_id: str,
        channel: int,
        recipient: str,
        subject: str,
        body: str,
        create_time: datetime.datetime,
    ) -> Notification | None:
        """Store the notification sent because of event `event_id`, unless one was stored for
        that event already: then store nothing and return None.

        ValueError if `event_id` is empty or `create_time` naive.
        """
        if not event_id:
            raise ValueError("event_id must be non-empty")
        create_time_us = _to_us(create_time)
        row = (notification_id, applicant_id, channel, recipient, subject, body, create_time_us)
        with self._lock:
            inserted = self._conn.execute(
                f"INSERT INTO notifications ({_COLUMNS}, event_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING id",
                (*row, event_id),
            ).fetchall()  # read to the end: the statement (and its commit) is then complete
        return _row_to_notification(row) if inserted else None

    def for_event(self, event_id: str) -> Notification | None:
        """The notification stored for event `event_id`, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else _row_to_notification(row)

    def list(
        self,
        applicant_id: str | None = None,
        page_size: int = 50,
        after: Cursor | None = None,
    ) -> tuple[list[Notification], str]:
        """One page, newest first, and the token of the next page ('' on the last page).

        `applicant_id` None lists everyone's notifications; `after` is the previous page's
        cursor (`Cursor.decode(next_token)`).
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        where: list[str] = []
        params: list[str | int] = []
        if applicant_id is not None:
            where.append("applicant_id = ?")
            params.append(applicant_id)
        if after is not None:
            where.append("(create_time_us < ? OR (create_time_us = ? AND id < ?))")
            params += [after.create_time_us, after.create_time_us, after.notification_id]
        sql = f"SELECT {_COLUMNS} FROM notifications"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row beyond the page tells whether there is a next page.
        sql += " ORDER BY create_time_us DESC, id DESC LIMIT ?"
        params.append(page_size + 1)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        items = [_row_to_notification(r) for r in rows[:page_size]]
        if len(rows) <= page_size:
            return items, ""
        last = items[-1]
        return items, Cursor(_to_us(last.create_time), last.notification_id).encode()


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    # A file made before notifications were recorded per event: the column added.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(notifications)")}
    if "event_id" not in columns:
        conn.execute(_EVENT_COLUMN)
    conn.executescript(_EVENT_INDEX)
