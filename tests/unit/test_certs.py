"""The local CA: SPIFFE naming, CA and leaf certificates, ensure(), and `mesh certs`."""

from __future__ import annotations

import argparse
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hms_tools import certs
from hms_tools.cli import certs as certs_cli


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- naming -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment", "trust_domain", "expected"),
    [
        pytest.param("notify", certs.TRUST_DOMAIN, "spiffe://hms.local/svc/notify", id="simple"),
        pytest.param(
            "fee-calc2", certs.TRUST_DOMAIN, "spiffe://hms.local/svc/fee-calc2", id="dash"
        ),
        pytest.param("a", certs.TRUST_DOMAIN, "spiffe://hms.local/svc/a", id="one-char"),
        pytest.param("a" * 63, certs.TRUST_DOMAIN, f"spiffe://hms.local/svc/{'a' * 63}", id="63"),
        pytest.param("notify", "prod.example", "spiffe://prod.example/svc/notify", id="domain"),
    ],
)
def test_spiffe_id_valid(deployment: str, trust_domain: str, expected: str) -> None:
    assert certs.spiffe_id(deployment, trust_domain) == expected


@pytest.mark.parametrize(
    "deployment",
    [
        pytest.param("", id="empty"),
        pytest.param("Notify", id="uppercase"),
        pytest.param("2fa", id="starts-with-digit"),
        pytest.param("-notify", id="starts-with-dash"),
        pytest.param("notify-", id="ends-with-dash"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("fee_calc", id="underscore"),
        pytest.param("svc/notify", id="slash"),
        pytest.param("notify.v1", id="dot"),
        pytest.param("notify\n", id="trailing-newline"),
    ],
)
def test_spiffe_id_rejects_bad_deployment(deployment: str) -> None:
    with pytest.raises(ValueError, match="deployment") as caught:
        certs.spiffe_id(deployment)
    assert repr(deployment) in str(caught.value)


def test_spiffe_id_rejects_bad_trust_domain() -> None:
    with pytest.raises(ValueError, match="'HMS/local'"):
        certs.spiffe_id("notify", "HMS/local")


@pytest.mark.parametrize(
    ("spiffe", "expected"),
    [
        pytest.param("spiffe://hms.local/svc/notify", "notify.svc.hms.local", id="notify"),
        pytest.param("spiffe://hms.local/svc/fee-calc", "fee-calc.svc.hms.local", id="dash"),
        pytest.param("spiffe://prod.example/svc/x1", "x1.svc.prod.example", id="other-domain"),
    ],
)
def test_identity_dns_name_valid(spiffe: str, expected: str) -> None:
    assert certs.identity_dns_name(spiffe) == expected


@pytest.mark.parametrize(
    "spiffe",
    [
        pytest.param("", id="empty"),
        pytest.param("notify", id="bare-name"),
        pytest.param("https://hms.local/svc/notify", id="wrong-scheme"),
        pytest.param("spiffe://hms.local/ns/notify", id="wrong-path"),
        pytest.param("spiffe://hms.local/svc/notify/extra", id="extra-segment"),
        pytest.param("spiffe://hms.local/svc/", id="no-deployment"),
        pytest.param("spiffe://hms.local/svc/Notify", id="uppercase-deployment"),
        pytest.param("spiffe:///svc/notify", id="no-trust-domain"),
        pytest.param("spiffe://HMS.local/svc/notify", id="uppercase-domain"),
        pytest.param("spiffe://hms.local/svc/notify.evil.com", id="dns-injection"),
    ],
)
def test_identity_dns_name_rejects_malformed(spiffe: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE ID") as caught:
        certs.identity_dns_name(spiffe)
    assert repr(spiffe) in str(caught.value)


# --- the CA -----------------------------------------------------------------------------------


def test_create_ca_writes_a_p256_ca_with_private_key(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)

    ca = load(tmp_path / "ca.pem")
    assert mode(tmp_path / "ca-key.pem") == 0o600
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, False)
    ca.verify_directly_issued_by(ca)  # self-signed
    lead = datetime.now(UTC) - ca.not_valid_before_utc
    assert timedelta(minutes=4) < lead < timedelta(minutes=6)
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3649)


@pytest.mark.parametrize(
    "existing", [pytest.param("ca.pem", id="cert"), pytest.param("ca-key.pem", id="key-only")]
)
def test_create_ca_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        certs.create_ca(tmp_path)
    assert (tmp_path / existing).read_bytes() == b"precious"


def test_create_ca_twice_keeps_the_first(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    first = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca-key.pem").read_bytes()
    with pytest.raises(FileExistsError):
        certs.create_ca(tmp_path)
    assert ((tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca-key.pem").read_bytes()) == first


# --- leaf certificates ------------------------------------------------------------------------


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    certs.create_ca(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "deployment", "identity", "dns"),
    [
        pytest.param(
            "notify", None, "spiffe://hms.local/svc/notify", "notify.svc.hms.local", id="n"
        ),
        pytest.param(
            "notify-2", "notify", "spiffe://hms.local/svc/notify", "notify.svc.hms.local", id="dep"
        ),
    ],
)
def test_issue_writes_leaf_with_exact_sans(
    ca_dir: Path, name: str, deployment: str | None, identity: str, dns: str
) -> None:
    path = certs.issue(ca_dir, name, deployment=deployment)

    assert path == ca_dir / f"{name}.pem"
    assert path.read_bytes().count(b"BEGIN CERTIFICATE") == 1  # the leaf alone, no chain
    assert mode(ca_dir / f"{name}-key.pem") == 0o600
    cert = load(path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    assert san.get_values_for_type(x509.DNSName) == [dns, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert len(san) == 4
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))
    assert certs.read_identity(path.read_bytes()) == identity
    key = serialization.load_pem_private_key((ca_dir / f"{name}-key.pem").read_bytes(), None)
    assert key.public_key() == cert.public_key()


def test_issue_backdates_not_before_and_honours_valid_days(ca_dir: Path) -> None:
    cert = load(certs.issue(ca_dir, "notify", valid_days=10))
    now = datetime.now(UTC)
    assert timedelta(minutes=4) < now - cert.not_valid_before_utc < timedelta(minutes=6)
    assert timedelta(days=9, hours=23) < cert.not_valid_after_utc - now <= timedelta(days=10)


def test_issue_twice_rotates_key_and_serial(ca_dir: Path) -> None:
    first = load(certs.issue(ca_dir, "notify"))
    first_key = (ca_dir / "notify-key.pem").read_bytes()
    second = load(certs.issue(ca_dir, "notify"))
    assert second.serial_number != first.serial_number
    assert (ca_dir / "notify-key.pem").read_bytes() != first_key


def test_issue_without_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no CA in .*ca\.pem.*mesh certs init"):
        certs.issue(tmp_path, "notify")
    assert not (tmp_path / "notify-key.pem").exists()


@pytest.mark.parametrize(
    ("name", "deployment", "message"),
    [
        pytest.param("../evil", None, "'../evil'", id="path-traversal"),
        pytest.param("ca", None, "reserved", id="ca-name"),
        pytest.param("notify", "Not_Valid", "'Not_Valid'", id="bad-deployment"),
        pytest.param("", None, "''", id="empty"),
    ],
)
def test_issue_rejects_bad_names(
    ca_dir: Path, name: str, deployment: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        certs.issue(ca_dir, name, deployment=deployment)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca-key.pem", "ca.pem"]


@pytest.mark.parametrize("days", [pytest.param(0, id="zero"), pytest.param(-5, id="negative")])
def test_issue_rejects_non_positive_validity(ca_dir: Path, days: int) -> None:
    with pytest.raises(ValueError, match="valid_days"):
        certs.issue(ca_dir, "notify", valid_days=days)


# --- read_identity ----------------------------------------------------------------------------


def self_signed(uris: list[str]) -> bytes:
    """A throwaway certificate carrying exactly these URI SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    general_names: list[x509.GeneralName] = [x509.DNSName("notify.svc.hms.local")]
    general_names += [x509.UniformResourceIdentifier(u) for u in uris]
    builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_read_identity_returns_the_single_uri() -> None:
    assert (
        certs.read_identity(self_signed(["spiffe://hms.local/svc/a"])) == "spiffe://hms.local/svc/a"
    )


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param([], id="none"),
        pytest.param(["spiffe://hms.local/svc/a", "spiffe://hms.local/svc/b"], id="two"),
    ],
)
def test_read_identity_refuses_zero_or_several_uris(uris: list[str]) -> None:
    expected = f"exactly one URI SAN, found {len(uris)}"
    with pytest.raises(ValueError, match=expected):
        certs.read_identity(self_signed(uris))


def test_read_identity_refuses_cert_without_san(ca_dir: Path) -> None:
    with pytest.raises(ValueError, match="found 0"):
        certs.read_identity((ca_dir / "ca.pem").read_bytes())


# --- ensure -----------------------------------------------------------------------------------


def snapshot(tls_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in sorted(tls_dir.iterdir())}


def test_ensure_creates_everything_then_is_idempotent(tmp_path: Path) -> None:
    tls_dir = tmp_path / "deep" / "tls"
    certs.ensure(tls_dir, ["notify", "gateway"])
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "gateway-key.pem",
        "gateway.pem",
        "notify-key.pem",
        "notify.pem",
    ]
    before = snapshot(tls_dir)
    certs.ensure(tls_dir, ["notify", "gateway"])
    assert snapshot(tls_dir) == before


def test_ensure_adds_only_the_missing_name(tmp_path: Path) -> None:
    certs.ensure(tmp_path, ["notify"])
    before = snapshot(tmp_path)
    certs.ensure(tmp_path, ["notify", "gateway"])
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert certs.read_identity((tmp_path / "gateway.pem").read_bytes()).endswith("/svc/gateway")


@pytest.mark.parametrize(
    ("valid_days", "reissued"),
    [pytest.param(3, True, id="expires-in-3-days"), pytest.param(30, False, id="30-days-left")],
)
def test_ensure_reissues_near_expiry(ca_dir: Path, valid_days: int, reissued: bool) -> None:
    old = load(certs.issue(ca_dir, "notify", valid_days=valid_days))
    certs.ensure(ca_dir, ["notify"])
    new = load(ca_dir / "notify.pem")
    assert (new.serial_number != old.serial_number) is reissued
    if reissued:
        assert new.not_valid_after_utc - datetime.now(UTC) > timedelta(days=800)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("delete-key", id="missing-key"),
        pytest.param("garble-cert", id="corrupt-cert"),
        pytest.param("other-ca", id="signed-by-old-ca"),
    ],
)
def test_ensure_reissues_damaged_certificates(tmp_path: Path, damage: str) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    if damage == "delete-key":
        (tls_dir / "notify-key.pem").unlink()
    elif damage == "garble-cert":
        (tls_dir / "notify.pem").write_bytes(b"not a certificate")
    else:
        other = tmp_path / "other"
        certs.ensure(other, ["notify"])
        (tls_dir / "notify.pem").write_bytes((other / "notify.pem").read_bytes())
    certs.ensure(tls_dir, ["notify"])
    load(tls_dir / "notify.pem").verify_directly_issued_by(load(tls_dir / "ca.pem"))
    assert (tls_dir / "notify-key.pem").exists()


# --- mesh certs -------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mesh")
    certs_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls = str(tmp_path / "tls")
    assert run_cli("certs", "init", "--tls-dir", tls) == 0
    assert "ca-key.pem" in capsys.readouterr().out
    ca = (tmp_path / "tls" / "ca.pem").read_bytes()

    assert run_cli("certs", "init", "--tls-dir", tls) == 0
    assert "already exists" in capsys.readouterr().out
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca

    assert run_cli("certs", "issue", "notify-2", "--deployment", "notify", "--tls-dir", tls) == 0
    out = capsys.readouterr().out
    assert "notify-2.pem" in out
    assert "spiffe://hms.local/svc/notify" in out

    assert run_cli("certs", "show", "notify-2", "--tls-dir", tls) == 0
    out = capsys.readouterr().out
    assert "identity  spiffe://hms.local/svc/notify" in out
    assert "notify.svc.hms.local, localhost" in out
    assert "127.0.0.1" in out
    assert "expires" in out

    assert run_cli("certs", "show", "--tls-dir", tls) == 0
    out = capsys.readouterr().out
    assert "(CA)" in out
    assert "notify-2.pem" in out


def test_cli_issue_without_ca_raises_for_main_to_report(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mesh certs init"):
        run_cli("certs", "issue", "notify", "--tls-dir", str(tmp_path))


def test_cli_show_missing_name(ca_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mesh certs issue ghost"):
        run_cli("certs", "show", "ghost", "--tls-dir", str(ca_dir))


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        pytest.param(Path("/x"), {"MESH_TLS_DIR": "/env"}, Path("/x"), id="flag-wins"),
        pytest.param(None, {"MESH_TLS_DIR": "/env"}, Path("/env"), id="env"),
        pytest.param(None, {"MESH_TLS_DIR": ""}, Path(".mesh/tls"), id="empty-env"),
        pytest.param(None, {}, Path(".mesh/tls"), id="default"),
    ],
)
def test_tls_dir_resolution(flag: Path | None, environ: dict[str, str], expected: Path) -> None:
    assert certs_cli.tls_dir_from(flag, environ) == expected
