"""JWT bearer check at the gate: who is calling, proven by a signed token, before any backend.

The gateway verifies ``Authorization: Bearer <jwt>`` once, at the edge, and hands the backends
the verified identity as metadata (:func:`identity_metadata`); backends then trust those keys
because the gateway drops any client-sent header with one of them (:data:`IDENTITY_KEYS`, passed
as ``reserved`` to :func:`gateway.headers.to_metadata`).

Signatures are checked by PyJWT; nothing cryptographic is written here. What *is* decided here,
because PyJWT leaves it to the caller, is which key may verify which token:

* Every configured :class:`VerificationKey` is bound to exactly one algorithm (HS256, RS256 or
  ES256). A token is only ever checked with ``algorithms=[key.algorithm]`` by keys whose
  algorithm equals the token's ``alg``, so the token cannot choose how a key is interpreted:
  the classic confusion (an HS256 token "signed" with the RSA public key's PEM as HMAC secret)
  finds no HS256 key to try, or an HS256 key that is a real secret.
* ``alg: none``, in any spelling, is refused before keys are even looked at.
* Time comes from the injected clock, not from PyJWT (which reads the wall clock): ``exp``,
  ``nbf`` and ``iat`` are checked here, so tests and replays are deterministic.

Refusals are :class:`AuthError`: 401, UNAUTHENTICATED, with a ``WWW-Authenticate`` challenge per
RFC 6750. The challenge's ``error_description`` is a fixed phrase per kind of failure, never a
value taken from the token, and no message ever contains the token itself.

Key loading (:meth:`JwtConfig.load`) is the only I/O, done once at start-up.
"""

from __future__ import annotations

import json
import math
import re
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.types import Options
from jwt.utils import is_pem_format, is_ssh_key

from gateway.errors import GatewayError

__all__ = [
    "ALGORITHMS",
    "CLAIMS_KEY",
    "IDENTITY_KEYS",
    "REALM",
    "SUBJECT_KEY",
    "AuthError",
    "Identity",
    "JwtConfig",
    "JwtVerifier",
    "VerificationKey",
    "identity_metadata",
]

SUBJECT_KEY = "x-hms-subject"
"""Metadata key carrying the verified ``sub`` to the backend."""
CLAIMS_KEY = "x-hms-claims"
"""Metadata key carrying all verified claims, as compact JSON with sorted keys."""
IDENTITY_KEYS = frozenset({SUBJECT_KEY, CLAIMS_KEY})
"""Keys the gateway vouches for: a client sending one of them has it dropped."""

REALM = "hms"
"""The ``realm`` of the ``WWW-Authenticate`` challenge."""

ALGORITHMS = ("HS256", "RS256", "ES256")
"""The algorithms a key may be bound to."""

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
_MIN_HS256_SECRET = 32
# NIST SP 800-131A; PyJWT warns (and with enforce_minimum_key_length, refuses) below this.
_MIN_RSA_BITS = 2048
# A bound on work and on what reaches the logs; real tokens are well under 8 KiB.
_MAX_TOKEN_LENGTH = 8192
# JWS compact serialization: three base64url segments, the last (signature) possibly empty so
# that an unsigned token is reported as such rather than as malformed.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"', no '\').
_NOT_IN_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_SHOWN_LIMIT = 40

# The kinds of failure: each is both the start of the message and the challenge's description.
_MISSING = "missing authorization header"
_NOT_BEARER = "authorization is not a Bearer token"
_MALFORMED = "malformed token"
_ALG_NONE = "unsigned token (alg none) refused"
_UNKNOWN_KID = "unknown key id"
_ALG_NOT_ALLOWED = "token algorithm not accepted"
_BAD_SIGNATURE = "bad signature"
_EXPIRED = "token expired"
_NOT_YET_VALID = "token not yet valid"
_WRONG_ISSUER = "wrong issuer"
_WRONG_AUDIENCE = "wrong audience"
_MISSING_CLAIM = "missing claim"
_INVALID_CLAIM = "invalid claim"


def _shown(value: object) -> str:
    """A value from the token quoted for a message, cut short."""
    text = repr(value)
    if len(text) <= _SHOWN_LIMIT:
        return text
    return text[:_SHOWN_LIMIT] + f"... ({len(text)} characters)"


class AuthError(GatewayError):
    """The request carries no valid bearer token: 401, UNAUTHENTICATED, with a challenge.

    ``reason`` is a fixed phrase for the kind of failure (it becomes the challenge's
    ``error_description``); ``detail`` says more in the message only. With
    ``credentials_sent=False`` the challenge has no error, as RFC 6750 §3.1 asks when the
    request had no authentication information at all.

    >>> AuthError.missing().headers
    (('www-authenticate', 'Bearer realm="hms"'),)
    >>> err = AuthError("token expired", "exp 10 is not after now 20")
    >>> err.message
    'token expired: exp 10 is not after now 20'
    >>> err.headers[0][1]
    'Bearer realm="hms", error="invalid_token", error_description="token expired"'
    """

    def __init__(self, reason: str, detail: str = "", *, credentials_sent: bool = True) -> None:
        if credentials_sent:
            description = _NOT_IN_DESCRIPTION.sub("?", reason)
            challenge = (
                f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
            )
        else:
            challenge = f'Bearer realm="{REALM}"'
        super().__init__(
            401,
            grpc.StatusCode.UNAUTHENTICATED,
            f"{reason}: {detail}" if detail else reason,
            headers=[("www-authenticate", challenge)],
        )
        self.reason = reason

    def __repr__(self) -> str:
        return f"AuthError({self.message!r})"

    @classmethod
    def missing(cls) -> AuthError:
        """No ``Authorization`` header (or an empty one): a bare challenge."""
        return cls(_MISSING, credentials_sent=False)


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


@dataclass(frozen=True)
class Identity:
    """A verified caller: the token's ``sub`` and all of its claims (read-only)."""

    subject: str
    claims: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or _PRINTABLE_ASCII.fullmatch(self.subject) is None:
            # It travels as gRPC metadata, whose text values are printable ASCII.
            raise ValueError(f"subject must be non-empty printable ASCII, not {self.subject!r}")
        object.__setattr__(self, "claims", types.MappingProxyType(dict(self.claims)))


def identity_metadata(identity: Identity) -> list[tuple[str, str]]:
    """The metadata that tells a backend who called: subject and claims (compact JSON).

    >>> identity_metadata(Identity("alice", {"sub": "alice", "exp": 10}))
    [('x-hms-subject', 'alice'), ('x-hms-claims', '{"exp":10,"sub":"alice"}')]
    """
    return [(SUBJECT_KEY, identity.subject), (CLAIMS_KEY, _claims_json(identity.claims))]


def _claims_json(claims: Mapping[str, Any]) -> str:
    # ensure_ascii: metadata values must be printable ASCII; sort_keys: one claims set, one text.
    return json.dumps(
        dict(claims), separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
    )


class JwtVerifier:
    """Checks ``Authorization`` headers against a :class:`JwtConfig`, with an injected clock.

    ``clock`` returns seconds since the epoch (``time.time``), the unit of ``exp``/``nbf``/``iat``.
    """

    def __init__(self, config: JwtConfig, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        # PyJWT checks signature, required claims, iss and aud; time is checked here.
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": True,
            "verify_aud": True,
            "verify_sub": True,
            "verify_jti": True,
            "require": sorted({*config.required_claims, "sub"}),
            "enforce_minimum_key_length": True,
        }

    @property
    def config(self) -> JwtConfig:
        return self._config

    def verify(self, authorization: str | None) -> Identity:
        """The identity proven by an ``Authorization`` header's bearer token.

        Raises :class:`AuthError` for anything else, with a message saying what was wrong.
        """
        token = _bearer_token(authorization)
        header = _header(token)
        keys = self._candidate_keys(header)
        claims = self._verified_claims(token, keys)
        self._check_times(claims)
        subject = claims["sub"]
        if _PRINTABLE_ASCII.fullmatch(subject) is None:
            raise AuthError(_INVALID_CLAIM, "'sub' must be non-empty printable ASCII")
        try:
            _claims_json(claims)
        except ValueError as exc:
            raise AuthError(_INVALID_CLAIM, "claims hold NaN or Infinity") from exc
        return Identity(subject, claims)

    def _candidate_keys(self, header: Mapping[str, Any]) -> list[VerificationKey]:
        alg = header["alg"]
        kid = header.get("kid")
        keys = list(self._config.keys)
        if kid is not None:
            # Keys without a kid stand for any kid; keys with one only for theirs.
            keys = [key for key in keys if key.kid is None or key.kid == kid]
            if not keys:
                raise AuthError(_UNKNOWN_KID, f"no key has kid {_shown(kid)}")
        keys = [key for key in keys if key.algorithm == alg]
        if not keys:
            accepted = sorted({key.algorithm for key in self._config.keys})
            raise AuthError(
                _ALG_NOT_ALLOWED,
                f"alg {_shown(alg)}"
                + (f" with kid {_shown(kid)}" if kid is not None else "")
                + f"; accepted: {', '.join(accepted)}",
            )
        return keys

    def _verified_claims(self, token: str, keys: list[VerificationKey]) -> dict[str, Any]:
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.key,
                    # The key's own algorithm, never one read from the token.
                    algorithms=[key.algorithm],
                    options=self._options,
                    audience=self._config.audience,
                    issuer=self._config.issuer,
                )
            except InvalidSignatureError:
                continue  # try the next key of the same algorithm
            except MissingRequiredClaimError as exc:
                raise AuthError(_MISSING_CLAIM, _shown(exc.claim)) from None
            except InvalidIssuerError:
                raise AuthError(_WRONG_ISSUER, f"expected {self._config.issuer!r}") from None
            except InvalidAudienceError:
                expected = (
                    f"expected {self._config.audience!r}"
                    if self._config.audience
                    else "no audience is accepted"
                )
                raise AuthError(_WRONG_AUDIENCE, expected) from None
            except (InvalidSubjectError, InvalidJTIError) as exc:
                raise AuthError(_INVALID_CLAIM, str(exc)) from None
            except PyJWTError as exc:
                # DecodeError and the like. PyJWT's messages name parts, not token content.
                raise AuthError(_MALFORMED, str(exc)) from None
        raise AuthError(_BAD_SIGNATURE, f"no {keys[0].algorithm} key verifies the signature")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        leeway = self._config.leeway
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            if name in claims:
                value = claims[name]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    raise AuthError(_INVALID_CLAIM, f"{name!r} must be a number of seconds")
                times[name] = value
        # RFC 7519 §4.1.4: valid only while now < exp.
        if "exp" in times and times["exp"] <= now - leeway:
            raise AuthError(_EXPIRED, f"exp {times['exp']} is not after now {now:.0f}")
        # §4.1.5: valid only once now >= nbf.
        if "nbf" in times and times["nbf"] > now + leeway:
            raise AuthError(_NOT_YET_VALID, f"nbf {times['nbf']} is after now {now:.0f}")
        # Not required by RFC 7519, but a token from the future is not one we issued (PyJWT's
        # default check, here with the injected clock).
        if "iat" in times and times["iat"] > now + leeway:
            raise AuthError(_NOT_YET_VALID, f"iat {times['iat']} is after now {now:.0f}")


def _bearer_token(authorization: str | None) -> str:
    value = (authorization or "").strip(" \t")
    if not value:
        raise AuthError.missing()
    scheme, _, credentials = value.partition(" ")
    # RFC 7235 §2.1: the scheme is case-insensitive.
    if scheme.lower() != "bearer":
        raise AuthError(_NOT_BEARER, f"scheme {_shown(scheme)}")
    token = credentials.strip(" ")
    if not token:
        raise AuthError(_MALFORMED, "no token after Bearer")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise AuthError(_MALFORMED, f"longer than {_MAX_TOKEN_LENGTH} characters")
    if _COMPACT_JWS.fullmatch(token) is None:
        raise AuthError(_MALFORMED, "not three base64url segments separated by dots")
    return token


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError as exc:
        raise AuthError(_MALFORMED, str(exc)) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise AuthError(_MALFORMED, "header has no alg")
    if alg.lower() == "none":
        raise AuthError(_ALG_NONE)
    if header.get("b64", True) is not True:
        raise AuthError(_MALFORMED, "unencoded payloads (b64) are not accepted")
    return header
