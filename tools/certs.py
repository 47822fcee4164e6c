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
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import (
    CA_CERT,
    TRUST_DOMAIN,
    CertInfo,
    check_deployment,
    describe,
    identity_dns_name,
    read_identity,
    spiffe_id,
)

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

CA_KEY = "ca-key.pem"

# notBefore sits in the past so that a peer whose clock lags a little accepts a fresh cert.
_CLOCK_SKEW = timedelta(minutes=5)
_RENEW_WITHIN = timedelta(days=7)


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
    check_deployment(name, "certificate name")
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
