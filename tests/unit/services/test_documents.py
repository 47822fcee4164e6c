"""DocumentsService handlers, the blob store and the metadata store (real files under
tmp_path): every bad input refused with its field, sizes, content types and their bytes, and
documents' bytes coming back as they went in."""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from hms.documents.v1 import documents_pb2
from hms_services.documents.blobs import BlobCorrupt, BlobMissing, BlobStore
from hms_services.documents.main import RECEIVE_HEADROOM, _add_arguments
from hms_services.documents.media import media_type
from hms_services.documents.service import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    DocumentsService,
)
from hms_services.documents.store import DocumentStore
from mesh.errors import DataLoss, InvalidArgument, MeshError, NotFound, ResourceExhausted
from mesh.server.runner import parse_args
from mesh.testing import FakeContext

CONTEXT = FakeContext(allow_abort=False)
LIMIT = 4096

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
SAMPLES = {"image/png": PNG, "application/pdf": PDF, "image/jpeg": JPEG}


def counting_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"doc-{next(counter):04d}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocumentStore]:
    with DocumentStore(tmp_path / "documents.sqlite3") as s:
        yield s


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def service(store: DocumentStore, blobs: BlobStore) -> DocumentsService:
    return DocumentsService(store, blobs, max_document_bytes=LIMIT, new_id=counting_ids())


def create_request(
    data: bytes = PNG, content_type: str = "image/png", **overrides: Any
) -> documents_pb2.CreateDocumentRequest:
    fields: dict[str, Any] = {"owner": "C12345", "kind": documents_pb2.PHOTO}
    fields.update(overrides)
    return documents_pb2.CreateDocumentRequest(
        file=httpbody_pb2.HttpBody(content_type=content_type, data=data), **fields
    )


def error_info(error: MeshError) -> error_details_pb2.ErrorInfo | None:
    found = error.detail(error_details_pb2.ErrorInfo)
    assert found is None or isinstance(found, error_details_pb2.ErrorInfo)
    return found


# --- CreateDocument: what is refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "mentions"),
    [
        pytest.param(create_request(owner=""), "owner", "is required", id="owner-missing"),
        pytest.param(create_request(owner="  "), "owner", "is required", id="owner-blank"),
        pytest.param(
            create_request(owner="C1 2"), "owner", "without spaces", id="owner-with-a-space"
        ),
        pytest.param(create_request(owner="C1\x00"), "owner", "printable", id="owner-control-char"),
        pytest.param(create_request(owner="C" * 65), "owner", "at most 64", id="owner-too-long"),
        pytest.param(
            create_request(kind=documents_pb2.DOCUMENT_KIND_UNSPECIFIED),
            "kind",
            "got DOCUMENT_KIND_UNSPECIFIED",
            id="kind-unspecified",
        ),
        pytest.param(create_request(kind=99), "kind", "got 99", id="kind-unknown-number"),
        pytest.param(create_request(data=b""), "file", "is empty", id="file-empty"),
        pytest.param(
            create_request(content_type="image/p\u00f1g"),
            "file.content_type",
            "ASCII",
            id="content-type-not-ascii",
        ),
        pytest.param(
            create_request(content_type="image/png;" + "x" * 250),
            "file.content_type",
            "at most 255",
            id="content-type-too-long",
        ),
        pytest.param(
            create_request(data=JPEG, content_type="image/png"),
            "file",
            "not image/png, the declared content type",
            id="jpeg-bytes-declared-png",
        ),
        pytest.param(
            create_request(data=PNG, content_type="application/pdf", kind=documents_pb2.LICENCE),
            "file",
            "not application/pdf, the declared content type",
            id="png-bytes-declared-pdf",
        ),
        pytest.param(
            create_request(data=b"hello", content_type="image/jpeg", kind=documents_pb2.PAY_STUB),
            "file",
            "not image/jpeg, the declared content type",
            id="text-declared-jpeg",
        ),
        pytest.param(
            create_request(data=PNG[:7], content_type="image/png"),
            "file",
            "not image/png",
            id="png-signature-cut-short",
        ),
    ],
)
async def test_create_refuses_bad_input_naming_the_field(
    service: DocumentsService,
    request_: documents_pb2.CreateDocumentRequest,
    field: str,
    mentions: str,
) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await service.CreateDocument(request_, CONTEXT)
    [(named, description)] = bad.value.violations
    assert named == field
    assert mentions in description
    assert error_info(bad.value) is None  # a plain 400, neither 413 nor 415


@pytest.mark.parametrize(
    ("kind", "content_type", "allowed"),
    [
        pytest.param(
            documents_pb2.PHOTO, "application/pdf", "image/png, image/jpeg", id="photo-pdf"
        ),
        pytest.param(documents_pb2.PHOTO, "image/gif", "image/png, image/jpeg", id="photo-gif"),
        pytest.param(documents_pb2.LICENCE, "image/png", "application/pdf", id="licence-png"),
        pytest.param(documents_pb2.LICENCE, "image/jpeg", "application/pdf", id="licence-jpeg"),
        pytest.param(
            documents_pb2.PAY_STUB,
            "text/plain",
            "application/pdf, image/png, image/jpeg",
            id="pay-stub-text",
        ),
        pytest.param(documents_pb2.PHOTO, "image/jpg", "image/png, image/jpeg", id="photo-jpg"),
        pytest.param(documents_pb2.PHOTO, "", "image/png, image/jpeg", id="none-sent"),
    ],
)
async def test_a_content_type_the_kind_does_not_allow_is_unsupported_media(
    service: DocumentsService, kind: int, content_type: str, allowed: str
) -> None:
    request = create_request(
        data=SAMPLES.get(content_type, PNG), content_type=content_type, kind=kind
    )
    with pytest.raises(InvalidArgument) as bad:
        await service.CreateDocument(request, CONTEXT)
    [(field, description)] = bad.value.violations
    assert field == "file.content_type"
    assert f"must be one of {allowed}" in description
    assert (repr(content_type) if content_type else "none was sent") in description
    info = error_info(bad.value)
    assert info is not None
    assert info.reason == UNSUPPORTED_MEDIA_TYPE
    assert info.metadata["allowed"] == allowed


@pytest.mark.parametrize("size", [LIMIT + 1, 2 * LIMIT], ids=["one-over", "twice"])
async def test_a_file_over_the_limit_is_resource_exhausted_naming_the_limit(
    service: DocumentsService, size: int
) -> None:
    # The size is judged first: an oversize file of the wrong type is still "too large".
    request = create_request(data=PNG + bytes(size - len(PNG)), content_type="text/plain")
    with pytest.raises(ResourceExhausted) as exhausted:
        await service.CreateDocument(request, CONTEXT)
    assert str(exhausted.value) == f"file: {size} bytes is over the limit of {LIMIT} bytes"
    info = error_info(exhausted.value)
    assert info is not None
    assert info.reason == PAYLOAD_TOO_LARGE
    assert info.metadata["limit_bytes"] == str(LIMIT)


# --- CreateDocument: what is taken --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [
        pytest.param(documents_pb2.PAY_STUB, "application/pdf", id="pay-stub-pdf"),
        pytest.param(documents_pb2.PAY_STUB, "image/png", id="pay-stub-png"),
        pytest.param(documents_pb2.PAY_STUB, "image/jpeg", id="pay-stub-jpeg"),
        pytest.param(documents_pb2.PHOTO, "image/png", id="photo-png"),
        pytest.param(documents_pb2.PHOTO, "image/jpeg", id="photo-jpeg"),
        pytest.param(documents_pb2.LICENCE, "application/pdf", id="licence-pdf"),
    ],
)
async def test_every_allowed_type_round_trips(
    service: DocumentsService, kind: int, content_type: str
) -> None:
    data = SAMPLES[content_type]
    request = create_request(data=data, content_type=content_type, kind=kind)
    created = await service.CreateDocument(request, CONTEXT)
    assert created.sha256 == hashlib.sha256(data).hexdigest()
    assert (created.size_bytes, created.content_type) == (len(data), content_type)
    content = await service.GetDocumentContent(
        documents_pb2.GetDocumentContentRequest(document_id=created.document_id), CONTEXT
    )
    assert (content.file.data, content.file.content_type) == (data, content_type)
    meta = await service.GetDocument(
        documents_pb2.GetDocumentRequest(document_id=created.document_id), CONTEXT
    )
    assert meta.document == documents_pb2.Document(
        document_id=created.document_id,
        owner="C12345",
        kind=kind,  # type: ignore[arg-type]
        sha256=created.sha256,
        size_bytes=len(data),
        content_type=content_type,
    )


async def test_the_content_type_is_kept_as_sent_and_judged_by_its_media_type(
    service: DocumentsService,
) -> None:
    created = await service.CreateDocument(
        create_request(content_type="Image/PNG; name=me.png"), CONTEXT
    )
    assert created.content_type == "Image/PNG; name=me.png"


async def test_a_file_of_exactly_the_limit_is_taken(service: DocumentsService) -> None:
    data = PNG + bytes(LIMIT - len(PNG))
    created = await service.CreateDocument(create_request(data=data), CONTEXT)
    assert created.size_bytes == LIMIT


async def test_the_same_bytes_are_stored_once_under_their_digest(
    service: DocumentsService, tmp_path: Path
) -> None:
    first = await service.CreateDocument(create_request(), CONTEXT)
    second = await service.CreateDocument(create_request(owner="C67890"), CONTEXT)
    assert first.document_id != second.document_id
    assert first.sha256 == second.sha256
    digest = first.sha256
    blob = tmp_path / "blobs" / digest[:2] / digest[2:]
    assert blob.read_bytes() == PNG
    stored = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert stored == [blob]  # one blob, and no temporary file left behind


def test_the_default_limit_is_ten_mib() -> None:
    assert DEFAULT_MAX_DOCUMENT_BYTES == 10 * 1024 * 1024


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document_id", "error", "message"),
    [
        pytest.param("", InvalidArgument, "document_id: is required", id="missing"),
        pytest.param("a b", InvalidArgument, "document_id: must be printable", id="space"),
        pytest.param("nope", NotFound, "document 'nope' not found", id="unknown"),
    ],
)
async def test_reading_a_document_that_is_not_there(
    service: DocumentsService, document_id: str, error: type[MeshError], message: str
) -> None:
    with pytest.raises(error, match=message):
        await service.GetDocument(
            documents_pb2.GetDocumentRequest(document_id=document_id), CONTEXT
        )
    with pytest.raises(error, match=message):
        await service.GetDocumentContent(
            documents_pb2.GetDocumentContentRequest(document_id=document_id), CONTEXT
        )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda blob: blob.unlink(), id="blob-gone"),
        pytest.param(lambda blob: blob.write_bytes(PNG + b"x"), id="blob-changed"),
    ],
)
async def test_lost_bytes_are_data_loss_not_served(
    service: DocumentsService, tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    created = await service.CreateDocument(create_request(), CONTEXT)
    damage(tmp_path / "blobs" / created.sha256[:2] / created.sha256[2:])
    with pytest.raises(DataLoss, match=f"document '{created.document_id}': its bytes are lost"):
        await service.GetDocumentContent(
            documents_pb2.GetDocumentContentRequest(document_id=created.document_id), CONTEXT
        )


async def test_list_by_owner_oldest_first_and_by_kind(service: DocumentsService) -> None:
    photo = await service.CreateDocument(create_request(), CONTEXT)
    stub = await service.CreateDocument(
        create_request(data=PDF, content_type="application/pdf", kind=documents_pb2.PAY_STUB),
        CONTEXT,
    )
    await service.CreateDocument(create_request(owner="C67890"), CONTEXT)
    again = await service.CreateDocument(
        create_request(data=JPEG, content_type="image/jpeg"), CONTEXT
    )

    async def ids(**fields: Any) -> list[str]:
        listed = await service.ListDocuments(documents_pb2.ListDocumentsRequest(**fields), CONTEXT)
        return [d.document_id for d in listed.documents]

    assert await ids(owner="C12345") == [photo.document_id, stub.document_id, again.document_id]
    assert await ids(owner="C12345", kind=documents_pb2.PHOTO) == [
        photo.document_id,
        again.document_id,
    ]
    assert await ids(owner="C12345", kind=documents_pb2.LICENCE) == []
    assert await ids(owner="nobody") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({}, "owner", id="owner-missing"),
        pytest.param({"owner": "C1\n"}, "owner", id="owner-newline"),
        pytest.param({"owner": "C12345", "kind": 42}, "kind", id="kind-unknown"),
    ],
)
async def test_list_refuses_bad_input(
    service: DocumentsService, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await service.ListDocuments(documents_pb2.ListDocumentsRequest(**fields), CONTEXT)
    assert [name for name, _ in bad.value.violations] == [field]


# --- the blob store -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096))
def test_any_bytes_come_back_by_their_sha256(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        blobs = BlobStore(Path(root))
        digest = blobs.put(data)
        assert digest == hashlib.sha256(data).hexdigest()
        assert blobs.get(digest) == data
        assert blobs.put(data) == digest  # stored once: the second put writes nothing
        assert blobs.path_of(digest).relative_to(root).parts == (digest[:2], digest[2:])


@settings(max_examples=30, deadline=None)
@given(tail=st.binary(max_size=2048), kind=st.sampled_from(sorted(SAMPLES)))
async def test_any_file_of_an_allowed_type_round_trips_through_the_service(
    tail: bytes, kind: str
) -> None:
    data = SAMPLES[kind] + tail
    with tempfile.TemporaryDirectory() as root, DocumentStore(Path(root) / "d.sqlite3") as store:
        service = DocumentsService(store, BlobStore(Path(root) / "blobs"))
        created = await service.CreateDocument(
            create_request(data=data, content_type=kind, kind=documents_pb2.PAY_STUB), CONTEXT
        )
        content = await service.GetDocumentContent(
            documents_pb2.GetDocumentContentRequest(document_id=created.document_id), CONTEXT
        )
    assert content.file.data == data
    assert created.sha256 == hashlib.sha256(data).hexdigest()


def test_a_write_that_fails_leaves_no_blob_and_no_temporary_file(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: object, dst: object) -> None:
        raise OSError("disk gone")  # the rename never happens, as in a crash before it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        blobs.put(PDF)
    digest = hashlib.sha256(PDF).hexdigest()
    assert not blobs.path_of(digest).exists()
    assert list((blobs.root / "tmp").iterdir()) == []
    with pytest.raises(BlobMissing):
        blobs.get(digest)


def test_stale_temporary_files_are_swept_at_start_and_fresh_ones_kept(tmp_path: Path) -> None:
    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "crashed.tmp", tmp / "writing.tmp"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"being written")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    BlobStore(tmp_path / "blobs")
    assert sorted(p.name for p in tmp.iterdir()) == ["writing.tmp"]


def test_a_changed_blob_is_reported_corrupt(blobs: BlobStore) -> None:
    digest = blobs.put(PNG)
    blobs.path_of(digest).write_bytes(PDF)
    with pytest.raises(BlobCorrupt, match=digest):
        blobs.get(digest)


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("", id="empty"),
        pytest.param("ab", id="short"),
        pytest.param("AB" * 32, id="upper-case"),
        pytest.param("g" * 64, id="not-hex"),
        pytest.param("../" + "a" * 61, id="a-path"),
    ],
)
def test_only_a_lower_case_hex_sha256_names_a_blob(blobs: BlobStore, digest: str) -> None:
    with pytest.raises(ValueError, match="not a lower-case hex SHA-256"):
        blobs.path_of(digest)


# --- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "media"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("application/pdf; charset=binary", "application/pdf"),
        ("  image/jpeg  ;q=1", "image/jpeg"),
        ("", ""),
    ],
)
def test_media_type_is_type_and_subtype_in_lower_case(header: str, media: str) -> None:
    assert media_type(header) == media


# --- flags --------------------------------------------------------------------------------------


def test_max_document_bytes_from_flag_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> int:
        args = parse_args("documents", list(argv), _add_arguments, environ={})
        return int(args.max_document_bytes)

    monkeypatch.delenv("HMS_MAX_DOCUMENT_BYTES", raising=False)
    assert parsed() == DEFAULT_MAX_DOCUMENT_BYTES
    monkeypatch.setenv("HMS_MAX_DOCUMENT_BYTES", "2048")
    assert parsed() == 2048
    assert parsed("--max-document-bytes=512") == 512
    monkeypatch.setenv("HMS_MAX_DOCUMENT_BYTES", "ten")
    with pytest.raises(SystemExit):
        parsed()


def test_the_headroom_leaves_room_for_the_stacks_gateway_slack() -> None:
    # mesh up's gateway forwards bodies up to 11 MiB (tools/stack.py): all reach the handler.
    from hms_tools.stack import STACK_BODY_LIMIT

    assert DEFAULT_MAX_DOCUMENT_BYTES + RECEIVE_HEADROOM > STACK_BODY_LIMIT
