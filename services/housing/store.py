"""Housing's SQLite file: the applications and their outbox.

A SUBMITTED application and its VoucherSubmitted are written in one transaction (the outbox
table lives in the same file), so an application is saved and announced, or neither; a
REJECTED one is saved alone.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hms.housing.v1 import housing_pb2
from hms_services.sqlite import open_database
from mesh.events import Outbox

__all__ = ["HousingStore", "StoredApplication"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (
    id                  TEXT    PRIMARY KEY,
    citizen_id          TEXT    NOT NULL,
    annual_income_pence INTEGER NOT NULL,
    household_size      INTEGER NOT NULL,
    residence_months    INTEGER NOT NULL,
    document_ids        TEXT    NOT NULL,  -- JSON array of strings
    status              INTEGER NOT NULL,  -- hms.housing.v1.ApplicationStatus
    eligible            INTEGER NOT NULL,  -- 0 or 1
    reasons             TEXT    NOT NULL,  -- JSON array of strings
    create_time         TEXT    NOT NULL   -- RFC 3339, UTC
);
"""

_COLUMNS = (
    "id, citizen_id, annual_income_pence, household_size, residence_months, document_ids,"
    " status, eligible, reasons, create_time"
)


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    Outbox(conn)  # creates the outbox tables; the runtime's relay empties them


@dataclass(frozen=True, slots=True)
class StoredApplication:
    """A saved application; `status` is the hms.housing.v1.ApplicationStatus number."""

    application_id: str
    citizen_id: str
    annual_income_pence: int
    household_size: int
    residence_months: int
    document_ids: tuple[str, ...]
    status: int
    eligible: bool
    reasons: tuple[str, ...]
    create_time: datetime.datetime

    def to_pb(self) -> housing_pb2.Application:
        return housing_pb2.Application(
            application_id=self.application_id,
            citizen_id=self.citizen_id,
            annual_income_pence=self.annual_income_pence,
            household_size=self.household_size,
            residence_months=self.residence_months,
            document_ids=self.document_ids,
            status=self.status,  # type: ignore[arg-type]  # stored as the enum's number
            eligible=self.eligible,
            reasons=self.reasons,
        )


class HousingStore:
    """Applications and the outbox in one SQLite file (WAL), shared between threads behind a
    lock; calls are synchronous (local reads and writes take microseconds)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_database(path, _prepare)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> HousingStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def save(self, application: StoredApplication) -> None:
        """Save `application`; a SUBMITTED one with its VoucherSubmitted (aggregate: the
        application id), in the same transaction."""
        row = (
            application.application_id,
            application.citizen_id,
            application.annual_income_pence,
            application.household_size,
            application.residence_months,
            json.dumps(list(application.document_ids)),
            application.status,
            int(application.eligible),
            json.dumps(list(application.reasons)),
            application.create_time.isoformat(),
        )
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    f"INSERT INTO applications ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                if application.status == housing_pb2.SUBMITTED:
                    event = housing_pb2.VoucherSubmitted(application=application.to_pb())
                    Outbox.add(self._conn, event, aggregate=application.application_id)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def application(self, application_id: str) -> StoredApplication | None:
        """The application `application_id`, or None."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM applications WHERE id = ?", (application_id,)
            ).fetchone()
        if row is None:
            return None
        (app_id, citizen, income, household, residence, docs, status, eligible, reasons, at) = row
        return StoredApplication(
            application_id=app_id,
            citizen_id=citizen,
            annual_income_pence=income,
            household_size=household,
            residence_months=residence,
            document_ids=tuple(json.loads(docs)),
            status=status,
            eligible=bool(eligible),
            reasons=tuple(json.loads(reasons)),
            create_time=datetime.datetime.fromisoformat(at),
        )
