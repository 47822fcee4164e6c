"""The mesh's local certificate authority: SPIFFE identities, a CA, and leaf certificates.

Layout of a TLS directory (``MESH_TLS_DIR``)::

    ca.pem  ca-key.pem            the CA (key mode 0600)
    <name>.pem  <name>-key.pem    one leaf per identity (key mode 0600)

Every leaf carries exactly one URI SAN, its SPIFFE ID ``spiffe://hms.local/svc/<deployment>``,
and the DNS SAN ``<deployment>.svc.hms.local`` derived from it. Clients pin that DNS name with
``grpc.ssl_target_name_override`` (grpcio shows clients no peer certificate), so a server whose
certificate was issued for another deployment fails the handshake. Every leaf is good for both
serverAuth and clientAuth: each service is a server and a client.

Files are replaced atomically (write to a temporary file, then rename), so a server reloading
its certificate never reads half a file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "TRUST_DOMAIN",
    "CertInfo",
    "create_ca",
    "describe",
    "ensure",
    "identity_dns_name",
    "issue",
    "read_identity",
    "spiffe_id",
]

TRUST_DOMAIN = "hms.local"
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"

# notBefore sits in the past so that a peer whose clock lags a little accepts a fresh cert.
_CLOCK_SKEW = timedelta(minutes=5)
_RENEW_WITHIN = timedelta(days=7)
# An RFC 1123 DNS label, since it becomes one in `identity_dns_name` (no trailing '-').
_DEPLOYMENT = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_SPIFFE = re.compile(r"spiffe://(?P<domain>[^/]+)/svc/(?P<deployment>[^/]+)")


def _check_deployment(deployment: str, what: str = "deployment") -> str:
    if not isinstance(deployment, str) or not _DEPLOYMENT.fullmatch(deployment):
        raise ValueError(
            f"{what} {deployment!r} is not valid: use 1 to 63 lowercase letters, digits "
            "or '-', starting with a letter and not ending with '-'"
        )
    return deployment


def _check_trust_domain(trust_domain: str) -> str:
    if not isinstance(trust_domain, str) or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"trust domain {trust_domain!r} is not a lowercase DNS name")
    return trust_domain


def spiffe_id(deployment: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """The SPIFFE ID of a deployment.

    >>> spiffe_id("notify")
    'spiffe://hms.local/svc/notify'
    """
    _check_deployment(deployment)
    _check_trust_domain(trust_domain)
    return f"spiffe://{trust_domain}/svc/{deployment}"


def identity_dns_name(spiffe: str) -> str:
    """The DNS SAN that stands for a SPIFFE ID; clients pin it as the TLS target name.

    >>> identity_dns_name("spiffe://hms.local/svc/notify")
    'notify.svc.hms.local'
    """
    match = _SPIFFE.fullmatch(spiffe) if isinstance(spiffe, str) else None
    if match is None:
        raise ValueError(
            f"SPIFFE ID {spiffe!r} is malformed: expected spiffe://<trust-domain>/svc/<deployment>"
        )
    try:
        domain = _check_trust_domain(match["domain"])
        deployment = _check_deployment(match["deployment"])
    except ValueError as exc:
        raise ValueError(f"SPIFFE ID {spiffe!r} is malformed: {exc}") from None
    return f"{deployment}.svc.{domain}"


@dataclass(frozen=True)
class CertInfo:
    """What an operator wants to know about a certificate (see `describe`)."""

    subject: str
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime
    serial: int
    is_ca: bool


def describe(cert_pem: bytes) -> CertInfo:
    """Summarise a PEM certificate: subject, SANs, expiry, serial."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        is_ca=is_ca,
    )


def read_identity(cert_pem: bytes) -> str:
    """The SPIFFE ID of a mesh certificate: its one and only URI SAN.

    Raises ValueError if the certificate carries no URI SAN or more than one: an identity
    that could be read two ways is no identity.
    """
    uris = describe(cert_pem).uris
    if len(uris) != 1:
        raise ValueError(f"a mesh certificate must carry exactly one URI SAN, found {len(uris)}")
    return uris[0]


def create_ca(tls_dir: Path, *, valid_days: int = 3650) -> None:
    """Create the mesh CA (EC P-256) as ``ca.pem`` and ``ca-key.pem`` in `tls_dir`.

    Refuses with FileExistsError to overwrite an existing CA: that would orphan every
    certificate it signed.
    """
    _check_days(valid_days)
    tls_dir = Path(tls_dir)
    for existing in (tls_dir / CA_CERT, tls_dir / CA_KEY):
        if existing.exists():
            raise FileExistsError(
                f"a CA already exists in {tls_dir} ({existing.name}); not replacing it"
            )
    tls_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HMS Mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"HMS Mesh CA ({TRUST_DOMAIN})"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first, so that wherever ca.pem exists (what `ensure` looks for) its key does too.
    _write_atomic(tls_dir / CA_KEY, _key_pem(key), 0o600)
    _write_atomic(tls_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue(
    tls_dir: Path, name: str, *, deployment: str | None = None, valid_days: int = 825
) -> Path:
    """Sign a leaf certificate for `name` with the CA in `tls_dir`; return the cert's path.

    Writes ``<name>.pem`` (the leaf alone) and ``<name>-key.pem`` (0600), replacing any older
    pair, which is how a certificate is rotated. The identity is `deployment` (default: `name`).

    >>> issue(Path(".mesh/tls"), "notify")  # doctest: +SKIP
    PosixPath('.mesh/tls/notify.pem')
    """
    _check_deployment(name, "certificate name")
    if name == "ca":
        raise ValueError("certificate name 'ca' is reserved for the CA's own files")
    deployment = name if deployment is None else deployment
    identity = spiffe_id(deployment)
    _check_days(valid_days)
    tls_dir = Path(tls_dir)
    ca_cert, ca_key = _load_ca(tls_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    not_after = min(now + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(identity),
            x509.DNSName(identity_dns_name(identity)),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = tls_dir / f"{name}.pem"
    # A reader between these two renames sees a mismatched pair; mesh.tls checks the pair
    # before using it, and retries on the next handshake.
    _write_atomic(tls_dir / f"{name}-key.pem", _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def ensure(tls_dir: Path, names: Iterable[str]) -> None:
    """Make `tls_dir` ready for `names`: create it and the CA if missing, then issue every
    certificate that is missing, unreadable, not signed by this CA, or expires within 7 days.

    Idempotent: a second call with nothing due writes nothing.
    """
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    if not (tls_dir / CA_CERT).exists():
        create_ca(tls_dir)
    ca_cert, _ = _load_ca(tls_dir)
    for name in names:
        if _needs_issue(tls_dir, name, ca_cert):
            issue(tls_dir, name)


def _needs_issue(tls_dir: Path, name: str, ca_cert: x509.Certificate) -> bool:
    cert_path, key_path = tls_dir / f"{name}.pem", tls_dir / f"{name}-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return True  # corrupt, or signed by a CA that has since been replaced
    return cert.not_valid_after_utc - datetime.now(UTC) < _RENEW_WITHIN


def _load_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = tls_dir / CA_CERT, tls_dir / CA_KEY
    for path in (cert_path, key_path):
        if not path.exists():
            raise FileNotFoundError(
                f"no CA in {tls_dir}: {path.name} is missing (run `mesh certs init` first)"
            )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(valid_days: int) -> None:
    if not isinstance(valid_days, int) or valid_days < 1:
        raise ValueError(f"valid_days must be a positive number of days, got {valid_days!r}")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` in one rename; the file never exists with a wider mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
