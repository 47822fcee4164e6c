"""The keys that may verify tokens at the gate, and what a token must satisfy.

Each :class:`VerificationKey` is bound to exactly one algorithm (HS256, RS256 or ES256) when it
is loaded, never by a token: that binding is what makes algorithm confusion impossible in
gateway/auth.py. :meth:`JwtConfig.load` reads key material (a secret, PEM public keys, a JWK
Set) at the edge; it is the only I/O of the gate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import PyJWTError
from jwt.utils import is_pem_format, is_ssh_key

__all__ = ["ALGORITHMS", "JwtConfig", "VerificationKey"]

ALGORITHMS = ("HS256", "RS256", "ES256")
"""The algorithms a key may be bound to."""

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
_MIN_HS256_SECRET = 32
# NIST SP 800-131A; PyJWT warns (and with enforce_minimum_key_length, refuses) below this.
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class VerificationKey:
    """One key that may verify tokens, bound to exactly one algorithm.

    ``key`` is the HS256 secret (bytes, at least 32), an RSA public key (RS256, at least 2048
    bits) or an EC P-256 public key (ES256). Private keys are refused: the gateway only checks.
    ``kid``, when set, must equal the token header's ``kid`` for this key to be tried.
    """

    algorithm: str
    key: bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(repr=False)
    kid: str | None = None

    def __post_init__(self) -> None:
        if self.kid is not None and (not isinstance(self.kid, str) or not self.kid):
            raise ValueError(f"kid must be a non-empty string or None, not {self.kid!r}")
        name = self._name()
        if self.algorithm == "HS256":
            if not isinstance(self.key, bytes):
                raise ValueError(f"{name}: an HS256 key must be the secret's bytes")
            if len(self.key) < _MIN_HS256_SECRET:
                raise ValueError(
                    f"{name}: an HS256 secret must be at least {_MIN_HS256_SECRET} bytes, "
                    f"not {len(self.key)}"
                )
            if is_pem_format(self.key) or is_ssh_key(self.key):
                # Someone put a public key where the shared secret goes: anyone could then
                # sign HS256 tokens with it.
                raise ValueError(f"{name}: an HS256 secret must not be a PEM or SSH key")
        elif self.algorithm == "RS256":
            if not isinstance(self.key, rsa.RSAPublicKey):
                raise ValueError(f"{name}: an RS256 key must be an RSA public key")
            if self.key.key_size < _MIN_RSA_BITS:
                raise ValueError(
                    f"{name}: an RSA key must be at least {_MIN_RSA_BITS} bits, "
                    f"not {self.key.key_size}"
                )
        elif self.algorithm == "ES256":
            if not isinstance(self.key, ec.EllipticCurvePublicKey) or not isinstance(
                self.key.curve, ec.SECP256R1
            ):
                raise ValueError(f"{name}: an ES256 key must be an EC P-256 public key")
        else:
            raise ValueError(
                f"{name}: algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}"
            )

    def _name(self) -> str:
        return f"{self.algorithm} key" + (f" {self.kid!r}" if self.kid else "")

    @classmethod
    def from_pem(cls, data: bytes, kid: str | None = None) -> VerificationKey:
        """A key from a PEM public key: RSA gives RS256, EC P-256 gives ES256."""
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM public key: {exc}") from exc
        if isinstance(public, rsa.RSAPublicKey):
            return cls("RS256", public, kid)
        if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
            return cls("ES256", public, kid)
        raise ValueError(
            f"unsupported public key type {type(public).__name__}: "
            "expected RSA (RS256) or EC P-256 (ES256)"
        )

    @classmethod
    def from_jwk(cls, jwk_data: Mapping[str, Any]) -> VerificationKey:
        """A key from one JWK: its ``alg``, or one derived from ``kty``/``crv`` by PyJWT.

        Raises ValueError for a key that is not for signatures, has an algorithm other than
        HS256, RS256 or ES256, or does not parse.
        """
        data = dict(jwk_data)
        use = data.get("use")
        if use is not None and use != "sig":
            raise ValueError(f"key use is {use!r}, not 'sig'")
        kid = data.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError(f"kid must be a string, not {kid!r}")
        try:
            parsed = jwt.PyJWK(data)
        except PyJWTError as exc:
            raise ValueError(f"unusable JWK: {exc}") from exc
        if parsed.algorithm_name not in ALGORITHMS:
            raise ValueError(
                f"algorithm {parsed.algorithm_name!r} is not supported "
                f"(only {', '.join(ALGORITHMS)})"
            )
        return cls(parsed.algorithm_name, parsed.key, kid)


@dataclass(frozen=True)
class JwtConfig:
    """What a token must satisfy: signed by one of ``keys``, from ``issuer``, for ``audience``.

    ``issuer``/``audience`` of None skip that check (a token with an ``aud`` is then refused,
    as PyJWT does: it was meant for someone specific). ``leeway`` (seconds) absorbs clock skew
    on ``exp``, ``nbf`` and ``iat``. ``required_claims`` must be present; ``sub`` is always
    required, as the identity is built from it.
    """

    keys: tuple[VerificationKey, ...]
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 0
    required_claims: tuple[str, ...] = ("exp", "sub")

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple) or not self.keys:
            raise ValueError("keys must be a non-empty tuple of VerificationKey")
        for key in self.keys:
            if not isinstance(key, VerificationKey):
                raise ValueError(f"keys must be VerificationKey, not {type(key).__name__}")
        for name, value in (("issuer", self.issuer), ("audience", self.audience)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None, not {value!r}")
        if (
            isinstance(self.leeway, bool)
            or not isinstance(self.leeway, int | float)
            or not math.isfinite(self.leeway)
            or self.leeway < 0
        ):
            raise ValueError(f"leeway must be a finite number of seconds >= 0, not {self.leeway}")
        if not isinstance(self.required_claims, tuple) or not all(
            isinstance(claim, str) and claim for claim in self.required_claims
        ):
            raise ValueError(
                f"required_claims must be a tuple of claim names, not {self.required_claims!r}"
            )

    @classmethod
    def load(
        cls,
        hs256_secret: bytes | None = None,
        public_key_files: Iterable[Path] = (),
        jwks_file: Path | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        *,
        leeway: float = 0,
        required_claims: tuple[str, ...] = ("exp", "sub"),
    ) -> JwtConfig:
        """The configuration from key material at the edge: the only I/O of this module.

        ``public_key_files`` are PEM public keys (RSA -> RS256, EC P-256 -> ES256, no kid);
        ``jwks_file`` a JWK Set (``{"keys": [...]}``). A key that cannot be used raises
        ValueError naming its file or kid, rather than being skipped: a key silently missing
        would only show up later as every token from that issuer being refused.
        """
        keys: list[VerificationKey] = []
        if hs256_secret is not None:
            keys.append(VerificationKey("HS256", hs256_secret))
        for path in public_key_files:
            try:
                keys.append(VerificationKey.from_pem(Path(path).read_bytes()))
            except ValueError as exc:
                raise ValueError(f"public key file {str(path)!r}: {exc}") from exc
        if jwks_file is not None:
            keys.extend(_jwks_keys(Path(jwks_file)))
        return cls(
            tuple(keys),
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            required_claims=required_claims,
        )


def _jwks_keys(path: Path) -> list[VerificationKey]:
    where = f"JWKS file {str(path)!r}"
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{where}: expected an object with a non-empty "keys" list')
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: key #{index} is not a JSON object")
        kid = entry.get("kid")
        name = f"key {kid!r}" if isinstance(kid, str) else f"key #{index}"
        try:
            keys.append(VerificationKey.from_jwk(entry))
        except ValueError as exc:
            raise ValueError(f"{where}: {name}: {exc}") from exc
    return keys
