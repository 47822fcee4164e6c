"""Whose data: a citizen acts for themself, staff (the `caseworker` scope) for anyone, and a
call from another service (no end user: the authorization matrix let it in) is not asked.

Scopes say what a token may do; these tests show the handlers also check whose data a request
names (PERMISSION_DENIED naming the field) and that reading another citizen's record by its id
answers NOT_FOUND, as for an id that does not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from hms.documents.v1 import documents_pb2
from hms.identity.v1 import identity_pb2
from hms.notify.v1 import notify_pb2
from hms_services.documents.blobs import BlobStore
from hms_services.documents.service import DocumentsService
from hms_services.documents.store import DocumentStore
from hms_services.identity.service import IdentityService
from hms_services.identity.store import CitizenRegister
from hms_services.notify.service import NotifyService
from hms_services.notify.store import NotificationStore
from mesh import NotFound, PermissionDenied, may_act_for, require_acting_for
from mesh.server.enduser import EndUser
from mesh.testing import FakeContext, signed_in

CONTEXT = FakeContext(allow_abort=False)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))

# Who handles the call: (subject, scopes), or None for a call from another service.
AS_OWNER = ("C12345", ())
AS_OTHER = ("C99999", ("documents:read", "documents:write", "identity:verify"))
AS_STAFF = ("kim", ("caseworker",))
AS_SERVICE = None


def acting(who: tuple[str, tuple[str, ...]] | None) -> AbstractContextManager[object]:
    return nullcontext() if who is None else signed_in(who[0], who[1])


@pytest.mark.parametrize(
    ("user", "owner", "allowed"),
    [
        pytest.param(EndUser("C12345"), "C12345", True, id="self"),
        pytest.param(EndUser("C12345"), "C99999", False, id="another"),
        pytest.param(EndUser("C12345"), "", False, id="everyone"),
        pytest.param(EndUser("kim", {"scope": "caseworker other"}), "C99999", True, id="staff"),
        pytest.param(EndUser("kim", {"scp": ["caseworker"]}), "C99999", True, id="staff-scp"),
        pytest.param(EndUser("kim", {"scope": "caseworkers"}), "C99999", False, id="near-miss"),
        pytest.param(EndUser("kim", {"scope": ["caseworker"]}), "C9", False, id="bad-claim"),
    ],
)
def test_who_acts_for_whom(user: EndUser, owner: str, allowed: bool) -> None:
    assert user.acts_for(owner) is allowed


def test_without_an_end_user_the_matrix_decides() -> None:
    assert may_act_for("C99999")
    require_acting_for("C99999", "citizen_id")  # does not raise


def test_refusal_names_the_field_the_owner_and_the_way_in() -> None:
    with signed_in("C12345"), pytest.raises(PermissionDenied) as refused:
        require_acting_for("C99999", "citizen_id")
    assert refused.value.message == (
        "citizen_id: 'C99999' is not the signed-in user 'C12345'; acting for another citizen "
        "needs the 'caseworker' scope"
    )


@pytest.fixture
def documents(tmp_path: Path) -> Iterator[DocumentsService]:
    with DocumentStore(tmp_path / "documents.sqlite3") as store:
        yield DocumentsService(store, BlobStore(tmp_path / "blobs"))


@pytest.fixture
def identity() -> Iterator[IdentityService]:
    with CitizenRegister(":memory:") as register:
        yield IdentityService(register)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyService]:
    with NotificationStore(tmp_path / "notify.sqlite3") as store:
        yield NotifyService(store)


WHO = {"owner": AS_OWNER, "other": AS_OTHER, "staff": AS_STAFF, "service": AS_SERVICE}


def _upload(service: DocumentsService) -> Awaitable[object]:
    return service.CreateDocument(
        documents_pb2.CreateDocumentRequest(
            owner="C12345",
            kind=documents_pb2.PHOTO,
            file={"content_type": "image/png", "data": PNG},
        ),
        CONTEXT,
    )


# handler: (who, expected error or None)
NAMED = [
    ("identity-verify", "owner", None),
    ("identity-verify", "other", PermissionDenied),
    ("identity-verify", "staff", None),
    ("identity-verify", "service", None),
    ("documents-upload", "owner", None),
    ("documents-upload", "other", PermissionDenied),
    ("documents-upload", "staff", None),
    ("documents-list", "owner", None),
    ("documents-list", "other", PermissionDenied),
    ("documents-list", "service", None),
    ("notify-list-own", "owner", None),
    ("notify-list-own", "other", PermissionDenied),
    ("notify-list-everyone", "owner", PermissionDenied),
    ("notify-list-everyone", "staff", None),
    ("notify-list-everyone", "service", None),
]


@pytest.fixture
def handlers(
    documents: DocumentsService, identity: IdentityService, notify: NotifyService
) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "identity-verify": lambda: identity.VerifyCitizen(
            identity_pb2.VerifyCitizenRequest(citizen_id="C12345"), CONTEXT
        ),
        "documents-upload": lambda: _upload(documents),
        "documents-list": lambda: documents.ListDocuments(
            documents_pb2.ListDocumentsRequest(owner="C12345"), CONTEXT
        ),
        "notify-list-own": lambda: notify.ListNotifications(
            notify_pb2.ListNotificationsRequest(applicant_id="C12345"), CONTEXT
        ),
        "notify-list-everyone": lambda: notify.ListNotifications(
            notify_pb2.ListNotificationsRequest(), CONTEXT
        ),
    }


@pytest.mark.parametrize(("handler", "who", "error"), NAMED)
async def test_a_request_naming_a_citizen(
    handler: str,
    who: str,
    error: type[Exception] | None,
    handlers: dict[str, Callable[[], Awaitable[object]]],
) -> None:
    calls = handlers
    with acting(WHO[who]):
        if error is None:
            await calls[handler]()
            return
        with pytest.raises(error) as refused:
            await calls[handler]()
    assert "caseworker" in refused.value.message  # says what would let them in


@pytest.mark.parametrize(("who", "found"), [("owner", True), ("other", False), ("staff", True)])
async def test_another_citizens_document_is_not_found(
    who: str, found: bool, documents: DocumentsService
) -> None:
    created: Any = await _upload(documents)
    read = documents_pb2.GetDocumentContentRequest(document_id=created.document_id)
    with acting(WHO[who]):
        if found:
            answer = await documents.GetDocumentContent(read, CONTEXT)
            assert answer.file.data == PNG
            return
        with pytest.raises(NotFound) as missing:
            await documents.GetDocumentContent(read, CONTEXT)
    # The same words as for an id that does not exist.
    assert missing.value.message == f"document {created.document_id!r} not found"
