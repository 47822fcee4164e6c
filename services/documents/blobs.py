"""Documents' bytes on disk, addressed by their SHA-256: `<root>/ab/cdef...` for the digest
`abcdef...`, so the same bytes are stored once however often they are uploaded.

A blob is written to a temporary file under `<root>/tmp`, flushed to disk, then renamed into
place: a crash leaves a stray temporary file (swept at the next start), never half a blob
under a digest. Reading checks the digest again, so a blob damaged on disk is reported, not
served.

>>> blobs = BlobStore(Path("/var/lib/hms/documents/blobs"))
>>> digest = blobs.put(b"%PDF-1.7 ...")
>>> blobs.get(digest)
b'%PDF-1.7 ...'
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path

__all__ = ["BlobCorrupt", "BlobMissing", "BlobStore"]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}")
#: A temporary file older than this is a crashed write's leftover (a write takes seconds).
_STALE_AFTER = 3600.0


class BlobMissing(LookupError):
    """No blob is stored under the digest."""


class BlobCorrupt(ValueError):
    """The blob stored under the digest no longer hashes to it."""


class BlobStore:
    """Content-addressed files under one directory (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def path_of(self, digest: str) -> Path:
        """Where the blob of `digest` (lower-case hex SHA-256) lives."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a lower-case hex SHA-256: {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        """Store `data` (once: bytes already stored are not written again); its digest."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path_of(digest)
        if final.exists():
            return digest
        final.parent.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=digest[:8], suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            # Atomic: the digest names either nothing or the whole blob. A writer of the same
            # bytes racing this one replaces it with the same content.
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(final.parent)  # the rename itself survives a power cut
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`; BlobMissing or BlobCorrupt if they are not there."""
        try:
            data = self.path_of(digest).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {digest}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorrupt(f"blob {digest} no longer hashes to its name")
        return data

    def _sweep(self) -> None:
        """Remove temporary files left by writes that crashed (not those still being written
        by another process sharing the directory: only old ones)."""
        cutoff = time.time() - _STALE_AFTER
        for leftover in self._tmp.glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    log.info("removed %s, left by an interrupted write", leftover)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
