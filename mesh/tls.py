"""mTLS credentials for mesh servers and channels, from a TLS directory (`mesh certs` makes one).

Servers require a client certificate from the mesh CA and pick up a rotated certificate
without a restart: grpcio asks a fetcher before *every* new handshake, and ours re-reads the
files only when they changed on disk. Clients cannot see the server's certificate in grpcio,
so they pin the server's identity through its DNS SAN (`channel_options_for`).

>>> files = TlsFiles(Path(".mesh/tls"), "notify")
>>> files.cert
PosixPath('.mesh/tls/notify.pem')
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh.identity import CA_CERT, identity_dns_name, read_identity

__all__ = [
    "CertificateReloader",
    "TlsFiles",
    "channel_credentials",
    "channel_options_for",
    "identity_of",
    "server_credentials",
]

log = logging.getLogger(__name__)

# What identifies one version of a file: a rename gives a new inode even within one mtime tick.
_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class TlsFiles:
    """Where one identity's CA, certificate and key live: ``<tls_dir>/<name>.pem`` etc."""

    tls_dir: Path
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("TlsFiles.name must be a non-empty certificate name")
        if "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"TlsFiles.name {self.name!r} must be a file name, not a path")
        if not isinstance(self.tls_dir, Path):
            object.__setattr__(self, "tls_dir", Path(self.tls_dir))

    @property
    def ca(self) -> Path:
        """The mesh CA's certificate (the trust root for peers)."""
        return self.tls_dir / CA_CERT

    @property
    def cert(self) -> Path:
        """This identity's leaf certificate."""
        return self.tls_dir / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        """This identity's private key."""
        return self.tls_dir / f"{self.name}-key.pem"

    def require(self) -> None:
        """Raise FileNotFoundError naming the first of CA, certificate or key that is missing."""
        for what, path in (
            ("CA certificate", self.ca),
            ("certificate", self.cert),
            ("key", self.key),
        ):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{what} {path} is missing (create it with `mesh certs init` / "
                    f"`mesh certs issue {self.name}`)"
                )


class CertificateReloader:
    """The fetcher behind `server_credentials`: re-reads the files when they change on disk.

    A half-rotated pair (new key, old certificate) is skipped and retried on the next
    handshake, so the server keeps serving its previous certificate meanwhile.
    `reloads` counts the configurations handed to grpcio after the initial one.
    """

    def __init__(self, files: TlsFiles) -> None:
        files.require()
        self.files = files
        self.reloads = 0
        self._lock = threading.Lock()  # grpcio may call the fetcher from several threads
        self._stamps = self._stat()
        self._last_warning: str | None = None
        self.initial = self._load()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by the mesh CA."""
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            # grpcio's fetcher returns None for "no change", as its docstring says; types-grpcio
            # declares it as always returning a configuration.
            self,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamps = self._stat()
            except OSError as exc:
                self._warn_once(f"cannot stat TLS files, keeping the current ones: {exc}")
                return None
            if stamps == self._stamps:
                return None
            # This runs inside grpcio's handshake path: whatever goes wrong, keep serving the
            # previous certificate and try again on the next connection.
            try:
                config = self._load()
            except Exception as exc:
                self._warn_once(f"not reloading TLS files yet: {exc}")
                return None
            self._stamps, self._last_warning = stamps, None
            self.reloads += 1
            log.info("reloaded TLS certificate %s", self.files.cert)
            return config

    def _stat(self) -> tuple[_Stamp, ...]:
        stats = (os.stat(p) for p in (self.files.ca, self.files.cert, self.files.key))
        return tuple((s.st_mtime_ns, s.st_ino, s.st_size) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        ca, cert, key = (p.read_bytes() for p in (self.files.ca, self.files.cert, self.files.key))
        _check_pair(cert, key, self.files)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _warn_once(self, message: str) -> None:
        # Called on every handshake while the files are bad: say it once, not per connection.
        if message != self._last_warning:
            log.warning("%s", message)
        self._last_warning = message


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """mTLS server credentials that follow certificate rotation on disk without a restart.

    >>> server.add_secure_port("[::]:0", server_credentials(files))  # doctest: +SKIP
    """
    return CertificateReloader(files).credentials()


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials: trust the mesh CA and present this identity's certificate."""
    files.require()
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )


def channel_options_for(identity: str) -> list[tuple[str, str]]:
    """Channel options that make the handshake fail unless the server holds `identity`.

    >>> channel_options_for("spiffe://hms.local/svc/notify")
    [('grpc.ssl_target_name_override', 'notify.svc.hms.local')]
    """
    return [("grpc.ssl_target_name_override", identity_dns_name(identity))]


def instance_channel(address: str, identity: str, files: TlsFiles) -> grpc.aio.Channel:
    """An mTLS channel to one instance that only completes its handshake if the server holds
    the identity the instance registered (`identity`, a SPIFFE ID).

    >>> channel = instance_channel("127.0.0.1:50051", "spiffe://hms.local/svc/notify", files)
    """
    return grpc.aio.secure_channel(
        address, channel_credentials(files), options=channel_options_for(identity)
    )


def identity_of(files: TlsFiles) -> str:
    """The SPIFFE ID in this identity's certificate (what to register in the registry)."""
    files.require()
    return read_identity(files.cert.read_bytes())


def _check_pair(cert_pem: bytes, key_pem: bytes, files: TlsFiles) -> None:
    """Raise ValueError unless the key belongs to the certificate (e.g. mid-rotation)."""
    cert_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    private = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert_key.public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ValueError(f"{files.key} does not match {files.cert}")
