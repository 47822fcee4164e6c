"""Payments and the payers who are declined, in one SQLite file.

A charge is taken once per idempotency key: the key is UNIQUE in the table and the payment is
inserted with `ON CONFLICT (idempotency_key) DO NOTHING`, so of concurrent charges with one key
(in this process or another sharing the file) exactly one inserts and the others read its row.
Each change runs a caller's function in its own transaction (`on_captured`, `on_refunded`:
the outbox's events), so the row and its event commit together or not at all.

>>> with PaymentStore(":memory:") as store:
...     p = store.charge(Charge("k1", "C12345", 3400, "LIC-1"), "p1", on_captured=lambda c, p: None)
...     p.status == CAPTURED, store.charge(Charge("k1", "C12345", 3400, "LIC-1"), "p2").payment_id
(True, 'p1')
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from google.rpc import error_details_pb2

from hms.payments.v1 import payments_pb2
from mesh.errors import AlreadyExists, FailedPrecondition, NotFound

__all__ = [
    "CAPTURED",
    "ERROR_DOMAIN",
    "PAYER_DECLINED",
    "REFUNDED",
    "SEEDED_FLAGS",
    "Charge",
    "Payment",
    "PaymentStore",
]

CAPTURED = payments_pb2.PAYMENT_STATUS_CAPTURED
REFUNDED = payments_pb2.PAYMENT_STATUS_REFUNDED

#: Payers declined from the start (the card network's or fraud screening's verdicts, which a
#: real deployment would load); `C99999` is the one the scenarios use.
SEEDED_FLAGS: Mapping[str, str] = {"C99999": "the card issuer reported the card stolen"}

#: The ErrorInfo of a declined payer: reason and domain (metadata: payer_id, why).
PAYER_DECLINED = "PAYER_DECLINED"
ERROR_DOMAIN = "hms.payments.v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    payment_id      TEXT    PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,  -- one payment per key, whoever races for it
    payer_id        TEXT    NOT NULL,
    amount_pence    INTEGER NOT NULL CHECK (amount_pence > 0),
    reference       TEXT    NOT NULL,
    status          INTEGER NOT NULL,  -- hms.payments.v1.PaymentStatus number
    refund_reason   TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS flagged_payers (
    payer_id TEXT PRIMARY KEY,
    reason   TEXT NOT NULL
);
"""

_COLUMNS = "payment_id, idempotency_key, payer_id, amount_pence, reference, status, refund_reason"
#: How long a writer waits for another process's transaction on the file (they take
#: milliseconds) before SQLITE_BUSY.
_BUSY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Charge:
    """What a charge asks for; its key decides whether it is new."""

    idempotency_key: str
    payer_id: str
    amount_pence: int
    reference: str = ""


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    idempotency_key: str
    payer_id: str
    amount_pence: int
    reference: str
    status: int  # CAPTURED or REFUNDED
    refund_reason: str = ""


#: Runs inside the transaction that wrote the payment: (its connection, the payment).
OnChange = Callable[[sqlite3.Connection, Payment], object]


def _nothing(conn: sqlite3.Connection, payment: Payment) -> None:
    return None


class PaymentStore:
    """Payments in one SQLite file (WAL mode), safe to share between threads and processes.

    Calls are synchronous: each is one short transaction (as in notify's store).
    """

    def __init__(self, path: str | Path, *, flagged: Mapping[str, str] = SEEDED_FLAGS) -> None:
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun here, explicitly (BEGIN IMMEDIATE).
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_S
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            self._conn.executemany(
                "INSERT OR IGNORE INTO flagged_payers (payer_id, reason) VALUES (?, ?)",
                flagged.items(),
            )
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PaymentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def charge(
        self, charge: Charge, payment_id: str, *, on_captured: OnChange = _nothing
    ) -> Payment:
        """The payment of `charge.idempotency_key`: taken now as `payment_id` (and
        `on_captured` run in its transaction), or the one the key already took.

        AlreadyExists if the key took a payment of another payer, amount or reference;
        FailedPrecondition (with an ErrorInfo PAYER_DECLINED) if the payer is flagged and the
        key took nothing yet.
        """
        with self._lock, _immediate(self._conn) as conn:
            flagged = conn.execute(
                "SELECT reason FROM flagged_payers WHERE payer_id = ?", (charge.payer_id,)
            ).fetchone()
            if flagged is None:
                inserted = conn.execute(
                    f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, '')"
                    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING payment_id",
                    (
                        payment_id,
                        charge.idempotency_key,
                        charge.payer_id,
                        charge.amount_pence,
                        charge.reference,
                        CAPTURED,
                    ),
                ).fetchone()
                if inserted is not None:
                    payment = Payment(
                        payment_id,
                        charge.idempotency_key,
                        charge.payer_id,
                        charge.amount_pence,
                        charge.reference,
                        CAPTURED,
                    )
                    on_captured(conn, payment)
                    return payment
            existing = _one(conn, "idempotency_key", charge.idempotency_key)
        if existing is not None:
            # A retry, even of a payer flagged since: it answers what the key already took.
            _check_same(charge, existing)
            return existing
        why = flagged[0]
        raise FailedPrecondition(
            f"payer {charge.payer_id!r} is declined: {why}",
            details=[
                error_details_pb2.ErrorInfo(
                    reason=PAYER_DECLINED,
                    domain=ERROR_DOMAIN,
                    metadata={"payer_id": charge.payer_id, "why": why},
                )
            ],
        )

    def refund(self, payment_id: str, reason: str, *, on_refunded: OnChange = _nothing) -> Payment:
        """Refund `payment_id` (and run `on_refunded` in its transaction); a payment refunded
        already is answered as it is, nothing run. NotFound for an unknown payment."""
        with self._lock, _immediate(self._conn) as conn:
            found = _one(conn, "payment_id", payment_id)
            if found is None:
                raise NotFound(f"payment {payment_id!r} not found")
            if found.status == REFUNDED:
                return found
            conn.execute(
                "UPDATE payments SET status = ?, refund_reason = ? WHERE payment_id = ?",
                (REFUNDED, reason, payment_id),
            )
            refunded = Payment(
                found.payment_id,
                found.idempotency_key,
                found.payer_id,
                found.amount_pence,
                found.reference,
                REFUNDED,
                reason,
            )
            on_refunded(conn, refunded)
            return refunded

    def get(self, payment_id: str) -> Payment | None:
        with self._lock:
            return _one(self._conn, "payment_id", payment_id)

    def flag(self, payer_id: str, reason: str) -> None:
        """Decline `payer_id`'s new charges from now on, for `reason`."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO flagged_payers (payer_id, reason) VALUES (?, ?)"
                " ON CONFLICT (payer_id) DO UPDATE SET reason = excluded.reason",
                (payer_id, reason),
            )


class _immediate:
    """A BEGIN IMMEDIATE transaction (the write lock taken at once, so a read inside it is
    never stale by the time of the write): committed on success, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _one(conn: sqlite3.Connection, column: str, value: str) -> Payment | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM payments WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else Payment(*row)


def _check_same(charge: Charge, existing: Payment) -> None:
    """A key names one payment: AlreadyExists if `charge` asks for another with it."""
    differ = [
        name
        for name, asked, taken in (
            ("payer_id", charge.payer_id, existing.payer_id),
            ("amount_pence", charge.amount_pence, existing.amount_pence),
            ("reference", charge.reference, existing.reference),
        )
        if asked != taken
    ]
    if differ:
        raise AlreadyExists(
            f"idempotency key {charge.idempotency_key!r} already took payment "
            f"{existing.payment_id!r} with another {' and '.join(differ)}; "
            "a new payment needs a new key"
        )
