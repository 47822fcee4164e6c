"""Documents and payments as real processes: files through a real `mesh gateway` (mTLS to a
real documents process found in a real etcd) in and out byte for byte, up to 10 MiB, with 413
and 415 for what is refused; payments taken once per idempotency key by two real replicas
racing on one database, only for licensing, with their events relayed to a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.payments.v1 import payments_pb2, payments_pb2_grpc
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, GatewayProcess, NatsProcess, ServiceProcess
from hms_tools.stack import STACK_BODY_LIMIT
from mesh.client import ClientConfig, MeshChannel
from mesh.events.subjects import Headers, event_subject, events_stream
from mesh.registry import keys
from mesh.registry.watch import Discovery
from mesh.testing import eventually
from mesh.tls import TlsFiles

from ..conftest import ServiceFactory, clean_env, service_process
from ..gateway.conftest import wait_ready

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
WAIT = 20.0
DOCUMENTS = "hms.documents.v1.DocumentsService"
OWNER = "C12345"

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02" + bytes(40)
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


# --- documents behind the gateway ---------------------------------------------------------------


@dataclass
class DocumentsStack:
    url: str
    data: Path  # the documents process's --data-dir
    etcd: EtcdProcess
    tls_dir: Path


@pytest.fixture(scope="module")
def documents_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocumentsStack]:
    """One etcd, one documents process and one gateway with `mesh up`'s body limit."""
    base = tmp_path_factory.mktemp("documents-stack")
    tls_dir = base / "tls"
    certs.ensure(tls_dir, ["documents", "gateway", "ops"])
    etcd = EtcdProcess(base / "etcd.data")
    etcd.start()
    started: list[ServiceProcess] = []
    try:
        documents = service_process(
            "documents", "documents", etcd=etcd.endpoint, tls_dir=tls_dir, base=base
        ).start()
        started.append(documents)
        gateway = GatewayProcess(
            [
                f"--etcd={etcd.endpoint}",
                f"--tls-dir={tls_dir}",
                "--cert-name=gateway",
                f"--body-limit={STACK_BODY_LIMIT}",
            ],
            env=clean_env(),
            log_path=base / "gateway.log",
        ).start()
        started.append(gateway)
        gateway.wait_url()
        try:
            wait_ready(gateway.url, {DOCUMENTS}, timeout=WAIT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ndocuments' log:\n{documents.log_tail()}") from None
        yield DocumentsStack(gateway.url, base / "data" / "documents", etcd, tls_dir)
    finally:
        for process in reversed(started):
            process.stop(timeout=5)
        etcd.stop()


@pytest.fixture
async def http(documents_stack: DocumentsStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=documents_stack.url, timeout=30) as client:
        yield client


async def upload(
    http: httpx.AsyncClient, data: bytes, content_type: str, kind: str, owner: str = OWNER
) -> httpx.Response:
    return await http.post(
        "/v1/documents",
        params={"owner": owner, "kind": kind},
        content=data,
        headers={"content-type": content_type},
    )


async def test_a_png_and_a_pdf_come_back_byte_for_byte_with_their_type(
    http: httpx.AsyncClient, documents_stack: DocumentsStack
) -> None:
    owner = "C20001"
    sent = {"image/png": (PNG, "PHOTO"), "application/pdf": (PDF, "PAY_STUB")}
    ids = {}
    for content_type, (data, kind) in sent.items():
        created = await upload(http, data, content_type, kind, owner)
        assert created.status_code == 200, created.text
        body = created.json()
        assert body == {
            "documentId": body["documentId"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "sizeBytes": str(len(data)),  # int64 in JSON is a string
            "contentType": content_type,
        }
        ids[content_type] = body["documentId"]
        fetched = await http.get(f"/v1/documents/{body['documentId']}")
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == content_type
        assert fetched.content == data
        digest = body["sha256"]
        assert (documents_stack.data / "blobs" / digest[:2] / digest[2:]).read_bytes() == data

    listed = await http.get("/v1/documents", params={"owner": owner})
    assert listed.status_code == 200
    assert [d["documentId"] for d in listed.json()["documents"]] == list(ids.values())
    photos = await http.get("/v1/documents", params={"owner": owner, "kind": "PHOTO"})
    assert [d["contentType"] for d in photos.json()["documents"]] == ["image/png"]

    # GetDocument has no route: it is for the mesh (passport, housing), over gRPC.
    assert (await http.get(f"/v1/documents/{ids['image/png']}:describe")).status_code == 404
    config = ClientConfig(
        etcd=(documents_stack.etcd.endpoint,), tls=TlsFiles(documents_stack.tls_dir, "ops")
    )
    async with await MeshChannel.connect(config) as channel:
        stub = documents_pb2_grpc.DocumentsServiceStub(channel)
        described = await stub.GetDocument(
            documents_pb2.GetDocumentRequest(document_id=ids["application/pdf"]), timeout=5
        )
    assert described.document.owner == owner
    assert described.document.kind == documents_pb2.PAY_STUB
    assert described.document.size_bytes == len(PDF)


async def test_ten_mib_pass_through_and_more_is_413(
    http: httpx.AsyncClient, documents_stack: DocumentsStack
) -> None:
    # Twice gRPC's 4 MiB default on both legs: the request into documents and the answer
    # back to the gateway.
    largest = PDF + bytes(range(256)) * ((10 * MiB - len(PDF)) // 256)
    largest += b"\n" * (10 * MiB - len(largest))
    created = await upload(http, largest, "application/pdf", "LICENCE")
    assert created.status_code == 200, created.text
    fetched = await http.get(f"/v1/documents/{created.json()['documentId']}")
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).digest() == hashlib.sha256(largest).digest()

    # One byte over: the gateway lets it through (its limit has slack), documents refuses it.
    over = await upload(http, largest + b"x", "application/pdf", "LICENCE")
    assert over.status_code == 413
    assert over.json()["message"] == (
        f"file: {10 * MiB + 1} bytes is over the limit of {10 * MiB} bytes"
    )
    assert over.json()["details"][0]["reason"] == "PAYLOAD_TOO_LARGE"
    # Past the gateway's own limit: refused before any backend is called.
    huge = await upload(http, largest + bytes(2 * MiB), "application/pdf", "LICENCE")
    assert huge.status_code == 413
    assert huge.json()["message"] == (
        f"request body is larger than the limit of {STACK_BODY_LIMIT} bytes"
    )


@pytest.mark.parametrize(
    ("data", "content_type", "kind", "status", "says"),
    [
        pytest.param(PDF, "application/pdf", "PHOTO", 415, "image/png, image/jpeg", id="pdf-photo"),
        pytest.param(PNG, "image/png", "LICENCE", 415, "application/pdf", id="png-licence"),
        pytest.param(PNG, "text/plain", "PAY_STUB", 415, "application/pdf", id="text-pay-stub"),
        pytest.param(PNG, "image/jpeg", "PHOTO", 400, "not image/jpeg", id="png-as-jpeg"),
        pytest.param(PNG, "image/png", "PASSPORT", 400, "kind", id="unknown-kind"),
    ],
)
async def test_what_documents_refuses_is_answered_with_its_status(
    *, http: httpx.AsyncClient, data: bytes, content_type: str, kind: str, status: int, says: str
) -> None:
    refused = await upload(http, data, content_type, kind)
    assert refused.status_code == status, refused.text
    assert says in refused.json()["message"]


# --- payments -----------------------------------------------------------------------------------

LICENSING_ONLY = """
[[allow]]
name = "only-licensing-takes-money"
callers = ["spiffe://hms.local/svc/licensing"]
methods = ["/hms.payments.v1.PaymentService/*"]
"""


@pytest.fixture
async def payments(
    *,
    start_service: ServiceFactory,
    discovery: Discovery,
    nats: NatsProcess,
    js: JetStreamContext,
    etcd: EtcdProcess,
    tls_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[dict[str, MeshChannel]]:
    """Two payments replicas on one database (one --data-dir), each relaying its outbox; a
    mesh channel as licensing and one as ops, by name."""
    certs.ensure(tls_dir, ["payments", "licensing", "ops"])
    policy = tmp_path / "payments-policy.toml"
    policy.write_text(LICENSING_ONLY)
    extra = (f"--nats={nats.url}", f"--policy={policy}")
    replicas = [start_service("payments", extra=extra) for _ in range(2)]

    def both(instances: list[keys.Instance]) -> bool:
        for replica in replicas:
            if not replica.running:
                raise AssertionError(f"a payments replica exited:\n{replica.log_tail()}")
        return sum(i.deployment == "payments" for i in instances) == 2

    await discovery.wait_for(both, WAIT)
    channels = {}
    try:
        for name in ("licensing", "ops"):
            config = ClientConfig(etcd=(etcd.endpoint,), tls=TlsFiles(tls_dir, name))
            channels[name] = await MeshChannel.connect(config)
        yield channels
    finally:
        for channel in channels.values():
            await channel.close()


async def test_one_payment_per_key_across_replicas_and_its_events_on_nats(
    payments: dict[str, MeshChannel],
    js: JetStreamContext,
    tmp_path: Path,
) -> None:
    stub = payments_pb2_grpc.PaymentServiceStub(payments["licensing"])
    charge = payments_pb2.ChargeRequest(
        idempotency_key="LIC-7-fee", payer_id=OWNER, amount_pence=3400, reference="LIC-7"
    )
    # Round robin over both replicas: they race for the key on the one database file.
    answers = await asyncio.gather(*(stub.Charge(charge, timeout=10) for _ in range(16)))
    assert len({a.payment.payment_id for a in answers}) == 1
    payment = answers[0].payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED

    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await stub.Charge(
            payments_pb2.ChargeRequest(
                idempotency_key="LIC-7-fee", payer_id=OWNER, amount_pence=1, reference="LIC-7"
            ),
            timeout=5,
        )
    assert conflict.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency key 'LIC-7-fee'" in (conflict.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as declined:
        await stub.Charge(
            payments_pb2.ChargeRequest(idempotency_key="k-99", payer_id="C99999", amount_pence=1),
            timeout=5,
        )
    assert declined.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "payer 'C99999' is declined: " in (declined.value.details() or "")

    refund = payments_pb2.RefundRequest(payment_id=payment.payment_id, reason="licence refused")
    refunded = (await stub.Refund(refund, timeout=5)).payment
    assert refunded.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert (await stub.Refund(refund, timeout=5)).payment == refunded
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Refund(payments_pb2.RefundRequest(payment_id="nope"), timeout=5)
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND

    # Anyone but licensing is refused, whatever the method.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await payments_pb2_grpc.PaymentServiceStub(payments["ops"]).GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment.payment_id), timeout=5
        )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # The capture and its compensation, each once, under the licence's id.
    captured = await first_event(js, "hms.payments.v1.PaymentCaptured")
    assert payments_pb2.PaymentCaptured.FromString(captured.data).payment == payment
    given_back = await first_event(js, "hms.payments.v1.PaymentRefunded")
    event = payments_pb2.PaymentRefunded.FromString(given_back.data)
    assert (event.payment, event.reason) == (refunded, "licence refused")
    for message in (captured, given_back):
        assert message.headers is not None
        assert message.headers[Headers.AGGREGATE] == "LIC-7"
        assert message.headers[Headers.SOURCE] == "payments"
    database = tmp_path / "data" / "payments" / "payments.sqlite3"

    def all_relayed() -> bool:
        with sqlite3.connect(database) as db:
            (unsent,) = db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        db.close()
        return bool(unsent == 0)

    await eventually(all_relayed, timeout=WAIT, interval=0.05)
    # Both replicas relay the one outbox: JetStream keeps each event once by its id.
    info = await js.stream_info(events_stream().name)
    assert info.state.messages == 2


async def first_event(js: JetStreamContext, full_name: str) -> Msg:
    subscription = await js.subscribe(event_subject("hms", full_name))
    try:
        return await subscription.next_msg(timeout=WAIT)
    finally:
        await subscription.unsubscribe()
