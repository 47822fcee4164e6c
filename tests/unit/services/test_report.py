"""ReportService handlers against a real identity served in-process over gRPC.

identity here is the real IdentityService on a real (in-memory) register, behind the mesh's
error interceptor as a service host has it, reached over a plain channel; the mesh channel
between real processes is tests/integration/platform/test_identity_report.py's. The failures
are real too: a port nothing listens on, a host that accepts and never answers, a server that
does not serve identity.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms.identity.v1 import identity_pb2_grpc
from hms.report.v1 import report_pb2
from hms_services.identity.service import CITIZEN_ID_FORM, IdentityService
from hms_services.identity.store import SEED, CitizenRegister
from hms_services.report.service import ReportService
from mesh.errors import Internal, InvalidArgument, Unavailable
from mesh.server.errors import ErrorInterceptor
from mesh.testing import FakeContext

# The handler uses nothing of the context, and raises mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)
WORDS = {"VERIFIED": "verified", "SUSPENDED": "suspended"}

ReportAt = Callable[..., ReportService]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def identity() -> AsyncIterator[str]:
    """The address of a real identity server."""
    with CitizenRegister(":memory:") as register:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityService(register), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(None)


@pytest.fixture
async def report_at() -> AsyncIterator[ReportAt]:
    """report_at(address, identity_timeout=...) -> a ReportService asking identity there."""
    channels: list[grpc.aio.Channel] = []

    def make(address: str, **options: float) -> ReportService:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)

        async def source() -> grpc.aio.Channel:
            return channel

        return ReportService(source, **options)

    try:
        yield make
    finally:
        for channel in channels:
            await channel.close()


@pytest.fixture
def report(identity: str, report_at: ReportAt) -> ReportService:
    """A ReportService asking the real identity."""
    return report_at(identity)


async def create(service: ReportService, citizen_id: str) -> str:
    response = await service.CreateIdentityCheckReport(
        report_pb2.CreateIdentityCheckReportRequest(id=citizen_id), CONTEXT
    )
    return response.report


# --- the report's words -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("citizen_id", "sentence"),
    [
        pytest.param("C12345", "ID C12345 is verified", id="verified"),
        pytest.param("C10001", "ID C10001 is verified", id="verified-maya"),
        pytest.param("C22222", "ID C22222 is suspended", id="suspended"),
        pytest.param("C00000", "ID C00000 is unknown", id="unknown"),
    ],
)
async def test_the_report_says_identitys_answer(
    report: ReportService, citizen_id: str, sentence: str
) -> None:
    assert await create(report, citizen_id) == sentence


async def test_every_seeded_citizen_is_reported_in_their_standing(report: ReportService) -> None:
    for citizen in SEED:
        sentence = f"ID {citizen.citizen_id} is {WORDS[citizen.standing.value]}"
        assert await create(report, citizen.citizen_id) == sentence


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("citizen_id", "problem"),
    [
        pytest.param("C1", "got 'C1'", id="too-short"),
        pytest.param("c12345", "got 'c12345'", id="lower-case"),
        pytest.param("12345", "got '12345'", id="no-letter"),
        pytest.param(" C12345", "got ' C12345'", id="leading-space"),
        pytest.param("C12345\n", "got 'C12345\\n'", id="trailing-newline"),
        pytest.param("C" + "1" * 50, "(51 characters)", id="long"),
    ],
)
async def test_a_malformed_id_is_refused_naming_the_requests_field(
    report: ReportService, citizen_id: str, problem: str
) -> None:
    # identity judges the form; report names its own field, `id`, not identity's.
    with pytest.raises(InvalidArgument) as caught:
        await create(report, citizen_id)
    [(field, description)] = caught.value.violations
    assert field == "id"
    assert problem in description
    assert CITIZEN_ID_FORM in description
    assert caught.value.message.startswith("id: ")


@pytest.mark.parametrize("citizen_id", ["", "   ", "\t"])
async def test_a_missing_id_is_refused_without_asking_identity(
    report_at: ReportAt, citizen_id: str
) -> None:
    # identity is down here: the answer cannot have come from it.
    with pytest.raises(InvalidArgument) as caught:
        await create(report_at(f"127.0.0.1:{closed_port()}"), citizen_id)
    [(field, description)] = caught.value.violations
    assert field == "id"
    assert description.startswith("is required")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(citizen_id=st.text(max_size=12) | st.from_regex(r"C[0-9]{5,9}", fullmatch=True))
async def test_any_id_is_reported_or_refused_naming_id(
    report: ReportService, citizen_id: str
) -> None:
    # One identity server for every example: it holds no state a call changes.
    if re.fullmatch(r"C[0-9]{5,9}", citizen_id) is None:
        with pytest.raises(InvalidArgument) as caught:
            await create(report, citizen_id)
        assert [f for f, _ in caught.value.violations] == ["id"]
        return
    sentence = await create(report, citizen_id)
    assert sentence in {f"ID {citizen_id} is {w}" for w in ("verified", "unknown", "suspended")}


# --- identity failing ---------------------------------------------------------------------


async def test_identity_down_is_unavailable_naming_identity(report_at: ReportAt) -> None:
    with pytest.raises(Unavailable) as caught:
        await create(report_at(f"127.0.0.1:{closed_port()}"), "C12345")
    assert caught.value.message.startswith("identity is unavailable")
    assert "try again later" in caught.value.message
    assert "127.0.0.1" not in caught.value.message  # grpc core's text stays in the log


@pytest.fixture
async def silent_host() -> AsyncIterator[str]:
    """A host that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_identity_too_slow_is_unavailable_within_reports_deadline(
    report_at: ReportAt, silent_host: str
) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await create(report_at(silent_host, identity_timeout=0.3), "C12345")
    elapsed = time.monotonic() - started
    assert caught.value.message.startswith("identity is unavailable (DEADLINE_EXCEEDED)")
    assert 0.25 <= elapsed < 2.0


@pytest.fixture
async def not_identity() -> AsyncIterator[str]:
    """A real gRPC server that does not serve identity (UNIMPLEMENTED for its methods)."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_identity_refusing_the_call_is_internal_naming_identity(
    report_at: ReportAt, not_identity: str
) -> None:
    with pytest.raises(Internal) as caught:
        await create(report_at(not_identity), "C12345")
    assert caught.value.message == "identity failed the citizen check (UNIMPLEMENTED)"
