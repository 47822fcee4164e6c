"""The mesh's local certificate authority: SPIFFE identities, a CA, and leaf certificates.

Layout: the TLS directory (``MESH_TLS_DIR``) is what services read; the CA key lives apart, in
the CA directory, because whoever holds it can issue any identity::

    <tls-dir>/                     0700
        ca.pem                     the CA certificate: peers are verified with it (0644)
        <name>.pem  <name>-key.pem one leaf per identity (certificate 0644, key 0600)
    <ca-dir>/                      0700; by default beside the TLS directory (`default_ca_dir`)
        ca-key.pem                 the CA key (0600), never in the TLS directory

Every leaf carries exactly one URI SAN, its SPIFFE ID ``spiffe://hms.local/svc/<deployment>``,
and the DNS SAN ``<deployment>.svc.hms.local`` derived from it. Clients pin that DNS name with
``grpc.ssl_target_name_override`` (grpcio shows clients no peer certificate), so a server whose
certificate was issued for another deployment fails the handshake. Every leaf is good for both
serverAuth and clientAuth: each service is a server and a client.

Modes are set whatever the umask: directories 0700, keys 0600, certificates 0644. `create_ca`,
`issue` and `ensure` first make both directories safe: a CA key found in the TLS directory (as
made before the key moved out) is moved to the CA directory, looser modes are tightened, and a
file or directory owned by another user is refused (`UnsafeFileError`); each change is logged
at WARNING on this module's logger.

Files are replaced atomically (write to a temporary file, then rename), so a server reloading
its certificate never reads half a file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hms_tools.errors import OperatorError
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
    "CERT_MODE",
    "DIR_MODE",
    "KEY_MODE",
    "TRUST_DOMAIN",
    "CertInfo",
    "UnsafeFileError",
    "create_ca",
    "default_ca_dir",
    "describe",
    "ensure",
    "identity_dns_name",
    "issue",
    "read_identity",
    "spiffe_id",
]

log = logging.getLogger(__name__)

CA_KEY = "ca-key.pem"
DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644

# notBefore sits in the past so that a peer whose clock lags a little accepts a fresh cert.
_CLOCK_SKEW = timedelta(minutes=5)
_RENEW_WITHIN = timedelta(days=7)
_CA_DAYS = 3650
_LEAF_DAYS = 825

_CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class UnsafeFileError(OperatorError):
    """A file or directory of the CA that another user owns, or a CA key in two places that
    differ: refused rather than used. The message names it and says what to do."""


def default_ca_dir(tls_dir: Path) -> Path:
    """Where the CA key for `tls_dir` lives unless told: beside it, never inside it. ``ca``
    beside a TLS directory named ``tls``, ``<name>-ca`` beside any other, so that two TLS
    directories side by side (two CAs) never share a key directory.

    >>> default_ca_dir(Path(".mesh/tls"))
    PosixPath('.mesh/ca')
    >>> default_ca_dir(Path("/srv/hms/certs"))
    PosixPath('/srv/hms/certs-ca')
    """
    tls_dir = Path(tls_dir)
    if tls_dir.name in ("", ".", ".."):
        tls_dir = Path(os.path.abspath(tls_dir))
    return tls_dir.with_name("ca" if tls_dir.name == "tls" else f"{tls_dir.name}-ca")


def create_ca(tls_dir: Path, *, ca_dir: Path | None = None, valid_days: int = _CA_DAYS) -> None:
    """Create the mesh CA (EC P-256): ``ca-key.pem`` in `ca_dir` (default: `default_ca_dir`),
    ``ca.pem`` in `tls_dir`.

    Refuses with FileExistsError to overwrite an existing CA: that would orphan every
    certificate it signed. The directories are made safe first, even then.
    """
    _check_days(valid_days)
    tls_dir, ca_dir = _dirs(tls_dir, ca_dir)
    _secure(tls_dir, ca_dir, create=True)
    for existing in (tls_dir / CA_CERT, ca_dir / CA_KEY):
        if existing.exists():
            raise FileExistsError(f"a CA already exists: {existing} is there; not replacing it")
    _create_ca(tls_dir, ca_dir, valid_days)


def issue(
    tls_dir: Path,
    name: str,
    *,
    ca_dir: Path | None = None,
    deployment: str | None = None,
    valid_days: int = _LEAF_DAYS,
    hosts: Sequence[str] = (),
) -> Path:
    """Sign a leaf certificate for `name` with the CA (``ca.pem`` in `tls_dir`, its key in
    `ca_dir`, default `default_ca_dir`); return the certificate's path.

    Writes ``<name>.pem`` (the leaf alone) and ``<name>-key.pem`` (0600), replacing any older
    pair, which is how a certificate is rotated. The identity is `deployment` (default: `name`).
    `hosts` (DNS names or IP addresses) are added to the SANs: a server reached by them, such
    as an etcd member or a NATS node on another host, whose peers check the name they dialled.

    >>> issue(Path(".mesh/tls"), "notify")  # doctest: +SKIP
    PosixPath('.mesh/tls/notify.pem')
    """
    deployment = _check_name(name, deployment)
    _check_days(valid_days)
    tls_dir, ca_dir = _dirs(tls_dir, ca_dir)
    _secure(tls_dir, ca_dir, create=False)
    return _issue(tls_dir, name, deployment, valid_days, _load_ca(tls_dir, ca_dir), hosts=hosts)


def ensure(
    tls_dir: Path,
    names: Iterable[str],
    *,
    ca_dir: Path | None = None,
    hosts: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Make `tls_dir` ready for `names`: create it, the CA directory (`ca_dir`, default
    `default_ca_dir`) and the CA if missing, make them safe (see the module's doc), then issue
    every certificate that is missing, unreadable, not signed by this CA, expires within
    7 days, or lacks one of the host names `hosts` gives for it (see `issue`).

    Idempotent: a second call with nothing due writes nothing. The CA key is read only when
    something is due.
    """
    names = list(names)
    for name in names:
        _check_name(name, None)
    tls_dir, ca_dir = _dirs(tls_dir, ca_dir)
    _secure(tls_dir, ca_dir, create=True)
    if not (tls_dir / CA_CERT).exists():
        if (ca_dir / CA_KEY).exists():
            raise FileNotFoundError(
                f"{ca_dir / CA_KEY} is there but {tls_dir / CA_CERT} is missing: put the CA "
                "certificate back, or remove the key to start a new CA (every certificate "
                "it signed would then be reissued)"
            )
        _create_ca(tls_dir, ca_dir, _CA_DAYS)
    ca_cert = x509.load_pem_x509_certificate((tls_dir / CA_CERT).read_bytes())
    wanted = {name: tuple((hosts or {}).get(name, ())) for name in names}
    due = [name for name in names if _needs_issue(tls_dir, name, ca_cert, wanted[name])]
    if due:
        ca = _load_ca(tls_dir, ca_dir)
        for name in due:
            _issue(tls_dir, name, name, _LEAF_DAYS, ca, hosts=wanted[name])


def _check_name(name: str, deployment: str | None) -> str:
    """Check a certificate name and its deployment (default: the name); return the latter."""
    check_deployment(name, "certificate name")
    if name == "ca":
        raise ValueError("certificate name 'ca' is reserved for the CA's own files")
    deployment = name if deployment is None else deployment
    spiffe_id(deployment)  # raises ValueError naming a bad deployment
    return deployment


def _create_ca(tls_dir: Path, ca_dir: Path, valid_days: int) -> None:
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
    _write_atomic(ca_dir / CA_KEY, _key_pem(key), KEY_MODE)
    _write_atomic(tls_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for `hosts`: an IP address as such, anything else as a DNS name.
    ValueError names a host that is neither."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.rstrip(".").split(".")
        if not host or not all(_DNS_LABEL_CHARS.fullmatch(label) for label in labels):
            raise ValueError(f"certificate host {host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host))
    return names


_DNS_LABEL_CHARS = re.compile(r"(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)")
_LOCAL_HOSTS = ("localhost", "127.0.0.1")


def _issue(
    tls_dir: Path,
    name: str,
    deployment: str,
    valid_days: int,
    ca: _CA,
    *,
    hosts: Sequence[str] = (),
) -> Path:
    ca_cert, ca_key = ca
    identity = spiffe_id(deployment)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    not_after = min(now + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    extra = [h for h in dict.fromkeys(hosts) if h not in _LOCAL_HOSTS]
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(identity),
            x509.DNSName(identity_dns_name(identity)),
            *_host_names([*_LOCAL_HOSTS, *extra]),
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
    _write_atomic(tls_dir / f"{name}-key.pem", _key_pem(key), KEY_MODE)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return cert_path


def _needs_issue(
    tls_dir: Path, name: str, ca_cert: x509.Certificate, hosts: Sequence[str] = ()
) -> bool:
    cert_path, key_path = tls_dir / f"{name}.pem", tls_dir / f"{name}-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return True  # corrupt, or signed by a CA that has since been replaced
    if hosts and not set(_host_names(hosts)) <= set(_sans(cert)):
        return True  # a host it must now answer for is missing
    return cert.not_valid_after_utc - datetime.now(UTC) < _RENEW_WITHIN


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _load_ca(tls_dir: Path, ca_dir: Path) -> _CA:
    cert_path, key_path = tls_dir / CA_CERT, ca_dir / CA_KEY
    if not cert_path.exists():
        raise FileNotFoundError(
            f"no CA in {tls_dir}: {CA_CERT} is missing (run `mesh certs init` first)"
        )
    if not key_path.exists():
        raise FileNotFoundError(
            f"no CA key for {cert_path}: {key_path} is missing (the CA key lives apart from "
            "the TLS directory; give its directory with --ca-dir)"
        )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise ValueError(
            f"{key_path} is not the key of {cert_path}: is {ca_dir} this CA's key directory?"
        )
    return cert, key


def _public_der(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- the directories: apart, owned by this user, modes whatever the umask ----------------------


def _dirs(tls_dir: Path, ca_dir: Path | None) -> tuple[Path, Path]:
    """The TLS and CA directories; the CA directory is neither the TLS directory nor in it."""
    tls_dir = Path(tls_dir)
    ca_dir = default_ca_dir(tls_dir) if ca_dir is None else Path(ca_dir)
    tls_real, ca_real = Path(os.path.realpath(tls_dir)), Path(os.path.realpath(ca_dir))
    if ca_real == tls_real or tls_real in ca_real.parents:
        raise ValueError(
            f"the CA key directory {ca_dir} is the TLS directory {tls_dir} or inside it: "
            "services read the TLS directory, so the CA key must live apart (another --ca-dir)"
        )
    return tls_dir, ca_dir


def _secure(tls_dir: Path, ca_dir: Path, *, create: bool) -> None:
    """Both directories 0700 (created if `create`), a CA key in the TLS directory moved out,
    every ``*.pem`` in them no looser than 0600 (keys) or 0644. Everything there is checked to
    be this user's before anything is changed: a refusal leaves the directories as they were."""
    for directory in (tls_dir, ca_dir):
        if directory.exists():
            _check_dir(directory)
            for path in _pem_files(directory):
                _check_file(path)
    for directory in (tls_dir, ca_dir):
        if create:
            _make_private_dir(directory)
        elif directory.exists():
            _secure_dir(directory)
    _warn_of_open_parents(tls_dir, ca_dir)
    _move_legacy_key(tls_dir, ca_dir)
    for directory in (tls_dir, ca_dir):
        if directory.is_dir():
            for path in _pem_files(directory):
                _secure_file(path)


def _pem_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pem"))


def _wanted(path: Path) -> int:
    return KEY_MODE if path.name.endswith("-key.pem") else CERT_MODE


def _make_private_dir(directory: Path) -> None:
    """Create `directory` and any missing parent 0700 whatever the umask; check it if it was
    there."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for created in reversed(missing):
        try:
            created.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: checked below like any existing one
        os.chmod(created, DIR_MODE)  # mkdir's mode went through the umask; chmod's does not
    _secure_dir(directory)


def _check_dir(directory: Path) -> os.stat_result:
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    _check_owner(directory, st, "directory")
    return st


def _secure_dir(directory: Path) -> None:
    _tighten(directory, _check_dir(directory), DIR_MODE, "only its owner may list or change it")


def _warn_of_open_parents(*directories: Path) -> None:
    """A parent others may write (and not sticky, as /tmp is) lets them swap a directory: it
    is not this module's to change, so it is reported."""
    parents: dict[Path, list[str]] = {}
    for directory in directories:
        if directory.exists():
            absolute = Path(os.path.abspath(directory))
            parents.setdefault(absolute.parent, []).append(absolute.name)
    for parent, names in parents.items():
        mode = os.stat(parent).st_mode
        if mode & 0o022 and not mode & stat.S_ISVTX:
            log.warning(
                "%s is writable by other users (mode %04o): they could put another directory "
                "in the place of %s; make it 0755 or tighter",
                parent,
                stat.S_IMODE(mode),
                " or ".join(names),
            )


def _check_file(path: Path) -> os.stat_result | None:
    """The file's stat if it is a regular file (through a symlink) this user owns (the
    symlink too); None if there is none; UnsafeFileError if another user owns either."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        return None  # gone meanwhile, or a symlink to nothing: nothing to read or protect
    if not stat.S_ISREG(st.st_mode):
        return None
    what = "key" if _wanted(path) == KEY_MODE else "certificate"
    if path.name == CA_KEY:
        what = "CA key"
    _check_owner(path, link, what)
    _check_owner(path, st, what)
    return st


def _secure_file(path: Path) -> None:
    st = _check_file(path)
    if st is None:
        return
    wanted = _wanted(path)
    reason = (
        "a private key is for its owner only"
        if wanted == KEY_MODE
        else "only its owner may change it"
    )
    _tighten(path, st, wanted, reason)


def _check_owner(path: Path, st: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafeFileError(
            f"{path} ({what}) belongs to uid {st.st_uid}, not to this user (uid {me}): another "
            "user can read or replace it, so it is refused; remove it (a new one is made) or "
            "give it to this user"
        )


def _tighten(path: Path, st: os.stat_result, wanted: int, reason: str) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~wanted:
        os.chmod(path, mode & wanted)
        log.warning("%s was mode %04o, now %04o: %s", path, mode, mode & wanted, reason)


def _move_legacy_key(tls_dir: Path, ca_dir: Path) -> None:
    """A TLS directory made before the CA key moved out holds ``ca-key.pem``: move it."""
    legacy, target = tls_dir / CA_KEY, ca_dir / CA_KEY
    if not os.path.lexists(legacy):
        return
    _check_owner(legacy, os.lstat(legacy), "CA key")
    data = legacy.read_bytes()
    if not ca_dir.exists():
        _make_private_dir(ca_dir)
    if not target.exists():
        _write_atomic(target, data, KEY_MODE)
        legacy.unlink()
        log.warning(
            "moved the CA key %s to %s: services read the TLS directory, and whoever holds "
            "the CA key can issue any identity",
            legacy,
            target,
        )
    elif target.read_bytes() == data:
        legacy.unlink()
        log.warning("removed %s, a copy of the CA key %s, from the TLS directory", legacy, target)
    else:
        raise UnsafeFileError(
            f"{legacy} and {target} are two different CA keys, and the TLS directory must not "
            f"hold one: keep the one that signed {tls_dir / CA_CERT} in {ca_dir}, and delete "
            "the other"
        )


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
