"""mTLS against a real grpc.aio server on loopback: who gets in, identity pinning, rotation."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hms_tools import certs
from mesh import tls

NOTIFY = "spiffe://hms.local/svc/notify"
StartServer = Callable[[grpc.ServerCredentials], Awaitable[int]]


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tls"
    certs.ensure(path, ["notify", "client"])
    return path


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start real servers (health + a who-am-I method) on 127.0.0.1:0; stop them afterwards."""
    servers: list[grpc.aio.Server] = []

    async def whoami(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b",".join(context.auth_context().get("peer_spiffe_id", []))

    async def start(credentials: grpc.ServerCredentials) -> int:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        handler = grpc.unary_unary_rpc_method_handler(whoami)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.WhoAmI", {"Get": handler})]
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        servers.append(server)
        await server.start()
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def health_check(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse.ServingStatus:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


async def check(
    port: int, credentials: grpc.ChannelCredentials, identity: str = NOTIFY
) -> grpc.StatusCode:
    """One health check on a fresh channel (so a fresh handshake): OK or the failure's code."""
    options = tls.channel_options_for(identity)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        try:
            status = await health_check(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    assert status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


def client_creds(tls_dir: Path, name: str = "client") -> grpc.ChannelCredentials:
    return tls.channel_credentials(tls.TlsFiles(tls_dir, name))


# --- who gets in ------------------------------------------------------------------------------


async def test_client_from_same_ca_with_right_identity_succeeds(
    tls_dir: Path, start_server: StartServer
) -> None:
    port = await start_server(tls.server_credentials(tls.TlsFiles(tls_dir, "notify")))
    assert await check(port, client_creds(tls_dir)) == grpc.StatusCode.OK


async def test_server_sees_the_clients_spiffe_id(tls_dir: Path, start_server: StartServer) -> None:
    port = await start_server(tls.server_credentials(tls.TlsFiles(tls_dir, "notify")))
    options = tls.channel_options_for(NOTIFY)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_creds(tls_dir), options) as ch:
        peer = await ch.unary_unary("/test.WhoAmI/Get")(b"", timeout=5)
    assert peer == b"spiffe://hms.local/svc/client"


async def test_client_without_certificate_is_refused(
    tls_dir: Path, start_server: StartServer
) -> None:
    port = await start_server(tls.server_credentials(tls.TlsFiles(tls_dir, "notify")))
    trust_only = grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.pem").read_bytes())
    assert await check(port, trust_only) == grpc.StatusCode.UNAVAILABLE
    assert await check(port, client_creds(tls_dir)) == grpc.StatusCode.OK  # control


async def test_client_certificate_from_another_ca_is_refused(
    tls_dir: Path, tmp_path: Path, start_server: StartServer
) -> None:
    port = await start_server(tls.server_credentials(tls.TlsFiles(tls_dir, "notify")))
    rogue = tmp_path / "rogue"
    certs.ensure(rogue, ["client"])  # same name and identity, but a different CA
    # It trusts our CA, so only the server's check of the client certificate can refuse it.
    rogue_creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        private_key=(rogue / "client-key.pem").read_bytes(),
        certificate_chain=(rogue / "client.pem").read_bytes(),
    )
    assert await check(port, rogue_creds) == grpc.StatusCode.UNAVAILABLE
    assert await check(port, client_creds(tls_dir)) == grpc.StatusCode.OK  # control


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        pytest.param(NOTIFY, grpc.StatusCode.OK, id="right-identity"),
        pytest.param("spiffe://hms.local/svc/other", grpc.StatusCode.UNAVAILABLE, id="other"),
        pytest.param("spiffe://hms.local/svc/client", grpc.StatusCode.UNAVAILABLE, id="client"),
    ],
)
async def test_server_must_hold_the_expected_identity(
    tls_dir: Path, start_server: StartServer, identity: str, expected: grpc.StatusCode
) -> None:
    port = await start_server(tls.server_credentials(tls.TlsFiles(tls_dir, "notify")))
    assert await check(port, client_creds(tls_dir), identity) == expected


# --- rotation ---------------------------------------------------------------------------------


async def test_rotated_certificate_is_served_without_restart(
    tls_dir: Path, start_server: StartServer
) -> None:
    reloader = tls.CertificateReloader(tls.TlsFiles(tls_dir, "notify"))
    port = await start_server(reloader.credentials())
    v2 = certs.spiffe_id("notify-v2")
    options = tls.channel_options_for(NOTIFY)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_creds(tls_dir), options) as old:
        assert await health_check(old) == health_pb2.HealthCheckResponse.SERVING
        assert await check(port, client_creds(tls_dir), v2) == grpc.StatusCode.UNAVAILABLE
        assert reloader.reloads == 0

        # Same files, new identity: only a server that re-read them can pass the v2 pin.
        certs.issue(tls_dir, "notify", deployment="notify-v2")

        assert await check(port, client_creds(tls_dir), v2) == grpc.StatusCode.OK
        assert await check(port, client_creds(tls_dir), NOTIFY) == grpc.StatusCode.UNAVAILABLE
        assert reloader.reloads == 1
        # A connection made before the rotation carries on.
        assert await health_check(old) == health_pb2.HealthCheckResponse.SERVING


async def test_half_rotated_pair_keeps_the_previous_certificate(
    tls_dir: Path, tmp_path: Path, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = tls.CertificateReloader(tls.TlsFiles(tls_dir, "notify"))
    port = await start_server(reloader.credentials())
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    shutil.copy(tls_dir / "ca.pem", staging / "ca.pem")  # the CA's key lives apart
    certs.issue(staging, "notify", deployment="notify-v2", ca_dir=certs.default_ca_dir(tls_dir))
    v2 = certs.spiffe_id("notify-v2")

    os.replace(staging / "notify-key.pem", tls_dir / "notify-key.pem")  # key lands first
    with caplog.at_level(logging.WARNING, logger="mesh.tls"):
        for _ in range(2):
            assert await check(port, client_creds(tls_dir), NOTIFY) == grpc.StatusCode.OK
    assert reloader.reloads == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"not reloading TLS files yet: {tls_dir / 'notify-key.pem'} does not match "
        f"{tls_dir / 'notify.pem'}"
    ]

    os.replace(staging / "notify.pem", tls_dir / "notify.pem")  # then its certificate
    assert await check(port, client_creds(tls_dir), v2) == grpc.StatusCode.OK
    assert reloader.reloads == 1


def test_reloader_returns_nothing_while_files_are_unchanged(tls_dir: Path) -> None:
    reloader = tls.CertificateReloader(tls.TlsFiles(tls_dir, "notify"))
    assert reloader() is None
    certs.issue(tls_dir, "notify")
    assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
    assert reloader() is None
    assert reloader.reloads == 1


# --- files and options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("ca.pem", id="ca"),
        pytest.param("notify.pem", id="cert"),
        pytest.param("notify-key.pem", id="key"),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(tls.server_credentials, id="server"),
        pytest.param(tls.channel_credentials, id="channel"),
        pytest.param(tls.identity_of, id="identity"),
    ],
)
def test_missing_file_is_named_up_front(
    tls_dir: Path, missing: str, make: Callable[[tls.TlsFiles], object]
) -> None:
    (tls_dir / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        make(tls.TlsFiles(tls_dir, "notify"))


def test_tls_files_paths(tmp_path: Path) -> None:
    files = tls.TlsFiles(tmp_path, "notify")
    assert (files.ca, files.cert, files.key) == (
        tmp_path / "ca.pem",
        tmp_path / "notify.pem",
        tmp_path / "notify-key.pem",
    )


@pytest.mark.parametrize(
    "name",
    [pytest.param("", id="empty"), pytest.param("a/b", id="path"), pytest.param("..", id="up")],
)
def test_tls_files_rejects_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        tls.TlsFiles(tmp_path, name)


def test_identity_of(tls_dir: Path) -> None:
    assert tls.identity_of(tls.TlsFiles(tls_dir, "notify")) == NOTIFY


@pytest.mark.parametrize(
    ("identity", "target"),
    [
        pytest.param(NOTIFY, "notify.svc.hms.local", id="notify"),
        pytest.param("spiffe://hms.local/svc/fee-calc", "fee-calc.svc.hms.local", id="fee-calc"),
    ],
)
def test_channel_options_for(identity: str, target: str) -> None:
    assert tls.channel_options_for(identity) == [("grpc.ssl_target_name_override", target)]


def test_channel_options_for_rejects_malformed_identity() -> None:
    with pytest.raises(ValueError, match="'notify'"):
        tls.channel_options_for("notify")
