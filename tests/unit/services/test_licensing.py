"""LicensingService against fees, payments and documents served in process by a real grpc.aio
server (fakes of their generated servicers, raising mesh errors as real services do), with
its store and outbox in a real SQLite file; and the hand-written licence PDF, parsed back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.fees.v1 import fees_pb2, fees_pb2_grpc
from hms.licensing.v1 import licensing_pb2, licensing_pb2_grpc
from hms.payments.v1 import payments_pb2, payments_pb2_grpc
from hms_services.licensing.pdf import LicenceText, licence_pdf, pdf_string
from hms_services.licensing.service import (
    DO_NOT_RETRY,
    MAX_KEY_LENGTH,
    LicensingService,
    charge_key,
)
from hms_services.licensing.store import LicenceStore, State
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MeshError,
    NotFound,
    Unavailable,
)
from mesh.events import Outbox
from mesh.server.errors import ErrorInterceptor
from mesh.testing import FakeContext, VirtualWallClock, eventually

T0 = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.UTC)
FEES = {"STREET_TRADING": 12_500, "TAXI_DRIVER": 30_000, "FREE_PERMIT": 0}
FLAGGED = "C99999"
CONTEXT = FakeContext(allow_abort=False)


# -- fakes of the other services, each behaving as its contract says ----------------------


class FakeFees(fees_pb2_grpc.FeeServiceServicer):
    def __init__(self) -> None:
        self.down = False

    async def CalculateFee(
        self, request: fees_pb2.CalculateFeeRequest, context: Any
    ) -> fees_pb2.CalculateFeeResponse:
        if self.down:
            raise Unavailable("fees database is down")
        if request.licence_type not in FEES:
            raise InvalidArgument.field(
                "licence_type",
                f"unknown licence type {request.licence_type!r} (known: {', '.join(FEES)})",
            )
        return fees_pb2.CalculateFeeResponse(
            licence_type=request.licence_type, amount_pence=FEES[request.licence_type]
        )


class FakePayments(payments_pb2_grpc.PaymentServiceServicer):
    """One payment per idempotency key; FLAGGED is declined; `hold_after_charge` makes a
    charge wait after it was taken (a crash is then the caller's cancellation)."""

    def __init__(self) -> None:
        self.payments: dict[str, payments_pb2.Payment] = {}  # by idempotency key
        self.charge_calls = 0
        self.refund_reasons: list[str] = []
        self.charge_down = False
        self.refund_down = False
        self.hold_after_charge: asyncio.Event | None = None
        self._ids = itertools.count(1)

    async def Charge(
        self, request: payments_pb2.ChargeRequest, context: Any
    ) -> payments_pb2.ChargeResponse:
        self.charge_calls += 1
        if self.charge_down:
            raise Unavailable("payments database is down")
        if request.amount_pence <= 0:
            raise InvalidArgument.field("amount_pence", "must be more than 0")
        if request.payer_id == FLAGGED:
            raise FailedPrecondition(f"payer {FLAGGED} is flagged: card reported stolen")
        payment = self.payments.get(request.idempotency_key)
        if payment is None:
            payment = payments_pb2.Payment(
                payment_id=f"pay-{next(self._ids)}",
                payer_id=request.payer_id,
                amount_pence=request.amount_pence,
                status=payments_pb2.PAYMENT_STATUS_CAPTURED,
                idempotency_key=request.idempotency_key,
                reference=request.reference,
            )
            self.payments[request.idempotency_key] = payment
        elif (payment.payer_id, payment.amount_pence) != (request.payer_id, request.amount_pence):
            raise AlreadyExists(f"idempotency key {request.idempotency_key!r} is taken")
        if self.hold_after_charge is not None:
            await self.hold_after_charge.wait()
        return payments_pb2.ChargeResponse(payment=payment)

    async def Refund(
        self, request: payments_pb2.RefundRequest, context: Any
    ) -> payments_pb2.RefundResponse:
        if self.refund_down:
            raise Unavailable("payments database is down")
        for payment in self.payments.values():
            if payment.payment_id == request.payment_id:
                payment.status = payments_pb2.PAYMENT_STATUS_REFUNDED
                self.refund_reasons.append(request.reason)
                return payments_pb2.RefundResponse(payment=payment)
        raise NotFound(f"payment {request.payment_id!r} not found")

    def by_reference(self, reference: str) -> list[payments_pb2.Payment]:
        return [p for p in self.payments.values() if p.reference == reference]


@dataclass
class StoredDocument:
    owner: str
    kind: int
    content_type: str
    data: bytes


@dataclass
class FakeDocuments(documents_pb2_grpc.DocumentsServiceServicer):
    documents: dict[str, StoredDocument] = field(default_factory=dict)
    failure: MeshError | None = None
    #: When set, CreateDocument waits on it before storing (a crash is a cancellation then).
    hold: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def CreateDocument(
        self, request: documents_pb2.CreateDocumentRequest, context: Any
    ) -> documents_pb2.CreateDocumentResponse:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.failure is not None:
            raise self.failure
        if request.kind != documents_pb2.LICENCE or request.file.content_type != "application/pdf":
            raise InvalidArgument.field("file", "a LICENCE must be application/pdf")
        document_id = f"doc-{len(self.documents) + 1}"
        self.documents[document_id] = StoredDocument(
            request.owner, request.kind, request.file.content_type, request.file.data
        )
        return documents_pb2.CreateDocumentResponse(
            document_id=document_id, content_type=request.file.content_type
        )


@dataclass
class Backends:
    fees: FakeFees
    payments: FakePayments
    documents: FakeDocuments
    channel: grpc.aio.Channel

    async def get_channel(self) -> grpc.aio.Channel:
        return self.channel


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    fees, payments, documents = FakeFees(), FakePayments(), FakeDocuments()
    fees_pb2_grpc.add_FeeServiceServicer_to_server(fees, server)
    payments_pb2_grpc.add_PaymentServiceServicer_to_server(payments, server)
    documents_pb2_grpc.add_DocumentsServiceServicer_to_server(documents, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Backends(fees, payments, documents, channel)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "licensing.sqlite3"


@pytest.fixture
def outbox(db_path: Path) -> Iterator[Outbox]:
    box = Outbox(db_path)
    yield box
    box.close()


@pytest.fixture
def store(db_path: Path, outbox: Outbox) -> Iterator[LicenceStore]:
    with LicenceStore(db_path, outbox) as s:
        yield s


def licence_ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"lic-{next(counter)}"


@pytest.fixture
def service(store: LicenceStore, backends: Backends) -> LicensingService:
    return LicensingService(
        store, backends.get_channel, clock=VirtualWallClock(T0), new_licence_id=licence_ids()
    )


def apply(
    citizen_id: str = "C10001", licence_type: str = "STREET_TRADING", key: str = "key-1"
) -> licensing_pb2.ApplyForLicenceRequest:
    return licensing_pb2.ApplyForLicenceRequest(
        citizen_id=citizen_id, licence_type=licence_type, idempotency_key=key
    )


def events(outbox: Outbox) -> list[tuple[str, str, Any]]:
    """(type, aggregate, decoded message) of every event in the outbox, oldest first."""
    decoders = {
        "hms.licensing.v1.LicenceIssued": licensing_pb2.LicenceIssued,
        "hms.licensing.v1.LicenceRefused": licensing_pb2.LicenceRefused,
    }
    return [
        (row.type, row.aggregate, decoders[row.type].FromString(row.payload))
        for row in outbox.unsent()
    ]


# -- issuing ------------------------------------------------------------------------------


async def test_a_licence_is_charged_stored_as_a_pdf_and_announced(
    service: LicensingService, backends: Backends, outbox: Outbox
) -> None:
    response = await service.ApplyForLicence(apply(), CONTEXT)

    assert response == licensing_pb2.ApplyForLicenceResponse(
        licence_id="lic-1",
        status=licensing_pb2.ISSUED,
        fee_pence=12_500,
        payment_id="pay-1",
        document_id="doc-1",
    )
    (payment,) = backends.payments.payments.values()
    assert (payment.idempotency_key, payment.payer_id, payment.amount_pence, payment.reference) == (
        charge_key("key-1"),
        "C10001",
        12_500,
        "lic-1",
    )
    document = backends.documents.documents["doc-1"]
    assert (document.owner, document.kind, document.content_type) == (
        "C10001",
        documents_pb2.LICENCE,
        "application/pdf",
    )
    parsed = parse_pdf(document.data)
    assert b"(Licence number: lic-1) Tj" in parsed.content
    assert b"(Fee paid: GBP 125.00) Tj" in parsed.content

    expected = licensing_pb2.Licence(
        licence_id="lic-1",
        citizen_id="C10001",
        licence_type="STREET_TRADING",
        status=licensing_pb2.ISSUED,
        fee_pence=12_500,
        payment_id="pay-1",
        document_id="doc-1",
    )
    assert events(outbox) == [
        ("hms.licensing.v1.LicenceIssued", "lic-1", licensing_pb2.LicenceIssued(licence=expected))
    ]
    got = await service.GetLicence(licensing_pb2.GetLicenceRequest(licence_id="lic-1"), CONTEXT)
    assert got.licence == expected


async def test_a_free_licence_is_issued_without_a_payment(
    service: LicensingService, backends: Backends
) -> None:
    response = await service.ApplyForLicence(apply(licence_type="FREE_PERMIT"), CONTEXT)
    assert (response.status, response.fee_pence, response.payment_id) == (
        licensing_pb2.ISSUED,
        0,
        "",
    )
    assert backends.payments.charge_calls == 0
    assert (
        b"(Payment reference: none \\(no fee\\)) Tj"
        in parse_pdf(backends.documents.documents[response.document_id].data).content
    )


# -- idempotency ----------------------------------------------------------------------------


async def test_the_same_key_twice_answers_the_same_licence_once_paid_and_issued(
    service: LicensingService, backends: Backends, outbox: Outbox
) -> None:
    first = await service.ApplyForLicence(apply(), CONTEXT)
    second = await service.ApplyForLicence(apply(), CONTEXT)
    assert second == first
    assert backends.payments.charge_calls == 1
    assert len(backends.documents.documents) == 1
    assert [kind for kind, _, _ in events(outbox)] == ["hms.licensing.v1.LicenceIssued"]


async def test_concurrent_calls_with_one_key_issue_one_licence(
    service: LicensingService, backends: Backends, outbox: Outbox
) -> None:
    answers = await asyncio.gather(*(service.ApplyForLicence(apply(), CONTEXT) for _ in range(5)))
    assert len({a.licence_id for a in answers}) == 1
    assert len(backends.documents.documents) == 1
    assert len(events(outbox)) == 1


@pytest.mark.parametrize(
    "request_",
    [apply(citizen_id="C20002"), apply(licence_type="TAXI_DRIVER")],
    ids=["another citizen", "another type"],
)
async def test_a_key_reused_for_another_application_is_already_exists(
    service: LicensingService, backends: Backends, request_: licensing_pb2.ApplyForLicenceRequest
) -> None:
    await service.ApplyForLicence(apply(), CONTEXT)
    with pytest.raises(AlreadyExists, match="idempotency key 'key-1' was already used") as err:
        await service.ApplyForLicence(request_, CONTEXT)
    assert "C10001" not in err.value.message  # the holder of the key is not disclosed
    assert backends.payments.charge_calls == 1


# -- validation and fees --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "violations"),
    [
        (apply(citizen_id=""), [("citizen_id", "is required")]),
        (apply(licence_type=" "), [("licence_type", "is required")]),
        (apply(key=""), [("idempotency_key", "is required")]),
        (
            licensing_pb2.ApplyForLicenceRequest(),
            [
                ("citizen_id", "is required"),
                ("licence_type", "is required"),
                ("idempotency_key", "is required"),
            ],
        ),
        (
            apply(key="k" * (MAX_KEY_LENGTH + 1)),
            [("idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters, got 101")],
        ),
        (
            apply(citizen_id="C" * 65),
            [("citizen_id", "must be at most 64 characters, got 65")],
        ),
        (
            apply(citizen_id="C1 0001", key="key\t1"),
            [
                ("citizen_id", "must be printable without spaces, got 'C1 0001'"),
                ("idempotency_key", "must be printable without spaces, got 'key\\t1'"),
            ],
        ),
    ],
    ids=["no citizen", "blank type", "no key", "nothing", "key too long", "long id", "spaces"],
)
async def test_a_bad_application_names_its_fields(
    service: LicensingService,
    backends: Backends,
    request_: licensing_pb2.ApplyForLicenceRequest,
    violations: list[tuple[str, str]],
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await service.ApplyForLicence(request_, CONTEXT)
    assert err.value.violations == violations
    assert backends.payments.charge_calls == 0


async def test_an_unknown_licence_type_is_passed_on_from_fees_and_nothing_is_recorded(
    service: LicensingService, backends: Backends, store: LicenceStore
) -> None:
    with pytest.raises(InvalidArgument, match="unknown licence type 'FISHING'") as err:
        await service.ApplyForLicence(apply(licence_type="FISHING"), CONTEXT)
    assert [name for name, _ in err.value.violations] == ["licence_type"]
    assert store.application("key-1") is None
    assert backends.payments.charge_calls == 0


async def test_fees_down_is_unavailable_and_nothing_is_recorded(
    service: LicensingService, backends: Backends, store: LicenceStore
) -> None:
    backends.fees.down = True
    with pytest.raises(Unavailable, match="fees: fees database is down; nothing was charged"):
        await service.ApplyForLicence(apply(), CONTEXT)
    assert store.application("key-1") is None


# -- a declined payment ---------------------------------------------------------------------


async def test_a_declined_payment_issues_nothing_and_says_why_every_time(
    service: LicensingService, backends: Backends, store: LicenceStore, outbox: Outbox
) -> None:
    for _ in range(2):
        with pytest.raises(FailedPrecondition, match="declined: payer C99999 is flagged"):
            await service.ApplyForLicence(apply(citizen_id=FLAGGED), CONTEXT)
    application = store.application("key-1")
    assert application is not None
    assert application.state is State.DECLINED
    assert backends.payments.charge_calls == 1  # the refusal is final: not asked again
    assert backends.documents.documents == {}
    assert events(outbox) == []
    with pytest.raises(NotFound):
        await service.GetLicence(licensing_pb2.GetLicenceRequest(licence_id="lic-1"), CONTEXT)


async def test_payments_down_leaves_the_application_to_resume_with_one_payment(
    service: LicensingService, backends: Backends, store: LicenceStore
) -> None:
    backends.payments.charge_down = True
    with pytest.raises(Unavailable, match="retry with the same idempotency key"):
        await service.ApplyForLicence(apply(), CONTEXT)
    application = store.application("key-1")
    assert application is not None
    assert application.state is State.PENDING

    backends.payments.charge_down = False
    response = await service.ApplyForLicence(apply(), CONTEXT)
    assert response.licence_id == application.licence_id
    assert len(backends.payments.payments) == 1


# -- compensation -----------------------------------------------------------------------------


async def test_documents_down_after_payment_refunds_it_and_records_the_refusal(
    service: LicensingService, backends: Backends, store: LicenceStore, outbox: Outbox
) -> None:
    backends.documents.failure = Unavailable("no instance of DocumentsService is registered")
    with pytest.raises(Unavailable) as err:
        await service.ApplyForLicence(apply(), CONTEXT)
    assert err.value.message == (
        "licence lic-1 could not be issued (documents: no instance of DocumentsService is "
        "registered); payment pay-1 was refunded"
    )
    (payment,) = backends.payments.by_reference("lic-1")
    assert payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert backends.payments.refund_reasons == [
        "licence lic-1 not issued: documents: no instance of DocumentsService is registered"
    ]
    assert events(outbox) == [
        (
            "hms.licensing.v1.LicenceRefused",
            "lic-1",
            licensing_pb2.LicenceRefused(
                application_key="key-1",
                citizen_id="C10001",
                licence_type="STREET_TRADING",
                payment_id="pay-1",
                reason="documents: no instance of DocumentsService is registered",
            ),
        )
    ]
    with pytest.raises(NotFound):
        await service.GetLicence(licensing_pb2.GetLicenceRequest(licence_id="lic-1"), CONTEXT)

    # The refusal is final: the same key says so, and nothing is charged again.
    backends.documents.failure = None
    with pytest.raises(FailedPrecondition, match="payment pay-1 was refunded; apply again"):
        await service.ApplyForLicence(apply(), CONTEXT)
    assert backends.payments.charge_calls == 1
    assert len(events(outbox)) == 1


@pytest.mark.parametrize(
    ("documents_failure", "charge_down", "pushback"),
    [
        (Unavailable("documents is down"), False, True),  # refunded: final
        (None, True, False),  # PENDING: a retry resumes it
        (None, False, False),  # issued
    ],
    ids=["refunded", "payments down", "issued"],
)
async def test_only_a_final_refusal_asks_callers_not_to_retry(
    service: LicensingService,
    backends: Backends,
    documents_failure: MeshError | None,
    charge_down: bool,
    pushback: bool,
) -> None:
    backends.documents.failure = documents_failure
    backends.payments.charge_down = charge_down
    context = FakeContext(allow_abort=False)
    with contextlib.suppress(MeshError):
        await service.ApplyForLicence(apply(), context)
    assert (DO_NOT_RETRY[0] in context.trailing_metadata()) is pushback


async def test_the_pushback_reaches_a_caller_over_grpc_with_the_refusal(
    service: LicensingService, backends: Backends
) -> None:
    """Served as the mesh serves it (errors through ErrorInterceptor), the refusal's status
    and the pushback trailer arrive together."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    licensing_pb2_grpc.add_LicensingServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backends.documents.failure = Unavailable("documents is down")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = licensing_pb2_grpc.LicensingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ApplyForLicence(apply(), timeout=5)
    finally:
        await server.stop(None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "payment pay-1 was refunded" in (err.value.details() or "")
    assert ("grpc-retry-pushback-ms", "-1") in tuple(err.value.trailing_metadata() or ())


async def test_a_fault_in_documents_after_payment_is_internal_and_refunded(
    service: LicensingService, backends: Backends
) -> None:
    backends.documents.failure = InvalidArgument.field("file", "checksum mismatch")
    with pytest.raises(Internal, match=r"\(documents: file: checksum mismatch\); payment pay-1"):
        await service.ApplyForLicence(apply(), CONTEXT)
    (payment,) = backends.payments.payments.values()
    assert payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED


async def test_a_long_many_line_failure_is_refunded_with_one_line_payments_takes(
    service: LicensingService, backends: Backends, outbox: Outbox
) -> None:
    backends.documents.failure = Unavailable("disk\nfull " + "x" * 1000)
    with pytest.raises(Unavailable, match="payment pay-1 was refunded"):
        await service.ApplyForLicence(apply(), CONTEXT)
    (reason,) = backends.payments.refund_reasons
    assert reason.startswith("licence lic-1 not issued: documents: disk full xxx")
    assert reason.endswith("...")
    assert len(reason) == 500
    [(_, _, refused)] = events(outbox)
    assert "\n" not in refused.reason


async def test_a_refund_that_fails_keeps_the_application_paid_for_a_retry_to_finish(
    service: LicensingService, backends: Backends, store: LicenceStore, outbox: Outbox
) -> None:
    backends.documents.failure = Unavailable("documents is down")
    backends.payments.refund_down = True
    with pytest.raises(Unavailable, match="refunding payment pay-1 failed"):
        await service.ApplyForLicence(apply(), CONTEXT)
    application = store.application("key-1")
    assert application is not None
    assert application.state is State.PAID
    assert events(outbox) == []

    backends.documents.failure = None
    backends.payments.refund_down = False
    response = await service.ApplyForLicence(apply(), CONTEXT)
    assert (response.licence_id, response.payment_id) == ("lic-1", "pay-1")
    assert backends.payments.charge_calls == 1


# -- crashes ----------------------------------------------------------------------------------


async def crash_while(
    service: LicensingService, started: asyncio.Event, request: Any = None
) -> None:
    """Run an application until `started` is set, then cancel it: the process dying there."""
    call = asyncio.create_task(service.ApplyForLicence(request or apply(), CONTEXT))
    async with asyncio.timeout(5):
        await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_crash_after_payment_resumes_on_retry_without_charging_twice(
    service: LicensingService, backends: Backends, db_path: Path, outbox: Outbox
) -> None:
    backends.documents.hold = asyncio.Event()
    await crash_while(service, backends.documents.entered)
    backends.documents.hold = None

    # A new process on the same database.
    with LicenceStore(db_path, outbox) as store:
        application = store.application("key-1")
        assert application is not None
        assert application.state is State.PAID
        restarted = LicensingService(store, backends.get_channel, clock=VirtualWallClock(T0))
        response = await restarted.ApplyForLicence(apply(), CONTEXT)
    assert (response.licence_id, response.payment_id) == (application.licence_id, "pay-1")
    assert backends.payments.charge_calls == 1
    assert [kind for kind, _, _ in events(outbox)] == ["hms.licensing.v1.LicenceIssued"]


async def test_a_crash_during_the_charge_resumes_with_the_same_payment(
    service: LicensingService, backends: Backends, db_path: Path, outbox: Outbox
) -> None:
    held = asyncio.Event()
    backends.payments.hold_after_charge = held
    charged = asyncio.Event()

    async def taken() -> None:
        await eventually(lambda: bool(backends.payments.payments))
        charged.set()

    watcher = asyncio.create_task(taken())
    await crash_while(service, charged)
    await watcher
    held.set()
    backends.payments.hold_after_charge = None

    with LicenceStore(db_path, outbox) as store:
        application = store.application("key-1")
        assert application is not None
        assert application.state is State.PENDING
        restarted = LicensingService(store, backends.get_channel, clock=VirtualWallClock(T0))
        response = await restarted.ApplyForLicence(apply(), CONTEXT)
    assert response.payment_id == "pay-1"
    assert len(backends.payments.payments) == 1


async def test_at_start_an_application_left_paid_is_issued_without_a_retry(
    service: LicensingService, backends: Backends, db_path: Path, outbox: Outbox
) -> None:
    backends.documents.hold = asyncio.Event()
    await crash_while(service, backends.documents.entered)
    backends.documents.hold = None

    with LicenceStore(db_path, outbox) as store:
        restarted = LicensingService(store, backends.get_channel, clock=VirtualWallClock(T0))
        await restarted.resume_unfinished()
        application = store.application("key-1")
        assert application is not None
        assert application.state is State.ISSUED
        assert store.unfinished() == []
        licence = store.licence(application.licence_id)
    assert licence is not None
    assert licence.payment_id == "pay-1"
    assert len(backends.documents.documents) == 1


async def test_at_start_an_application_that_cannot_be_issued_is_refunded(
    service: LicensingService, backends: Backends, db_path: Path, outbox: Outbox
) -> None:
    backends.documents.hold = asyncio.Event()
    await crash_while(service, backends.documents.entered)
    backends.documents.hold = None
    backends.documents.failure = Unavailable("documents is down")

    with LicenceStore(db_path, outbox) as store:
        restarted = LicensingService(store, backends.get_channel, clock=VirtualWallClock(T0))
        await restarted.resume_unfinished()
        application = store.application("key-1")
    assert application is not None
    assert application.state is State.REFUNDED
    assert [kind for kind, _, _ in events(outbox)] == ["hms.licensing.v1.LicenceRefused"]


# -- reading ----------------------------------------------------------------------------------


async def test_get_licence_needs_an_id_and_says_which_is_missing(service: LicensingService) -> None:
    with pytest.raises(InvalidArgument) as err:
        await service.GetLicence(licensing_pb2.GetLicenceRequest(), CONTEXT)
    assert err.value.violations == [("licence_id", "is required")]
    with pytest.raises(NotFound, match="licence 'lic-404' not found"):
        await service.GetLicence(licensing_pb2.GetLicenceRequest(licence_id="lic-404"), CONTEXT)


# -- the PDF ----------------------------------------------------------------------------------


@dataclass
class ParsedPdf:
    objects: dict[int, bytes]  # number -> body between "obj" and "endobj"
    trailer: bytes
    content: bytes  # the page's content stream


def xref_objects(data: bytes) -> tuple[dict[int, bytes], bytes]:
    """The objects as the cross-reference table places them, and the trailer; checks that
    startxref points at the table and each 20-byte entry at its object's first byte."""
    assert data.startswith(b"%PDF-1.4\n")
    startxref = re.search(rb"startxref\n(\d+)\n%%EOF\n$", data)
    assert startxref is not None, "no startxref and %%EOF at the end"
    xref_at = int(startxref.group(1))
    header = re.match(rb"xref\n0 (\d+)\n", data[xref_at:])
    assert header is not None, "startxref does not point at the xref table"
    size = int(header.group(1))
    entries_at = xref_at + header.end()
    objects: dict[int, bytes] = {}
    for number in range(size):
        entry = data[entries_at + 20 * number : entries_at + 20 * (number + 1)]
        assert re.fullmatch(rb"\d{10} \d{5} [nf] \n", entry), f"entry {number}: {entry!r}"
        offset, generation, kind = int(entry[:10]), int(entry[11:16]), entry[17:18]
        if number == 0:
            assert (generation, kind) == (65535, b"f")
            continue
        assert kind == b"n"
        start = b"%d 0 obj\n" % number
        assert data[offset:].startswith(start), f"object {number} is not at its offset"
        objects[number] = data[offset + len(start) : data.index(b"\nendobj\n", offset)]
    trailer_at = entries_at + 20 * size
    assert data[trailer_at:].startswith(b"trailer\n")
    trailer = data[trailer_at : data.index(b"startxref", trailer_at)]
    assert b"/Size %d" % size in trailer
    return objects, trailer


def ref(body: bytes, key: bytes) -> int:
    """The object number `/key N 0 R` in `body` names."""
    found = re.search(rb"/" + key + rb" (\d+) 0 R", body)
    assert found is not None, f"no /{key.decode()} in {body!r}"
    return int(found.group(1))


def parse_pdf(data: bytes) -> ParsedPdf:
    """Walk the file as a reader does, from the end: the xref table, the trailer's catalog,
    the page tree, its one page with Type1 Helvetica fonts, and the page's content stream,
    whose /Length is its true length."""
    objects, trailer = xref_objects(data)
    catalog = objects[ref(trailer, b"Root")]
    assert b"/Type /Catalog" in catalog
    pages = objects[ref(catalog, b"Pages")]
    assert b"/Type /Pages" in pages
    assert b"/Count 1" in pages
    kids = re.search(rb"/Kids \[(\d+) 0 R\]", pages)
    assert kids is not None
    page = objects[int(kids.group(1))]
    assert b"/Type /Page " in page
    assert b"/MediaBox [0 0 595 842]" in page
    for font_ref in re.findall(rb"/F\d (\d+) 0 R", page):
        font = objects[int(font_ref)]
        assert b"/Subtype /Type1" in font
        assert b"/BaseFont /Helvetica" in font
    stream = objects[ref(page, b"Contents")]
    length = re.match(rb"<< /Length (\d+) >>\nstream\n", stream)
    assert length is not None
    assert stream.endswith(b"\nendstream")
    content = stream[length.end() : -len(b"\nendstream")]
    assert len(content) == int(length.group(1))
    assert content.startswith(b"BT\n")
    assert content.endswith(b"\nET")
    return ParsedPdf(objects, trailer, content)


def test_the_licence_pdf_is_a_well_formed_pdf_1_4_with_its_text() -> None:
    pdf = licence_pdf(
        LicenceText("lic-7", "C10001", "TAXI_DRIVER", 30_000, "pay-9", datetime.date(2024, 5, 1))
    )
    parsed = parse_pdf(pdf)
    assert b"(Licence type: TAXI_DRIVER) Tj" in parsed.content
    assert b"(Issued to citizen: C10001) Tj" in parsed.content
    assert b"(Issued on: 2024-05-01) Tj" in parsed.content
    assert b"(Fee paid: GBP 300.00) Tj" in parsed.content
    assert b"/Title (Licence lic-7)" in parsed.objects[7]


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("plain", b"(plain)"),
        ("a(b)c", b"(a\\(b\\)c)"),
        ("back\\slash", b"(back\\\\slash)"),
        ("caf\u00e9\n", b"(caf??)"),
    ],
)
def test_text_is_written_as_a_safe_pdf_string(text: str, literal: bytes) -> None:
    assert pdf_string(text) == literal


@settings(max_examples=60, deadline=None)
@given(
    citizen=st.text(max_size=40),
    licence_type=st.text(max_size=40),
    fee=st.integers(min_value=0, max_value=10**12),
)
def test_any_licence_text_gives_a_well_formed_pdf(
    citizen: str, licence_type: str, fee: int
) -> None:
    pdf = licence_pdf(
        LicenceText("lic-1", citizen, licence_type, fee, "pay-1", datetime.date(2024, 1, 2))
    )
    parsed = parse_pdf(pdf)
    assert pdf_string(f"Issued to citizen: {citizen}") + b" Tj" in parsed.content
