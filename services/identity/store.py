"""The citizen register: who is known, and in what standing, in one SQLite file.

The register is seeded on first start (an empty file) with the citizens the demo and the tests
use; later starts leave it as it is, so a standing changed in the file stays changed.

>>> with CitizenRegister(":memory:") as register:
...     register.get("C12345"), register.get("C00000")
(Citizen(citizen_id='C12345', name='Alex Morgan', standing=<Standing.VERIFIED: 'VERIFIED'>), None)
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hms_services.sqlite import open_database

__all__ = ["SEED", "Citizen", "CitizenRegister", "Standing"]


class Standing(enum.StrEnum):
    """A registered citizen's standing; stored as its name. Not being registered at all is
    answered as UNKNOWN by the service, not stored."""

    VERIFIED = "VERIFIED"
    SUSPENDED = "SUSPENDED"


@dataclass(frozen=True, slots=True)
class Citizen:
    citizen_id: str
    name: str
    standing: Standing


#: The register as first seeded: the ids the demo and the flows act for.
SEED: tuple[Citizen, ...] = (
    Citizen("C12345", "Alex Morgan", Standing.VERIFIED),
    Citizen("C10001", "Maya Patel", Standing.VERIFIED),
    Citizen("C10002", "Sam Okafor", Standing.VERIFIED),
    Citizen("C10003", "Priya Shah", Standing.VERIFIED),
    Citizen("C10004", "Tom Evans", Standing.VERIFIED),
    Citizen("C22222", "Jordan Lee", Standing.SUSPENDED),
    Citizen("C33333", "Casey Brown", Standing.SUSPENDED),
)

# user_version 0 is a new (empty) file: create the table and seed it, in one transaction.
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE citizens (
    citizen_id TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    standing   TEXT NOT NULL CHECK (standing IN ('VERIFIED', 'SUSPENDED'))
)
"""


class CitizenRegister:
    """The register in one SQLite file (WAL mode), safe to share between threads.

    Lookups are synchronous: an indexed read of a local file takes microseconds, so handlers
    call it directly. One connection is shared and a lock serialises its use. Close it (or use
    it as a context manager) when done.
    """

    def __init__(self, path: str | Path, seed: tuple[Citizen, ...] = SEED) -> None:
        self._lock = threading.Lock()
        self._conn = open_database(path, lambda conn: _create(conn, seed))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CitizenRegister:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get(self, citizen_id: str) -> Citizen | None:
        """The registered citizen `citizen_id`, or None if the register does not know them."""
        with self._lock:
            row = self._conn.execute(
                "SELECT citizen_id, name, standing FROM citizens WHERE citizen_id = ?",
                (citizen_id,),
            ).fetchone()
        if row is None:
            return None
        return Citizen(row[0], row[1], Standing(row[2]))


def _create(conn: sqlite3.Connection, seed: tuple[Citizen, ...]) -> None:
    # IMMEDIATE: a second replica opening the same new file waits, then finds it seeded.
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            conn.execute(_SCHEMA)
            conn.executemany(
                "INSERT INTO citizens (citizen_id, name, standing) VALUES (?, ?, ?)",
                [(c.citizen_id, c.name, c.standing.value) for c in seed],
            )
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        elif version != _SCHEMA_VERSION:
            raise RuntimeError(
                f"citizen register schema version {version} is not {_SCHEMA_VERSION}: "
                "written by another version of identity"
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
