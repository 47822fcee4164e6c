"""Licence applications and issued licences, in one SQLite file with the service's outbox.

An application is recorded, under its idempotency key (UNIQUE), before any money moves, and
walks one way through its states:

    PENDING ──charged──> PAID ──document stored──> ISSUED      (licence row + LicenceIssued)
       │                   └────failed, refunded──> REFUNDED   (LicenceRefused)
       └──payment declined──> DECLINED

so whoever picks it up after a crash (a retry with its key, or the service at start) knows how
far it got. The last step of each branch that publishes commits the row change and its event in
one transaction; their outbox aggregate is the licence id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from hms.licensing.v1 import licensing_pb2
from hms_services.sqlite import open_database
from mesh.events import Outbox

__all__ = ["Application", "IssuedLicence", "LicenceStore", "State"]


class State(StrEnum):
    PENDING = "PENDING"  # recorded; the payment may or may not have been taken
    PAID = "PAID"  # the payment was taken; no licence yet
    ISSUED = "ISSUED"  # final: the licence row exists
    DECLINED = "DECLINED"  # final: payments declined the payer; nothing was taken
    REFUNDED = "REFUNDED"  # final: issuing failed after payment, which was refunded


_STATES = ", ".join(f"'{s}'" for s in State)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS applications (
    licence_id      TEXT    PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    citizen_id      TEXT    NOT NULL,
    licence_type    TEXT    NOT NULL,
    fee_pence       INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ({_STATES})),
    payment_id      TEXT    NOT NULL DEFAULT '',
    reason          TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS applications_unfinished
    ON applications (created_at) WHERE state IN ('PENDING', 'PAID');
CREATE TABLE IF NOT EXISTS licences (
    licence_id   TEXT    PRIMARY KEY REFERENCES applications (licence_id),
    citizen_id   TEXT    NOT NULL,
    licence_type TEXT    NOT NULL,
    fee_pence    INTEGER NOT NULL,
    payment_id   TEXT    NOT NULL,
    document_id  TEXT    NOT NULL,
    issued_at    TEXT    NOT NULL
);
"""

_APPLICATION_COLUMNS = (
    "licence_id, idempotency_key, citizen_id, licence_type, fee_pence, state, payment_id, reason"
)
_LICENCE_COLUMNS = "licence_id, citizen_id, licence_type, fee_pence, payment_id, document_id"


@dataclass(frozen=True, slots=True)
class Application:
    """One application as recorded."""

    licence_id: str
    idempotency_key: str
    citizen_id: str
    licence_type: str
    fee_pence: int
    state: State
    payment_id: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class IssuedLicence:
    licence_id: str
    citizen_id: str
    licence_type: str
    fee_pence: int
    payment_id: str
    document_id: str

    def pb(self) -> licensing_pb2.Licence:
        return licensing_pb2.Licence(
            licence_id=self.licence_id,
            citizen_id=self.citizen_id,
            licence_type=self.licence_type,
            status=licensing_pb2.ISSUED,
            fee_pence=self.fee_pence,
            payment_id=self.payment_id,
            document_id=self.document_id,
        )


def _application(row: tuple[str, str, str, str, int, str, str, str]) -> Application:
    licence_id, key, citizen_id, licence_type, fee_pence, state, payment_id, reason = row
    return Application(
        licence_id, key, citizen_id, licence_type, fee_pence, State(state), payment_id, reason
    )


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="microseconds")


class LicenceStore:
    """Applications and licences in `path` (WAL mode), whose outbox is `outbox` (the same
    file). Calls are synchronous: each is a local SQLite statement or two. One connection,
    serialised by a lock. Close it (or use it as a context manager) when done."""

    def __init__(self, path: str | Path, outbox: Outbox) -> None:
        self._outbox = outbox
        self._lock = threading.Lock()
        # Money: synchronous stays FULL (no commit lost to a power cut).
        self._conn = open_database(
            path,
            lambda conn: conn.executescript(_SCHEMA),
            pragmas=("journal_mode=WAL", "foreign_keys=ON"),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LicenceStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def application(self, idempotency_key: str) -> Application | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_APPLICATION_COLUMNS} FROM applications WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
        return None if row is None else _application(row)

    def unfinished(self) -> list[Application]:
        """Applications left PENDING or PAID (by a crash, or an outage), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_APPLICATION_COLUMNS} FROM applications"
                " WHERE state IN ('PENDING', 'PAID') ORDER BY created_at"
            ).fetchall()
        return [_application(r) for r in rows]

    def licence(self, licence_id: str) -> IssuedLicence | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_LICENCE_COLUMNS} FROM licences WHERE licence_id = ?", (licence_id,)
            ).fetchone()
        return None if row is None else IssuedLicence(*row)

    # -- the application's steps ------------------------------------------------------------

    def open(self, application: Application, now: datetime.datetime) -> Application:
        """Record a new PENDING application; if its key is taken, the application that holds
        it (the caller compares the two)."""
        if application.state is not State.PENDING:
            raise ValueError(f"a new application is PENDING, not {application.state}")
        stamp = _stamp(now)
        with self._lock:
            inserted = self._conn.execute(
                f"INSERT INTO applications ({_APPLICATION_COLUMNS}, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, '', '', ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (
                    application.licence_id,
                    application.idempotency_key,
                    application.citizen_id,
                    application.licence_type,
                    application.fee_pence,
                    application.state,
                    stamp,
                    stamp,
                ),
            ).rowcount
        if inserted:
            return application
        existing = self.application(application.idempotency_key)
        assert existing is not None  # applications are never deleted
        return existing

    def mark_paid(
        self, application: Application, payment_id: str, now: datetime.datetime
    ) -> Application:
        with self._lock, self._transaction():
            self._move(application, State.PENDING, State.PAID, now, payment_id=payment_id)
        return dataclasses.replace(application, state=State.PAID, payment_id=payment_id)

    def mark_declined(
        self, application: Application, reason: str, now: datetime.datetime
    ) -> Application:
        with self._lock, self._transaction():
            self._move(application, State.PENDING, State.DECLINED, now, reason=reason)
        return dataclasses.replace(application, state=State.DECLINED, reason=reason)

    def issue(
        self, application: Application, document_id: str, now: datetime.datetime
    ) -> IssuedLicence:
        """The licence row, the application ISSUED and LicenceIssued, in one transaction."""
        licence = IssuedLicence(
            licence_id=application.licence_id,
            citizen_id=application.citizen_id,
            licence_type=application.licence_type,
            fee_pence=application.fee_pence,
            payment_id=application.payment_id,
            document_id=document_id,
        )
        with self._lock, self._transaction():
            self._move(application, State.PAID, State.ISSUED, now)
            self._conn.execute(
                f"INSERT INTO licences ({_LICENCE_COLUMNS}, issued_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    licence.licence_id,
                    licence.citizen_id,
                    licence.licence_type,
                    licence.fee_pence,
                    licence.payment_id,
                    licence.document_id,
                    _stamp(now),
                ),
            )
            self._outbox.add(
                self._conn,
                licensing_pb2.LicenceIssued(licence=licence.pb()),
                aggregate=licence.licence_id,
            )
        return licence

    def refund(self, application: Application, reason: str, now: datetime.datetime) -> Application:
        """The application REFUNDED and LicenceRefused (the compensation, for the audit trail),
        in one transaction; call it once payments has refunded the payment."""
        with self._lock, self._transaction():
            self._move(application, State.PAID, State.REFUNDED, now, reason=reason)
            self._outbox.add(
                self._conn,
                licensing_pb2.LicenceRefused(
                    application_key=application.idempotency_key,
                    citizen_id=application.citizen_id,
                    licence_type=application.licence_type,
                    payment_id=application.payment_id,
                    reason=reason,
                ),
                aggregate=application.licence_id,
            )
        return dataclasses.replace(application, state=State.REFUNDED, reason=reason)

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _move(
        self,
        application: Application,
        from_state: State,
        to_state: State,
        now: datetime.datetime,
        *,
        payment_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Move the application on, only from `from_state`: two workers on one application
        (which the service's per-key lock prevents) would fail here rather than both act."""
        updated = self._conn.execute(
            "UPDATE applications SET state = ?, updated_at = ?,"
            " payment_id = COALESCE(?, payment_id), reason = COALESCE(?, reason)"
            " WHERE licence_id = ? AND state = ?",
            (to_state, _stamp(now), payment_id, reason, application.licence_id, from_state),
        ).rowcount
        if updated != 1:
            raise RuntimeError(
                f"application {application.licence_id} is no longer {from_state}: "
                f"cannot move it to {to_state}"
            )
