"""Passport renewals and housing applications end to end: real identity, documents,
eligibility, passport and housing processes on real etcd (mTLS), their events through a real
nats-server; called over the mesh channel as an operator would."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.api import httpbody_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.housing.v1 import housing_pb2, housing_pb2_grpc
from hms.passport.v1 import passport_pb2, passport_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, NatsProcess, ServiceProcess
from mesh.client import ClientConfig, MeshChannel
from mesh.errors import FailedPrecondition, MeshError
from mesh.events.subjects import Headers, event_subject, events_stream
from mesh.registry.watch import Discovery
from mesh.tls import TlsFiles

from ..conftest import ServiceFactory, wait_for_deployment

pytestmark = pytest.mark.integration

DEPLOYMENTS = ("identity", "documents", "eligibility", "passport", "housing")
#: Seeded registers: C12345's passport is in its renewal window, C10002's lapsed years ago.
CITIZEN, PASSPORT = "C12345", "123456789"
LAPSED_CITIZEN, LAPSED_PASSPORT = "C10002", "200000002"
WAIT = 20.0

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef"
    "0000000049454e44ae426082"
)
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@dataclass
class Platform:
    channel: MeshChannel
    js: JetStreamContext
    processes: dict[str, ServiceProcess]
    data: Path  # each deployment's --data-dir is data / <deployment>

    async def upload(
        self, owner: str, kind: documents_pb2.DocumentKind.ValueType, content_type: str, data: bytes
    ) -> str:
        documents = documents_pb2_grpc.DocumentsServiceStub(self.channel)
        created = await documents.CreateDocument(
            documents_pb2.CreateDocumentRequest(
                owner=owner,
                kind=kind,
                file=httpbody_pb2.HttpBody(content_type=content_type, data=data),
            ),
            timeout=5,
        )
        document_id: str = created.document_id
        return document_id

    def rows(self, deployment: str, table: str) -> tuple[int, int]:
        """(rows of `table`, outbox rows) in `deployment`'s database."""
        db = sqlite3.connect(self.data / deployment / f"{deployment}.sqlite3")
        try:
            (saved,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
            (events,) = db.execute("SELECT count(*) FROM outbox").fetchone()
        finally:
            db.close()
        return saved, events


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


async def test_a_renewal_is_taken_end_to_end_and_an_ineligible_one_leaves_no_event(
    platform: Platform,
) -> None:
    passport = passport_pb2_grpc.PassportServiceStub(platform.channel)
    lapsed_photo = await platform.upload(LAPSED_CITIZEN, documents_pb2.PHOTO, "image/png", PNG)

    # Refused first: its event, had it been written, would come before the taken one's.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await passport.SubmitRenewal(
            passport_pb2.SubmitRenewalRequest(
                citizen_id=LAPSED_CITIZEN,
                passport_number=LAPSED_PASSPORT,
                photo_document_id=lapsed_photo,
            ),
            timeout=10,
        )
    error = MeshError.from_rpc(refused.value)
    assert isinstance(error, FailedPrecondition), error
    [(kind, rule, why)] = error.violations
    assert (kind, rule) == ("ELIGIBILITY", "PASSPORT_RENEWAL_WINDOW")
    assert "ago" in why  # eligibility's words: the passport expired months ago

    photo = await platform.upload(CITIZEN, documents_pb2.PHOTO, "image/png", PNG)
    taken = await passport.SubmitRenewal(
        passport_pb2.SubmitRenewalRequest(
            citizen_id=CITIZEN, passport_number=PASSPORT, photo_document_id=photo
        ),
        timeout=10,
    )
    assert taken.status == passport_pb2.SUBMITTED
    saved = await passport.GetRenewal(
        passport_pb2.GetRenewalRequest(renewal_id=taken.renewal_id), timeout=5
    )
    assert (saved.renewal.citizen_id, saved.renewal.photo_document_id) == (CITIZEN, photo)

    events = events_of(platform.js, "hms.passport.v1.RenewalSubmitted")
    try:
        first = await anext(events)
        event = passport_pb2.RenewalSubmitted.FromString(first.data)
        assert event.renewal == saved.renewal
        assert first.headers is not None
        assert first.headers[Headers.SOURCE] == "passport"
        assert first.headers[Headers.AGGREGATE] == taken.renewal_id
        # The only one: the refused renewal announced nothing.
        info = await platform.js.stream_info(events_stream().name)
        assert info.state.messages == 1
    finally:
        await events.aclose()
    assert platform.rows("passport", "renewals") == (1, 1)


async def test_a_housing_application_with_an_uploaded_pay_stub_is_announced(
    platform: Platform,
) -> None:
    housing = housing_pb2_grpc.HousingServiceStub(platform.channel)
    stub = await platform.upload(CITIZEN, documents_pb2.PAY_STUB, "application/pdf", PDF)
    photo = await platform.upload(CITIZEN, documents_pb2.PHOTO, "image/png", PNG)

    # A photo is no pay stub: refused, nothing saved or announced.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await housing.SubmitApplication(
            housing_pb2.SubmitApplicationRequest(
                citizen_id=CITIZEN,
                annual_income_pence=2_800_000,
                household_size=2,
                residence_months=30,
                document_ids=[photo],
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    applied = await housing.SubmitApplication(
        housing_pb2.SubmitApplicationRequest(
            citizen_id=CITIZEN,
            annual_income_pence=2_800_000,
            household_size=2,
            residence_months=30,
            document_ids=[stub],
        ),
        timeout=10,
    )
    assert (applied.status, applied.eligible) == (housing_pb2.SUBMITTED, True)
    saved = await housing.GetApplication(
        housing_pb2.GetApplicationRequest(application_id=applied.application_id), timeout=5
    )
    assert list(saved.application.document_ids) == [stub]

    events = events_of(platform.js, "hms.housing.v1.VoucherSubmitted")
    try:
        first = await anext(events)
        assert housing_pb2.VoucherSubmitted.FromString(first.data).application == saved.application
        assert first.headers is not None
        assert first.headers[Headers.AGGREGATE] == applied.application_id
        info = await platform.js.stream_info(events_stream().name)
        assert info.state.messages == 1
    finally:
        await events.aclose()
    assert platform.rows("housing", "applications") == (1, 1)


async def test_a_dependency_down_is_unavailable_naming_it_and_nothing_is_saved(
    platform: Platform, discovery: Discovery
) -> None:
    housing = housing_pb2_grpc.HousingServiceStub(platform.channel)
    stub = await platform.upload(CITIZEN, documents_pb2.PAY_STUB, "application/pdf", PDF)
    platform.processes["documents"].stop(timeout=10)  # SIGTERM: it drains and deregisters
    await discovery.wait_for(
        lambda instances: all(i.deployment != "documents" for i in instances), WAIT
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await housing.SubmitApplication(
            housing_pb2.SubmitApplicationRequest(
                citizen_id=CITIZEN,
                annual_income_pence=2_800_000,
                household_size=2,
                residence_months=30,
                document_ids=[stub],
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (refused.value.details() or "").startswith("documents is unavailable")
    assert platform.rows("housing", "applications") == (0, 0)
