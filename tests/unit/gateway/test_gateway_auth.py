"""hms_gateway.auth: bearer JWTs checked against bound keys, a fake clock, RFC 6750 challenges."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hms_gateway.auth import (
    CLAIMS_KEY,
    IDENTITY_KEYS,
    SUBJECT_KEY,
    AuthError,
    Identity,
    JwtConfig,
    JwtVerifier,
    VerificationKey,
    bearer_challenge,
    identity_metadata,
)
from hms_gateway.errors import GatewayError

NOW = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"
ISSUER = "https://issuer.example"
AUDIENCE = "hms-gateway"
NAN = float("nan")

_CHALLENGE_WITH_ERROR = re.compile(
    r'Bearer realm="hms", error="invalid_token", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]+"'
)


@dataclass(frozen=True)
class Keys:
    rsa_private: rsa.RSAPrivateKey
    rsa_public: rsa.RSAPublicKey
    rsa_public_pem: bytes
    other_rsa_private: rsa.RSAPrivateKey
    ec_private: ec.EllipticCurvePrivateKey
    ec_public: ec.EllipticCurvePublicKey
    ec_public_pem: bytes


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    return Keys(
        rsa_private=rsa_private,
        rsa_public=rsa_private.public_key(),
        rsa_public_pem=_pem(rsa_private.public_key()),
        other_rsa_private=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_private=ec_private,
        ec_public=ec_private.public_key(),
        ec_public_pem=_pem(ec_private.public_key()),
    )


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 10,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _hand_signed(header: dict[str, Any], payload: str, secret: bytes) -> str:
    """An HS256 token built by hand: PyJWT refuses to sign some of what attackers send."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload.encode())}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _unsigned(alg: str, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _config(keys: Keys, kinds: str = "hs,rs,es", **settings: Any) -> JwtConfig:
    available = {
        "hs": VerificationKey("HS256", SECRET),
        "rs": VerificationKey("RS256", keys.rsa_public),
        "es": VerificationKey("ES256", keys.ec_public),
        "rs-kid": VerificationKey("RS256", keys.rsa_public, kid="rsa-1"),
        "es-kid": VerificationKey("ES256", keys.ec_public, kid="ec-1"),
    }
    settings.setdefault("issuer", ISSUER)
    settings.setdefault("audience", AUDIENCE)
    return JwtConfig(tuple(available[kind] for kind in kinds.split(",")), **settings)


def _verifier(config: JwtConfig) -> JwtVerifier:
    return JwtVerifier(config, clock=lambda: NOW)


# -- valid tokens ---------------------------------------------------------------------------


def _hs256(keys: Keys) -> str:
    return jwt.encode(_claims(), SECRET, algorithm="HS256")


def _rs256(keys: Keys) -> str:
    return jwt.encode(_claims(), keys.rsa_private, algorithm="RS256")


def _es256(keys: Keys) -> str:
    return jwt.encode(_claims(), keys.ec_private, algorithm="ES256")


def _rs256_kid(keys: Keys) -> str:
    return jwt.encode(_claims(), keys.rsa_private, algorithm="RS256", headers={"kid": "rsa-1"})


@pytest.mark.parametrize(
    ("make_token", "kinds"),
    [
        pytest.param(_hs256, "hs", id="hs256"),
        pytest.param(_rs256, "rs", id="rs256"),
        pytest.param(_es256, "es", id="es256"),
        pytest.param(_hs256, "rs,es,hs", id="hs256-among-others"),
        pytest.param(_rs256_kid, "rs-kid,es-kid", id="rs256-by-kid"),
        pytest.param(_rs256_kid, "rs", id="kid-matches-a-key-without-kid"),
        pytest.param(_rs256, "rs-kid", id="no-kid-tries-keys-of-the-alg"),
    ],
)
def test_valid_token(keys: Keys, make_token: Callable[[Keys], str], kinds: str) -> None:
    identity = _verifier(_config(keys, kinds)).verify(f"Bearer {make_token(keys)}")
    assert identity.subject == "alice"
    assert identity.claims == _claims()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("bearer {}", id="lower-case-scheme"),
        pytest.param("BEARER {}", id="upper-case-scheme"),
        pytest.param("Bearer   {}  ", id="extra-spaces"),
    ],
)
def test_scheme_spelling(keys: Keys, authorization: str) -> None:
    identity = _verifier(_config(keys, "hs")).verify(authorization.format(_hs256(keys)))
    assert identity.subject == "alice"


def test_jwks_keys_verify(keys: Keys, tmp_path: Path) -> None:
    rsa_jwk = RSAAlgorithm.to_jwk(keys.rsa_public, as_dict=True) | {"kid": "r1", "use": "sig"}
    ec_jwk = ECAlgorithm.to_jwk(keys.ec_public, as_dict=True) | {"kid": "e1"}
    oct_jwk = {"kty": "oct", "k": _b64(SECRET), "kid": "h1", "alg": "HS256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk, oct_jwk]}))
    config = JwtConfig.load(jwks_file=jwks, issuer=ISSUER, audience=AUDIENCE)
    assert [(key.algorithm, key.kid) for key in config.keys] == [
        ("RS256", "r1"),
        ("ES256", "e1"),
        ("HS256", "h1"),
    ]
    verifier = _verifier(config)
    for token in (
        jwt.encode(_claims(), keys.rsa_private, algorithm="RS256", headers={"kid": "r1"}),
        jwt.encode(_claims(sub="bob"), keys.ec_private, algorithm="ES256", headers={"kid": "e1"}),
        jwt.encode(_claims(sub="carol"), SECRET, algorithm="HS256", headers={"kid": "h1"}),
    ):
        assert verifier.verify(f"Bearer {token}").subject in {"alice", "bob", "carol"}


def test_leeway_honoured(keys: Keys) -> None:
    token = jwt.encode(
        _claims(exp=int(NOW) - 5, nbf=int(NOW) + 5, iat=int(NOW) + 5), SECRET, algorithm="HS256"
    )
    with pytest.raises(AuthError, match="token expired"):
        _verifier(_config(keys, "hs")).verify(f"Bearer {token}")
    identity = _verifier(_config(keys, "hs", leeway=10)).verify(f"Bearer {token}")
    assert identity.subject == "alice"


def test_clock_is_authoritative(keys: Keys) -> None:
    # Valid by the wall clock for years, but the injected clock is past its exp.
    token = jwt.encode(_claims(exp=int(NOW) + 60), SECRET, algorithm="HS256")
    late = JwtVerifier(_config(keys, "hs"), clock=lambda: NOW + 60)
    with pytest.raises(AuthError, match="token expired"):
        late.verify(f"Bearer {token}")
    early = JwtVerifier(_config(keys, "hs"), clock=lambda: NOW + 59)
    assert early.verify(f"Bearer {token}").subject == "alice"


def test_optional_issuer_and_audience(keys: Keys) -> None:
    config = _config(keys, "hs", issuer=None, audience=None)
    token = jwt.encode(_claims(iss="anyone", aud=None), SECRET, algorithm="HS256")
    assert _verifier(config).verify(f"Bearer {token}").subject == "alice"


# -- refusals -------------------------------------------------------------------------------


def _tampered_payload(keys: Keys) -> str:
    header, _, signature = _hs256(keys).split(".")
    return f"{header}.{_b64(json.dumps(_claims(sub='mallory')).encode())}.{signature}"


def _hs256_with_rsa_pem(keys: Keys) -> str:
    # Algorithm confusion: the attacker knows the public key and "signs" with it as HMAC secret.
    return _hand_signed({"alg": "HS256", "typ": "JWT"}, json.dumps(_claims()), keys.rsa_public_pem)


@dataclass(frozen=True)
class Refusal:
    authorization: Callable[[Keys], str | None]
    reason: str
    kinds: str = "hs,rs,es"
    leeway: float = 0


def _bearer(make: Callable[[Keys], str]) -> Callable[[Keys], str]:
    return lambda keys: f"Bearer {make(keys)}"


def _hs(**claims: Any) -> Callable[[Keys], str]:
    return _bearer(lambda keys: jwt.encode(_claims(**claims), SECRET, algorithm="HS256"))


REFUSALS = [
    pytest.param(Refusal(lambda k: None, "missing authorization header"), id="no-header"),
    pytest.param(Refusal(lambda k: "", "missing authorization header"), id="empty-header"),
    pytest.param(Refusal(lambda k: "  ", "missing authorization header"), id="blank-header"),
    pytest.param(
        Refusal(lambda k: "Basic dXNlcjpwYXNz", "authorization is not a Bearer token"),
        id="basic-scheme",
    ),
    pytest.param(
        Refusal(lambda k: f"Token {_hs256(k)}", "authorization is not a Bearer token"),
        id="other-scheme-with-jwt",
    ),
    pytest.param(Refusal(_hs256, "authorization is not a Bearer token"), id="no-scheme"),
    pytest.param(Refusal(lambda k: "Bearer", "malformed token"), id="bearer-without-token"),
    pytest.param(Refusal(lambda k: "Bearer garbage", "malformed token"), id="garbage"),
    pytest.param(Refusal(lambda k: "Bearer a.b", "malformed token"), id="two-segments"),
    pytest.param(Refusal(lambda k: "Bearer a.b.c.d", "malformed token"), id="four-segments"),
    pytest.param(Refusal(lambda k: "Bearer !!.??.x", "malformed token"), id="not-base64url"),
    pytest.param(Refusal(lambda k: "Bearer e30.e30.", "malformed token"), id="header-without-alg"),
    pytest.param(
        Refusal(lambda k: "Bearer eyJhbGciOjF9.e30.", "malformed token"), id="alg-not-a-string"
    ),
    pytest.param(
        Refusal(lambda k: f"Bearer {_b64(b'[1]')}.e30.", "malformed token"), id="header-not-object"
    ),
    pytest.param(Refusal(lambda k: f"Bearer {'a' * 9000}.e30.", "malformed token"), id="too-long"),
    pytest.param(
        Refusal(
            _bearer(lambda k: _hand_signed({"alg": "HS256"}, "[1, 2]", SECRET)), "malformed token"
        ),
        id="payload-not-object",
    ),
    pytest.param(
        Refusal(
            _bearer(
                lambda k: _hand_signed({"alg": "HS256", "crit": ["exp"]}, '{"sub":"a"}', SECRET)
            ),
            "malformed token",
        ),
        id="unknown-critical-header",
    ),
    pytest.param(
        Refusal(_bearer(lambda k: _unsigned("none", _claims())), "unsigned token (alg none)"),
        id="alg-none",
    ),
    pytest.param(
        Refusal(_bearer(lambda k: _unsigned("None", _claims())), "unsigned token (alg none)"),
        id="alg-None",
    ),
    pytest.param(
        Refusal(_bearer(lambda k: _unsigned("NONE", _claims())), "unsigned token (alg none)"),
        id="alg-NONE",
    ),
    pytest.param(
        Refusal(
            _bearer(lambda k: _unsigned("none", _claims()) + _b64(b"sig")),
            "unsigned token (alg none)",
        ),
        id="alg-none-with-signature",
    ),
    pytest.param(Refusal(_hs(exp=int(NOW) - 1), "token expired"), id="expired"),
    pytest.param(Refusal(_hs(exp=int(NOW)), "token expired"), id="expires-now"),
    pytest.param(
        Refusal(_hs(exp=int(NOW) - 11), "token expired", leeway=10), id="expired-beyond-leeway"
    ),
    pytest.param(Refusal(_hs(nbf=int(NOW) + 1), "token not yet valid"), id="nbf-in-future"),
    pytest.param(Refusal(_hs(iat=int(NOW) + 60), "token not yet valid"), id="iat-in-future"),
    pytest.param(Refusal(_hs(iss="https://evil.example"), "wrong issuer"), id="wrong-issuer"),
    pytest.param(Refusal(_hs(aud="someone-else"), "wrong audience"), id="wrong-audience"),
    pytest.param(Refusal(_hs(aud=["a", "b"]), "wrong audience"), id="audience-list-without-ours"),
    pytest.param(Refusal(_hs(sub=None), "missing claim: 'sub'"), id="missing-sub"),
    pytest.param(Refusal(_hs(exp=None), "missing claim: 'exp'"), id="missing-exp"),
    pytest.param(Refusal(_hs(iss=None), "missing claim: 'iss'"), id="missing-iss"),
    pytest.param(Refusal(_hs(aud=None), "missing claim: 'aud'"), id="missing-aud"),
    pytest.param(Refusal(_hs(sub=""), "invalid claim"), id="empty-sub"),
    pytest.param(Refusal(_hs(sub=42), "invalid claim"), id="sub-not-a-string"),
    pytest.param(Refusal(_hs(sub="ålice"), "invalid claim"), id="sub-not-ascii"),
    pytest.param(Refusal(_hs(sub="a\nb"), "invalid claim"), id="sub-with-newline"),
    pytest.param(Refusal(_hs(exp="tomorrow"), "invalid claim: 'exp'"), id="exp-not-a-number"),
    pytest.param(Refusal(_hs(exp=True), "invalid claim: 'exp'"), id="exp-a-bool"),
    pytest.param(Refusal(_hs(nbf=[1]), "invalid claim: 'nbf'"), id="nbf-not-a-number"),
    pytest.param(
        Refusal(
            _bearer(lambda k: _hand_signed({"alg": "HS256"}, json.dumps(_claims(x=NAN)), SECRET)),
            "invalid claim: claims hold NaN",
        ),
        id="nan-claim",
    ),
    pytest.param(
        Refusal(
            _bearer(
                lambda k: _hand_signed(
                    {"alg": "HS256"}, json.dumps(_claims(exp=-7)).replace("-7", "1e999"), SECRET
                )
            ),
            "invalid claim: 'exp'",
        ),
        id="infinite-exp",
    ),
    pytest.param(
        Refusal(
            _bearer(lambda k: jwt.encode(_claims(), OTHER_SECRET, algorithm="HS256")),
            "bad signature",
        ),
        id="hs256-other-secret",
    ),
    pytest.param(
        Refusal(
            _bearer(lambda k: jwt.encode(_claims(), k.other_rsa_private, algorithm="RS256")),
            "bad signature",
        ),
        id="rs256-other-key",
    ),
    pytest.param(Refusal(_bearer(_tampered_payload), "bad signature"), id="tampered-payload"),
    pytest.param(
        Refusal(_bearer(lambda k: _hs256(k).rsplit(".", 1)[0] + "."), "bad signature"),
        id="signature-stripped",
    ),
    pytest.param(
        Refusal(_bearer(_hs256_with_rsa_pem), "token algorithm not accepted", kinds="rs"),
        id="hs256-signed-with-rsa-pem-rsa-only",
    ),
    pytest.param(
        Refusal(_bearer(_hs256_with_rsa_pem), "bad signature", kinds="rs,hs"),
        id="hs256-signed-with-rsa-pem-rsa-and-hs",
    ),
    pytest.param(
        Refusal(_bearer(_rs256), "token algorithm not accepted", kinds="hs"),
        id="rs256-when-only-hs256",
    ),
    pytest.param(
        Refusal(_bearer(_es256), "token algorithm not accepted", kinds="rs-kid"),
        id="es256-when-only-rs256",
    ),
    pytest.param(
        Refusal(
            _bearer(
                lambda k: jwt.encode(_claims(), SECRET * 2, algorithm="HS512"),
            ),
            "token algorithm not accepted",
        ),
        id="hs512-not-supported",
    ),
    pytest.param(
        Refusal(
            _bearer(
                lambda k: jwt.encode(
                    _claims(), k.rsa_private, algorithm="RS256", headers={"kid": "rsa-2"}
                )
            ),
            "unknown key id",
            kinds="rs-kid,es-kid",
        ),
        id="unknown-kid",
    ),
    pytest.param(
        Refusal(
            _bearer(
                lambda k: jwt.encode(
                    _claims(), k.rsa_private, algorithm="RS256", headers={"kid": "ec-1"}
                )
            ),
            "token algorithm not accepted",
            kinds="rs-kid,es-kid",
        ),
        id="kid-of-a-key-of-another-alg",
    ),
    pytest.param(
        Refusal(
            _bearer(lambda k: _hand_signed({"alg": "HS256", "kid": 7}, '{"sub":"a"}', SECRET)),
            "malformed token",
        ),
        id="kid-not-a-string",
    ),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refused(keys: Keys, case: Refusal) -> None:
    authorization = case.authorization(keys)
    verifier = _verifier(_config(keys, case.kinds, leeway=case.leeway))
    with pytest.raises(AuthError) as info:
        verifier.verify(authorization)
    err = info.value
    assert err.message.startswith(case.reason), err.message
    assert isinstance(err, GatewayError)
    assert err.http_status == 401
    assert err.code is grpc.StatusCode.UNAUTHENTICATED
    assert err.body()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # The token never appears in what is sent back or logged.
    token = (authorization or "").partition(" ")[2].strip()
    if len(token) > 8:
        assert token not in err.message
        assert all(token not in value for _, value in err.headers)


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        pytest.param(None, 'Bearer realm="hms"', id="no-credentials-no-error"),
        pytest.param("", 'Bearer realm="hms"', id="empty-no-error"),
        pytest.param(
            "Basic xyz",
            'Bearer realm="hms", error="invalid_token", '
            'error_description="authorization is not a Bearer token"',
            id="other-scheme",
        ),
        pytest.param(
            "Bearer x",
            'Bearer realm="hms", error="invalid_token", error_description="malformed token"',
            id="malformed",
        ),
        pytest.param(
            'Bearer "quoted\\"',
            'Bearer realm="hms", error="invalid_token", error_description="malformed token"',
            id="quotes-never-reflected",
        ),
    ],
)
def test_challenge_header(keys: Keys, authorization: str | None, challenge: str) -> None:
    with pytest.raises(AuthError) as info:
        _verifier(_config(keys, "hs")).verify(authorization)
    assert info.value.headers == (("www-authenticate", challenge),)


def test_description_is_a_safe_quoted_string() -> None:
    err = AuthError('bad "thing"\\ \x00\n', "detail")
    ((name, value),) = err.headers
    assert name == "www-authenticate"
    assert _CHALLENGE_WITH_ERROR.fullmatch(value), value


def test_a_backends_message_as_challenge_is_safe_and_short() -> None:
    """A backend's UNAUTHENTICATED message becomes the challenge's description (app.py):
    whatever it holds, the header stays one valid challenge of bounded length."""
    challenge = bearer_challenge('token "t" revoked\r\n' + "x" * 500)
    assert _CHALLENGE_WITH_ERROR.fullmatch(challenge), challenge
    assert 'error_description="token ?t? revoked??xxx' in challenge
    assert challenge.endswith('..."')
    assert len(challenge) < 300


# -- hypothesis: any header value is either an identity or an AuthError ----------------------


@pytest.fixture(scope="module")
def any_verifier(keys: Keys) -> JwtVerifier:
    return _verifier(_config(keys, "hs,rs-kid,es"))


def _check_outcome(verifier: JwtVerifier, authorization: str) -> None:
    try:
        verifier.verify(authorization)
    except AuthError as err:  # the only exception allowed
        ((name, value),) = err.headers
        assert name == "www-authenticate"
        assert value == 'Bearer realm="hms"' or _CHALLENGE_WITH_ERROR.fullmatch(value)


@given(st.text())
def test_any_string_is_only_auth_error(any_verifier: JwtVerifier, authorization: str) -> None:
    _check_outcome(any_verifier, authorization)


@given(st.text(alphabet=st.sampled_from("ab_-.=+/ \t")))
def test_any_bearer_text_is_only_auth_error(any_verifier: JwtVerifier, text: str) -> None:
    _check_outcome(any_verifier, f"Bearer {text}")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x"]),
        st.sampled_from(["HS256", "RS256", "ES256", "none", "nOnE", "rsa-1", ""]) | _JSON,
    ),
    payload=st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "iat", "iss", "aud", "jti"]), _JSON
    ),
    signature=st.binary(max_size=80),
)
def test_any_structured_token_is_only_auth_error(
    any_verifier: JwtVerifier, header: dict[str, Any], payload: dict[str, Any], signature: bytes
) -> None:
    token = ".".join(
        _b64(part)
        for part in (json.dumps(header).encode(), json.dumps(payload).encode(), signature)
    )
    _check_outcome(any_verifier, f"Bearer {token}")


@given(payload=st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "x"]), _JSON))
def test_any_signed_payload_is_identity_or_auth_error(
    any_verifier: JwtVerifier, payload: dict[str, Any]
) -> None:
    # Correctly signed, so every claim check is reached.
    token = _hand_signed({"alg": "HS256"}, json.dumps({"iss": ISSUER} | payload), SECRET)
    try:
        identity = any_verifier.verify(f"Bearer {token}")
    except AuthError:
        return
    assert identity.subject == payload["sub"]
    assert json.loads(dict(identity_metadata(identity))[CLAIMS_KEY])["sub"] == payload["sub"]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_key", "problem"),
    [
        pytest.param(lambda k: ("HS256", b"short"), "at least 32 bytes", id="short-secret"),
        pytest.param(lambda k: ("HS256", "a" * 40), "secret's bytes", id="secret-as-str"),
        pytest.param(lambda k: ("HS256", k.rsa_public_pem), "PEM", id="pem-as-secret"),
        pytest.param(lambda k: ("HS256", k.rsa_public), "secret's bytes", id="rsa-as-secret"),
        pytest.param(lambda k: ("RS256", k.ec_public), "RSA public key", id="rs256-with-ec"),
        pytest.param(lambda k: ("RS256", k.rsa_private), "RSA public key", id="rs256-private"),
        pytest.param(lambda k: ("RS256", SECRET), "RSA public key", id="rs256-with-bytes"),
        pytest.param(
            lambda k: ("RS256", rsa.generate_private_key(65537, 1024).public_key()),
            "at least 2048 bits",
            id="rsa-1024",
        ),
        pytest.param(lambda k: ("ES256", k.rsa_public), "P-256", id="es256-with-rsa"),
        pytest.param(lambda k: ("ES256", k.ec_private), "P-256", id="es256-private"),
        pytest.param(
            lambda k: ("ES256", ec.generate_private_key(ec.SECP384R1()).public_key()),
            "P-256",
            id="es256-with-p384",
        ),
        pytest.param(lambda k: ("HS512", SECRET), "algorithm must be one of", id="hs512"),
        pytest.param(lambda k: ("none", SECRET), "algorithm must be one of", id="alg-none"),
        pytest.param(lambda k: ("hs256", SECRET), "algorithm must be one of", id="lower-case"),
    ],
)
def test_verification_key_refused(
    keys: Keys, make_key: Callable[[Keys], tuple[str, Any]], problem: str
) -> None:
    algorithm, key = make_key(keys)
    with pytest.raises(ValueError, match=problem):
        VerificationKey(algorithm, key)


def test_verification_key_repr_hides_secret() -> None:
    assert "0123" not in repr(VerificationKey("HS256", SECRET, kid="k"))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        pytest.param({"keys": ()}, "non-empty tuple", id="no-keys"),
        pytest.param({"keys": [VerificationKey("HS256", SECRET)]}, "tuple", id="keys-list"),
        pytest.param({"keys": (SECRET,)}, "VerificationKey", id="raw-secret"),
        pytest.param({"issuer": ""}, "issuer", id="empty-issuer"),
        pytest.param({"audience": 3}, "audience", id="audience-not-str"),
        pytest.param({"leeway": -1}, "leeway", id="negative-leeway"),
        pytest.param({"leeway": float("inf")}, "leeway", id="infinite-leeway"),
        pytest.param({"leeway": float("nan")}, "leeway", id="nan-leeway"),
        pytest.param({"required_claims": ["exp"]}, "required_claims", id="claims-list"),
        pytest.param({"required_claims": ("exp", "")}, "required_claims", id="empty-claim"),
    ],
)
def test_config_refused(settings: dict[str, Any], problem: str) -> None:
    settings.setdefault("keys", (VerificationKey("HS256", SECRET),))
    with pytest.raises(ValueError, match=problem):
        JwtConfig(**settings)


def test_load_pem_files_and_secret(keys: Keys, tmp_path: Path) -> None:
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(keys.rsa_public_pem)
    ec_file = tmp_path / "ec.pem"
    ec_file.write_bytes(keys.ec_public_pem)
    config = JwtConfig.load(SECRET, [rsa_file, ec_file], None, ISSUER, AUDIENCE, leeway=5)
    assert [key.algorithm for key in config.keys] == ["HS256", "RS256", "ES256"]
    assert (config.issuer, config.audience, config.leeway) == (ISSUER, AUDIENCE, 5)
    verifier = _verifier(config)
    for make_token in (_hs256, _rs256, _es256):
        assert verifier.verify(f"Bearer {make_token(keys)}").subject == "alice"


def test_load_needs_a_key() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        JwtConfig.load()


def _private_pem(keys: Keys) -> bytes:
    return keys.rsa_private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(lambda k: b"not a key", "not a PEM public key", id="garbage"),
        pytest.param(_private_pem, "not a PEM public key", id="private-key"),
        pytest.param(
            lambda k: _pem(ec.generate_private_key(ec.SECP384R1()).public_key()),
            "unsupported public key type",
            id="p384",
        ),
        pytest.param(
            lambda k: _pem(ed25519.Ed25519PrivateKey.generate().public_key()),
            "unsupported public key type",
            id="ed25519",
        ),
    ],
)
def test_load_refuses_pem_file(
    keys: Keys, tmp_path: Path, content: Callable[[Keys], bytes], problem: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content(keys))
    with pytest.raises(ValueError, match=problem) as info:
        JwtConfig.load(public_key_files=[path])
    assert "key.pem" in str(info.value)


def _rsa_jwk(keys: Keys, **extra: Any) -> dict[str, Any]:
    return RSAAlgorithm.to_jwk(keys.rsa_public, as_dict=True) | extra


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        pytest.param(lambda k: "{", "not JSON", id="not-json"),
        pytest.param(lambda k: "[]", "non-empty", id="not-an-object"),
        pytest.param(lambda k: '{"keys": []}', "non-empty", id="no-keys"),
        pytest.param(lambda k: '{"keys": [1]}', "key #0 is not a JSON object", id="not-a-jwk"),
        pytest.param(
            lambda k: json.dumps({"keys": [_rsa_jwk(k, kid="r", alg="RS512")]}),
            "key 'r': algorithm 'RS512' is not supported",
            id="unsupported-alg",
        ),
        pytest.param(
            lambda k: json.dumps({"keys": [_rsa_jwk(k, kid="r", alg="ES256")]}),
            "key 'r': unusable JWK",
            id="alg-does-not-fit-kty",
        ),
        pytest.param(
            lambda k: json.dumps({"keys": [_rsa_jwk(k, kid="r", use="enc")]}),
            "key 'r': key use is 'enc'",
            id="encryption-key",
        ),
        pytest.param(
            lambda k: json.dumps({"keys": [{"kty": "oct", "k": _b64(b"short"), "kid": "h"}]}),
            "key 'h': HS256 key 'h': an HS256 secret must be at least 32 bytes",
            id="short-oct",
        ),
        pytest.param(
            lambda k: json.dumps({"keys": [{"kty": "XYZ", "kid": "x"}]}),
            "key 'x': unusable JWK",
            id="unknown-kty",
        ),
        pytest.param(
            lambda k: json.dumps(
                {
                    "keys": [
                        _rsa_jwk(k, kid="ok"),
                        ECAlgorithm.to_jwk(
                            ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True
                        ),
                    ]
                }
            ),
            "key #1: algorithm 'ES384' is not supported",
            id="p384-derived-es384",
        ),
        pytest.param(
            lambda k: json.dumps(
                {"keys": [RSAAlgorithm.to_jwk(k.rsa_private, as_dict=True) | {"kid": "p"}]}
            ),
            "key 'p': RS256 key 'p': an RS256 key must be an RSA public key",
            id="private-jwk",
        ),
    ],
)
def test_load_refuses_jwks(
    keys: Keys, tmp_path: Path, document: Callable[[Keys], str], problem: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(document(keys))
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        JwtConfig.load(jwks_file=path)
    assert "jwks.json" in str(info.value)


# -- identity -------------------------------------------------------------------------------


def test_identity_metadata() -> None:
    identity = Identity("alice", {"sub": "alice", "roles": ["a", "b"], "name": "Zoë"})
    assert identity_metadata(identity) == [
        (SUBJECT_KEY, "alice"),
        (CLAIMS_KEY, '{"name":"Zo\\u00eb","roles":["a","b"],"sub":"alice"}'),
    ]
    assert frozenset({"x-hms-subject", "x-hms-claims"}) == IDENTITY_KEYS


def test_identity_is_read_only() -> None:
    claims = {"sub": "alice"}
    identity = Identity("alice", claims)
    claims["sub"] = "mallory"
    assert identity.claims["sub"] == "alice"
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param("", id="empty"),
        pytest.param("a\nb", id="newline"),
        pytest.param("ålice", id="non-ascii"),
        pytest.param(42, id="not-a-string"),
    ],
)
def test_identity_refuses_subject(subject: Any) -> None:
    with pytest.raises(ValueError, match="subject"):
        Identity(subject, {})
