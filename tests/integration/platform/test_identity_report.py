"""identity and report as real processes: report asks identity through the mesh channel
(discovery in real etcd, mTLS with each service's own certificate), and says UNAVAILABLE,
naming identity, while identity is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from hms.report.v1 import report_pb2, report_pb2_grpc
from hms_tools import certs
from mesh.errors import InvalidArgument, MeshError, Unavailable
from mesh.registry import keys
from mesh.registry.watch import Discovery

from ..conftest import ServiceFactory, mesh_channel, wait_for_deployment

pytestmark = pytest.mark.integration


@pytest.fixture
def service_certs(tls_dir: Path) -> Path:
    """The session's TLS directory with identity's and report's certificates in it too."""
    certs.ensure(tls_dir, ["identity", "report"])
    return tls_dir


async def ask_report(report: keys.Instance, tls_dir: Path, citizen_id: str) -> str:
    """report's sentence for `citizen_id`, asked over mTLS as ops; a failure as its MeshError."""
    async with mesh_channel(report, tls_dir) as channel:
        stub = report_pb2_grpc.ReportServiceStub(channel)
        try:
            answer = await stub.CreateIdentityCheckReport(
                report_pb2.CreateIdentityCheckReportRequest(id=citizen_id), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise MeshError.from_rpc(exc) from None
    return answer.report


async def test_report_asks_identity_through_the_mesh(
    start_service: ServiceFactory, discovery: Discovery, service_certs: Path
) -> None:
    identity_proc = start_service("identity")
    report_proc = start_service("report")
    await wait_for_deployment(discovery, "identity", identity_proc)
    report = await wait_for_deployment(discovery, "report", report_proc)

    # report has no register: each standing below is identity's, from its seeded SQLite file.
    assert await ask_report(report, service_certs, "C12345") == "ID C12345 is verified"
    assert await ask_report(report, service_certs, "C22222") == "ID C22222 is suspended"
    assert await ask_report(report, service_certs, "C00000") == "ID C00000 is unknown"
    # identity judged the form; report named its own field.
    with pytest.raises(InvalidArgument) as caught:
        await ask_report(report, service_certs, "c12345")
    assert [field for field, _ in caught.value.violations] == ["id"]
    assert identity_proc.running
    assert report_proc.running


async def test_report_is_unavailable_naming_identity_while_identity_is_down(
    start_service: ServiceFactory, discovery: Discovery, service_certs: Path
) -> None:
    report_proc = start_service("report")
    report = await wait_for_deployment(discovery, "report", report_proc)

    # No identity registered yet.
    with pytest.raises(Unavailable) as caught:
        await ask_report(report, service_certs, "C12345")
    assert caught.value.message.startswith("identity is unavailable")

    # identity comes up: report finds it through etcd, without a restart.
    identity_proc = start_service("identity")
    await wait_for_deployment(discovery, "identity", identity_proc)
    assert await ask_report(report, service_certs, "C12345") == "ID C12345 is verified"

    # identity goes away (drains and deregisters): UNAVAILABLE again, naming it.
    identity_proc.terminate()
    async with asyncio.timeout(15):
        await identity_proc.exited()
    with pytest.raises(Unavailable) as caught:
        await ask_report(report, service_certs, "C12345")
    assert caught.value.message.startswith("identity is unavailable")
    assert "try again later" in caught.value.message
    assert report_proc.running
