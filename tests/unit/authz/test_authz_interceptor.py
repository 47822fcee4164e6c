"""AuthzInterceptor on real grpc.aio servers with mTLS on loopback: who gets through, what a
denied caller is told, audit mode, reloading the policy file without a restart, health, all
four handler shapes; caller_identity and PolicySource on their own. Failing closed: a policy
file emptied, cut short, broken, unreadable or gone keeps the policy in force, and does not
let a service start."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_tools import certs
from mesh import tls
from mesh.authz import AuthzInterceptor, Policy, PolicyError, PolicySource, caller_identity
from mesh.server import HostConfig, ServiceHost
from mesh.server.wrap import Behaviour, Kind, kind_of, map_behaviour, wrap_behaviour
from mesh.testing import VirtualClock
from tests.backends.echo.service import EchoService

NOTIFY = certs.spiffe_id("notify")  # the server's identity
OPS = certs.spiffe_id("ops")
ELIGIBILITY = certs.spiffe_id("eligibility")
ECHO = "/hms.testing.v1.EchoService/Echo"
LOGGER = "mesh.authz.interceptor"
DENIED = grpc.StatusCode.PERMISSION_DENIED

ALLOW_ELIGIBILITY = f"""
[[deny]]
name = "no-ops"
callers = ["{OPS}"]
methods = ["/hms.testing.v1.EchoService/*"]

[[allow]]
name = "eligibility-echo"
callers = ["{ELIGIBILITY}"]
methods = ["{ECHO}"]
"""
ALLOW_OPS_TOO = f"""
[[allow]]
callers = ["{ELIGIBILITY}", "{OPS}"]
methods = ["/hms.testing.v1.EchoService/*"]
"""


def write_policy(path: Path, text: str) -> None:
    """Replace the file the way deployments should: a new file renamed over the old one."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tls"
    certs.ensure(path, ["eligibility", "ops", "notify"])
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "authz.toml"
    write_policy(path, ALLOW_ELIGIBILITY)
    return path


StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
async def start_server(tls_dir: Path) -> AsyncIterator[StartServer]:
    """Start real servers (Echo + health, mTLS unless told otherwise) on 127.0.0.1:0."""
    servers: list[grpc.aio.Server] = []

    async def start(interceptor: AuthzInterceptor, *, plaintext: bool = False) -> int:
        server = grpc.aio.server(interceptors=[interceptor])
        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoService("echo"), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        if plaintext:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = tls.server_credentials(tls.TlsFiles(tls_dir, "notify"))
            port = server.add_secure_port("127.0.0.1:0", credentials)
        servers.append(server)
        await server.start()
        return port

    yield start
    for server in servers:
        await server.stop(None)


def channel(port: int, tls_dir: Path, client: str) -> grpc.aio.Channel:
    return tls.instance_channel(f"127.0.0.1:{port}", NOTIFY, tls.TlsFiles(tls_dir, client))


async def echo(port: int, tls_dir: Path, client: str) -> str:
    """One Echo call as `client`: the serving deployment, or the failure as 'CODE: details'."""
    async with channel(port, tls_dir, client) as ch:
        try:
            response = await echo_pb2_grpc.EchoServiceStub(ch).Echo(
                echo_pb2.EchoRequest(message="hi"), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return response.served_by


# --- who gets through -------------------------------------------------------------------------


async def test_allowed_caller_gets_through(
    tls_dir: Path, policy_file: Path, start_server: StartServer
) -> None:
    port = await start_server(AuthzInterceptor(PolicySource(policy_file)))
    assert await echo(port, tls_dir, "eligibility") == "echo"


async def test_denied_caller_is_told_who_what_and_why(
    tls_dir: Path, policy_file: Path, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start_server(AuthzInterceptor(PolicySource(policy_file)))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        by_rule = await echo(port, tls_dir, "ops")
        by_default = await echo(port, tls_dir, "notify")
    assert by_rule == (f'PERMISSION_DENIED: {OPS} may not call {ECHO} (denied by deny[0] "no-ops")')
    assert by_default == (
        f"PERMISSION_DENIED: {NOTIFY} may not call {ECHO} (no allow rule matches (default deny))"
    )
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f'authz denied: {OPS} may not call {ECHO} (denied by deny[0] "no-ops") '
        f"[policy {policy_file}]",
        f"authz denied: {NOTIFY} may not call {ECHO} (no allow rule matches (default deny)) "
        f"[policy {policy_file}]",
    ]


async def test_audit_mode_lets_through_and_logs(
    tls_dir: Path, policy_file: Path, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    write_policy(policy_file, 'mode = "audit"\n' + ALLOW_ELIGIBILITY)
    port = await start_server(AuthzInterceptor(PolicySource(policy_file)))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await echo(port, tls_dir, "ops") == "echo"
        assert await echo(port, tls_dir, "eligibility") == "echo"
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (
            logging.WARNING,
            f'authz audit, would deny: {OPS} may not call {ECHO} (denied by deny[0] "no-ops") '
            f"[policy {policy_file}]",
        )
    ]


async def test_health_is_allowed_for_a_caller_denied_everything_else(
    tls_dir: Path, start_server: StartServer
) -> None:
    everyone_denied = Policy.parse('default = "allow"\n[[deny]]\ncallers = ["*"]\nmethods = ["*"]')
    port = await start_server(AuthzInterceptor(everyone_denied))
    async with channel(port, tls_dir, "ops") as ch:
        status = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert await echo(port, tls_dir, "ops") == (
        f"PERMISSION_DENIED: {OPS} may not call {ECHO} (denied by deny[0])"
    )


async def test_plaintext_caller_has_no_identity(start_server: StartServer) -> None:
    policy = Policy.parse(f'[[allow]]\ncallers = ["*"]\nmethods = ["{ECHO}"]')
    port = await start_server(AuthzInterceptor(policy), plaintext=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo_pb2_grpc.EchoServiceStub(ch).Echo(echo_pb2.EchoRequest(), timeout=5)
    assert caught.value.code() == DENIED
    assert caught.value.details() == (
        f"an unauthenticated caller may not call {ECHO} (no allow rule matches (default deny))"
    )


def issue_with_uris(tls_dir: Path, name: str, uris: list[str]) -> None:
    """A client certificate from the mesh CA with the URI SANs given (hms_tools.certs never makes
    one with other than exactly one)."""
    ca_cert = x509.load_pem_x509_certificate((tls_dir / certs.CA_CERT).read_bytes())
    ca_key_path = certs.default_ca_dir(tls_dir) / certs.CA_KEY  # never in the TLS dir
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.UniformResourceIdentifier(uri) for uri in uris), x509.DNSName(name)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tls_dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls_dir / f"{name}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param([ELIGIBILITY, OPS], id="two-spiffe-ids"),
        pytest.param([ELIGIBILITY, "https://hms.local/x"], id="spiffe-and-other"),
        pytest.param([], id="none"),
    ],
)
async def test_certificate_without_exactly_one_uri_san_has_no_identity(
    tls_dir: Path, start_server: StartServer, uris: list[str]
) -> None:
    issue_with_uris(tls_dir, "odd", uris)
    # `*` would admit any identity, and ELIGIBILITY by name: neither admits this certificate.
    policy = Policy.parse(f'[[allow]]\ncallers = ["*", "{ELIGIBILITY}"]\nmethods = ["*"]')
    port = await start_server(AuthzInterceptor(policy))
    assert await echo(port, tls_dir, "odd") == (
        f"PERMISSION_DENIED: an unauthenticated caller may not call {ECHO} "
        "(no allow rule matches (default deny))"
    )
    assert await echo(port, tls_dir, "eligibility") == "echo"  # control


async def test_installed_on_the_service_host(tls_dir: Path, policy_file: Path) -> None:
    config = HostConfig(
        deployment="notify", tls=tls.TlsFiles(tls_dir, "notify"), grace=0, drain_delay=0
    )
    host = ServiceHost(config, interceptors=[AuthzInterceptor(PolicySource(policy_file))])
    host.add_servicer(EchoService("echo"))
    await host.start()
    try:
        assert await echo(host.port, tls_dir, "eligibility") == "echo"
        assert await echo(host.port, tls_dir, "ops") == (
            f'PERMISSION_DENIED: {OPS} may not call {ECHO} (denied by deny[0] "no-ops")'
        )
    finally:
        await host.stop()


# --- changing the policy without a restart ----------------------------------------------------


async def test_edited_policy_takes_effect_without_restart(
    tls_dir: Path, policy_file: Path, start_server: StartServer
) -> None:
    clock = VirtualClock(0.0)
    source = PolicySource(policy_file, clock=clock)  # looks at the file once a second
    port = await start_server(AuthzInterceptor(source))
    assert await echo(port, tls_dir, "ops") == (
        f'PERMISSION_DENIED: {OPS} may not call {ECHO} (denied by deny[0] "no-ops")'
    )

    write_policy(policy_file, ALLOW_OPS_TOO)
    clock.advance(0.5)
    assert (await echo(port, tls_dir, "ops")).startswith("PERMISSION_DENIED")  # not looked yet
    clock.advance(0.5)
    assert await echo(port, tls_dir, "ops") == "echo"
    assert await echo(port, tls_dir, "notify") == (
        f"PERMISSION_DENIED: {NOTIFY} may not call {ECHO} (no allow rule matches (default deny))"
    )
    assert source.reloads == 1


async def test_broken_edit_keeps_the_previous_policy(
    tls_dir: Path,
    policy_file: Path,
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = PolicySource(policy_file, check_interval=0)  # looks on every call
    port = await start_server(AuthzInterceptor(source))

    write_policy(policy_file, ALLOW_OPS_TOO.replace("/hms.testing.v1.EchoService/*", "Echo"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            assert (await echo(port, tls_dir, "ops")).startswith("PERMISSION_DENIED")
            assert await echo(port, tls_dir, "eligibility") == "echo"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [  # once, not on every call
        f"keeping the previous authorization policy: {policy_file}: allow[0]: methods[0]: "
        "'Echo' is not a method pattern: use '/pkg.Service/Method', '/pkg.Service/*' or '*'"
    ]
    assert source.reloads == 0

    write_policy(policy_file, ALLOW_OPS_TOO)  # the fix is picked up as usual
    assert await echo(port, tls_dir, "ops") == "echo"
    assert source.reloads == 1


def test_policy_source_keeps_policy_while_file_is_missing(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock(0.0)
    source = PolicySource(policy_file, check_interval=1.0, clock=clock)
    before = source.current()
    policy_file.unlink()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(3):
            clock.advance(1.0)
            assert source.current() is before
    [record] = caplog.records  # once, not on every check
    expected = f"keeping the previous authorization policy: cannot read policy file {policy_file}"
    assert record.getMessage().startswith(expected)
    write_policy(policy_file, ALLOW_ELIGIBILITY)  # the same policy, back again
    clock.advance(1.0)
    assert source.current() == before
    assert source.reloads == 1


def test_policy_source_does_not_reparse_an_unchanged_file(policy_file: Path) -> None:
    clock = VirtualClock(0.0)
    source = PolicySource(policy_file, clock=clock)
    first = source.current()
    for _ in range(3):
        clock.advance(5.0)
        assert source.current() is first
    assert source.reloads == 0


def test_policy_source_refuses_to_start_with_a_broken_policy(policy_file: Path) -> None:
    write_policy(policy_file, 'mode = "loud"')
    with pytest.raises(PolicyError, match=f"^{re.escape(str(policy_file))}: mode: "):
        PolicySource(policy_file)
    with pytest.raises(FileNotFoundError):
        PolicySource(policy_file.with_name("missing.toml"))
    with pytest.raises(ValueError, match="check_interval"):
        PolicySource(policy_file.with_name("missing.toml"), check_interval=-1)


# --- failing closed ---------------------------------------------------------------------------

# Every way a policy file can go bad under a running service, each as `damage(path)` and the
# problem the ERROR names after "keeping the previous authorization policy: ".
_PROBLEMS: list[Any] = [
    pytest.param(
        lambda path: path.write_bytes(b""),
        "{path}: is empty: a policy must say what it allows",
        id="truncated-to-0-bytes",
    ),
    pytest.param(
        lambda path: path.write_text("\n\n   \n"),
        "{path}: is empty",
        id="whitespace-only",
    ),
    pytest.param(
        lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
        "{path}: allow[0]: callers: is required",  # cut just after the [[allow]] line
        id="truncated-to-half",
    ),
    pytest.param(
        lambda path: path.write_text(ALLOW_ELIGIBILITY[: ALLOW_ELIGIBILITY.index("[[allow]]")]),
        "{path}: has no allow rules and no default, so it would allow every call no deny "
        'rule matches: write default = "allow" if that is meant',
        id="truncated-between-rules",
    ),
    pytest.param(
        lambda path: path.write_text(ALLOW_ELIGIBILITY.replace("[[allow]]", "[[allow]")),
        "{path}: not valid TOML: ",
        id="not-toml",
    ),
    pytest.param(
        lambda path: path.write_bytes(b"\xff\xfe"), "{path}: not UTF-8 text", id="not-utf8"
    ),
    pytest.param(lambda path: path.unlink(), "cannot read policy file {path}: ", id="removed"),
    pytest.param(
        lambda path: (path.unlink(), path.mkdir()),
        "cannot read policy file {path}: Is a directory",
        id="replaced-by-a-directory",
    ),
]


def replace_policy(path: Path, text: str) -> None:
    """`write_policy`, after removing whatever stands at `path` (a directory, even)."""
    if path.is_dir():
        path.rmdir()
    write_policy(path, text)


@pytest.mark.parametrize(("damage", "problem"), _PROBLEMS)
async def test_a_policy_file_gone_bad_keeps_the_policy_in_force(  # noqa: PLR0917 - fixtures
    tls_dir: Path,
    policy_file: Path,
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], object],
    problem: str,
) -> None:
    clock = VirtualClock(0.0)
    source = PolicySource(policy_file, clock=clock)
    port = await start_server(AuthzInterceptor(source))
    before = source.current()
    denied = f'PERMISSION_DENIED: {OPS} may not call {ECHO} (denied by deny[0] "no-ops")'
    assert await echo(port, tls_dir, "ops") == denied

    damage(policy_file)  # in place: a writer caught half-way, a full disk, a bad deploy
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            clock.advance(1.0)
            assert await echo(port, tls_dir, "ops") == denied
            assert await echo(port, tls_dir, "notify") == (
                f"PERMISSION_DENIED: {NOTIFY} may not call {ECHO} "
                "(no allow rule matches (default deny))"
            )
            assert await echo(port, tls_dir, "eligibility") == "echo"
    assert source.policy is before
    assert source.reloads == 0
    errors = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # once, not at every check
    assert errors[0][1].startswith(
        "keeping the previous authorization policy: " + problem.format(path=policy_file)
    )

    replace_policy(policy_file, ALLOW_OPS_TOO)  # a good file is picked up as usual
    clock.advance(1.0)
    assert await echo(port, tls_dir, "ops") == "echo"
    assert source.reloads == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_policy_file_made_unreadable_keeps_the_policy_and_is_retried(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock(0.0)
    source = PolicySource(policy_file, clock=clock)
    before = source.current()
    write_policy(policy_file, ALLOW_OPS_TOO)
    policy_file.chmod(0)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(3):
            clock.advance(1.0)
            assert source.current() is before
    assert caplog.messages == [
        "keeping the previous authorization policy: cannot read policy file "
        f"{policy_file}: Permission denied"
    ]
    policy_file.chmod(0o644)  # only the mode changes: the next check reads it
    clock.advance(1.0)
    assert source.current() != before
    assert source.reloads == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "is empty: a policy must say what it allows", id="empty"),
        pytest.param(
            ALLOW_ELIGIBILITY.encode()[: len(ALLOW_ELIGIBILITY) // 2],
            "allow[0]: callers: is required",
            id="half",
        ),
        pytest.param(b"# nothing yet\n", "has no rules and no default", id="comment-only"),
        pytest.param(
            b'[[deny]]\ncallers = ["*"]\nmethods = ["/a.B/C"]\n',
            "has no allow rules and no default",
            id="deny-only",
        ),
    ],
)
def test_a_service_does_not_start_with_a_policy_that_does_not_say_what_it_allows(
    policy_file: Path, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    policy_file.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(PolicyError) as refused:
        PolicySource(policy_file)
    assert str(refused.value).startswith(f"{policy_file}: {problem}")
    assert caplog.messages == [f"refusing to start: authorization policy {refused.value}"]


def test_a_service_does_not_start_without_its_policy_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.toml"
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(FileNotFoundError):
        PolicySource(missing)
    assert caplog.messages == [
        f"refusing to start: cannot read policy file {missing}: No such file or directory"
    ]


async def test_an_open_policy_says_so(
    tls_dir: Path, policy_file: Path, start_server: StartServer
) -> None:
    write_policy(policy_file, 'default = "allow"\n')
    port = await start_server(AuthzInterceptor(PolicySource(policy_file)))
    assert await echo(port, tls_dir, "ops") == "echo"


# --- the four handler shapes, async and sync --------------------------------------------------


UU, US, SU, SS = (False, False), (False, True), (True, False), (True, True)


@dataclass(frozen=True)
class Case:
    """One method of the shapes server: its behaviour, (request, response) streaming, and
    the answer expected to b"a" (unary requests) or b"a", b"b" (streamed requests)."""

    behaviour: Callable[..., Any]
    streaming: tuple[bool, bool]
    expected: Any

    def handler(self) -> grpc.RpcMethodHandler:
        return _FACTORIES[self.streaming](self.behaviour)


def _shapes(ran: list[str]) -> dict[str, Case]:
    """One method per handler shape and kind; each appends its name to `ran` when it runs."""

    async def unary_coroutine(request: bytes, _context: Any) -> bytes:
        ran.append("unary_coroutine")
        return request + b"!"

    async def unary_stream_async_gen(request: bytes, _context: Any) -> AsyncIterator[bytes]:
        ran.append("unary_stream_async_gen")
        yield request
        yield request

    async def unary_stream_writer(request: bytes, context: Any) -> None:
        ran.append("unary_stream_writer")
        await context.write(request)

    async def stream_unary_coroutine(requests: AsyncIterator[bytes], _context: Any) -> bytes:
        ran.append("stream_unary_coroutine")
        return b"".join([request async for request in requests])

    async def stream_stream_async_gen(
        requests: AsyncIterator[bytes], _context: Any
    ) -> AsyncIterator[bytes]:
        ran.append("stream_stream_async_gen")
        async for request in requests:
            yield request

    async def stream_stream_writer(requests: AsyncIterator[bytes], context: Any) -> None:
        ran.append("stream_stream_writer")
        async for request in requests:
            await context.write(request)

    def unary_sync(request: bytes, _context: Any) -> bytes:
        ran.append("unary_sync")
        return request + b"?"

    def unary_stream_sync(request: bytes, _context: Any) -> Iterator[bytes]:
        ran.append("unary_stream_sync")
        yield request

    def stream_unary_sync(requests: Iterator[bytes], _context: Any) -> bytes:
        ran.append("stream_unary_sync")
        return b"+".join(requests)

    def stream_stream_sync(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
        ran.append("stream_stream_sync")
        yield from requests

    return {
        "UnaryCoroutine": Case(unary_coroutine, UU, b"a!"),
        "UnaryStreamAsyncGen": Case(unary_stream_async_gen, US, [b"a", b"a"]),
        "UnaryStreamWriter": Case(unary_stream_writer, US, [b"a"]),
        "StreamUnaryCoroutine": Case(stream_unary_coroutine, SU, b"ab"),
        "StreamStreamAsyncGen": Case(stream_stream_async_gen, SS, [b"a", b"b"]),
        "StreamStreamWriter": Case(stream_stream_writer, SS, [b"a", b"b"]),
        "UnarySync": Case(unary_sync, UU, b"a?"),
        "UnaryStreamSync": Case(unary_stream_sync, US, [b"a"]),
        "StreamUnarySync": Case(stream_unary_sync, SU, b"a+b"),
        "StreamStreamSync": Case(stream_stream_sync, SS, [b"a", b"b"]),
    }


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _call(ch: grpc.aio.Channel, method: str, streaming: tuple[bool, bool]) -> Any:
    path = f"/test.Shapes/{method}"
    if streaming == UU:
        return await ch.unary_unary(path)(b"a", timeout=5)
    if streaming == US:
        return [r async for r in ch.unary_stream(path)(b"a", timeout=5)]
    if streaming == SU:
        return await ch.stream_unary(path)(iter([b"a", b"b"]), timeout=5)
    return [r async for r in ch.stream_stream(path)(iter([b"a", b"b"]), timeout=5)]


async def _status(
    ch: grpc.aio.Channel, method: str, streaming: tuple[bool, bool]
) -> tuple[grpc.StatusCode, str]:
    """Start a call and wait for its status. Streamed requests are never sent: a client write
    racing the server's early status makes grpc.aio report INTERNAL instead of the server's
    status (grpc/grpc#36066), whoever ends the call."""
    path = f"/test.Shapes/{method}"
    factory = {
        UU: ch.unary_unary,
        US: ch.unary_stream,
        SU: ch.stream_unary,
        SS: ch.stream_stream,
    }[streaming]
    call = factory(path)(timeout=5) if streaming[0] else factory(path)(b"a", timeout=5)
    return await call.code(), await call.details()


@pytest.fixture
async def shapes_port(tls_dir: Path) -> AsyncIterator[tuple[int, list[str]]]:
    """A server with one method per handler shape and kind, eligibility allowed, ops not."""
    ran: list[str] = []
    policy = Policy.parse(f'[[allow]]\ncallers = ["{ELIGIBILITY}"]\nmethods = ["/test.Shapes/*"]')
    pool = ThreadPoolExecutor(max_workers=2)  # runs the sync behaviours
    server = grpc.aio.server(interceptors=[AuthzInterceptor(policy)], migration_thread_pool=pool)
    handlers = {method: case.handler() for method, case in _shapes(ran).items()}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Shapes", handlers)])
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(tls.TlsFiles(tls_dir, "notify"))
    )
    await server.start()
    yield port, ran
    await server.stop(None)
    pool.shutdown(wait=True)


SHAPE_METHODS = [pytest.param(method, id=method) for method in _shapes([])]


@pytest.mark.parametrize("method", SHAPE_METHODS)
async def test_every_handler_shape_is_guarded(
    tls_dir: Path, shapes_port: tuple[int, list[str]], method: str
) -> None:
    port, ran = shapes_port
    case = _shapes([])[method]
    async with channel(port, tls_dir, "ops") as ch:
        assert await _status(ch, method, case.streaming) == (
            DENIED,
            f"{OPS} may not call /test.Shapes/{method} (no allow rule matches (default deny))",
        )
    assert ran == []  # the behaviour never ran
    async with channel(port, tls_dir, "eligibility") as ch:
        assert await _call(ch, method, case.streaming) == case.expected
    assert len(ran) == 1


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        pytest.param("UnaryCoroutine", Kind.COROUTINE, id="coroutine"),
        pytest.param("UnaryStreamWriter", Kind.COROUTINE, id="writer"),
        pytest.param("UnaryStreamAsyncGen", Kind.ASYNC_GENERATOR, id="async-gen"),
        pytest.param("UnarySync", Kind.SYNC, id="sync"),
        pytest.param("StreamStreamSync", Kind.SYNC, id="sync-gen"),
    ],
)
def test_wrappers_keep_the_kind_they_wrap(method: str, kind: Kind) -> None:
    case = _shapes([])[method]
    assert kind_of(case.behaviour) is kind
    seen: list[Behaviour] = []

    def wrap(behaviour: Behaviour) -> Callable[..., Any]:
        seen.append(behaviour)
        around = AuthzInterceptor(Policy()).around(f"/test.Shapes/{method}")
        assert around is not None
        return wrap_behaviour(behaviour, around)

    guarded = map_behaviour(case.handler(), wrap)
    assert seen == [Behaviour(case.behaviour, kind, *case.streaming)]
    field = {UU: "unary_unary", US: "unary_stream", SU: "stream_unary", SS: "stream_stream"}
    assert kind_of(getattr(guarded, field[case.streaming])) is kind


def test_map_behaviour_leaves_an_unchanged_handler_alone() -> None:
    handler = _shapes([])["UnaryStreamSync"].handler()
    assert map_behaviour(handler, lambda behaviour: behaviour.function) is handler


# --- identity from the auth context -----------------------------------------------------------

# What grpcio 1.85 puts in auth_context() for a mesh certificate (trimmed).
MESH_PEER = {
    "transport_security_type": [b"ssl"],
    "x509_common_name": [b"ops"],
    "x509_subject_alternative_name": [OPS.encode(), b"ops.svc.hms.local", b"127.0.0.1"],
    "peer_uri": [OPS.encode()],
    "peer_dns": [b"ops.svc.hms.local"],
    "peer_spiffe_id": [OPS.encode()],
}


@pytest.mark.parametrize(
    ("auth_context", "expected"),
    [
        pytest.param(MESH_PEER, OPS, id="mesh-certificate"),
        pytest.param({"peer_spiffe_id": [OPS.encode()]}, OPS, id="spiffe-id-alone"),
        pytest.param({"peer_spiffe_id": [OPS]}, OPS, id="str-values"),
        pytest.param(
            {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]},
            None,
            id="plaintext",
        ),
        pytest.param({}, None, id="empty"),
        pytest.param({"peer_spiffe_id": []}, None, id="empty-list"),
        pytest.param(
            {"peer_uri": [OPS.encode(), ELIGIBILITY.encode()]}, None, id="two-uris-grpc-omits-id"
        ),
        pytest.param(
            {"peer_uri": [OPS.encode(), b"https://x"], "peer_spiffe_id": [OPS.encode()]},
            None,
            id="two-uris-even-with-id",
        ),
        pytest.param(
            {"peer_spiffe_id": [OPS.encode(), ELIGIBILITY.encode()]}, None, id="two-spiffe-ids"
        ),
        pytest.param(
            {"peer_uri": [ELIGIBILITY.encode()], "peer_spiffe_id": [OPS.encode()]},
            None,
            id="uri-and-id-disagree",
        ),
        pytest.param({"peer_uri": [b"https://example.com/x"]}, None, id="not-spiffe-uri"),
        pytest.param({"peer_spiffe_id": [b"https://example.com/x"]}, None, id="not-spiffe-id"),
        pytest.param({"peer_spiffe_id": [b"spiffe://\xff"]}, None, id="not-utf8"),
        pytest.param(
            {"x509_subject_alternative_name": [OPS.encode()]}, None, id="san-list-is-not-used"
        ),
    ],
)
def test_caller_identity(auth_context: dict[str, list[Any]], expected: str | None) -> None:
    assert caller_identity(auth_context) == expected
