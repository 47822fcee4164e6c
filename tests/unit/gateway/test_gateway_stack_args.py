"""`mesh up --gateway-arg=...`: StackConfig.gateway_args, checked when the config is made, and
the command line that fills it. (A real stack with gateway arguments, and a gateway that refuses
one, are in tests/integration/gateway/test_gateway_stack_args.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from hms_tools.cli import main
from hms_tools.cli import up as up_command
from hms_tools.stack import StackConfig


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        pytest.param((), (), id="none"),
        pytest.param(("--strict",), ("--strict",), id="one-flag"),
        pytest.param(
            ["--strict", "--rate", "5", "--cors-origin=https://a.example"],
            ("--strict", "--rate", "5", "--cors-origin=https://a.example"),
            id="list-kept-as-tuple",
        ),
        pytest.param(("--port=8080",), ("--port=8080",), id="fixed-port"),
        pytest.param(("--tr=console",), ("--tr=console",), id="prefix-of-another-flag"),
        pytest.param(("--bogus",), ("--bogus",), id="unknown-flag-left-to-the-gateway"),
    ],
)
def test_gateway_args_accepted(given: Any, kept: tuple[str, ...]) -> None:
    assert StackConfig(gateway_args=given).gateway_args == kept


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            {"gateway_args": "--strict"},
            r"gateway_args is a sequence of arguments, not a string: \('--strict',\)\?",
            id="a-string",
        ),
        pytest.param(
            {"gateway_args": None},
            "gateway_args must be a tuple of strings, not None",
            id="none",
        ),
        pytest.param(
            {"gateway_args": ("--rate", 5)},
            r"gateway_args must all be strings: \('--rate', 5\)",
            id="not-a-string",
        ),
        pytest.param(
            {"gateway_args": ("--strict",), "gateway": False},
            r"gateway_args given, but this stack starts no gateway \(gateway=False\)",
            id="no-gateway",
        ),
        pytest.param({"gateway_args": ("",)}, "gateway argument '': an empty argument", id="empty"),
        pytest.param(
            {"gateway_args": ("--etcd=10.0.0.1:2379",)},
            r"gateway argument '--etcd=10.0.0.1:2379': the stack sets --etcd itself "
            r"\(the gateway uses the stack's etcd\)",
            id="etcd",
        ),
        pytest.param(
            {"gateway_args": ("--namespace", "other")},
            r"the stack sets --namespace itself \(.*mesh up --namespace\)",
            id="namespace",
        ),
        pytest.param(
            {"gateway_args": ("--tls=/tmp/tls",)},
            r"gateway argument '--tls=/tmp/tls': the stack sets --tls-dir itself",
            id="abbreviated-tls-dir",
        ),
        pytest.param(
            {"gateway_args": ("--cert-name=ops",)}, "the stack sets --cert-name", id="cert-name"
        ),
        pytest.param(
            {"gateway_args": ("--strict", "--insecure")},
            r"'--insecure': the stack sets --insecure itself \(.*mTLS only\)",
            id="insecure",
        ),
        pytest.param(
            {"gateway_args": ("--ins",)}, "the stack sets --insecure", id="abbreviated-insecure"
        ),
        # --t could also be --tracing (the gateway would call it ambiguous): refused all the same
        pytest.param({"gateway_args": ("--t=x",)}, "the stack sets --tls-dir", id="short-prefix"),
        pytest.param(
            {"gateway_args": ("--descriptor-set=api.binpb",)},
            "the stack sets --descriptor-set",
            id="static-mode",
        ),
        pytest.param(
            {"gateway_args": ("--upstream", "a.B=h:1")}, "the stack sets --upstream", id="upstream"
        ),
        pytest.param(
            {"gateway_args": ("--state-dir=x",)},
            r"the stack sets --state-dir itself \(.*mesh up --state-dir\)",
            id="state-dir",
        ),
    ],
)
def test_gateway_args_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StackConfig(**config)


def test_mesh_up_passes_each_gateway_arg_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[StackConfig] = []

    async def serve(config: StackConfig) -> None:
        seen.append(config)

    monkeypatch.setattr(up_command, "serve", serve)
    status = main(
        [
            "up",
            "--only",
            "eligibility",
            "--gateway-arg=--strict",
            "--gateway-arg=--port=8080",
            "--gateway-arg=--rate",
            "--gateway-arg=5",
        ]
    )
    assert status == 0
    (config,) = seen
    assert config.deployments == ("eligibility",)
    assert config.gateway_args == ("--strict", "--port=8080", "--rate", "5")


def test_mesh_up_without_gateway_args(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[StackConfig] = []

    async def serve(config: StackConfig) -> None:
        seen.append(config)

    monkeypatch.setattr(up_command, "serve", serve)
    assert main(["up"]) == 0
    assert seen[0].gateway_args == ()


def test_mesh_up_refuses_a_stack_flag_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def serve(config: StackConfig) -> None:
        raise AssertionError("nothing is started")

    monkeypatch.setattr(up_command, "serve", serve)
    assert main(["up", "--gateway-arg=--etcd=127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == (
        "mesh up: gateway argument '--etcd=127.0.0.1:1': the stack sets --etcd itself "
        "(the gateway uses the stack's etcd)\n"
    )
