"""Runs the documents service: `python -m hms_services.documents.main --help`.

Metadata is kept in `<data-dir>/documents.sqlite3`, the bytes under `<data-dir>/blobs/`.
`--max-document-bytes` (env HMS_MAX_DOCUMENT_BYTES, default 10 MiB) is the largest file taken.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from hms_services.documents.blobs import BlobStore
from hms_services.documents.service import DEFAULT_MAX_DOCUMENT_BYTES, DocumentsService
from hms_services.documents.store import DocumentStore
from mesh import Runtime, run_service

log = logging.getLogger(__name__)

#: What the service takes beyond the document limit in one message: the request's other
#: fields, and a body a little over the limit, which it refuses itself with a 413 naming the
#: limit (grpc core would refuse it first with a bare RESOURCE_EXHAUSTED, a 429 at the gateway).
#: `mesh up`'s gateway forwards bodies up to 11 MiB (tools/stack.py).
RECEIVE_HEADROOM = 2 * 1024 * 1024


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-document-bytes",
        type=int,
        # A string default goes through `type` as a given value would: a bad one is a usage error.
        default=os.environ.get("HMS_MAX_DOCUMENT_BYTES", str(DEFAULT_MAX_DOCUMENT_BYTES)),
        help="the largest document taken, bytes (env HMS_MAX_DOCUMENT_BYTES; default 10 MiB); "
        "larger is RESOURCE_EXHAUSTED, 413 through the gateway",
    )


def _servicers(runtime: Runtime) -> list[object]:
    args = runtime.args
    limit = args.max_document_bytes
    if limit < 1:
        raise ValueError(f"--max-document-bytes must be at least 1, got {limit}")
    # The host is configured from these arguments once this returns (mesh.server.runner): it
    # must take a whole document, which gRPC's 4 MiB default would refuse.
    args.max_receive_message_bytes = max(args.max_receive_message_bytes, limit + RECEIVE_HEADROOM)
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = DocumentStore(data_dir / "documents.sqlite3")
    runtime.on_stop(store.close)
    log.info("documents up to %d bytes, messages up to %d", limit, args.max_receive_message_bytes)
    return [DocumentsService(store, BlobStore(data_dir / "blobs"), max_document_bytes=limit)]


def main() -> None:
    run_service("documents", _servicers, add_arguments=_add_arguments)


if __name__ == "__main__":
    main()
