"""The local CA: SPIFFE naming, CA and leaf certificates, ensure(), and `mesh certs`; the CA key
kept apart from the TLS directory (a key left there by an older version is moved out), and
modes whatever the umask (directories 0700, keys 0600, certificates 0644; looser ones tightened,
another user's files refused)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import stat
from collections.abc import Iterator
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


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def same_key(a: Path, b: Path) -> bool:
    """Whether the private key in `a` belongs to the certificate in `b`."""
    key = serialization.load_pem_private_key(a.read_bytes(), None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(*der) == load(b).public_key().public_bytes(*der))


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask after a test that sets one."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


CERTS_LOGGER = "hms_tools.certs"


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


def test_create_ca_writes_a_p256_ca_with_its_key_apart(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.create_ca(tls_dir)

    assert names(tls_dir) == ["ca.pem"]  # what services read holds no CA key
    assert names(tmp_path / "ca") == ["ca-key.pem"]
    assert same_key(tmp_path / "ca" / "ca-key.pem", tls_dir / "ca.pem")
    assert (mode(tls_dir), mode(tmp_path / "ca")) == (0o700, 0o700)
    assert (mode(tmp_path / "ca" / "ca-key.pem"), mode(tls_dir / "ca.pem")) == (0o600, 0o644)
    ca = load(tls_dir / "ca.pem")
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, False)
    ca.verify_directly_issued_by(ca)  # self-signed
    lead = datetime.now(UTC) - ca.not_valid_before_utc
    assert timedelta(minutes=4) < lead < timedelta(minutes=6)
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3649)


def test_create_ca_with_a_ca_dir_of_its_own(tmp_path: Path) -> None:
    tls_dir, ca_dir = tmp_path / "tls", tmp_path / "vault" / "hms"
    certs.create_ca(tls_dir, ca_dir=ca_dir)
    assert names(tls_dir) == ["ca.pem"]
    assert names(ca_dir) == ["ca-key.pem"]
    assert not (tmp_path / "ca").exists()
    assert mode(tmp_path / "vault") == 0o700  # a parent it made is private too


@pytest.mark.parametrize(
    ("tls_dir", "expected"),
    [
        pytest.param(".mesh/tls", ".mesh/ca", id="mesh-up-layout"),
        pytest.param(".mesh/tls/", ".mesh/ca", id="trailing-slash"),
        pytest.param("tls", "ca", id="bare"),
        pytest.param("/srv/hms/certs", "/srv/hms/certs-ca", id="other-name"),
        pytest.param("/tmp/x/tls0", "/tmp/x/tls0-ca", id="not-quite-tls"),
        pytest.param(".", f"{os.getcwd()}-ca", id="dot"),
    ],
)
def test_default_ca_dir_is_beside_the_tls_dir(tls_dir: str, expected: str) -> None:
    assert certs.default_ca_dir(Path(tls_dir)) == Path(expected)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda t, c: certs.create_ca(t, ca_dir=c), id="create_ca"),
        pytest.param(lambda t, c: certs.issue(t, "notify", ca_dir=c), id="issue"),
        pytest.param(lambda t, c: certs.ensure(t, ["notify"], ca_dir=c), id="ensure"),
    ],
)
@pytest.mark.parametrize("where", ["the-tls-dir", "inside-it", "inside-it-by-a-symlink"])
def test_the_ca_key_never_goes_in_the_tls_dir(tmp_path: Path, call: object, where: str) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca_dir = {"the-tls-dir": tls_dir, "inside-it": tls_dir / "ca"}.get(where)
    if ca_dir is None:
        (tmp_path / "link").symlink_to(tls_dir)
        ca_dir = tmp_path / "link" / "keys"
    assert callable(call)
    with pytest.raises(ValueError, match=r"is the TLS directory .* or inside it: services read"):
        call(tls_dir, ca_dir)
    assert names(tls_dir) == []


@pytest.mark.parametrize(
    ("existing", "kept_in"),
    [
        pytest.param("tls/ca.pem", "tls/ca.pem", id="cert"),
        pytest.param("ca/ca-key.pem", "ca/ca-key.pem", id="key"),
        pytest.param("tls/ca-key.pem", "ca/ca-key.pem", id="old-layout-key-moved-out"),
    ],
)
def test_create_ca_refuses_to_overwrite(tmp_path: Path, existing: str, kept_in: str) -> None:
    (tmp_path / existing).parent.mkdir(mode=0o700)
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="a CA already exists"):
        certs.create_ca(tmp_path / "tls")
    assert (tmp_path / kept_in).read_bytes() == b"precious"
    assert not (tmp_path / "tls" / "ca-key.pem").exists()


def test_create_ca_twice_keeps_the_first(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.create_ca(tls_dir)
    first = (tls_dir / "ca.pem").read_bytes(), (tmp_path / "ca" / "ca-key.pem").read_bytes()
    with pytest.raises(FileExistsError):
        certs.create_ca(tls_dir)
    assert ((tls_dir / "ca.pem").read_bytes(), (tmp_path / "ca" / "ca-key.pem").read_bytes()) == (
        first
    )


# --- leaf certificates ------------------------------------------------------------------------


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    """A TLS directory with its CA (key in tmp_path/ca)."""
    path = tmp_path / "tls"
    certs.create_ca(path)
    return path


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
    tls_dir: Path, name: str, deployment: str | None, identity: str, dns: str
) -> None:
    path = certs.issue(tls_dir, name, deployment=deployment)

    assert path == tls_dir / f"{name}.pem"
    assert path.read_bytes().count(b"BEGIN CERTIFICATE") == 1  # the leaf alone, no chain
    assert (mode(tls_dir / f"{name}-key.pem"), mode(path)) == (0o600, 0o644)
    cert = load(path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    assert san.get_values_for_type(x509.DNSName) == [dns, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert len(san) == 4
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load(tls_dir / "ca.pem"))
    assert certs.read_identity(path.read_bytes()) == identity
    assert same_key(tls_dir / f"{name}-key.pem", path)


def test_issue_backdates_not_before_and_honours_valid_days(tls_dir: Path) -> None:
    cert = load(certs.issue(tls_dir, "notify", valid_days=10))
    now = datetime.now(UTC)
    assert timedelta(minutes=4) < now - cert.not_valid_before_utc < timedelta(minutes=6)
    assert timedelta(days=9, hours=23) < cert.not_valid_after_utc - now <= timedelta(days=10)


def test_issue_twice_rotates_key_and_serial(tls_dir: Path) -> None:
    first = load(certs.issue(tls_dir, "notify"))
    first_key = (tls_dir / "notify-key.pem").read_bytes()
    second = load(certs.issue(tls_dir, "notify"))
    assert second.serial_number != first.serial_number
    assert (tls_dir / "notify-key.pem").read_bytes() != first_key


def test_issue_without_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no CA in .*ca\.pem.*mesh certs init"):
        certs.issue(tmp_path, "notify")
    assert not (tmp_path / "notify-key.pem").exists()


def test_issue_without_the_ca_key_says_where_it_looked(tls_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(
        FileNotFoundError, match=f"no CA key for .*: {elsewhere}/ca-key.pem is missing.*--ca-dir"
    ):
        certs.issue(tls_dir, "notify", ca_dir=elsewhere)
    assert names(tls_dir) == ["ca.pem"]


def test_issue_refuses_the_key_of_another_ca(tls_dir: Path, tmp_path: Path) -> None:
    certs.create_ca(tmp_path / "other")  # its key in tmp_path/other-ca
    with pytest.raises(ValueError, match=r"other-ca/ca-key\.pem is not the key of .*tls/ca\.pem"):
        certs.issue(tls_dir, "notify", ca_dir=tmp_path / "other-ca")
    assert names(tls_dir) == ["ca.pem"]


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
    tls_dir: Path, name: str, deployment: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        certs.issue(tls_dir, name, deployment=deployment)
    if deployment is None:  # ensure names only: each name is its deployment
        with pytest.raises(ValueError, match=message):
            certs.ensure(tls_dir, ["notify", name])
    assert names(tls_dir) == ["ca.pem"]


@pytest.mark.parametrize("days", [pytest.param(0, id="zero"), pytest.param(-5, id="negative")])
def test_issue_rejects_non_positive_validity(tls_dir: Path, days: int) -> None:
    with pytest.raises(ValueError, match="valid_days"):
        certs.issue(tls_dir, "notify", valid_days=days)


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


def test_read_identity_refuses_cert_without_san(tls_dir: Path) -> None:
    with pytest.raises(ValueError, match="found 0"):
        certs.read_identity((tls_dir / "ca.pem").read_bytes())


# --- ensure -----------------------------------------------------------------------------------


def snapshot(*directories: Path) -> dict[str, tuple[bytes, int]]:
    return {
        f"{d.name}/{p.name}": (p.read_bytes(), p.stat().st_ino)
        for d in directories
        for p in sorted(d.iterdir())
    }


def test_ensure_creates_everything_then_is_idempotent(tmp_path: Path) -> None:
    tls_dir = tmp_path / "deep" / "tls"
    certs.ensure(tls_dir, ["notify", "gateway"])
    assert names(tls_dir) == [
        "ca.pem",
        "gateway-key.pem",
        "gateway.pem",
        "notify-key.pem",
        "notify.pem",
    ]
    assert names(tmp_path / "deep" / "ca") == ["ca-key.pem"]
    before = snapshot(tls_dir, tmp_path / "deep" / "ca")
    certs.ensure(tls_dir, ["notify", "gateway"])
    assert snapshot(tls_dir, tmp_path / "deep" / "ca") == before


def test_ensure_adds_only_the_missing_name(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    before = snapshot(tls_dir)
    certs.ensure(tls_dir, ["notify", "gateway"])
    after = snapshot(tls_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert certs.read_identity((tls_dir / "gateway.pem").read_bytes()).endswith("/svc/gateway")


def test_ensure_with_nothing_due_needs_no_ca_key(tmp_path: Path) -> None:
    """A host given only the TLS directory can still check it."""
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    (tmp_path / "ca" / "ca-key.pem").rename(tmp_path / "ca-key.pem.offline")
    certs.ensure(tls_dir, ["notify"])
    with pytest.raises(FileNotFoundError, match="no CA key"):
        certs.ensure(tls_dir, ["notify", "gateway"])


def test_ensure_with_a_ca_key_but_no_ca_certificate_refuses(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    key = (tmp_path / "ca" / "ca-key.pem").read_bytes()
    (tls_dir / "ca.pem").unlink()
    with pytest.raises(FileNotFoundError, match=r"ca-key\.pem is there but .*ca\.pem is missing"):
        certs.ensure(tls_dir, ["notify"])
    assert (tmp_path / "ca" / "ca-key.pem").read_bytes() == key  # a CA is never replaced


@pytest.mark.parametrize(
    ("valid_days", "reissued"),
    [pytest.param(3, True, id="expires-in-3-days"), pytest.param(30, False, id="30-days-left")],
)
def test_ensure_reissues_near_expiry(tls_dir: Path, valid_days: int, reissued: bool) -> None:
    old = load(certs.issue(tls_dir, "notify", valid_days=valid_days))
    certs.ensure(tls_dir, ["notify"])
    new = load(tls_dir / "notify.pem")
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


# --- the CA key out of the TLS directory ------------------------------------------------------


def old_layout(tmp_path: Path, key_mode: int = 0o600) -> tuple[Path, bytes]:
    """A TLS directory as made before the CA key moved out: ca-key.pem beside ca.pem."""
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"], ca_dir=tmp_path / "made-by")
    key = tmp_path / "made-by" / "ca-key.pem"
    key.rename(tls_dir / "ca-key.pem")
    os.chmod(tls_dir / "ca-key.pem", key_mode)
    return tls_dir, (tls_dir / "ca-key.pem").read_bytes()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda t: certs.ensure(t, ["notify", "gateway"]), id="ensure"),
        pytest.param(lambda t: certs.issue(t, "gateway"), id="issue"),
        pytest.param(lambda t: run_cli("certs", "init", "--tls-dir", str(t)), id="mesh-certs-init"),
    ],
)
def test_a_ca_key_in_the_tls_dir_is_moved_out(
    tmp_path: Path, call: object, caplog: pytest.LogCaptureFixture
) -> None:
    tls_dir, key = old_layout(tmp_path, key_mode=0o644)
    leaf = (tls_dir / "notify.pem").read_bytes()
    assert callable(call)
    with caplog.at_level(logging.WARNING, logger=CERTS_LOGGER):
        call(tls_dir)
    assert not (tls_dir / "ca-key.pem").exists()
    assert (tmp_path / "ca" / "ca-key.pem").read_bytes() == key  # the same CA, moved
    assert mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert (tls_dir / "notify.pem").read_bytes() == leaf  # nothing reissued
    assert caplog.messages[0] == (
        f"moved the CA key {tls_dir}/ca-key.pem to {tmp_path}/ca/ca-key.pem: services read "
        "the TLS directory, and whoever holds the CA key can issue any identity"
    )
    certs.issue(tls_dir, "later")  # and the moved key still signs
    load(tls_dir / "later.pem").verify_directly_issued_by(load(tls_dir / "ca.pem"))


def test_a_copy_of_the_ca_key_in_the_tls_dir_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls_dir, key = old_layout(tmp_path)
    (tmp_path / "ca").mkdir(mode=0o700)
    (tmp_path / "ca" / "ca-key.pem").write_bytes(key)
    with caplog.at_level(logging.WARNING, logger=CERTS_LOGGER):
        certs.ensure(tls_dir, ["notify"])
    assert not (tls_dir / "ca-key.pem").exists()
    assert caplog.messages[0].startswith(f"removed {tls_dir}/ca-key.pem, a copy of the CA key")


def test_two_different_ca_keys_are_refused(tmp_path: Path) -> None:
    tls_dir, key = old_layout(tmp_path)
    certs.create_ca(tmp_path / "other", ca_dir=tmp_path / "ca")  # another CA's key in ca/
    with pytest.raises(certs.UnsafeFileError, match="are two different CA keys"):
        certs.ensure(tls_dir, ["notify"])
    assert (tls_dir / "ca-key.pem").read_bytes() == key  # nothing deleted


# --- modes, whatever the umask ----------------------------------------------------------------


def modes(state: Path) -> dict[str, int]:
    return {str(p.relative_to(state.parent)): mode(p) for p in [state, *sorted(state.rglob("*"))]}


UMASKS = [
    pytest.param(0o000, id="umask-000"),
    pytest.param(0o002, id="umask-002"),
    pytest.param(0o022, id="umask-022"),
    pytest.param(0o077, id="umask-077"),
]
SAFE = {
    "state": 0o700,
    "state/ca": 0o700,
    "state/ca/ca-key.pem": 0o600,
    "state/tls": 0o700,
    "state/tls/ca.pem": 0o644,
    "state/tls/notify-key.pem": 0o600,
    "state/tls/notify.pem": 0o644,
}


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", UMASKS)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: certs.ensure(t, ["notify"]), id="ensure"),
        pytest.param(
            lambda t: (certs.create_ca(t), certs.issue(t, "notify")), id="create_ca-and-issue"
        ),
        pytest.param(
            lambda t: (
                run_cli("certs", "init", "--tls-dir", str(t)),
                run_cli("certs", "issue", "notify", "--tls-dir", str(t)),
            ),
            id="mesh-certs",
        ),
    ],
)
def test_modes_whatever_the_umask(tmp_path: Path, mask: int, make: object) -> None:
    assert callable(make)
    os.umask(mask)
    make(tmp_path / "state" / "tls")
    assert modes(tmp_path / "state") == SAFE


@pytest.mark.parametrize(
    ("path", "loose", "fixed"),
    [
        pytest.param("state/tls", 0o777, 0o700, id="tls-dir-0777"),
        pytest.param("state/ca", 0o755, 0o700, id="ca-dir-0755"),
        pytest.param("state/ca/ca-key.pem", 0o644, 0o600, id="ca-key-0644"),
        pytest.param("state/tls/notify-key.pem", 0o644, 0o600, id="key-0644"),
        pytest.param("state/tls/notify-key.pem", 0o640, 0o600, id="key-0640"),
        pytest.param("state/tls/ca.pem", 0o666, 0o644, id="ca-cert-0666"),
        pytest.param("state/tls/notify.pem", 0o777, 0o644, id="cert-0777"),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda t: certs.ensure(t, ["notify"]), id="ensure"),
        pytest.param(lambda t: run_cli("certs", "init", "--tls-dir", str(t)), id="mesh-certs-init"),
    ],
)
def test_looser_modes_are_tightened_and_logged(  # noqa: PLR0917 (one parameter per column)
    tmp_path: Path,
    path: str,
    loose: int,
    fixed: int,
    call: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls_dir = tmp_path / "state" / "tls"
    certs.ensure(tls_dir, ["notify"])
    before = snapshot(tls_dir, tmp_path / "state" / "ca")
    os.chmod(tmp_path / path, loose)
    assert callable(call)
    with caplog.at_level(logging.WARNING, logger=CERTS_LOGGER):
        call(tls_dir)
    assert modes(tmp_path / "state") == SAFE
    assert caplog.messages == [
        f"{tmp_path / path} was mode {loose:04o}, now {fixed:04o}: "
        + (
            "only its owner may list or change it"
            if fixed == 0o700
            else "a private key is for its owner only"
            if fixed == 0o600
            else "only its owner may change it"
        )
    ]
    assert snapshot(tls_dir, tmp_path / "state" / "ca") == before  # fixed in place, not remade


def test_tighter_modes_are_left_alone(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    os.chmod(tls_dir / "notify.pem", 0o600)
    os.chmod(tls_dir / "notify-key.pem", 0o400)
    certs.ensure(tls_dir, ["notify"])
    assert (mode(tls_dir / "notify.pem"), mode(tls_dir / "notify-key.pem")) == (0o600, 0o400)


def test_a_loose_parent_directory_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o777)
    with caplog.at_level(logging.WARNING, logger=CERTS_LOGGER):
        certs.ensure(tmp_path / "shared" / "tls", ["notify"])
    assert caplog.messages == [  # once, for both directories
        f"{tmp_path / 'shared'} is writable by other users (mode 0777): they could put another "
        "directory in the place of tls or ca; make it 0755 or tighter"
    ]
    assert mode(tmp_path / "shared") == 0o777  # not ours to change


NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a file to another user"
)


@needs_root
@pytest.mark.parametrize(
    ("path", "what"),
    [
        pytest.param("tls/notify-key.pem", "key", id="leaf-key"),
        pytest.param("ca/ca-key.pem", "CA key", id="ca-key"),
        pytest.param("tls/ca.pem", "certificate", id="ca-cert"),
        pytest.param("tls", "directory", id="tls-dir"),
        pytest.param("ca", "directory", id="ca-dir"),
    ],
)
def test_files_of_another_user_are_refused(tmp_path: Path, path: str, what: str) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    os.chown(tmp_path / path, NOBODY, NOBODY)
    before = snapshot(tls_dir, tmp_path / "ca")
    for call in (
        lambda: certs.ensure(tls_dir, ["notify"]),
        lambda: certs.issue(tls_dir, "notify"),
        lambda: run_cli("certs", "init", "--tls-dir", str(tls_dir)),
    ):
        with pytest.raises(certs.UnsafeFileError) as refused:
            call()
        assert str(refused.value) == (
            f"{tmp_path / path} ({what}) belongs to uid {NOBODY}, not to this user (uid 0): "
            "another user can read or replace it, so it is refused; remove it (a new one is "
            "made) or give it to this user"
        )
    assert snapshot(tls_dir, tmp_path / "ca") == before


@needs_root
def test_a_ca_key_of_another_user_in_the_tls_dir_is_not_moved(tmp_path: Path) -> None:
    tls_dir, _ = old_layout(tmp_path)
    os.chown(tls_dir / "ca-key.pem", NOBODY, NOBODY)
    with pytest.raises(certs.UnsafeFileError, match=r"ca-key.pem \(CA key\) belongs to uid"):
        certs.ensure(tls_dir, ["notify"])
    assert not (tmp_path / "ca" / "ca-key.pem").exists()


def test_when_this_user_owns_nothing_there_everything_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ownership check without root: this process pretends to be someone else."""
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["notify"])
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(
        certs.UnsafeFileError, match=f"^{tls_dir} \\(directory\\) belongs to uid {me}"
    ):
        certs.ensure(tls_dir, ["notify"])


# --- mesh certs -------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mesh")
    certs_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls = str(tmp_path / "tls")
    assert run_cli("certs", "init", "--tls-dir", tls) == 0
    assert capsys.readouterr().out == (
        f"wrote {tls}/ca.pem (the CA certificate services verify peers with)\n"
        f"wrote {tmp_path}/ca/ca-key.pem (key mode 0600; keep it out of the TLS directory)\n"
    )
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
    assert f"key       {tmp_path}/ca/ca-key.pem" in out
    assert "notify-2.pem" in out
    assert "WARNING" not in out


def test_cli_ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls, keys = tmp_path / "tls", tmp_path / "keys"
    assert run_cli("certs", "init", "--tls-dir", str(tls), "--ca-dir", str(keys)) == 0
    assert f"wrote {keys}/ca-key.pem" in capsys.readouterr().out
    assert names(keys) == ["ca-key.pem"]
    assert not (tmp_path / "ca").exists()
    assert run_cli("certs", "issue", "notify", "--tls-dir", str(tls), "--ca-dir", str(keys)) == 0
    with pytest.raises(FileNotFoundError, match=r"no CA key .*--ca-dir"):
        run_cli("certs", "issue", "notify", "--tls-dir", str(tls))  # not where it looks first
    capsys.readouterr()
    assert run_cli("certs", "show", "--tls-dir", str(tls)) == 0
    assert f"key       not in {tmp_path}/ca (see --ca-dir)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="or inside it"):
        run_cli("certs", "init", "--tls-dir", str(tls), "--ca-dir", str(tls))


def test_cli_show_warns_of_a_ca_key_in_the_tls_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls_dir, _ = old_layout(tmp_path)
    assert run_cli("certs", "show", "--tls-dir", str(tls_dir)) == 0
    assert capsys.readouterr().out.endswith(
        f"WARNING: {tls_dir}/ca-key.pem is a CA key in the TLS directory services read; "
        "`mesh certs init` moves it out\n"
    )


def test_cli_issue_without_ca_raises_for_main_to_report(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mesh certs init"):
        run_cli("certs", "issue", "notify", "--tls-dir", str(tmp_path))


def test_cli_show_missing_name(tls_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mesh certs issue ghost"):
        run_cli("certs", "show", "ghost", "--tls-dir", str(tls_dir))


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


@pytest.mark.parametrize(
    ("flag", "tls_dir", "expected"),
    [
        pytest.param(Path("/keys"), Path(".mesh/tls"), Path("/keys"), id="flag-wins"),
        pytest.param(None, Path(".mesh/tls"), Path(".mesh/ca"), id="default"),
        pytest.param(None, Path("/env/certs"), Path("/env/certs-ca"), id="beside-another-name"),
    ],
)
def test_ca_dir_resolution(flag: Path | None, tls_dir: Path, expected: Path) -> None:
    assert certs_cli.ca_dir_from(flag, tls_dir) == expected


# -- hosts: servers reached at other addresses (an etcd member or NATS node on another host) --


def sans(path: Path) -> list[object]:
    extension = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [name.value for name in extension.value]


@pytest.mark.parametrize(
    ("hosts", "extra"),
    [
        ((), []),
        (("198.18.7.3",), [ipaddress.IPv4Address("198.18.7.3")]),
        (("etcd-0.etcd-peers.hms.svc",), ["etcd-0.etcd-peers.hms.svc"]),
        (("::1",), [ipaddress.IPv6Address("::1")]),
        # loopback is always there, and a host given twice is written once
        (("127.0.0.1", "localhost", "10.0.0.1", "10.0.0.1"), [ipaddress.IPv4Address("10.0.0.1")]),
    ],
)
def test_issue_adds_the_hosts_a_server_is_reached_at(
    tmp_path: Path, hosts: tuple[str, ...], extra: list[object]
) -> None:
    certs.create_ca(tmp_path / "tls")
    path = certs.issue(tmp_path / "tls", "etcd", hosts=hosts)
    assert sans(path) == [
        "spiffe://hms.local/svc/etcd",
        "etcd.svc.hms.local",
        "localhost",
        ipaddress.IPv4Address("127.0.0.1"),
        *extra,
    ]


@pytest.mark.parametrize("host", ["", "no spaces", "bad_label.example", "-dash.example", "a..b"])
def test_a_host_that_is_neither_an_address_nor_a_dns_name_is_refused(
    tmp_path: Path, host: str
) -> None:
    certs.create_ca(tmp_path / "tls")
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        certs.issue(tmp_path / "tls", "etcd", hosts=[host])


def test_ensure_reissues_a_certificate_missing_a_wanted_host(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    certs.ensure(tls, ["nats"])
    first = (tls / "nats.pem").read_bytes()
    certs.ensure(tls, ["nats"], hosts={"nats": ["127.0.0.1"]})  # already there: kept
    assert (tls / "nats.pem").read_bytes() == first
    certs.ensure(tls, ["nats"], hosts={"nats": ["198.18.0.1", "198.18.0.2"]})
    second = (tls / "nats.pem").read_bytes()
    assert second != first
    assert ipaddress.IPv4Address("198.18.0.2") in sans(tls / "nats.pem")
    certs.ensure(tls, ["nats"], hosts={"nats": ["198.18.0.2"]})  # a subset: kept
    assert (tls / "nats.pem").read_bytes() == second
