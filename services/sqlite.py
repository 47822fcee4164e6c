"""How every service with state opens its SQLite file: one place for the connection's settings.

Autocommit (``isolation_level=None``): a write that spans statements opens its own transaction
(``BEGIN IMMEDIATE``), so none is left open by accident. ``check_same_thread=False``: handlers
hand blocking writes to worker threads, behind each store's own lock. WAL, so readers never
wait for the writer; ``synchronous=NORMAL`` unless the store asks otherwise (in WAL mode it
cannot corrupt the file, though a power cut may lose the last commits).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DEFAULT_PRAGMAS", "open_database"]

DEFAULT_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL")


def open_database(
    path: str | Path,
    prepare: Callable[[sqlite3.Connection], object],
    *,
    pragmas: Sequence[str] = DEFAULT_PRAGMAS,
) -> sqlite3.Connection:
    """The connection to `path` with `pragmas` set and `prepare(connection)` run (it creates
    the schema); closed again if either fails."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        prepare(conn)
    except BaseException:
        conn.close()
        raise
    return conn
