"""What the stored documents are, in one SQLite file (their bytes are in the BlobStore).

>>> with DocumentStore(":memory:") as store:
...     _ = store.add(StoredDocument("d1", "C12345", 2, "ab" * 32, 10, "image/png"))
...     [d.document_id for d in store.list("C12345")]
['d1']
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import astuple, dataclass
from pathlib import Path
from types import TracebackType

from hms_services.sqlite import open_database
from mesh import AlreadyExists

__all__ = ["DocumentStore", "StoredDocument"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- upload order: lists are oldest first
    document_id  TEXT    NOT NULL UNIQUE,
    owner        TEXT    NOT NULL,
    kind         INTEGER NOT NULL,  -- hms.documents.v1.DocumentKind number
    sha256       TEXT    NOT NULL,  -- the blob's name
    size_bytes   INTEGER NOT NULL,
    content_type TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_owner ON documents (owner, seq);
"""

_COLUMNS = "document_id, owner, kind, sha256, size_bytes, content_type"


@dataclass(frozen=True, slots=True)
class StoredDocument:
    document_id: str
    owner: str
    kind: int
    sha256: str
    size_bytes: int
    content_type: str


class DocumentStore:
    """Document metadata in one SQLite file (WAL mode), safe to share between threads.

    Calls are synchronous: an indexed insert or read takes microseconds (as in notify's store).
    """

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._conn = open_database(path, lambda conn: conn.executescript(_SCHEMA))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DocumentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, document: StoredDocument) -> StoredDocument:
        """Store `document`'s metadata; AlreadyExists if its id is taken."""
        try:
            with self._lock:
                self._conn.execute(
                    f"INSERT INTO documents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    astuple(document),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"document {document.document_id!r} already exists") from exc
        return document

    def get(self, document_id: str) -> StoredDocument | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM documents WHERE document_id = ?", (document_id,)
            ).fetchone()
        return None if row is None else StoredDocument(*row)

    def list(self, owner: str, kind: int | None = None) -> list[StoredDocument]:
        """`owner`'s documents, oldest first; only those of `kind` unless it is None."""
        sql = f"SELECT {_COLUMNS} FROM documents WHERE owner = ?"
        params: list[str | int] = [owner]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [StoredDocument(*row) for row in rows]
