"""PassportService against its dependencies served in-process over gRPC: the real
EligibilityService, small fakes of identity and documents (the generated servicers), and a
server interceptor that takes a dependency down or makes it slow. Every refusal leaves no
renewal and no outbox row."""

from __future__ import annotations

import datetime
import re
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
from hms.identity.v1 import identity_pb2, identity_pb2_grpc
from hms.passport.v1 import passport_pb2
from hms_services.eligibility.service import EligibilityService
from hms_services.passport.service import RENEWAL_RULE, PassportService, months_until
from hms_services.passport.store import (
    SEED_PASSPORTS,
    IssuedPassport,
    PassportStore,
    StoredRenewal,
    add_months,
    seed_register,
)
from mesh.dependency import ask
from mesh.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MeshError,
    NotFound,
    Unavailable,
)
from mesh.server.errors import ErrorInterceptor
from mesh.testing import FakeContext

from .outage import Outage

NOW = datetime.datetime(2026, 6, 15, 9, 30, tzinfo=datetime.UTC)
TODAY = NOW.date()
CONTEXT = FakeContext(allow_abort=False)

REGISTER = (
    IssuedPassport("123456789", "C1", add_months(TODAY, 3)),  # in the window
    IssuedPassport("222222222", "C2", add_months(TODAY, 48)),  # too early
    IssuedPassport("333333333", "C3", add_months(TODAY, -72)),  # lapsed
    IssuedPassport("444444444", "C4", add_months(TODAY, 1)),  # holder suspended
)
CITIZENS = {
    "C1": identity_pb2.VERIFIED,
    "C2": identity_pb2.VERIFIED,
    "C3": identity_pb2.VERIFIED,
    "C4": identity_pb2.SUSPENDED,
}
DOCUMENTS = {
    "photo-c1": ("C1", documents_pb2.PHOTO),
    "photo-c2": ("C2", documents_pb2.PHOTO),
    "photo-c3": ("C3", documents_pb2.PHOTO),
    "photo-c4": ("C4", documents_pb2.PHOTO),
    "stub-c1": ("C1", documents_pb2.PAY_STUB),
}


class FakeIdentity(identity_pb2_grpc.IdentityServiceServicer):
    """The citizen register as a dict: a citizen not in it is UNKNOWN, an id not of the form
    C<digits> INVALID_ARGUMENT naming citizen_id (as the contract has it)."""

    async def VerifyCitizen(
        self, request: identity_pb2.VerifyCitizenRequest, context: Any
    ) -> identity_pb2.VerifyCitizenResponse:
        if re.fullmatch(r"C[0-9]+", request.citizen_id) is None:
            raise InvalidArgument.field(
                "citizen_id", f"must be C followed by digits; got {request.citizen_id!r}"
            )
        status = CITIZENS.get(request.citizen_id, identity_pb2.UNKNOWN)
        return identity_pb2.VerifyCitizenResponse(citizen_id=request.citizen_id, status=status)


class FakeDocuments(documents_pb2_grpc.DocumentsServiceServicer):
    """Documents' metadata as a dict: an unknown id is NOT_FOUND, one with a space
    INVALID_ARGUMENT naming document_id."""

    async def GetDocument(
        self, request: documents_pb2.GetDocumentRequest, context: Any
    ) -> documents_pb2.GetDocumentResponse:
        if " " in request.document_id:
            raise InvalidArgument.field(
                "document_id", f"must be printable without spaces, got {request.document_id!r}"
            )
        if request.document_id not in DOCUMENTS:
            raise NotFound(f"document {request.document_id!r} not found")
        owner, kind = DOCUMENTS[request.document_id]
        return documents_pb2.GetDocumentResponse(
            document=documents_pb2.Document(
                document_id=request.document_id, owner=owner, kind=kind, content_type="image/png"
            )
        )


@dataclass
class Passport:
    service: PassportService
    store: PassportStore
    db: Path
    outage: Outage

    def rows(self) -> tuple[int, int]:
        """(renewals, outbox rows) in the database file."""
        with sqlite3.connect(self.db) as conn:
            (renewals,) = conn.execute("SELECT count(*) FROM renewals").fetchone()
            (events,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        conn.close()
        return renewals, events


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def passport(tmp_path: Path) -> AsyncIterator[Passport]:
    outage = Outage()
    server = grpc.aio.server(interceptors=[outage, ErrorInterceptor()])
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(FakeIdentity(), server)
    documents_pb2_grpc.add_DocumentsServiceServicer_to_server(FakeDocuments(), server)
    eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(EligibilityService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def channel_source() -> grpc.aio.Channel:
        return channel

    db = tmp_path / "passport.sqlite3"
    ids = iter(f"r{n}" for n in range(1, 100))
    with PassportStore(db, issued=REGISTER) as store:
        service = PassportService(
            store,
            channel=channel_source,
            timeout=0.3,
            clock=lambda: NOW,
            new_id=lambda: next(ids),
        )
        try:
            yield Passport(service, store, db, outage)
        finally:
            await channel.close()
            await server.stop(grace=None)


def renewal(**overrides: str) -> passport_pb2.SubmitRenewalRequest:
    """A renewal that is taken unless overridden."""
    fields = {"citizen_id": "C1", "passport_number": "123456789", "photo_document_id": "photo-c1"}
    fields.update(overrides)
    return passport_pb2.SubmitRenewalRequest(**fields)


# --- taken ----------------------------------------------------------------------------------


async def test_a_renewal_is_saved_and_announced_in_one(passport: Passport) -> None:
    answer = await passport.service.SubmitRenewal(renewal(), CONTEXT)
    assert (answer.renewal_id, answer.status) == ("r1", passport_pb2.SUBMITTED)

    expected = passport_pb2.Renewal(
        renewal_id="r1",
        citizen_id="C1",
        passport_number="123456789",
        photo_document_id="photo-c1",
        status=passport_pb2.SUBMITTED,
    )
    got = await passport.service.GetRenewal(
        passport_pb2.GetRenewalRequest(renewal_id="r1"), CONTEXT
    )
    assert got.renewal == expected

    with sqlite3.connect(passport.db) as conn:
        rows = conn.execute("SELECT type, aggregate, payload FROM outbox").fetchall()
    conn.close()
    assert [(t, a) for t, a, _ in rows] == [("hms.passport.v1.RenewalSubmitted", "r1")]
    assert passport_pb2.RenewalSubmitted.FromString(rows[0][2]).renewal == expected


async def test_each_renewal_is_its_own_case(passport: Passport) -> None:
    first = await passport.service.SubmitRenewal(renewal(), CONTEXT)
    second = await passport.service.SubmitRenewal(renewal(), CONTEXT)
    assert first.renewal_id != second.renewal_id
    assert passport.rows() == (2, 2)


# --- refused: nothing saved, nothing announced ----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "field_name", "mentions"),
    [
        pytest.param({"citizen_id": ""}, InvalidArgument, "citizen_id", [], id="citizen-missing"),
        pytest.param({"citizen_id": "  "}, InvalidArgument, "citizen_id", [], id="citizen-blank"),
        pytest.param(
            {"passport_number": ""}, InvalidArgument, "passport_number", [], id="number-missing"
        ),
        pytest.param(
            {"passport_number": "12345678"},
            InvalidArgument,
            "passport_number",
            ["9 digits", "12345678"],
            id="number-8-digits",
        ),
        pytest.param(
            {"passport_number": "1234567890"},
            InvalidArgument,
            "passport_number",
            ["9 digits"],
            id="number-10-digits",
        ),
        pytest.param(
            {"passport_number": "12345678A"},
            InvalidArgument,
            "passport_number",
            ["9 digits"],
            id="number-letter",
        ),
        pytest.param(
            {"passport_number": " 12345678"},
            InvalidArgument,
            "passport_number",
            ["9 digits"],
            id="number-space",
        ),
        pytest.param(
            {"passport_number": "１２３４５６７８９"},
            InvalidArgument,
            "passport_number",
            ["9 digits"],
            id="number-non-ascii-digits",
        ),
        pytest.param(
            {"photo_document_id": ""}, InvalidArgument, "photo_document_id", [], id="photo-missing"
        ),
        pytest.param(
            {"citizen_id": "C9"}, NotFound, None, ["'C9'", "not found"], id="citizen-unknown"
        ),
        pytest.param(
            {"citizen_id": "X9"},
            InvalidArgument,
            "citizen_id",
            ["'X9'"],
            id="citizen-malformed-says-identity",
        ),
        pytest.param(
            {"citizen_id": "C4", "passport_number": "444444444", "photo_document_id": "photo-c4"},
            FailedPrecondition,
            None,
            ["'C4'", "suspended"],
            id="citizen-suspended",
        ),
        pytest.param(
            {"passport_number": "222222222"},
            FailedPrecondition,
            None,
            ["222222222", "'C1'"],
            id="number-of-another-citizen",
        ),
        pytest.param(
            {"passport_number": "999999999"},
            FailedPrecondition,
            None,
            ["999999999", "'C1'"],
            id="number-not-issued",
        ),
        pytest.param(
            {"photo_document_id": "nope"},
            InvalidArgument,
            "photo_document_id",
            ["'nope'", "not found"],
            id="photo-unknown",
        ),
        pytest.param(
            {"photo_document_id": "a b"},
            InvalidArgument,
            "photo_document_id",
            ["without spaces", "'a b'"],
            id="photo-malformed-says-documents",
        ),
        pytest.param(
            {"photo_document_id": "photo-c2"},
            InvalidArgument,
            "photo_document_id",
            ["'photo-c2'", "'C1'"],
            id="photo-of-another-citizen",
        ),
        pytest.param(
            {"photo_document_id": "stub-c1"},
            InvalidArgument,
            "photo_document_id",
            ["PAY_STUB", "not a PHOTO"],
            id="photo-not-a-photo",
        ),
    ],
)
async def test_a_refused_renewal_names_why_and_leaves_nothing(
    passport: Passport,
    overrides: dict[str, str],
    error: type[MeshError],
    field_name: str | None,
    mentions: list[str],
) -> None:
    with pytest.raises(error) as refused:
        await passport.service.SubmitRenewal(renewal(**overrides), CONTEXT)
    assert type(refused.value) is error
    if field_name is not None:
        assert isinstance(refused.value, InvalidArgument)
        [(named, _)] = refused.value.violations
        assert named == field_name
    for fragment in mentions:
        assert fragment in refused.value.message
    assert passport.rows() == (0, 0)


@pytest.mark.parametrize(
    ("citizen", "number", "photo", "why"),
    [
        pytest.param("C2", "222222222", "photo-c2", "48 months", id="too-early"),
        pytest.param("C3", "333333333", "photo-c3", "72 months", id="lapsed"),
    ],
)
async def test_an_ineligible_renewal_carries_the_failed_rule(
    passport: Passport, citizen: str, number: str, photo: str, why: str
) -> None:
    request = renewal(citizen_id=citizen, passport_number=number, photo_document_id=photo)
    with pytest.raises(FailedPrecondition) as refused:
        await passport.service.SubmitRenewal(request, CONTEXT)
    [(kind, subject, description)] = refused.value.violations
    assert (kind, subject) == ("ELIGIBILITY", RENEWAL_RULE)
    assert why in description  # eligibility's own words, with the figures it compared
    assert number in refused.value.message
    assert description in refused.value.message
    assert passport.rows() == (0, 0)


@pytest.mark.parametrize("mode", ["down", "slow"])
@pytest.mark.parametrize(
    ("service", "name"),
    [
        ("hms.identity.v1.IdentityService", "identity"),
        ("hms.eligibility.v1.EligibilityService", "eligibility"),
        ("hms.documents.v1.DocumentsService", "documents"),
    ],
)
async def test_a_dependency_down_or_slow_is_unavailable_naming_it(
    passport: Passport, service: str, name: str, mode: str
) -> None:
    getattr(passport.outage, mode).add(service)
    with pytest.raises(Unavailable, match=f"^{name} is unavailable"):
        await passport.service.SubmitRenewal(renewal(), CONTEXT)
    assert passport.rows() == (0, 0)


async def test_no_dependency_listening_is_unavailable(tmp_path: Path) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}")

    async def channel_source() -> grpc.aio.Channel:
        return channel

    try:
        with PassportStore(tmp_path / "p.sqlite3", issued=REGISTER) as store:
            service = PassportService(store, channel=channel_source, timeout=2)
            with pytest.raises(Unavailable, match=r"^identity is unavailable"):
                await service.SubmitRenewal(renewal(), CONTEXT)
    finally:
        await channel.close()


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("renewal_id", "error", "fragment"),
    [
        pytest.param("", InvalidArgument, "renewal_id: is required", id="missing"),
        pytest.param("r404", NotFound, "renewal 'r404' not found", id="unknown"),
    ],
)
async def test_get_renewal_refuses(
    passport: Passport, renewal_id: str, error: type[MeshError], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        await passport.service.GetRenewal(
            passport_pb2.GetRenewalRequest(renewal_id=renewal_id), CONTEXT
        )


# --- the register and the store -------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "expiry", "months"),
    [
        ((2026, 6, 15), (2026, 6, 15), 0),
        ((2026, 6, 15), (2026, 6, 30), 0),
        ((2026, 6, 15), (2026, 7, 14), 0),
        ((2026, 6, 15), (2026, 7, 15), 1),
        ((2026, 6, 15), (2027, 3, 15), 9),
        ((2026, 6, 15), (2027, 3, 16), 9),
        ((2026, 6, 15), (2027, 4, 14), 9),
        ((2026, 6, 15), (2026, 6, 1), 0),
        ((2026, 6, 15), (2026, 5, 16), 0),
        ((2026, 6, 15), (2026, 5, 15), -1),
        ((2026, 6, 15), (2021, 6, 15), -60),
        ((2026, 6, 15), (2021, 6, 14), -60),
        ((2026, 6, 15), (2021, 5, 15), -61),
        ((2026, 1, 31), (2026, 2, 28), 0),
    ],
)
def test_months_until_counts_whole_months(
    today: tuple[int, int, int], expiry: tuple[int, int, int], months: int
) -> None:
    assert months_until(datetime.date(*today), datetime.date(*expiry)) == months


@pytest.mark.parametrize(
    ("day", "months", "moved"),
    [
        ((2026, 1, 31), 1, (2026, 2, 28)),
        ((2024, 1, 31), 1, (2024, 2, 29)),
        ((2026, 11, 30), 3, (2027, 2, 28)),
        ((2026, 3, 15), -15, (2024, 12, 15)),
        ((2026, 3, 15), -72, (2020, 3, 15)),
        ((2026, 3, 15), 0, (2026, 3, 15)),
    ],
)
def test_add_months(day: tuple[int, int, int], months: int, moved: tuple[int, int, int]) -> None:
    assert add_months(datetime.date(*day), months) == datetime.date(*moved)


def test_the_seeded_register_keeps_the_dates_of_its_first_start(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite3"
    first = seed_register(datetime.date(2026, 1, 10))
    with PassportStore(db, issued=first) as store:
        assert [store.issued_passport(n) for n, _, _ in SEED_PASSPORTS] == list(first)
    with PassportStore(db, issued=seed_register(datetime.date(2030, 1, 10))) as store:
        assert [store.issued_passport(n) for n, _, _ in SEED_PASSPORTS] == list(first)
        assert store.issued_passport("000000000") is None


def test_the_default_register_has_one_renewable_and_one_lapsed_passport(tmp_path: Path) -> None:
    today = datetime.datetime.now(datetime.UTC).date()
    with PassportStore(tmp_path / "p.sqlite3") as store:
        renewable = store.issued_passport("123456789")
        lapsed = store.issued_passport("200000002")
    assert renewable is not None
    assert lapsed is not None
    assert (renewable.holder, lapsed.holder) == ("C12345", "C10002")
    assert 0 < months_until(today, renewable.expiry_date) <= 9
    assert months_until(today, lapsed.expiry_date) < -60


def test_a_renewal_whose_event_cannot_be_written_is_not_saved(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite3"
    with PassportStore(db, issued=REGISTER) as store:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE outbox")  # the event's insert fails after the renewal's
        conn.close()
        saved = StoredRenewal("r1", "C1", "123456789", "photo-c1", passport_pb2.SUBMITTED, NOW)
        with pytest.raises(sqlite3.OperationalError, match="outbox"):
            store.submit(saved)
        assert store.renewal("r1") is None


# --- what a dependency's failure becomes ----------------------------------------------------


class FailedCall(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "expected", "raised", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, (), Unavailable, "documents is unavailable: boom"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (), Unavailable, "documents is unavailable: boom"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (), Unavailable, "documents is unavailable: boom"),
        (grpc.StatusCode.NOT_FOUND, (NotFound,), NotFound, "boom"),
        (
            grpc.StatusCode.NOT_FOUND,
            (),
            Internal,
            "documents failed the call: NOT_FOUND: boom",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            (NotFound,),
            Internal,
            "documents failed the call: PERMISSION_DENIED: boom",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            (),
            Internal,
            "documents failed the call: INVALID_ARGUMENT: boom",
        ),
    ],
)
async def test_ask_tells_a_dependency_failure_in_its_callers_words(
    code: grpc.StatusCode,
    expected: tuple[type[MeshError], ...],
    raised: type[MeshError],
    message: str,
) -> None:
    async def failing() -> None:
        raise FailedCall(code, "boom")

    with pytest.raises(raised) as caught:
        await ask("documents", failing(), expected=expected)
    assert type(caught.value) is raised
    assert caught.value.message == message
