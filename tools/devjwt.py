"""The stack's development signing key: `mesh up` makes it and runs the gateway's JWT gate with
its public half; `mesh token` (and the demo, and tests) sign tokens with it.

Layout, beside the stack's other state::

    <state-dir>/jwt/                 0700
        dev-signing-key.pem          EC P-256 private key, PKCS#8 (0600): signs tokens
        dev-signing-key.pub.pem      its public key (0644): `mesh gateway --jwt-public-key`

It is for development: whoever can read the state directory can sign any token the stack's
gateway accepts. A real deployment gives the gateway its identity provider's keys (`mesh
gateway --jwks`, `--jwt-public-key`, `--jwt-issuer`). The key is kept across `mesh up` runs, so
a token made earlier stays good until it expires. Modes and ownership are checked as for the
certificates (tools/certs.py): a key file that belongs to another user is refused, a looser
mode is tightened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hms_tools.certs import (
    CERT_MODE,
    KEY_MODE,
    _check_file,
    _make_private_dir,
    _secure_file,
    _write_atomic,
)
from hms_tools.errors import OperatorError

__all__ = [
    "DEV_ISSUER",
    "JWT_DIR",
    "ensure_signing_key",
    "mint_token",
    "public_key_path",
    "signing_key_path",
]

JWT_DIR = "jwt"
DEV_ISSUER = "hms-mesh-dev"
"""The ``iss`` of development tokens; the stack's gateway accepts no other."""
_PRIVATE = "dev-signing-key.pem"
_PUBLIC = "dev-signing-key.pub.pem"
# What the gateway carries as x-hms-subject: printable ASCII (gateway/auth.py).
_SUBJECT = re.compile(r"[\x20-\x7e]+")
# RFC 6749 §3.3 scope-token, as the gateway checks contracts' scopes (gateway/access.py).
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def signing_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / JWT_DIR / _PRIVATE


def public_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / JWT_DIR / _PUBLIC


def ensure_signing_key(state_dir: Path) -> Path:
    """The development key of the stack in `state_dir`, made if there is none; returns the
    public key's path (PEM), what the gateway verifies with.

    Raises ``OperatorError`` for a key file that is not a P-256 private key, and
    ``hms_tools.certs.UnsafeFileError`` for one another user owns.
    """
    private_path, public_path = signing_key_path(state_dir), public_key_path(state_dir)
    _make_private_dir(private_path.parent)
    for path in (private_path, public_path):
        _check_file(path)  # another user's file is refused before anything is written
    if private_path.exists():
        _secure_file(private_path)
        key = _load_private(private_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(private_path, pem, KEY_MODE)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Always the private key's own half: a stale or edited public file would lock tokens out.
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        _write_atomic(public_path, public_pem, CERT_MODE)
    _secure_file(public_path)
    return public_path


def mint_token(
    state_dir: Path,
    subject: str,
    scopes: Iterable[str],
    *,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """A JWT (ES256) for `subject` holding `scopes` (the ``scope`` claim, space-separated),
    good for `ttl` seconds, signed with the stack's development key.

    Raises ``ValueError`` naming a bad subject, scope or ttl, and ``FileNotFoundError`` when the
    stack has no key yet (`mesh up` makes it).
    """
    import jwt

    if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
        raise ValueError(f"subject {subject!r}: must be non-empty printable ASCII")
    wanted = list(dict.fromkeys(scopes))
    for scope in wanted:
        if _SCOPE.fullmatch(scope) is None:
            raise ValueError(
                f"scope {scope!r}: a scope is printable ASCII without spaces, '\"' or '\\'"
            )
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ValueError(f"ttl {ttl!r}: must be a whole number of seconds, at least 1")
    path = signing_key_path(state_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the stack makes its development signing key (`mesh up`)"
        )
    _check_file(path)
    key = _load_private(path)
    issued = int(time.time() if now is None else now)
    claims = {"iss": DEV_ISSUER, "sub": subject, "iat": issued, "exp": issued + ttl}
    if wanted:
        claims["scope"] = " ".join(wanted)
    return jwt.encode(claims, key, algorithm="ES256")


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise OperatorError(
            f"{path} is not a PEM private key ({exc}); remove it and a new one is made"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise OperatorError(
            f"{path} is not an EC P-256 key (ES256); remove it and a new one is made"
        )
    return key
