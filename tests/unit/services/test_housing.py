"""HousingService against its dependencies served in-process over gRPC: the real
EligibilityService, a small fake of documents (the generated servicer), and a server
interceptor that takes a dependency down or makes it slow. A refused application leaves no
row and no outbox row; an ineligible one is kept as REJECTED with no event."""

from __future__ import annotations

import datetime
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.eligibility.v1 import eligibility_pb2_grpc
from hms.housing.v1 import housing_pb2
from hms_services.eligibility.service import EligibilityService
from hms_services.housing.service import MAX_DOCUMENTS, HousingService
from hms_services.housing.store import HousingStore, StoredApplication
from mesh.errors import FailedPrecondition, InvalidArgument, MeshError, NotFound, Unavailable
from mesh.server.errors import ErrorInterceptor
from mesh.testing import FakeContext

from .outage import Outage

NOW = datetime.datetime(2026, 6, 15, 9, 30, tzinfo=datetime.UTC)
CONTEXT = FakeContext(allow_abort=False)

DOCUMENTS = {
    "stub-c1": ("C1", documents_pb2.PAY_STUB),
    "stub-c1-b": ("C1", documents_pb2.PAY_STUB),
    "photo-c1": ("C1", documents_pb2.PHOTO),
    "licence-c1": ("C1", documents_pb2.LICENCE),
    "stub-c2": ("C2", documents_pb2.PAY_STUB),
}


class FakeDocuments(documents_pb2_grpc.DocumentsServiceServicer):
    """Documents' metadata as a dict: an unknown id is NOT_FOUND, one with a space
    INVALID_ARGUMENT naming document_id. Writes down each id asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def GetDocument(
        self, request: documents_pb2.GetDocumentRequest, context: Any
    ) -> documents_pb2.GetDocumentResponse:
        self.asked.append(request.document_id)
        if " " in request.document_id:
            raise InvalidArgument.field(
                "document_id", f"must be printable without spaces, got {request.document_id!r}"
            )
        if request.document_id not in DOCUMENTS:
            raise NotFound(f"document {request.document_id!r} not found")
        owner, kind = DOCUMENTS[request.document_id]
        return documents_pb2.GetDocumentResponse(
            document=documents_pb2.Document(
                document_id=request.document_id,
                owner=owner,
                kind=kind,
                content_type="application/pdf",
            )
        )


@dataclass
class Housing:
    service: HousingService
    store: HousingStore
    db: Path
    outage: Outage
    documents: FakeDocuments

    def rows(self) -> tuple[int, int]:
        """(applications, outbox rows) in the database file."""
        with sqlite3.connect(self.db) as conn:
            (applications,) = conn.execute("SELECT count(*) FROM applications").fetchone()
            (events,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        conn.close()
        return applications, events

    def outbox(self) -> list[tuple[str, str, bytes]]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT type, aggregate, payload FROM outbox ORDER BY seq")
            found = [(t, a, p) for t, a, p in rows]
        conn.close()
        return found


@pytest.fixture
async def housing(tmp_path: Path) -> AsyncIterator[Housing]:
    outage = Outage()
    documents = FakeDocuments()
    server = grpc.aio.server(interceptors=[outage, ErrorInterceptor()])
    documents_pb2_grpc.add_DocumentsServiceServicer_to_server(documents, server)
    eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(EligibilityService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def channel_source() -> grpc.aio.Channel:
        return channel

    db = tmp_path / "housing.sqlite3"
    ids = iter(f"a{n}" for n in range(1, 100))
    with HousingStore(db) as store:
        service = HousingService(
            store,
            channel=channel_source,
            timeout=0.3,
            clock=lambda: NOW,
            new_id=lambda: next(ids),
        )
        try:
            yield Housing(service, store, db, outage, documents)
        finally:
            await channel.close()
            await server.stop(grace=None)


def application(**overrides: Any) -> housing_pb2.SubmitApplicationRequest:
    """An eligible application with a pay stub of its citizen unless overridden."""
    fields: dict[str, Any] = {
        "citizen_id": "C1",
        "annual_income_pence": 2_800_000,
        "household_size": 2,
        "residence_months": 30,
        "document_ids": ["stub-c1"],
    }
    fields.update(overrides)
    return housing_pb2.SubmitApplicationRequest(**fields)


async def get(housing: Housing, application_id: str) -> housing_pb2.Application:
    answer = await housing.service.GetApplication(
        housing_pb2.GetApplicationRequest(application_id=application_id), CONTEXT
    )
    return answer.application


# --- decided --------------------------------------------------------------------------------


async def test_an_eligible_application_is_saved_and_announced_in_one(housing: Housing) -> None:
    answer = await housing.service.SubmitApplication(
        application(document_ids=["photo-c1", "stub-c1"]), CONTEXT
    )
    assert (answer.application_id, answer.status, answer.eligible) == (
        "a1",
        housing_pb2.SUBMITTED,
        True,
    )
    [reason] = answer.reasons
    assert "£28,000.00 is within the limit of £40,000.00 for 2 people" in reason

    saved = await get(housing, "a1")
    assert saved == housing_pb2.Application(
        application_id="a1",
        citizen_id="C1",
        annual_income_pence=2_800_000,
        household_size=2,
        residence_months=30,
        document_ids=["photo-c1", "stub-c1"],
        status=housing_pb2.SUBMITTED,
        eligible=True,
        reasons=[reason],
    )
    [(kind, aggregate, payload)] = housing.outbox()
    assert (kind, aggregate) == ("hms.housing.v1.VoucherSubmitted", "a1")
    assert housing_pb2.VoucherSubmitted.FromString(payload).application == saved


async def test_an_ineligible_application_is_kept_rejected_and_not_announced(
    housing: Housing,
) -> None:
    answer = await housing.service.SubmitApplication(
        application(annual_income_pence=5_000_000, household_size=1), CONTEXT
    )
    assert (answer.status, answer.eligible) == (housing_pb2.REJECTED, False)
    [reason] = answer.reasons
    assert "£50,000.00 exceeds the limit of £35,000.00 for 1 person" in reason

    saved = await get(housing, answer.application_id)
    assert (saved.status, saved.eligible, list(saved.reasons)) == (
        housing_pb2.REJECTED,
        False,
        [reason],
    )
    assert housing.rows() == (1, 0)


async def test_the_income_rule_alone_decides(housing: Housing) -> None:
    # Residence below MIN_RESIDENCE's minimum: MAX_INCOME is the only rule a voucher applies.
    answer = await housing.service.SubmitApplication(application(residence_months=0), CONTEXT)
    assert answer.eligible
    assert len(answer.reasons) == 1


async def test_each_document_is_looked_up_once(housing: Housing) -> None:
    await housing.service.SubmitApplication(
        application(document_ids=["stub-c1", "stub-c1", "stub-c1-b"]), CONTEXT
    )
    assert housing.documents.asked == ["stub-c1", "stub-c1-b"]


# --- refused: nothing saved, nothing announced ----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "field_name", "mentions"),
    [
        pytest.param({"citizen_id": ""}, InvalidArgument, "citizen_id", [], id="citizen-missing"),
        pytest.param({"citizen_id": " "}, InvalidArgument, "citizen_id", [], id="citizen-blank"),
        pytest.param(
            {"annual_income_pence": -1},
            InvalidArgument,
            "annual_income_pence",
            ["-1"],
            id="income-negative",
        ),
        pytest.param(
            {"household_size": 0}, InvalidArgument, "household_size", ["0"], id="household-zero"
        ),
        pytest.param(
            {"household_size": -2},
            InvalidArgument,
            "household_size",
            ["-2"],
            id="household-negative",
        ),
        pytest.param(
            {"residence_months": -1},
            InvalidArgument,
            "residence_months",
            ["-1"],
            id="residence-negative",
        ),
        pytest.param(
            {"document_ids": ["stub-c1", ""]},
            InvalidArgument,
            "document_ids[1]",
            [],
            id="document-id-empty",
        ),
        pytest.param(
            {"document_ids": ["stub-c1"] * (MAX_DOCUMENTS + 1)},
            InvalidArgument,
            "document_ids",
            [str(MAX_DOCUMENTS), str(MAX_DOCUMENTS + 1)],
            id="too-many-documents",
        ),
        pytest.param(
            {"document_ids": ["stub-c1", "nope"]},
            InvalidArgument,
            "document_ids[1]",
            ["'nope'", "not found"],
            id="document-unknown",
        ),
        pytest.param(
            {"document_ids": ["stub-c1", "a b"]},
            InvalidArgument,
            "document_ids[1]",
            ["without spaces", "'a b'"],
            id="document-malformed-says-documents",
        ),
        pytest.param(
            {"document_ids": []},
            FailedPrecondition,
            None,
            ["PAY_STUB", "'C1'", "no document named"],
            id="no-documents",
        ),
        pytest.param(
            {"document_ids": ["photo-c1", "licence-c1"]},
            FailedPrecondition,
            None,
            ["PAY_STUB", "'C1'", "2 document(s)"],
            id="no-pay-stub",
        ),
        pytest.param(
            {"document_ids": ["stub-c2"]},
            FailedPrecondition,
            None,
            ["PAY_STUB", "'C1'"],
            id="pay-stub-of-another-citizen",
        ),
        pytest.param(
            {"annual_income_pence": 9_000_000, "document_ids": ["photo-c1"]},
            FailedPrecondition,
            None,
            ["PAY_STUB"],
            id="ineligible-and-no-pay-stub",
        ),
    ],
)
async def test_a_refused_application_names_why_and_leaves_nothing(
    housing: Housing,
    overrides: dict[str, Any],
    error: type[MeshError],
    field_name: str | None,
    mentions: list[str],
) -> None:
    with pytest.raises(error) as refused:
        await housing.service.SubmitApplication(application(**overrides), CONTEXT)
    assert type(refused.value) is error
    if field_name is not None:
        assert isinstance(refused.value, InvalidArgument)
        [(named, _)] = refused.value.violations
        assert named == field_name
    for fragment in mentions:
        assert fragment in refused.value.message
    assert housing.rows() == (0, 0)


@pytest.mark.parametrize("mode", ["down", "slow"])
@pytest.mark.parametrize(
    ("service", "name"),
    [
        ("hms.eligibility.v1.EligibilityService", "eligibility"),
        ("hms.documents.v1.DocumentsService", "documents"),
    ],
)
async def test_a_dependency_down_or_slow_is_unavailable_naming_it(
    housing: Housing, service: str, name: str, mode: str
) -> None:
    getattr(housing.outage, mode).add(service)
    with pytest.raises(Unavailable, match=f"^{name} is unavailable"):
        await housing.service.SubmitApplication(application(), CONTEXT)
    assert housing.rows() == (0, 0)


async def test_no_dependency_listening_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def channel_source() -> grpc.aio.Channel:
        return channel

    try:
        with HousingStore(tmp_path / "h.sqlite3") as store:
            service = HousingService(store, channel=channel_source, timeout=2)
            with pytest.raises(Unavailable, match=r"^eligibility is unavailable"):
                await service.SubmitApplication(application(), CONTEXT)
    finally:
        await channel.close()


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("application_id", "error", "fragment"),
    [
        pytest.param("", InvalidArgument, "application_id: is required", id="missing"),
        pytest.param("a404", NotFound, "application 'a404' not found", id="unknown"),
    ],
)
async def test_get_application_refuses(
    housing: Housing, application_id: str, error: type[MeshError], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        await get(housing, application_id)


# --- the store ------------------------------------------------------------------------------


def stored(application_id: str, status: int) -> StoredApplication:
    return StoredApplication(
        application_id=application_id,
        citizen_id="C1",
        annual_income_pence=1,
        household_size=1,
        residence_months=1,
        document_ids=("stub-c1",),
        status=status,
        eligible=status == housing_pb2.SUBMITTED,
        reasons=("r",),
        create_time=NOW,
    )


def test_a_submitted_application_whose_event_cannot_be_written_is_not_saved(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.sqlite3"
    with HousingStore(db) as store:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE outbox")  # the event's insert fails after the row's
        conn.close()
        with pytest.raises(sqlite3.OperationalError, match="outbox"):
            store.save(stored("a1", housing_pb2.SUBMITTED))
        assert store.application("a1") is None
        store.save(stored("a2", housing_pb2.REJECTED))  # no event to write
        assert store.application("a2") == stored("a2", housing_pb2.REJECTED)


def test_a_saved_application_reads_back_whole_after_reopening(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    with HousingStore(db) as store:
        store.save(stored("a1", housing_pb2.SUBMITTED))
    with HousingStore(db) as store:
        assert store.application("a1") == stored("a1", housing_pb2.SUBMITTED)
