"""`mesh gateway`'s flags for the limits and the operations endpoints, parsed into the
gateway's configuration (no gateway is started)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hms_gateway.config import GatewayConfig
from hms_gateway.limits import ServerLimits
from hms_gateway.serve import ListenConfig
from hms_tools.cli import build_parser
from hms_tools.cli.gateway import LIMIT_FLAGS, gateway_configs


def _configs(*flags: str) -> tuple[GatewayConfig, ListenConfig]:
    args = build_parser().parse_args(
        ["gateway", "--insecure", "--etcd=127.0.0.1:2379", "--namespace=t", *flags]
    )
    config, _, listen = gateway_configs(args)
    return config, listen


def test_every_limit_has_a_flag_named_after_it() -> None:
    names = {flag[2:].replace("-", "_") for flag, *_ in LIMIT_FLAGS}
    assert names == {field.name for field in dataclasses.fields(ServerLimits)}


@pytest.mark.parametrize(("flag", "text"), [(flag, text) for flag, _, _, text in LIMIT_FLAGS])
def test_the_help_says_the_library_s_default(flag: str, text: str) -> None:
    default = getattr(ServerLimits(), flag[2:].replace("-", "_"))
    assert text.endswith(f"(default {default:g})"), (flag, text, default)


def test_no_flags_give_the_default_limits() -> None:
    config, listen = _configs()
    assert listen.limits == ServerLimits()
    assert listen.ops_port is None
    assert config.ops == "open"


def test_limit_flags() -> None:
    _, listen = _configs(
        "--max-request-line=100",
        "--max-header-bytes=200",
        "--max-header-count=3",
        "--header-timeout=0.5",
        "--body-timeout=2",
        "--keepalive-timeout=1.5",
        "--max-connections=7",
        "--max-in-flight=5",
    )
    assert listen.limits == ServerLimits(
        max_request_line=100,
        max_header_bytes=200,
        max_header_count=3,
        header_timeout=0.5,
        body_timeout=2,
        keepalive_timeout=1.5,
        max_connections=7,
        max_in_flight=5,
    )


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        pytest.param("--max-connections=0", "max_connections", id="connections-zero"),
        pytest.param("--header-timeout=0", "header_timeout", id="header-timeout-zero"),
        pytest.param("--body-timeout=nan", "body_timeout", id="body-timeout-nan"),
    ],
)
def test_bad_limits_are_refused(flag: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _configs(flag)


def test_ops_port_moves_the_documents() -> None:
    config, listen = _configs("--ops-port=0", "--ops-host=127.0.0.2")
    assert config.ops == "listener"
    assert (listen.ops_port, listen.ops_host) == (0, "127.0.0.2")


def test_ops_gate(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32 + b"\n")
    config, listen = _configs("--ops-gate", f"--jwt-hs256-secret-file={secret}")
    assert config.ops == "gate"
    assert listen.ops_port is None


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        pytest.param(("--ops-gate",), "--ops-gate needs the gate", id="gate-without-jwt"),
        pytest.param(("--ops-gate", "--ops-port=0"), "choose one", id="gate-and-port"),
    ],
)
def test_ops_flags_that_do_not_go_together(flags: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _configs(*flags)


def test_a_bad_ops_port_is_refused() -> None:
    with pytest.raises(ValueError, match="ops_port"):
        _configs("--ops-port=70000")


# -- svc.trace: the sampling rate and the gateway's own NATS ----------------------------------


def test_without_a_sample_rate_the_gateway_records_nothing_and_opens_no_nats() -> None:
    _, listen = _configs("--trace-sample=0", "--nats=nats://127.0.0.1:4222")
    assert (listen.trace_sample, listen.nats) == (0.0, ())


def test_trace_sample_and_nats_flags() -> None:
    _, listen = _configs("--trace-sample=0.25", "--nats=nats://a:1,nats://b:2")
    assert (listen.trace_sample, listen.nats) == (0.25, ("nats://a:1", "nats://b:2"))
    assert not listen.nats_access.secured  # nats:// is plaintext


def test_tls_nats_is_reached_as_the_gateways_own_identity(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["gateway", f"--tls-dir={tmp_path}", "--etcd=127.0.0.1:2379",
         "--trace-sample=1", "--nats=tls://127.0.0.1:4222"]
    )  # fmt: skip
    _, client, listen = gateway_configs(args)
    assert listen.nats_access.tls is not None
    assert client.tls is not None
    assert listen.nats_access.tls.cert == client.tls.cert == tmp_path / "gateway.pem"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        pytest.param(("--trace-sample=1.5",), "--trace-sample", id="rate-above-one"),
        pytest.param(("--trace-sample=all",), "--trace-sample", id="not-a-number"),
        pytest.param(
            ("--trace-sample=1", "--nats=tls://127.0.0.1:4222"),
            "no client certificate",
            id="tls-nats-without-an-identity",
        ),
    ],
)
def test_bad_trace_settings_are_refused(flags: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        _configs(*flags)
