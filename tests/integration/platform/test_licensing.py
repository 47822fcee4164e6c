"""Licences end to end: real fees, payments, documents and licensing processes on real etcd
(mTLS), their events through a real nats-server; called over the mesh channel as an operator
would. The issued PDF is read back from documents, the payment from payments, the events from
JetStream."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.fees.v1 import fees_pb2, fees_pb2_grpc
from hms.licensing.v1 import licensing_pb2, licensing_pb2_grpc
from hms.payments.v1 import payments_pb2, payments_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, NatsProcess, ServiceProcess
from mesh.client import ClientConfig, MeshChannel
from mesh.errors import FailedPrecondition, MeshError, Unavailable
from mesh.events.subjects import Headers, event_subject, events_stream
from mesh.registry.watch import Discovery
from mesh.tls import TlsFiles

from ..conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration

DEPLOYMENTS = ("fees", "payments", "documents", "licensing")
SERVICES = Path(__file__).resolve().parents[3] / "services"
CITIZEN = "C10001"
#: The payer services/payments/store.py seeds as flagged: its charges are declined.
FLAGGED = "C99999"
LICENCE_TYPE = "STREET_TRADING"
WAIT = 20.0


@dataclass
class Platform:
    channel: MeshChannel
    js: JetStreamContext
    processes: dict[str, ServiceProcess]
    data: Path  # each deployment's --data-dir is data / <deployment>

    @property
    def licensing(self) -> licensing_pb2_grpc.LicensingServiceStub:
        return licensing_pb2_grpc.LicensingServiceStub(self.channel)

    async def apply(self, citizen_id: str, key: str) -> licensing_pb2.ApplyForLicenceResponse:
        response: licensing_pb2.ApplyForLicenceResponse = await self.licensing.ApplyForLicence(
            licensing_pb2.ApplyForLicenceRequest(
                citizen_id=citizen_id, licence_type=LICENCE_TYPE, idempotency_key=key
            ),
            timeout=15,
        )
        return response

    async def payment(self, payment_id: str) -> payments_pb2.Payment:
        payments = payments_pb2_grpc.PaymentServiceStub(self.channel)
        got = await payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), timeout=5
        )
        payment: payments_pb2.Payment = got.payment
        return payment

    def licensing_rows(self, table: str) -> int:
        with sqlite3.connect(self.data / "licensing" / "licensing.sqlite3") as db:
            (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        db.close()
        return int(count)


@pytest.fixture
async def platform(
    *,
    start_service: ServiceFactory,
    discovery: Discovery,
    etcd: EtcdProcess,
    nats: NatsProcess,
    js: JetStreamContext,
    tls_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[Platform]:
    missing = [name for name in DEPLOYMENTS if not (SERVICES / name / "main.py").exists()]
    assert not missing, f"services not written yet: {', '.join(missing)}"
    certs.ensure(tls_dir, DEPLOYMENTS)
    processes = {name: start_service(name, extra=(f"--nats={nats.url}",)) for name in DEPLOYMENTS}
    for name, process in processes.items():
        await wait_for_deployment(discovery, name, process, timeout=WAIT)
    config = ClientConfig(etcd=(etcd.endpoint,), tls=TlsFiles(tls_dir, "ops"))
    channel = await MeshChannel.connect(config)
    try:
        yield Platform(channel, js, processes, tmp_path / "data")
    finally:
        await channel.close()


async def events_of(js: JetStreamContext, full_name: str) -> AsyncIterator[Msg]:
    """Every event of type `full_name` in the stream, from the first, as they come."""
    subscription = await js.subscribe(event_subject("hms", full_name))
    try:
        while True:
            yield await subscription.next_msg(timeout=WAIT)
    finally:
        await subscription.unsubscribe()


async def count_of(js: JetStreamContext, full_name: str) -> int:
    """How many events of type `full_name` the stream holds."""
    info = await js.stream_info(
        events_stream().name, subjects_filter=event_subject("hms", full_name)
    )
    return sum((info.state.subjects or {}).values())


async def test_a_licence_is_paid_for_stored_as_a_pdf_and_announced(platform: Platform) -> None:
    fees = fees_pb2_grpc.FeeServiceStub(platform.channel)
    fee = await fees.CalculateFee(fees_pb2.CalculateFeeRequest(licence_type=LICENCE_TYPE))

    issued = await platform.apply(CITIZEN, "happy-1")
    assert issued.status == licensing_pb2.ISSUED
    assert issued.fee_pence == fee.amount_pence > 0

    got = await platform.licensing.GetLicence(
        licensing_pb2.GetLicenceRequest(licence_id=issued.licence_id), timeout=5
    )
    assert got.licence == licensing_pb2.Licence(
        licence_id=issued.licence_id,
        citizen_id=CITIZEN,
        licence_type=LICENCE_TYPE,
        status=licensing_pb2.ISSUED,
        fee_pence=issued.fee_pence,
        payment_id=issued.payment_id,
        document_id=issued.document_id,
    )

    documents = documents_pb2_grpc.DocumentsServiceStub(platform.channel)
    described = await documents.GetDocument(
        documents_pb2.GetDocumentRequest(document_id=issued.document_id), timeout=5
    )
    assert (described.document.owner, described.document.kind) == (CITIZEN, documents_pb2.LICENCE)
    content = await documents.GetDocumentContent(
        documents_pb2.GetDocumentContentRequest(document_id=issued.document_id), timeout=5
    )
    assert content.file.content_type == "application/pdf"
    assert content.file.data.startswith(b"%PDF-")
    assert f"(Licence number: {issued.licence_id}) Tj".encode() in content.file.data

    payment = await platform.payment(issued.payment_id)
    assert payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert (payment.payer_id, payment.amount_pence, payment.reference) == (
        CITIZEN,
        issued.fee_pence,
        issued.licence_id,
    )

    events = events_of(platform.js, "hms.licensing.v1.LicenceIssued")
    try:
        first = await anext(events)
    finally:
        await events.aclose()
    assert licensing_pb2.LicenceIssued.FromString(first.data).licence == got.licence
    assert first.headers is not None
    assert first.headers[Headers.SOURCE] == "licensing"
    assert first.headers[Headers.AGGREGATE] == issued.licence_id


async def test_the_same_key_twice_answers_the_same_licence(platform: Platform) -> None:
    first = await platform.apply(CITIZEN, "twice-1")
    second = await platform.apply(CITIZEN, "twice-1")
    assert second == first

    events = events_of(platform.js, "hms.licensing.v1.LicenceIssued")
    try:
        await anext(events)  # the relay has published: counting now counts everything
    finally:
        await events.aclose()
    assert await count_of(platform.js, "hms.licensing.v1.LicenceIssued") == 1
    assert platform.licensing_rows("licences") == 1


async def test_a_declined_payer_is_refused_and_nothing_is_issued(platform: Platform) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.apply(FLAGGED, "declined-1")
    error = MeshError.from_rpc(refused.value)
    assert isinstance(error, FailedPrecondition), error
    assert "declined" in error.message
    assert FLAGGED in error.message

    assert platform.licensing_rows("licences") == 0
    assert platform.licensing_rows("outbox") == 0  # no event was ever written
    with sqlite3.connect(platform.data / "payments" / "payments.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM payments").fetchone() == (0,)
    db.close()


async def test_documents_down_after_payment_refunds_it_and_announces_the_refusal(
    platform: Platform, discovery: Discovery
) -> None:
    platform.processes["documents"].stop(timeout=10)  # SIGTERM: it drains and deregisters
    await discovery.wait_for(
        lambda instances: all(i.deployment != "documents" for i in instances), WAIT
    )

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await platform.apply(CITIZEN, "compensated-1")
    error = MeshError.from_rpc(failed.value)
    # UNAVAILABLE, not retried by the mesh channel into the final FAILED_PRECONDITION.
    assert isinstance(error, Unavailable), error
    assert "was refunded" in error.message

    events = events_of(platform.js, "hms.licensing.v1.LicenceRefused")
    try:
        first = await anext(events)
    finally:
        await events.aclose()
    refused = licensing_pb2.LicenceRefused.FromString(first.data)
    assert (refused.application_key, refused.citizen_id, refused.licence_type) == (
        "compensated-1",
        CITIZEN,
        LICENCE_TYPE,
    )
    assert refused.reason.startswith("documents: ")
    assert first.headers is not None
    licence_id = first.headers[Headers.AGGREGATE]
    assert f"payment {refused.payment_id} was refunded" in error.message

    payment = await platform.payment(refused.payment_id)
    assert payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert payment.reference == licence_id
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await platform.licensing.GetLicence(
            licensing_pb2.GetLicenceRequest(licence_id=licence_id), timeout=5
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert await count_of(platform.js, "hms.licensing.v1.LicenceIssued") == 0

    # The application is final: the same key answers the refusal and charges nothing more.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await platform.apply(CITIZEN, "compensated-1")
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with sqlite3.connect(platform.data / "payments" / "payments.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM payments").fetchone() == (1,)
    db.close()
