"""The stack's development gate: the signing key `mesh up` makes (tools/devjwt.py), the gateway
arguments it gives (`Stack._gate_args`), `mesh token`, and `mesh gateway --no-gate`. Tokens are
checked by the gateway's own verifier, configured from the very arguments the stack passes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from hms_gateway.auth import AuthError, Identity, JwtVerifier
from hms_tools.cli import build_parser, main
from hms_tools.cli.gateway import gateway_configs
from hms_tools.devjwt import (
    DEV_ISSUER,
    ensure_signing_key,
    mint_token,
    public_key_path,
    signing_key_path,
)
from hms_tools.errors import OperatorError
from hms_tools.stack import Stack, StackConfig


def _stack(state_dir: Path, *gateway_args: str) -> Stack:
    return Stack(
        StackConfig(state_dir=state_dir, deployments=("eligibility",), gateway_args=gateway_args)
    )


def _verifier(*gateway_args: str) -> JwtVerifier:
    """The gateway's verifier, from `mesh gateway` arguments."""
    args = build_parser().parse_args(
        ["gateway", "--insecure", "--etcd=127.0.0.1:2379", *gateway_args]
    )
    config, _, _ = gateway_configs(args)
    assert config.jwt is not None
    return JwtVerifier(config.jwt)


def _verify(state_dir: Path, token: str) -> Identity:
    return _verifier(*_stack(state_dir)._gate_args()).verify(f"Bearer {token}")


# -- the key and the stack's gateway arguments ---------------------------------------------------


def test_the_stack_gates_its_gateway_with_a_new_development_key(tmp_path: Path) -> None:
    args = _stack(tmp_path)._gate_args()
    assert args == [f"--jwt-public-key={public_key_path(tmp_path)}", f"--jwt-issuer={DEV_ISSUER}"]
    key = signing_key_path(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(public_key_path(tmp_path)).st_mode) == 0o644
    assert b"PRIVATE KEY" not in public_key_path(tmp_path).read_bytes()


def test_the_key_is_kept_across_stacks(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path)
    token = mint_token(tmp_path, "maya", ["housing:apply"])
    private = signing_key_path(tmp_path).read_bytes()
    ensure_signing_key(tmp_path)
    assert signing_key_path(tmp_path).read_bytes() == private
    assert _verify(tmp_path, token).scopes == {"housing:apply"}


def test_a_loosened_key_is_tightened_and_a_stale_public_key_rewritten(tmp_path: Path) -> None:
    public = ensure_signing_key(tmp_path)
    good = public.read_bytes()
    os.chmod(signing_key_path(tmp_path), 0o644)
    public.write_bytes(b"stale")
    ensure_signing_key(tmp_path)
    assert stat.S_IMODE(os.stat(signing_key_path(tmp_path)).st_mode) == 0o600
    assert public.read_bytes() == good


def test_a_key_file_that_is_not_a_p256_key_is_refused(tmp_path: Path) -> None:
    path = signing_key_path(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"not a key")
    with pytest.raises(OperatorError, match="is not a PEM private key"):
        ensure_signing_key(tmp_path)


@pytest.mark.parametrize(
    ("gateway_args", "gated_by_the_stack"),
    [
        pytest.param((), True, id="none"),
        pytest.param(("--strict",), True, id="other-flags"),
        pytest.param(("--jwt-audience=hms-api",), True, id="audience-only"),
        pytest.param(("--no-gate",), False, id="no-gate"),
        pytest.param(("--no-g",), False, id="no-gate-prefix"),
        pytest.param(("--jwks=/keys.json",), False, id="jwks"),
        pytest.param(("--jwt-public-key", "/k.pem"), False, id="public-key-apart"),
        pytest.param(("--jwt-hs256-secret-file=/s",), False, id="hs256"),
    ],
)
def test_the_operators_gate_replaces_the_development_one(
    tmp_path: Path, gateway_args: tuple[str, ...], gated_by_the_stack: bool
) -> None:
    args = _stack(tmp_path, *gateway_args)._gate_args()
    assert bool(args) is gated_by_the_stack
    assert signing_key_path(tmp_path).exists() is gated_by_the_stack


# -- tokens -------------------------------------------------------------------------------------


def test_a_minted_token_passes_the_gate_with_its_scopes(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path)
    token = mint_token(tmp_path, "maya", ["housing:apply", "housing:read", "housing:apply"])
    identity = _verify(tmp_path, token)
    assert identity.subject == "maya"
    assert identity.scopes == {"housing:apply", "housing:read"}
    assert identity.claims["scope"] == "housing:apply housing:read"
    assert identity.claims["iss"] == DEV_ISSUER
    assert identity.claims["exp"] - identity.claims["iat"] == 3600


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path)
    token = mint_token(tmp_path, "maya", [], ttl=60, now=time.time() - 120)
    with pytest.raises(AuthError, match="token expired"):
        _verify(tmp_path, token)


def test_another_stacks_token_is_refused(tmp_path: Path) -> None:
    ensure_signing_key(tmp_path / "a")
    ensure_signing_key(tmp_path / "b")
    with pytest.raises(AuthError, match="bad signature"):
        _verify(tmp_path / "b", mint_token(tmp_path / "a", "maya", []))


@pytest.mark.parametrize(
    ("subject", "scopes", "ttl", "message"),
    [
        pytest.param("", [], 60, "subject '': must be non-empty printable ASCII", id="no-sub"),
        pytest.param("mayä", [], 60, "subject 'mayä': must be non-empty", id="sub-not-ascii"),
        pytest.param("maya", ["a b"], 60, "scope 'a b': a scope is printable", id="scope-space"),
        pytest.param("maya", [""], 60, "scope '': a scope is printable", id="empty-scope"),
        pytest.param("maya", [], 0, "ttl 0: must be a whole number of seconds", id="ttl-0"),
    ],
)
def test_mint_refuses(
    tmp_path: Path, subject: str, scopes: list[str], ttl: int, message: str
) -> None:
    ensure_signing_key(tmp_path)
    with pytest.raises(ValueError, match="^" + message):
        mint_token(tmp_path, subject, scopes, ttl=ttl)


def test_mesh_token_prints_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_signing_key(tmp_path)
    argv = ["token", "--sub", "maya", "--scope", "housing:apply", "--scope", "audit:read"]
    assert main([*argv, "--ttl", "60", "--state-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    identity = _verify(tmp_path, token)
    assert identity.scopes == {"housing:apply", "audit:read"}
    assert identity.claims["exp"] - identity.claims["iat"] == 60


def test_mesh_token_without_a_stack_key_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--sub", "maya", "--state-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "dev-signing-key.pem not found" in error
    assert "mesh up" in error


# -- mesh gateway --no-gate ---------------------------------------------------------------------


def test_no_gate_is_no_jwt() -> None:
    args = build_parser().parse_args(["gateway", "--insecure", "--etcd=h:1", "--no-gate"])
    config, _, _ = gateway_configs(args)
    assert config.jwt is None


def test_no_gate_with_a_key_is_refused(tmp_path: Path) -> None:
    public = ensure_signing_key(tmp_path)
    args = build_parser().parse_args(
        ["gateway", "--insecure", "--etcd=h:1", "--no-gate", f"--jwt-public-key={public}"]
    )
    with pytest.raises(ValueError, match="--no-gate and a JWT key"):
        gateway_configs(args)
