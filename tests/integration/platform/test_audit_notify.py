"""Audit and notify end to end: real audit and notify processes on real etcd (mTLS), events
published as producers publish them (a real outbox, relayed with its aggregate and sequence
headers and the trace of the request that wrote it) through a real nats-server; read back over
the mesh channel as an operator would, and `mesh audit verify` run as a command."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.message import Message
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hms.audit.v1 import audit_pb2, audit_pb2_grpc
from hms.housing.v1 import housing_pb2
from hms.licensing.v1 import licensing_pb2
from hms.notify.v1 import notify_pb2, notify_pb2_grpc
from hms.passport.v1 import passport_pb2
from hms.payments.v1 import payments_pb2
from hms_tools import certs
from hms_tools.devstack import EtcdProcess, NatsProcess, ServiceProcess
from mesh.client import ClientConfig, MeshChannel
from mesh.events import Outbox, OutboxRelay, Publisher
from mesh.events.subjects import consumer_name, events_stream
from mesh.registry.watch import Discovery
from mesh.testing import eventually
from mesh.tls import TlsFiles

from ..conftest import ServiceFactory, clean_env, wait_for_deployment

pytestmark = pytest.mark.integration

WAIT = 30.0
TRACES = {name: f"{n:02x}" * 16 for n, name in enumerate(("A", "B", "C", "D", "E"), start=1)}


class Producer:
    """A producing deployment: its events written to a real outbox in one transaction, under
    the trace of the request that wrote them, then relayed (aggregate and sequence headers)."""

    def __init__(self, js: JetStreamContext, source: str, db: Path) -> None:
        self.outbox = Outbox(db)
        self.relay = OutboxRelay(self.outbox, Publisher(js, source), stream=events_stream())
        self._conn = sqlite3.connect(str(db))

    def close(self) -> None:
        self._conn.close()
        self.outbox.close()

    async def publish(self, events: list[tuple[Message, str]], *, trace_id: str) -> list[str]:
        """Write (event, aggregate) pairs, relay them all; their event ids."""
        carrier = {"traceparent": f"00-{trace_id}-{'7' * 16}-01"}
        token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
        try:
            with self._conn:
                ids = [self.outbox.add(self._conn, m, aggregate=a) for m, a in events]
        finally:
            otel_context.detach(token)
        async with asyncio.timeout(WAIT):
            while self.outbox.pending():
                await self.relay.relay_once()
        return ids


@dataclass
class Mesh:
    channel: MeshChannel
    js: JetStreamContext
    nats: NatsProcess
    etcd: EtcdProcess
    tls_dir: Path
    data: Path  # each deployment's --data-dir is data / <deployment>
    producers: dict[str, Producer]

    @property
    def audit(self) -> audit_pb2_grpc.AuditServiceStub:
        return audit_pb2_grpc.AuditServiceStub(self.channel)

    @property
    def notify(self) -> notify_pb2_grpc.NotifyServiceStub:
        return notify_pb2_grpc.NotifyServiceStub(self.channel)

    def producer(self, source: str) -> Producer:
        if source not in self.producers:
            self.producers[source] = Producer(self.js, source, self.data / f"{source}.sqlite3")
        return self.producers[source]

    async def entries(self, subject: str) -> list[audit_pb2.Entry]:
        answer = await self.audit.ListEntries(
            audit_pb2.ListEntriesRequest(subject=subject), timeout=5
        )
        return list(answer.entries)

    async def verify(self) -> audit_pb2.VerifyChainResponse:
        return await self.audit.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=10)

    async def notifications(self, applicant_id: str = "") -> list[notify_pb2.Notification]:
        found: list[notify_pb2.Notification] = []
        token = ""
        while True:
            page = await self.notify.ListNotifications(
                notify_pb2.ListNotificationsRequest(
                    applicant_id=applicant_id, page_size=100, page_token=token
                ),
                timeout=5,
            )
            found += page.notifications
            token = page.next_page_token
            if not token:
                return found


@pytest.fixture
async def mesh(
    *,
    etcd: EtcdProcess,
    nats: NatsProcess,
    js: JetStreamContext,
    tls_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[Mesh]:
    certs.ensure(tls_dir, ["audit", "notify", "ops"])
    config = ClientConfig(etcd=(etcd.endpoint,), tls=TlsFiles(tls_dir, "ops"))
    channel = await MeshChannel.connect(config)
    (tmp_path / "data").mkdir(exist_ok=True)
    world = Mesh(channel, js, nats, etcd, tls_dir, tmp_path / "data", {})
    try:
        yield world
    finally:
        for producer in world.producers.values():
            producer.close()
        await channel.close()


async def start(
    start_service: ServiceFactory, discovery: Discovery, mesh: Mesh, name: str
) -> ServiceProcess:
    process = start_service(name, extra=(f"--nats={mesh.nats.url}",))
    await wait_for_deployment(discovery, name, process, timeout=WAIT)
    return process


async def stop(process: ServiceProcess) -> None:
    process.terminate()
    async with asyncio.timeout(WAIT):
        await process.exited()


def voucher(application_id: str, citizen_id: str) -> housing_pb2.VoucherSubmitted:
    return housing_pb2.VoucherSubmitted(
        application=housing_pb2.Application(application_id=application_id, citizen_id=citizen_id)
    )


async def mesh_audit_verify(mesh: Mesh, *args: str) -> tuple[int, str]:
    """`mesh audit verify ARGS` as an operator runs it (the `ops` certificate, this etcd): its
    exit status and what it printed (its log lines, on stderr, aside)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hms_tools.cli",
        "audit",
        "verify",
        f"--etcd={mesh.etcd.endpoint}",
        f"--tls-dir={mesh.tls_dir}",
        f"--state-dir={mesh.data / 'no-stack'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode is not None
    assert process.returncode in {0, 1}, err.decode()
    return process.returncode, out.decode()


async def test_every_event_is_audited_once_by_case_and_notified_once(
    start_service: ServiceFactory, discovery: Discovery, mesh: Mesh
) -> None:
    await start(start_service, discovery, mesh, "audit")
    await start(start_service, discovery, mesh, "notify")
    [voucher_id] = await mesh.producer("housing").publish(
        [(voucher("A-1", "C-1"), "A-1")], trace_id=TRACES["A"]
    )
    renewal = passport_pb2.RenewalSubmitted(
        renewal=passport_pb2.Renewal(renewal_id="R-1", citizen_id="C-2")
    )
    await mesh.producer("passport").publish([(renewal, "R-1")], trace_id=TRACES["B"])
    issued = licensing_pb2.LicenceIssued(
        licence=licensing_pb2.Licence(licence_id="L-1", citizen_id="C-3", licence_type="taxi")
    )
    refused = licensing_pb2.LicenceRefused(application_key="K-1", citizen_id="C-3")
    await mesh.producer("licensing").publish(
        [(issued, "L-1"), (refused, "K-1")], trace_id=TRACES["C"]
    )
    payment = payments_pb2.Payment(payment_id="P-1", payer_id="C-3", amount_pence=3400)
    payment_ids = await mesh.producer("payments").publish(
        [
            (payments_pb2.PaymentCaptured(payment=payment), "P-1"),
            (payments_pb2.PaymentRefunded(payment=payment, reason="refused"), "P-1"),
        ],
        trace_id=TRACES["D"],
    )

    async def all_recorded() -> bool:
        return (await mesh.verify()).entries == 6

    await eventually(all_recorded, timeout=WAIT, interval=0.2)
    verdict = await mesh.verify()
    assert (verdict.intact, verdict.entries, verdict.problem) == (True, 6, "")

    # The payment's two events under its id, in its outbox's order, with the writer's trace.
    p1 = await mesh.entries("P-1")
    assert [(e.event_id, e.event_type, e.source, e.trace_id) for e in p1] == [
        (payment_ids[0], "hms.payments.v1.PaymentCaptured", "payments", TRACES["D"]),
        (payment_ids[1], "hms.payments.v1.PaymentRefunded", "payments", TRACES["D"]),
    ]
    assert p1[0].sequence < p1[1].sequence
    assert '"reason":"refused"' in p1[1].payload_json
    for subject, event_type, trace_id in [
        ("A-1", "hms.housing.v1.VoucherSubmitted", TRACES["A"]),
        ("R-1", "hms.passport.v1.RenewalSubmitted", TRACES["B"]),
        ("L-1", "hms.licensing.v1.LicenceIssued", TRACES["C"]),
        ("K-1", "hms.licensing.v1.LicenceRefused", TRACES["C"]),
    ]:
        [entry] = await mesh.entries(subject)
        assert (entry.event_type, entry.trace_id) == (event_type, trace_id)
    [a1] = await mesh.entries("A-1")
    assert a1.event_id == voucher_id
    assert '"applicationId":"A-1"' in a1.payload_json

    # One notification for each of the three case events notify takes, none for the others.
    async def three_sent() -> bool:
        return len(await mesh.notifications()) == 3

    await eventually(three_sent, timeout=WAIT, interval=0.2)
    sent = {n.applicant_id: n for n in await mesh.notifications()}
    assert {a: (n.channel, n.recipient, n.body) for a, n in sent.items()} == {
        "C-1": (
            notify_pb2.CHANNEL_EMAIL,
            "citizen:C-1",
            "Your housing voucher application A-1 was received.",
        ),
        "C-2": (notify_pb2.CHANNEL_EMAIL, "citizen:C-2", "Your passport renewal R-1 was received."),
        "C-3": (notify_pb2.CHANNEL_EMAIL, "citizen:C-3", "Your taxi licence L-1 was issued."),
    }
    assert [n.body for n in await mesh.notifications("C-3")] == [sent["C-3"].body]


async def consumers_settled(js: JetStreamContext, deployment: str, types: list[str]) -> bool:
    """Nothing left for `deployment`'s consumers: none pending, none awaiting an ack."""
    for full_name in types:
        info = await js.consumer_info(events_stream().name, consumer_name(deployment, full_name))
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_events_published_while_notify_is_down_are_each_notified_once_it_returns(
    start_service: ServiceFactory, discovery: Discovery, mesh: Mesh
) -> None:
    housing = mesh.producer("housing")
    first = await start(start_service, discovery, mesh, "notify")
    await housing.publish([(voucher("A-0", "C-0"), "A-0")], trace_id=TRACES["E"])

    async def sent(count: int) -> bool:
        return len(await mesh.notifications()) == count

    await eventually(lambda: sent(1), timeout=WAIT, interval=0.2)
    await stop(first)

    count = 25
    for n in range(1, count + 1):
        await housing.publish([(voucher(f"A-{n}", f"C-{n % 5}"), f"A-{n}")], trace_id=TRACES["E"])

    await start(start_service, discovery, mesh, "notify")
    await eventually(lambda: sent(count + 1), timeout=WAIT, interval=0.2)
    types = ["hms.housing.v1.VoucherSubmitted"]
    await eventually(lambda: consumers_settled(mesh.js, "notify", types), timeout=WAIT)
    # Every event is settled: what is recorded now is all there will be.
    bodies = sorted(n.body for n in await mesh.notifications())
    expected = sorted(
        f"Your housing voucher application A-{n} was received." for n in range(count + 1)
    )
    assert bodies == expected
    assert len(await mesh.notifications("C-1")) == len(range(1, count + 1, 5))


async def test_a_tampered_audit_file_is_named_by_mesh_audit_verify(
    start_service: ServiceFactory, discovery: Discovery, mesh: Mesh
) -> None:
    audit = await start(start_service, discovery, mesh, "audit")
    for n in range(1, 4):
        await mesh.producer("housing").publish(
            [(voucher(f"A-{n}", "C-1"), f"A-{n}")], trace_id=TRACES["A"]
        )

    async def recorded() -> bool:
        return (await mesh.verify()).entries == 3

    await eventually(recorded, timeout=WAIT, interval=0.2)
    status, out = await mesh_audit_verify(mesh)  # through the mesh, as ops
    assert (status, out) == (0, "audit chain intact (the audit service): 3 entries\n")
    await stop(audit)

    db = mesh.data / "audit" / "audit.sqlite3"
    status, out = await mesh_audit_verify(mesh, f"--db={db}")
    assert (status, out) == (0, f"audit chain intact ({db}): 3 entries\n")
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE entries SET payload_json = '{}' WHERE sequence = 2")
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET payload_json = '{}' WHERE sequence = 2")
    finally:
        conn.close()

    status, out = await mesh_audit_verify(mesh, f"--db={db}")
    assert status == 1, out
    assert out.startswith(f"audit chain BROKEN ({db}) at entry 2 (2 entries checked)\n"), out
    assert "does not match the entry's fields" in out

    # The service, started again on the tampered file, says the same through the mesh.
    await start(start_service, discovery, mesh, "audit")
    status, out = await mesh_audit_verify(mesh)
    assert status == 1, out
    assert out.startswith("audit chain BROKEN (the audit service) at entry 2"), out
