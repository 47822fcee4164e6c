"""gRPC handlers of hms.documents.v1.DocumentsService: validate, store the bytes by their
SHA-256 and what they are in the database, answer.

Through the REST gateway the file is the raw request body: a file over the size limit is
RESOURCE_EXHAUSTED and a content type its kind does not allow INVALID_ARGUMENT, each with a
google.rpc.ErrorInfo whose reason (PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE) the gateway
answers as 413 and 415 (gateway/errors.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from google.api import httpbody_pb2
from google.rpc import error_details_pb2

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms_services.documents.blobs import BlobCorrupt, BlobMissing, BlobStore
from hms_services.documents.media import (
    KIND_NAMES,
    SIGNATURES,
    allowed_types,
    kind_name,
    looks_like,
    media_type,
)
from hms_services.documents.store import DocumentStore, StoredDocument
from mesh.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from mesh.server.enduser import may_act_for, require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "ERROR_DOMAIN",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "DocumentsService",
]

DEFAULT_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024

#: google.rpc.ErrorInfo reasons the gateway answers as 413 and 415 (gateway/errors.py).
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
ERROR_DOMAIN = "hms.documents.v1"

_MAX_ID_CHARS = 64
_MAX_CONTENT_TYPE_CHARS = 255
_KINDS = ", ".join(KIND_NAMES[k] for k in sorted(KIND_NAMES) if allowed_types(k))


def _new_id() -> str:
    return uuid.uuid4().hex


class DocumentsService(documents_pb2_grpc.DocumentsServiceServicer):
    """Keeps documents: metadata in a `DocumentStore`, bytes in a `BlobStore`.

    Example::

        DocumentsService(DocumentStore(data / "documents.sqlite3"), BlobStore(data / "blobs"))
    """

    def __init__(
        self,
        store: DocumentStore,
        blobs: BlobStore,
        *,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        if max_document_bytes < 1:
            raise ValueError(f"max_document_bytes must be >= 1, got {max_document_bytes}")
        self._store = store
        self._blobs = blobs
        self._max_bytes = max_document_bytes
        self._new_id = new_id

    async def CreateDocument(
        self,
        request: documents_pb2.CreateDocumentRequest,
        context: grpc.aio.ServicerContext[
            documents_pb2.CreateDocumentRequest, documents_pb2.CreateDocumentResponse
        ],
    ) -> documents_pb2.CreateDocumentResponse:
        _check_id("owner", request.owner)
        require_acting_for(request.owner, "owner")
        _check_kind(request.kind, required=True)
        data = request.file.data
        _check_size(len(data), self._max_bytes)
        content_type = request.file.content_type.strip()
        _check_content(request.kind, content_type, data)
        # Hashing and writing up to the limit takes tens of milliseconds: off the event loop.
        digest = await asyncio.to_thread(self._blobs.put, data)
        stored = self._store.add(
            StoredDocument(
                document_id=self._new_id(),
                owner=request.owner,
                kind=request.kind,
                sha256=digest,
                size_bytes=len(data),
                content_type=content_type,
            )
        )
        return documents_pb2.CreateDocumentResponse(
            document_id=stored.document_id,
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            content_type=stored.content_type,
        )

    async def GetDocument(
        self,
        request: documents_pb2.GetDocumentRequest,
        context: grpc.aio.ServicerContext[
            documents_pb2.GetDocumentRequest, documents_pb2.GetDocumentResponse
        ],
    ) -> documents_pb2.GetDocumentResponse:
        return documents_pb2.GetDocumentResponse(
            document=_document_pb(self._find(request.document_id))
        )

    async def GetDocumentContent(
        self,
        request: documents_pb2.GetDocumentContentRequest,
        context: grpc.aio.ServicerContext[
            documents_pb2.GetDocumentContentRequest, documents_pb2.GetDocumentContentResponse
        ],
    ) -> documents_pb2.GetDocumentContentResponse:
        stored = self._find(request.document_id)
        try:
            data = await asyncio.to_thread(self._blobs.get, stored.sha256)
        except (BlobMissing, BlobCorrupt) as exc:
            raise DataLoss(f"document {stored.document_id!r}: its bytes are lost ({exc})") from exc
        return documents_pb2.GetDocumentContentResponse(
            file=httpbody_pb2.HttpBody(content_type=stored.content_type, data=data)
        )

    async def ListDocuments(
        self,
        request: documents_pb2.ListDocumentsRequest,
        context: grpc.aio.ServicerContext[
            documents_pb2.ListDocumentsRequest, documents_pb2.ListDocumentsResponse
        ],
    ) -> documents_pb2.ListDocumentsResponse:
        _check_id("owner", request.owner)
        require_acting_for(request.owner, "owner")
        _check_kind(request.kind, required=False)
        found = self._store.list(request.owner, request.kind or None)
        return documents_pb2.ListDocumentsResponse(documents=[_document_pb(d) for d in found])

    def _find(self, document_id: str) -> StoredDocument:
        _check_id("document_id", document_id)
        stored = self._store.get(document_id)
        # Another citizen's document is not found: its id reveals nothing.
        if stored is None or not may_act_for(stored.owner):
            raise NotFound(f"document {document_id!r} not found")
        return stored


def _check_id(field: str, value: str) -> None:
    """An owner or a document id: required, one printable word, at most 64 characters."""
    if not value.strip():
        raise InvalidArgument.field(field, "is required")
    if len(value) > _MAX_ID_CHARS:
        raise InvalidArgument.field(
            field, f"must be at most {_MAX_ID_CHARS} characters, got {len(value)}"
        )
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidArgument.field(
            field, f"must be printable without spaces, got {value[:_MAX_ID_CHARS]!r}"
        )


def _check_kind(kind: int, *, required: bool) -> None:
    # proto3 enums are open: an unknown number arrives as is.
    if allowed_types(kind) or (kind == documents_pb2.DOCUMENT_KIND_UNSPECIFIED and not required):
        return
    raise InvalidArgument.field("kind", f"must be one of {_KINDS}, got {kind_name(kind)}")


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise ResourceExhausted(
            f"file: {size} bytes is over the limit of {limit} bytes",
            details=[
                error_details_pb2.ErrorInfo(
                    reason=PAYLOAD_TOO_LARGE,
                    domain=ERROR_DOMAIN,
                    metadata={"limit_bytes": str(limit), "size_bytes": str(size)},
                )
            ],
        )
    if size == 0:
        raise InvalidArgument.field("file", "is empty")


def _check_content(kind: int, content_type: str, data: bytes) -> None:
    """The declared type is one `kind` allows, and the bytes begin as that type's do."""
    allowed = allowed_types(kind)
    if len(content_type) > _MAX_CONTENT_TYPE_CHARS or not content_type.isascii():
        raise InvalidArgument.field(
            "file.content_type",
            f"must be ASCII of at most {_MAX_CONTENT_TYPE_CHARS} characters",
        )
    media = media_type(content_type)
    if media not in allowed:
        got = f"got {content_type!r}" if content_type else "none was sent"
        problem = f"must be one of {', '.join(allowed)} for {kind_name(kind)}, {got}"
        raise InvalidArgument(
            f"file.content_type: {problem}",
            details=[
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="file.content_type", description=problem
                        )
                    ]
                ),
                error_details_pb2.ErrorInfo(
                    reason=UNSUPPORTED_MEDIA_TYPE,
                    domain=ERROR_DOMAIN,
                    metadata={"kind": kind_name(kind), "allowed": ", ".join(allowed)},
                ),
            ],
        )
    if not looks_like(media, data):
        raise InvalidArgument.field(
            "file",
            f"the content is not {media}, the declared content type (a {media} file starts "
            f"with {SIGNATURES[media]!r}, this one with {data[:8]!r})",
        )


def _document_pb(stored: StoredDocument) -> documents_pb2.Document:
    return documents_pb2.Document(
        document_id=stored.document_id,
        owner=stored.owner,
        kind=cast("documents_pb2.DocumentKind", stored.kind),  # stored as the enum's number
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        content_type=stored.content_type,
    )
