"""Mesh identities: SPIFFE IDs, the DNS name that stands for each, and reading them from a
certificate. The library checks identities with these; issuing certificates is the tooling's
job (`mesh certs`, tools/certs.py).

Every mesh certificate carries exactly one URI SAN, its SPIFFE ID
``spiffe://hms.local/svc/<deployment>``, and the DNS SAN ``<deployment>.svc.hms.local`` derived
from it. Clients pin that DNS name with ``grpc.ssl_target_name_override`` (grpcio shows clients
no peer certificate), so a server whose certificate was issued for another deployment fails
the handshake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

__all__ = [
    "CA_CERT",
    "TRUST_DOMAIN",
    "CertInfo",
    "caller_identity",
    "check_deployment",
    "check_trust_domain",
    "describe",
    "identity_dns_name",
    "read_identity",
    "spiffe_id",
]

TRUST_DOMAIN = "hms.local"
CA_CERT = "ca.pem"

# An RFC 1123 DNS label, since it becomes one in `identity_dns_name` (no trailing '-').
_DEPLOYMENT = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_SPIFFE = re.compile(r"spiffe://(?P<domain>[^/]+)/svc/(?P<deployment>[^/]+)")


def check_deployment(deployment: str, what: str = "deployment") -> str:
    if not isinstance(deployment, str) or not _DEPLOYMENT.fullmatch(deployment):
        raise ValueError(
            f"{what} {deployment!r} is not valid: use 1 to 63 lowercase letters, digits "
            "or '-', starting with a letter and not ending with '-'"
        )
    return deployment


def check_trust_domain(trust_domain: str) -> str:
    if not isinstance(trust_domain, str) or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"trust domain {trust_domain!r} is not a lowercase DNS name")
    return trust_domain


def spiffe_id(deployment: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """The SPIFFE ID of a deployment.

    >>> spiffe_id("notify")
    'spiffe://hms.local/svc/notify'
    """
    check_deployment(deployment)
    check_trust_domain(trust_domain)
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
        domain = check_trust_domain(match["domain"])
        deployment = check_deployment(match["deployment"])
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


def caller_identity(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The caller's SPIFFE ID from a grpc.aio ``context.auth_context()``, or None.

    grpcio sets ``peer_spiffe_id`` only when the peer certificate carries exactly one URI SAN
    and it is a valid SPIFFE ID; ``peer_uri`` lists every URI SAN. Both must agree on one ID:
    a certificate that could be read as two identities is no identity. Plaintext peers have
    neither key.

    >>> caller_identity({"peer_spiffe_id": [b"spiffe://hms.local/svc/a"],
    ...                  "peer_uri": [b"spiffe://hms.local/svc/a"]})
    'spiffe://hms.local/svc/a'
    >>> caller_identity({"transport_security_type": [b"insecure"]}) is None
    True
    """
    spiffe_ids = list(auth_context.get("peer_spiffe_id") or ())
    uris = list(auth_context.get("peer_uri") or ())
    if len(spiffe_ids) != 1 or len(uris) > 1 or (uris and uris[0] != spiffe_ids[0]):
        return None
    value = spiffe_ids[0]
    try:
        identity = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        return None
    return identity if identity.startswith("spiffe://") else None
