"""How a process reaches etcd and NATS: over TLS, and as whom (docs/security.md, "The control
plane: etcd and NATS"; the settings are tabled in README.md, "Environment").

A secured control plane is named by its URLs: etcd endpoints ``https://host:port``, NATS URLs
``tls://host:port``. A client then checks the server's certificate against a CA and presents a
client certificate, by default its own mesh identity (the certificate it serves and calls
with, ``<tls-dir>/<name>.pem``, and the mesh CA ``<tls-dir>/ca.pem``):

- etcd (``--client-cert-auth``) takes the certificate's CN, the certificate name, as the etcd
  user, whose roles say which keys it may read and write;
- NATS (``verify_and_map``) takes the certificate's SPIFFE ID as the NATS user, whose
  permissions say which subjects it may publish and subscribe to; its replies come to its own
  inbox prefix, ``_INBOX.<deployment>``, which no other user may subscribe to.

Files given explicitly (``--etcd-ca``, ``--nats-cert``, ... or ``MESH_ETCD_CA``, ...) replace
any of the three, and make the connection TLS whatever its URL says. Plain ``host:port`` and
``nats://`` URLs are plaintext: tests and ``mesh up --insecure-control-plane``.

The library never reads the environment: the edges (a service's runner, the ``mesh`` command)
read flags and ``MESH_*`` variables and hand over these values.

>>> tls = etcd_client_tls(["https://127.0.0.1:2379"], None, TlsFiles(Path(".mesh/tls"), "notify"))
>>> tls.cert
PosixPath('.mesh/tls/notify.pem')
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from mesh.identity import read_identity
from mesh.tls import TlsFiles

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ClientTls",
    "NatsAccess",
    "TlsOverrides",
    "etcd_client_tls",
    "etcd_uses_tls",
    "inbox_prefix",
    "nats_access",
    "nats_uses_tls",
]

DEFAULT_INBOX_PREFIX = "_INBOX"
_SPIFFE_DEPLOYMENT = re.compile(r"spiffe://[^/]+/svc/(?P<deployment>[a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class ClientTls:
    """TLS to etcd or NATS: the CA the server's certificate must chain to, and the client
    certificate (with its key) that says who this client is."""

    ca: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @classmethod
    def of(cls, files: TlsFiles) -> ClientTls:
        """The mesh identity `files` as a control-plane client: the mesh CA, its certificate."""
        return cls(files.ca, files.cert, files.key)

    def require(self) -> None:
        """FileNotFoundError naming the first of CA, certificate or key that is missing."""
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert)):
            if not path.is_file():
                raise FileNotFoundError(f"control-plane TLS: {what} {path} is missing")
        if not self.key.is_file():
            raise FileNotFoundError(f"control-plane TLS: key {self.key} is missing")

    def identity(self) -> str | None:
        """The SPIFFE ID the certificate carries, or None (not a mesh certificate)."""
        try:
            return read_identity(self.cert.read_bytes())
        except (OSError, ValueError):
            return None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials (etcd): trust the CA, present the certificate."""
        import grpc

        self.require()
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context (NATS): trust the CA only, check the server's name, present the
        certificate."""
        self.require()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass(frozen=True)
class TlsOverrides:
    """Control-plane TLS files given explicitly (flags or environment); each one left out is
    taken from the process's mesh identity."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def of(cls, ca: str | Path | None, cert: str | Path | None, key: str | Path | None) -> Self:
        """From flag values: an empty string is a file not given."""
        return cls(*(Path(v) if v else None for v in (ca, cert, key)))

    def given(self) -> bool:
        return any(v is not None for v in (self.ca, self.cert, self.key))

    def resolve(self, identity: TlsFiles | None, system: str) -> ClientTls | None:
        """The TLS settings these files make with `identity` filling the gaps; None if no
        file was given. ValueError naming the flags when a part is missing."""
        if not self.given():
            return None
        if (self.cert is None) != (self.key is None):
            raise ValueError(f"--{system}-cert and --{system}-key go together: give both")
        ca, cert, key = self.ca, self.cert, self.key
        if identity is not None:
            ca = ca or identity.ca
            cert, key = cert or identity.cert, key or identity.key
        if ca is None or cert is None or key is None:
            missing = [f"--{system}-{n}" for n, v in (("ca", ca), ("cert", cert)) if v is None]
            raise ValueError(
                f"{system} TLS: give {' and '.join(missing)} (or a mesh identity to take it from)"
            )
        return ClientTls(ca, cert, key)


def _scheme(url: str) -> str:
    scheme, sep, _ = url.strip().partition("://")
    return scheme.lower() if sep else ""


def _uses_tls(urls: Sequence[str], tls_scheme: str, plain: tuple[str, ...], what: str) -> bool:
    schemes = {_scheme(u) for u in urls if u.strip()}
    unknown = schemes - {tls_scheme, *plain}
    if unknown:
        raise ValueError(f"{what} URL scheme {sorted(unknown)[0]!r}: use {tls_scheme}:// or none")
    if tls_scheme in schemes and len(schemes) > 1:
        raise ValueError(f"{what}: some URLs are {tls_scheme}:// and some are not: {list(urls)}")
    return tls_scheme in schemes


def etcd_uses_tls(endpoints: Sequence[str]) -> bool:
    """True when the endpoints are ``https://`` (all of them: mixing is a ValueError)."""
    return _uses_tls(endpoints, "https", ("", "http"), "etcd")


def nats_uses_tls(urls: Sequence[str]) -> bool:
    """True when the NATS URLs are ``tls://`` (all of them: mixing is a ValueError)."""
    return _uses_tls(urls, "tls", ("", "nats"), "NATS")


def etcd_client_tls(
    endpoints: Sequence[str], tls: ClientTls | None, identity: TlsFiles | None
) -> ClientTls | None:
    """The TLS settings for etcd at `endpoints`: `tls` if given; else, for ``https://``
    endpoints, the process's mesh identity; else None (plaintext).

    ValueError when the endpoints want TLS and there is no certificate to present."""
    if tls is not None:
        return tls
    if not etcd_uses_tls(endpoints):
        return None
    if identity is None:
        raise ValueError(
            f"etcd at {','.join(endpoints)} is TLS (https://) but this process has no client "
            "certificate: give --etcd-cert and --etcd-key (MESH_ETCD_CERT, MESH_ETCD_KEY) and "
            "--etcd-ca, or a mesh identity (--tls-dir)"
        )
    return ClientTls.of(identity)


def inbox_prefix(tls: ClientTls | None) -> str:
    """Where a client's replies arrive: ``_INBOX.<deployment>`` for a mesh identity (the only
    inbox its NATS user may subscribe to), ``_INBOX`` otherwise."""
    identity = tls.identity() if tls is not None else None
    match = _SPIFFE_DEPLOYMENT.fullmatch(identity) if identity else None
    if match is None:
        return DEFAULT_INBOX_PREFIX
    return f"{DEFAULT_INBOX_PREFIX}.{match['deployment']}"


@dataclass(frozen=True)
class NatsAccess:
    """How to connect to NATS: TLS with a client certificate (mapped to a NATS user by the
    server), and/or a NATS credentials file (a user JWT and NKEY seed, for a NATS that uses
    them). Neither: plaintext, no user."""

    tls: ClientTls | None = None
    creds: Path | None = None

    @property
    def secured(self) -> bool:
        return self.tls is not None or self.creds is not None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            _quiet_tls_eof()
            options["tls"] = self.tls.ssl_context()
            options["inbox_prefix"] = inbox_prefix(self.tls)
        if self.creds is not None:
            if not self.creds.is_file():
                raise FileNotFoundError(f"NATS credentials file {self.creds} is missing")
            options["user_credentials"] = str(self.creds)
        return options


class _TlsEofNoise(logging.Filter):
    """Drops the one warning asyncio logs each time a TLS connection of nats-py closes (its
    protocol returns True from eof_received, which means nothing under TLS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


_TLS_EOF_NOISE = _TlsEofNoise()


def _quiet_tls_eof() -> None:
    logger = logging.getLogger("asyncio")
    if _TLS_EOF_NOISE not in logger.filters:
        logger.addFilter(_TLS_EOF_NOISE)


def nats_access(
    urls: Sequence[str],
    tls: ClientTls | None,
    identity: TlsFiles | None,
    creds: Path | None = None,
) -> NatsAccess:
    """The NATS settings for `urls`: `tls` if given; else, for ``tls://`` URLs, the process's
    mesh identity; else plaintext. `creds` adds a credentials file either way."""
    if tls is None and nats_uses_tls(urls):
        if identity is None:
            raise ValueError(
                f"NATS at {','.join(urls)} is TLS (tls://) but this process has no client "
                "certificate: give --nats-cert and --nats-key (MESH_NATS_CERT, MESH_NATS_KEY) "
                "and --nats-ca, or a mesh identity (--tls-dir)"
            )
        tls = ClientTls.of(identity)
    return NatsAccess(tls, creds)
