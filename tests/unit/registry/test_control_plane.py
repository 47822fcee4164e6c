"""The control plane's settings and policy, without servers: which URLs mean TLS, which files a
client presents, what each identity may do in etcd (roles over key ranges) and NATS (subject
permissions), and where each command and service takes its settings from."""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path

import grpc
import pytest

from hms_tools import certs
from hms_tools.cli.env import cli_identity, etcd_tls, nats_settings
from hms_tools.controlplane import (
    ADMIN_IDENTITY,
    Grant,
    Policy,
    _range_end,
    default_own_dir,
    policy_for,
    served_services,
)
from hms_tools.stack import StackConfig
from mesh.controlplane import (
    ClientTls,
    NatsAccess,
    TlsOverrides,
    etcd_client_tls,
    etcd_uses_tls,
    inbox_prefix,
    nats_access,
    nats_uses_tls,
)
from mesh.registry.etcd import (
    Etcd,
    EtcdDenied,
    EtcdUnavailable,
    LeaseLost,
    _grpc_targets,
    _translate,
)
from mesh.server.runner import host_config, parse_args
from mesh.server.runtime import nats_settings as service_nats_settings
from mesh.tls import TlsFiles

ECHO = "hms.testing.v1.EchoService"
MIRROR = "hms.testing.v1.MirrorService"
VOUCHER = "hms.testing.v1.VoucherSubmitted"
TYPES = (VOUCHER, "hms.notify.v1.Sent")


def policy(*grants: Grant, **options: object) -> Policy:
    return Policy(grants, event_types=TYPES, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls")
    certs.ensure(path, ["notify", "ops"])
    return path


# -- etcd: roles over key ranges -------------------------------------------------------------


def test_a_deployment_writes_only_keys_named_after_it_under_the_services_it_serves() -> None:
    roles = {r.name: r for r in policy(Grant("echo", (ECHO, MIRROR))).etcd_roles()}
    traffic = (0, b"/hms/traffic/", b"/hms/traffic0")  # read: every channel follows splits
    assert roles["hms-reader"].permissions == ((0, b"/hms/services/", b"/hms/services0"), traffic)
    assert roles["hms-deployment-echo"].permissions == (
        (0, b"/hms/services/", b"/hms/services0"),
        traffic,
        (2, f"/hms/services/{ECHO}/echo-".encode(), f"/hms/services/{ECHO}/echo.".encode()),
        (2, f"/hms/services/{MIRROR}/echo-".encode(), f"/hms/services/{MIRROR}/echo.".encode()),
    )


def test_a_deployment_that_serves_nothing_only_reads() -> None:
    (_, role) = policy(Grant("fees")).etcd_roles()
    assert [kind for kind, _, _ in role.permissions] == [0, 0]


def test_every_identity_gets_one_user_named_as_its_certificate() -> None:
    users = policy(Grant("echo", (ECHO,)), namespace="prod").etcd_users()
    assert users == [
        (ADMIN_IDENTITY, "root"),
        ("echo", "prod-deployment-echo"),
        ("ops", "prod-reader"),
        ("gateway", "prod-reader"),
    ]


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"x-", b"x.")],
)
def test_range_end_covers_exactly_the_prefix(prefix: bytes, end: bytes) -> None:
    assert _range_end(prefix) == end


@pytest.mark.parametrize(
    ("grants", "readers", "observers", "message"),
    [
        pytest.param((Grant("root"),), ("ops",), ("ops",), "control plane's own", id="root"),
        pytest.param((Grant("etcd"),), ("ops",), ("ops",), "control plane's own", id="etcd"),
        pytest.param((), ("nats",), (), "control plane's own", id="nats-reader"),
        pytest.param((Grant("ops"),), ("ops",), (), "more than once", id="deployment-and-reader"),
        pytest.param((Grant("a"), Grant("a")), (), (), "more than once", id="twice"),
        pytest.param((), ("ops",), ("gateway",), "readers too", id="observer-not-reader"),
    ],
)
def test_a_policy_refuses_names_that_would_mix_identities(
    grants: tuple[Grant, ...], readers: tuple[str, ...], observers: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Policy(grants, readers=readers, observers=observers, event_types=())


def test_a_grant_checks_its_services_and_patterns() -> None:
    with pytest.raises(ValueError, match="service"):
        Grant("echo", ("NotAService",))
    with pytest.raises(ValueError, match="malformed"):
        Grant("echo", publishes=("hms..x",))


# -- NATS: subject permissions ---------------------------------------------------------------


def users(p: Policy) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {u.user: (u.publish, u.subscribe) for u in p.nats_users()}


def test_a_deployment_publishes_its_own_events_and_uses_only_its_own_consumers() -> None:
    publish, subscribe = users(policy(Grant("fee-calc")))["spiffe://hms.local/svc/fee-calc"]
    assert publish[:2] == ("hms.events.hms.fee_calc.>", "hms.dlq.fee-calc.>")
    consumer = "fee-calc__hms_testing_v1_VoucherSubmitted"
    assert set(publish[2:6]) == {
        f"$JS.API.CONSUMER.CREATE.HMS_EVENTS.{consumer}.hms.events.{VOUCHER}",
        f"$JS.API.CONSUMER.INFO.HMS_EVENTS.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.HMS_EVENTS.{consumer}",
        f"$JS.ACK.HMS_EVENTS.{consumer}.>",
    }
    assert len(publish) == 2 + 4 * len(TYPES) + 2
    assert all(".fee-calc__" in subject for subject in publish[2:-2])  # its consumers only
    assert publish[-2:] == ("svc.trace.>", "svc.mesh.>")  # its telemetry
    assert not any(s.startswith(("$JS.API.STREAM", "_INBOX", ">")) for s in publish)
    assert subscribe == ("_INBOX.fee-calc.>",)


def test_explicit_event_types_replace_the_contract_package() -> None:
    publish, _ = users(policy(Grant("fees", publishes=(VOUCHER,))))["spiffe://hms.local/svc/fees"]
    assert publish[0] == f"hms.events.{VOUCHER}"


def test_operators_look_root_manages_the_gateway_publishes_its_telemetry() -> None:
    table = users(policy(Grant("echo")))
    ops_publish, ops_subscribe = table["spiffe://hms.local/svc/ops"]
    assert not any("DELETE" in s or "PURGE" in s or "UPDATE" in s for s in ops_publish)
    assert not any(s.startswith("svc.") for s in ops_publish)
    assert "$JS.API.STREAM.INFO.*" in ops_publish
    assert ops_subscribe == ("svc.>", "_INBOX.ops.>")
    assert table["spiffe://hms.local/svc/root"] == ((">",), (">",))
    assert table["spiffe://hms.local/svc/gateway"] == (
        ("svc.trace.>", "svc.mesh.>"),
        ("_INBOX.gateway.>",),
    )


def test_a_reader_with_nothing_to_do_in_nats_gets_no_user() -> None:
    """An empty allow list would mean "everything" to nats-server: no user at all instead."""
    table = users(Policy((), readers=("ops", "auditor"), telemetry=(), event_types=()))
    assert "spiffe://hms.local/svc/auditor" not in table
    assert "spiffe://hms.local/svc/gateway" not in table
    assert all(publish for publish, _ in table.values())


def test_the_authorization_block_quotes_every_subject() -> None:
    text = policy(Grant("echo"), prefix="prod").nats_authorization()
    assert text.startswith("authorization {")
    line = next(line for line in text.splitlines() if "svc/echo" in line)
    assert '"prod.events.hms.echo.>"' in line
    assert '"$JS.ACK.PROD_EVENTS.echo__hms_notify_v1_Sent.>"' in line
    assert json.dumps("_INBOX.echo.>") in line


@pytest.mark.parametrize(
    ("tls_dir", "expected"),
    [("/s/tls", "/s/controlplane"), ("/srv/certs", "/srv/certs-controlplane")],
)
def test_the_control_planes_own_keys_live_beside_the_tls_dir(tls_dir: str, expected: str) -> None:
    assert default_own_dir(Path(tls_dir)) == Path(expected)


def test_mesh_up_finds_the_services_each_deployment_serves() -> None:
    assert served_services("eligibility") == ("hms.eligibility.v1.EligibilityService",)
    assert served_services("echo") == (ECHO,)
    made = policy_for(["notify"], namespace="hms")
    assert made.grants == (Grant("notify", ("hms.notify.v1.NotifyService",)),)
    assert VOUCHER in made.event_types  # every message type of the contracts


# -- which URLs mean TLS, and which files a client presents ----------------------------------


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        (["127.0.0.1:2379"], False),
        (["http://a:1", "b:2"], False),
        (["https://a:1", "HTTPS://b:2"], True),
    ],
)
def test_etcd_tls_is_said_by_the_scheme(endpoints: list[str], expected: bool) -> None:
    assert etcd_uses_tls(endpoints) is expected


@pytest.mark.parametrize(
    ("check", "urls", "message"),
    [
        (etcd_uses_tls, ["https://a:1", "b:2"], "some URLs are https"),
        (etcd_uses_tls, ["unix://x"], "scheme 'unix'"),
        (nats_uses_tls, ["tls://a:1", "nats://b:2"], "some URLs are tls"),
    ],
)
def test_mixed_or_unknown_schemes_are_refused(check: object, urls: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(urls)  # type: ignore[operator]


def test_https_etcd_takes_the_processs_own_identity(tls_dir: Path) -> None:
    me = TlsFiles(tls_dir, "notify")
    assert etcd_client_tls(["https://a:1"], None, me) == ClientTls.of(me)
    assert etcd_client_tls(["a:1"], None, me) is None
    given = ClientTls(Path("ca"), Path("c"), Path("k"))
    assert etcd_client_tls(["a:1"], given, me) is given  # files given: TLS whatever the URL
    with pytest.raises(ValueError, match="no client certificate"):
        etcd_client_tls(["https://a:1"], None, None)


def test_given_files_are_completed_from_the_identity(tls_dir: Path) -> None:
    me = TlsFiles(tls_dir, "notify")
    assert TlsOverrides().resolve(me, "etcd") is None
    ca = TlsOverrides.of("/etc/etcd/ca.pem", "", "").resolve(me, "etcd")
    assert ca == ClientTls(Path("/etc/etcd/ca.pem"), me.cert, me.key)
    with pytest.raises(ValueError, match="--nats-cert and --nats-key go together"):
        TlsOverrides.of(None, "c.pem", None).resolve(me, "nats")
    with pytest.raises(ValueError, match="give --etcd-ca"):
        TlsOverrides.of(None, "c.pem", "k.pem").resolve(None, "etcd")


def test_a_mesh_identitys_replies_come_to_its_own_inbox(tls_dir: Path) -> None:
    me = ClientTls.of(TlsFiles(tls_dir, "notify"))
    assert inbox_prefix(me) == "_INBOX.notify"
    assert inbox_prefix(None) == "_INBOX"
    assert inbox_prefix(ClientTls(tls_dir / "ca.pem", tls_dir / "ca.pem", me.key)) == "_INBOX"
    options = NatsAccess(me).options()
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["inbox_prefix"] == "_INBOX.notify"
    assert NatsAccess().options() == {}
    with pytest.raises(FileNotFoundError, match="credentials"):
        NatsAccess(creds=tls_dir / "missing.creds").options()


def test_tls_nats_takes_the_processs_own_identity(tls_dir: Path) -> None:
    me = TlsFiles(tls_dir, "notify")
    assert nats_access(["tls://a:1"], None, me) == NatsAccess(ClientTls.of(me))
    assert nats_access(["nats://a:1"], None, me) == NatsAccess()
    with pytest.raises(ValueError, match="tls://"):
        nats_access(["tls://a:1"], None, None)


# -- the etcd wrapper ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "targets"),
    [
        (["127.0.0.1:2379"], ["127.0.0.1:2379"]),
        (["https://127.0.0.1:2379/"], ["127.0.0.1:2379"]),
        (["http://a:1", "b:2"], ["a:1", "b:2"]),
        (["https://[::1]:2379"], ["[::1]:2379"]),
    ],
)
def test_each_endpoint_is_a_grpc_target_of_its_own(
    endpoints: list[str], targets: list[str]
) -> None:
    assert _grpc_targets(endpoints) == targets


def test_an_https_endpoint_without_tls_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="TLS"):
        Etcd(["https://127.0.0.1:2379"])
    with pytest.raises(ValueError, match="host:port"):
        Etcd(["http://nowhere"])


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", EtcdDenied),
        (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found", EtcdDenied),
        (grpc.StatusCode.UNAVAILABLE, "connection refused", EtcdUnavailable),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseLost),
    ],
)
def test_refusals_are_told_apart_and_still_retried(
    code: grpc.StatusCode, details: str, kind: type[Exception]
) -> None:
    error = _translate(
        grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    )
    assert type(error) is kind
    if kind is EtcdDenied:
        assert isinstance(error, EtcdUnavailable)  # the holding loops keep trying


# -- where each takes its settings from ------------------------------------------------------


def cli_args(state_dir: Path, **flags: object) -> argparse.Namespace:
    values = {"state_dir": state_dir, "tls_dir": None, "cert_name": None, "nats_creds": None}
    values |= {f"{s}_{p}": None for s in ("etcd", "nats") for p in ("ca", "cert", "key")}
    return argparse.Namespace(**{**values, **flags})


def test_the_cli_presents_the_stacks_operator_certificate(tmp_path: Path, tls_dir: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({"tls_dir": str(tls_dir), "ops_cert": "ops"}))
    assert cli_identity(cli_args(tmp_path), {}) == TlsFiles(tls_dir, "ops")
    assert cli_identity(cli_args(tmp_path, cert_name="notify"), {}).name == "notify"  # type: ignore[union-attr]
    assert cli_identity(cli_args(tmp_path), {"MESH_TLS_DIR": "/x"}) == TlsFiles(Path("/x"), "ops")
    assert cli_identity(cli_args(tmp_path / "none"), {}) is None


def test_the_cli_takes_tls_files_from_flags_then_the_environment(tls_dir: Path) -> None:
    me = TlsFiles(tls_dir, "ops")
    env = {"MESH_ETCD_CA": "/env/ca.pem", "MESH_NATS_CREDS": "/env/user.creds"}
    args = cli_args(tls_dir, etcd_cert="/flag/c.pem", etcd_key="/flag/k.pem")
    assert etcd_tls(args, ["a:1"], me, env) == ClientTls(
        Path("/env/ca.pem"), Path("/flag/c.pem"), Path("/flag/k.pem")
    )
    assert etcd_tls(cli_args(tls_dir), ["https://a:1"], me, {}) == ClientTls.of(me)
    access = nats_settings(cli_args(tls_dir), ["tls://a:1"], me, env)
    assert access == NatsAccess(ClientTls.of(me), Path("/env/user.creds"))


def test_a_service_takes_its_settings_from_flags_and_environment(tls_dir: Path) -> None:
    env = {
        "MESH_ETCD": "https://127.0.0.1:2379",
        "MESH_NATS": "tls://127.0.0.1:4222",
        "MESH_TLS_DIR": str(tls_dir),
        "MESH_ETCD_CA": "/env/etcd-ca.pem",
    }
    args = parse_args("notify", ["--nats-cert=/f/c.pem", "--nats-key=/f/k.pem"], environ=env)
    config = host_config(args)
    assert config.etcd == ("https://127.0.0.1:2379",)
    me = TlsFiles(tls_dir, "notify")
    assert config.etcd_tls == ClientTls(Path("/env/etcd-ca.pem"), me.cert, me.key)
    access = service_nats_settings(args)
    assert access == NatsAccess(ClientTls(me.ca, Path("/f/c.pem"), Path("/f/k.pem")))
    # Nothing given: https:// etcd is derived from the identity where the registry is opened.
    assert (
        host_config(parse_args("notify", [], environ={"MESH_ETCD": "https://a:1"})).etcd_tls is None
    )


def test_the_stacks_gateway_keeps_the_stacks_etcd_identity() -> None:
    with pytest.raises(ValueError, match="--etcd-cert"):
        StackConfig(gateway_args=("--etcd-cert=/tmp/root.pem",))
    assert StackConfig().insecure_control_plane is False  # secured unless asked
