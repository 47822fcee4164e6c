"""JWT bearer check at the gate: who is calling, proven by a signed token, before any backend.

The gateway verifies ``Authorization: Bearer <jwt>`` once, at the edge, and hands the backends
the verified identity as metadata (:func:`identity_metadata`); backends then trust those keys
because the gateway drops any client-sent header with one of them (:data:`IDENTITY_KEYS`, passed
as ``reserved`` to :func:`hms_gateway.headers.to_metadata`).

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

Scopes: a verified token grants the scopes of its ``scope`` claim (a space-separated string, RFC
8693 §4.2 and OAuth 2.0) and of ``scp`` (a list of strings, or a space-separated string as some
identity providers write it). A method whose contract asks for scopes (gateway/access.py) is
refused with :class:`ScopeError` when the token lacks one: 403, PERMISSION_DENIED, naming the
missing scopes and the method, with RFC 6750's ``insufficient_scope`` challenge.

Keys and their loading (:meth:`JwtConfig.load`, the only I/O, once at start-up) are in
gateway/jwt_keys.py; they are re-exported here.
"""

from __future__ import annotations

import json
import math
import re
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from google.rpc import error_details_pb2
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

from hms_gateway.access import Access
from hms_gateway.errors import GatewayError
from hms_gateway.jwt_keys import ALGORITHMS, JwtConfig, VerificationKey
from mesh.claims import granted_scopes

__all__ = [
    "ALGORITHMS",
    "CLAIMS_KEY",
    "IDENTITY_KEYS",
    "REALM",
    "SCOPE_ERROR_DOMAIN",
    "SUBJECT_KEY",
    "AuthError",
    "Identity",
    "JwtConfig",
    "JwtVerifier",
    "ScopeError",
    "VerificationKey",
    "bearer_challenge",
    "granted_scopes",
    "identity_metadata",
    "require_scopes",
]

SUBJECT_KEY = "x-hms-subject"
"""Metadata key carrying the verified ``sub`` to the backend."""
CLAIMS_KEY = "x-hms-claims"
"""Metadata key carrying all verified claims, as compact JSON with sorted keys."""
IDENTITY_KEYS = frozenset({SUBJECT_KEY, CLAIMS_KEY})
"""Keys the gateway vouches for: a client sending one of them has it dropped."""

REALM = "hms"
"""The ``realm`` of the ``WWW-Authenticate`` challenge."""

SCOPE_ERROR_DOMAIN = "gateway.hms.local"
"""The ``domain`` of the ``google.rpc.ErrorInfo`` a :class:`ScopeError` carries."""

# A bound on work and on what reaches the logs; real tokens are well under 8 KiB.
_MAX_TOKEN_LENGTH = 8192
# JWS compact serialization: three base64url segments, the last (signature) possibly empty so
# that an unsigned token is reported as such rather than as malformed.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"', no '\').
_NOT_IN_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_SHOWN_LIMIT = 40
# Integers in claims must fit a signed 64-bit integer: a backend reading x-hms-claims in Go,
# Java or C++ would fail on a larger one, and `exp` with 400 digits cannot even become a float.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

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


_DESCRIPTION_LIMIT = 200


def bearer_challenge(description: str | None) -> str:
    """RFC 6750's ``WWW-Authenticate`` challenge: ``invalid_token`` with `description` (its
    characters outside RFC 6750's set as ``?``, cut short), or a bare one when the request
    carried no credentials (``None``: RFC 6750 §3.1 asks for no error code then).

    >>> bearer_challenge('token "revoked"')
    'Bearer realm="hms", error="invalid_token", error_description="token ?revoked?"'
    >>> bearer_challenge(None)
    'Bearer realm="hms"'
    """
    if description is None:
        return f'Bearer realm="{REALM}"'
    shown = _NOT_IN_DESCRIPTION.sub("?", description)
    if len(shown) > _DESCRIPTION_LIMIT:
        shown = shown[: _DESCRIPTION_LIMIT - 3] + "..."
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{shown}"'


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
        challenge = bearer_challenge(reason if credentials_sent else None)
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


class ScopeError(GatewayError):
    """A valid token without every scope the method needs: 403, PERMISSION_DENIED.

    The message names the missing scopes and the method; the challenge is RFC 6750 §3.1's
    ``insufficient_scope`` with the scopes the method needs; a ``google.rpc.ErrorInfo`` detail
    says the same for programs.

    >>> err = ScopeError("/hms.housing.v1.HousingService/Apply", ("a:x",), ("a:x", "a:y"))
    >>> err.http_status, err.message
    (403, "the token lacks scope 'a:x', needed by /hms.housing.v1.HousingService/Apply")
    >>> err.headers[0][1]
    'Bearer realm="hms", error="insufficient_scope", scope="a:x a:y"'
    """

    def __init__(self, method: str, missing: tuple[str, ...], required: tuple[str, ...]) -> None:
        noun = "scope" if len(missing) == 1 else "scopes"
        listed = ", ".join(repr(scope) for scope in missing)
        # Scope tokens (gateway/access.py) hold neither '"' nor '\': safe in the challenge.
        challenge = (
            f'Bearer realm="{REALM}", error="insufficient_scope", scope="{" ".join(required)}"'
        )
        info = error_details_pb2.ErrorInfo(
            reason="INSUFFICIENT_SCOPE",
            domain=SCOPE_ERROR_DOMAIN,
            metadata={"method": method, "missing_scopes": " ".join(missing)},
        )
        super().__init__(
            403,
            grpc.StatusCode.PERMISSION_DENIED,
            f"the token lacks {noun} {listed}, needed by {method}",
            headers=[("www-authenticate", challenge)],
            details=[info],
        )
        self.missing = missing

    def __repr__(self) -> str:
        return f"ScopeError({self.message!r})"


@dataclass(frozen=True)
class Identity:
    """A verified caller: the token's ``sub``, all of its claims (read-only) and the scopes
    it grants (:func:`granted_scopes`)."""

    subject: str
    claims: Mapping[str, Any]
    scopes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or _PRINTABLE_ASCII.fullmatch(self.subject) is None:
            # It travels as gRPC metadata, whose text values are printable ASCII.
            raise ValueError(f"subject must be non-empty printable ASCII, not {self.subject!r}")
        object.__setattr__(self, "claims", types.MappingProxyType(dict(self.claims)))
        object.__setattr__(self, "scopes", frozenset(self.scopes))


def require_scopes(identity: Identity, access: Access, method: str) -> None:
    """Raises :class:`ScopeError` unless `identity` holds every scope `access` asks for (the
    rule of the gRPC method path `method`)."""
    missing = access.missing(identity.scopes)
    if missing:
        raise ScopeError(method, missing, access.scopes)


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
        _check_numbers(claims)
        subject = claims["sub"]
        if _PRINTABLE_ASCII.fullmatch(subject) is None:
            raise AuthError(_INVALID_CLAIM, "'sub' must be non-empty printable ASCII")
        try:
            scopes = granted_scopes(claims)
        except ValueError as exc:
            raise AuthError(_INVALID_CLAIM, str(exc)) from None
        return Identity(subject, claims, scopes)

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
                if isinstance(value, int) and not isinstance(value, bool):
                    # A 400-digit exp would overflow float(): refused before any arithmetic.
                    if not _INT64_MIN <= value <= _INT64_MAX:
                        raise AuthError(
                            _INVALID_CLAIM, f"{name!r} is a number out of range (64-bit integers)"
                        )
                elif not isinstance(value, float) or not math.isfinite(value):
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


def _check_numbers(claims: Mapping[str, Any]) -> None:
    """Every number in the claims, however deeply nested, is finite and an integer fits in 64
    bits: otherwise the token is refused (401) rather than crashing a comparison here (a
    400-digit ``exp`` overflows float) or a backend that parses ``x-hms-claims``."""
    pending: list[tuple[str, Any]] = list(claims.items())
    while pending:  # iterative: nesting depth is the token's choice
        name, value = pending.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise AuthError(
                    _INVALID_CLAIM, f"{_shown(name)} is a number out of range (64-bit integers)"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise AuthError(_INVALID_CLAIM, f"claims hold NaN or Infinity ({_shown(name)})")
        elif isinstance(value, dict):
            pending.extend((name, item) for item in value.values())
        elif isinstance(value, list):
            pending.extend((name, item) for item in value)


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
