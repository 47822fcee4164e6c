"""Passport's SQLite file: the register of issued passports, the renewals, and their outbox.

A renewal and its RenewalSubmitted are written in one transaction (the outbox table lives in
the same file), so a renewal is saved and announced, or neither.

>>> issued = [IssuedPassport("123456789", "C1", date(2030, 1, 1))]
>>> with PassportStore(":memory:", issued=issued) as store:
...     store.issued_passport("123456789").holder
'C1'
"""

from __future__ import annotations

import calendar
import datetime
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import TracebackType

from hms.passport.v1 import passport_pb2
from hms_services.sqlite import open_database
from mesh.events import Outbox

__all__ = [
    "SEED_PASSPORTS",
    "IssuedPassport",
    "PassportStore",
    "StoredRenewal",
    "add_months",
    "seed_register",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued_passports (
    number      TEXT PRIMARY KEY,  -- 9 digits
    holder      TEXT NOT NULL,     -- the citizen id
    expiry_date TEXT NOT NULL      -- ISO 8601 date
);
CREATE TABLE IF NOT EXISTS renewals (
    id                TEXT    PRIMARY KEY,
    citizen_id        TEXT    NOT NULL,
    passport_number   TEXT    NOT NULL,
    photo_document_id TEXT    NOT NULL,
    status            INTEGER NOT NULL,  -- hms.passport.v1.RenewalStatus
    create_time       TEXT    NOT NULL   -- RFC 3339, UTC
);
"""


@dataclass(frozen=True, slots=True)
class IssuedPassport:
    """One passport in the register: its number, the citizen it was issued to, its expiry."""

    number: str
    holder: str
    expiry_date: date


#: The register a new store starts with, as (number, holder, months from the day the register
#: is first created to the passport's expiry): relative, so that a fresh stack always has a
#: passport in its renewal window and one long lapsed, whatever the date. The holders are
#: citizens of the identity service's seeded register.
SEED_PASSPORTS: tuple[tuple[str, str, int], ...] = (
    ("123456789", "C12345", 3),  # expires in 3 months: renewable
    ("200000002", "C10002", -72),  # expired 6 years ago: too long to renew
)


def add_months(day: date, months: int) -> date:
    """`day` moved by `months` (negative: back), on the last day of a shorter month.

    >>> add_months(date(2024, 1, 31), 1), add_months(date(2024, 3, 15), -15)
    (datetime.date(2024, 2, 29), datetime.date(2022, 12, 15))
    """
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def seed_register(today: date) -> tuple[IssuedPassport, ...]:
    """`SEED_PASSPORTS` as issued passports, for a register created on `today`."""
    return tuple(
        IssuedPassport(number, holder, add_months(today, months))
        for number, holder, months in SEED_PASSPORTS
    )


@dataclass(frozen=True, slots=True)
class StoredRenewal:
    """A saved renewal; `status` is the hms.passport.v1.RenewalStatus number."""

    renewal_id: str
    citizen_id: str
    passport_number: str
    photo_document_id: str
    status: int
    create_time: datetime.datetime

    def to_pb(self) -> passport_pb2.Renewal:
        return passport_pb2.Renewal(
            renewal_id=self.renewal_id,
            citizen_id=self.citizen_id,
            passport_number=self.passport_number,
            photo_document_id=self.photo_document_id,
            status=self.status,  # type: ignore[arg-type]  # stored as the enum's number
        )


class PassportStore:
    """The register, the renewals and the outbox in one SQLite file (WAL), shared between
    threads behind a lock; calls are synchronous (local reads and writes take microseconds).

    `issued` (by default `seed_register` of today) is inserted where missing: a number already
    in the register keeps its row, so the seeded expiry dates are those of the first start.
    """

    def __init__(self, path: str | Path, *, issued: Iterable[IssuedPassport] | None = None) -> None:
        if issued is None:
            issued = seed_register(datetime.datetime.now(datetime.UTC).date())
        self.path = Path(path)
        self._lock = threading.Lock()
        # Autocommit: the one write that spans statements opens its own transaction.
        rows = [(p.number, p.holder, p.expiry_date.isoformat()) for p in issued]

        def prepare(conn: sqlite3.Connection) -> None:
            conn.executescript(_SCHEMA)
            Outbox(conn)  # creates the outbox tables; the runtime's relay empties them
            conn.executemany(
                "INSERT OR IGNORE INTO issued_passports (number, holder, expiry_date)"
                " VALUES (?, ?, ?)",
                rows,
            )

        self._conn = open_database(path, prepare)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PassportStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def issued_passport(self, number: str) -> IssuedPassport | None:
        """The register's entry for passport `number`, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT number, holder, expiry_date FROM issued_passports WHERE number = ?",
                (number,),
            ).fetchone()
        if row is None:
            return None
        return IssuedPassport(row[0], row[1], date.fromisoformat(row[2]))

    def submit(self, renewal: StoredRenewal) -> None:
        """Save `renewal` and its RenewalSubmitted (aggregate: the renewal id) in one
        transaction."""
        event = passport_pb2.RenewalSubmitted(renewal=renewal.to_pb())
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO renewals (id, citizen_id, passport_number, photo_document_id,"
                    " status, create_time) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        renewal.renewal_id,
                        renewal.citizen_id,
                        renewal.passport_number,
                        renewal.photo_document_id,
                        renewal.status,
                        renewal.create_time.isoformat(),
                    ),
                )
                Outbox.add(self._conn, event, aggregate=renewal.renewal_id)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def renewal(self, renewal_id: str) -> StoredRenewal | None:
        """The renewal `renewal_id`, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, citizen_id, passport_number, photo_document_id, status, create_time"
                " FROM renewals WHERE id = ?",
                (renewal_id,),
            ).fetchone()
        if row is None:
            return None
        renewal_id, citizen_id, number, photo_document_id, status, create_time = row
        return StoredRenewal(
            renewal_id=renewal_id,
            citizen_id=citizen_id,
            passport_number=number,
            photo_document_id=photo_document_id,
            status=status,
            create_time=datetime.datetime.fromisoformat(create_time),
        )
