"""The audit log in one SQLite file: entries appended to a hash chain, never changed.

The database itself refuses what an append-only chain must not do, whoever the writer is:
triggers refuse UPDATE and DELETE of an entry, an entry whose number or previous hash does not
continue the chain, and a second entry for an event id (which also stops INSERT OR REPLACE from
deleting one); the chain's head (last number and hash, seeded with 0 and the genesis hash) is
moved by a trigger on every insert and only forward. A tampered file (triggers dropped first)
is caught by `verify_database`, which recomputes every hash.

Appends happen inside a transaction the caller began with BEGIN IMMEDIATE (the write lock,
taken before the head is read), so two replicas on one file append one after the other and
the chain never forks.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> create_schema(conn)
>>> _ = conn.execute("BEGIN IMMEDIATE")
>>> append_in(conn, Record("e1", "hms.x.v1.E", "x", "case-1", "", 0, "{}")).sequence
1
>>> append_in(conn, Record("e1", "hms.x.v1.E", "x", "case-1", "", 0, "{}")) is None
True
>>> _ = conn.execute("COMMIT")
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from hms_services.audit.chain import GENESIS_HASH, Entry, Head, Record, Verdict, seal, verify

__all__ = ["AuditLog", "append_in", "create_schema", "verify_database"]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    sequence       INTEGER PRIMARY KEY,  -- 1, 2, 3, ... in the order recorded
    event_id       TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    trace_id       TEXT    NOT NULL,
    record_time_us INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
    payload_json   TEXT    NOT NULL,
    previous_hash  TEXT    NOT NULL,
    hash           TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_subject ON entries (subject, sequence);
CREATE TABLE IF NOT EXISTS chain_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    sequence INTEGER NOT NULL,
    hash     TEXT    NOT NULL
);
INSERT INTO chain_head (id, sequence, hash)
    SELECT 1, 0, '{GENESIS_HASH}' WHERE NOT EXISTS (SELECT 1 FROM chain_head);

CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS entries_continue_the_chain BEFORE INSERT ON entries
WHEN NEW.sequence IS NOT (SELECT sequence + 1 FROM chain_head WHERE id = 1)
  OR NEW.previous_hash IS NOT (SELECT hash FROM chain_head WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'an audit entry must continue the chain (next number, last hash)');
END;
CREATE TRIGGER IF NOT EXISTS entries_once_per_event BEFORE INSERT ON entries
WHEN EXISTS (SELECT 1 FROM entries WHERE event_id = NEW.event_id)
BEGIN SELECT RAISE(ABORT, 'this event is recorded already'); END;
CREATE TRIGGER IF NOT EXISTS entries_move_the_head AFTER INSERT ON entries
BEGIN UPDATE chain_head SET sequence = NEW.sequence, hash = NEW.hash WHERE id = 1; END;

CREATE TRIGGER IF NOT EXISTS chain_head_forward BEFORE UPDATE ON chain_head
WHEN NEW.id IS NOT OLD.id OR NEW.sequence IS NOT OLD.sequence + 1
BEGIN SELECT RAISE(ABORT, 'the audit chain head only moves forward, one entry at a time'); END;
CREATE TRIGGER IF NOT EXISTS chain_head_no_delete BEFORE DELETE ON chain_head
BEGIN SELECT RAISE(ABORT, 'the audit chain head cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS chain_head_one_row BEFORE INSERT ON chain_head
WHEN EXISTS (SELECT 1 FROM chain_head)
BEGIN SELECT RAISE(ABORT, 'the audit chain has one head'); END;
"""

_COLUMNS = (
    "sequence, event_id, event_type, source, subject, trace_id, record_time_us, payload_json,"
    " previous_hash, hash"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and triggers if missing (outside a transaction: it commits)."""
    conn.executescript(_SCHEMA)


def append_in(conn: sqlite3.Connection, record: Record) -> Entry | None:
    """Append `record` as the next entry, in the caller's transaction; None (and nothing
    written) if its event id is recorded already.

    The caller holds the write lock (BEGIN IMMEDIATE) from before this call to its commit:
    the head read here is then still the head when the entry is inserted.
    """
    if not conn.in_transaction:
        raise RuntimeError("append inside a transaction begun with BEGIN IMMEDIATE")
    seen = conn.execute("SELECT 1 FROM entries WHERE event_id = ?", (record.event_id,)).fetchone()
    if seen is not None:
        return None
    sequence, previous_hash = conn.execute(
        "SELECT sequence, hash FROM chain_head WHERE id = 1"
    ).fetchone()
    entry = seal(int(sequence) + 1, str(previous_hash), record)
    conn.execute(
        f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.sequence,
            entry.event_id,
            entry.event_type,
            entry.source,
            entry.subject,
            entry.trace_id,
            entry.record_time_us,
            entry.payload_json,
            entry.previous_hash,
            entry.hash,
        ),
    )
    return entry


def _entries(conn: sqlite3.Connection) -> Iterator[Entry]:
    for row in conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY sequence"):
        yield Entry(*row)


def _verify(conn: sqlite3.Connection) -> Verdict:
    # One read transaction: the head and the entries are of the same moment, even while a
    # replica appends.
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT sequence, hash FROM chain_head WHERE id = 1").fetchone()
        head = None if row is None else Head(int(row[0]), str(row[1]))
        return verify(_entries(conn), head)
    finally:
        conn.execute("ROLLBACK")


def verify_database(path: str | Path) -> Verdict:
    """Recompute the chain of the audit database at `path`, opened read-only (it is never
    created or changed). FileNotFoundError if there is no file, ValueError if it holds no
    audit log."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "entries" not in tables:
            raise ValueError(f"{path} is not an audit database (it has no entries table)")
        if "chain_head" not in tables:
            raise ValueError(f"{path}: the chain_head table is gone (the file was tampered with)")
        return _verify(conn)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} cannot be read as an audit database: {exc}") from exc
    finally:
        conn.close()


class AuditLog:
    """The audit log's read side in one SQLite file (WAL mode), safe to share between threads;
    creates the schema if missing. Appends go through `append_in` in the event handler's
    transaction, or `append` here.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun and ended explicitly.
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            create_schema(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def append(self, record: Record) -> Entry | None:
        """Append `record` in a transaction of its own (BEGIN IMMEDIATE, waiting up to 10 s for
        another writer); None if its event id is recorded already."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                entry = append_in(self._conn, record)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return entry

    def entries_for(self, subject: str) -> list[Entry]:
        """The entries about `subject`, in the order recorded."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE subject = ? ORDER BY sequence", (subject,)
            ).fetchall()
        return [Entry(*row) for row in rows]

    def count(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT count(*) FROM entries").fetchone()
        return int(count)

    def verify(self) -> Verdict:
        """Recompute the whole chain on a connection of its own (call it from a worker thread:
        it reads every entry)."""
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            return _verify(conn)
        finally:
            conn.close()
