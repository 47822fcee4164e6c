"""Static upstreams: parse_upstreams specs and the StaticDiscovery interface."""

from __future__ import annotations

import re

import pytest

from mesh.registry.keys import Instance
from mesh.registry.static import StaticDiscovery, parse_upstreams, static_discovery

_NOTIFY = "hms.notify.v1.NotifyService"
_ECHO = "hms.testing.v1.EchoService"


def _view(upstreams: dict[str, tuple[Instance, ...]]) -> dict[str, list[tuple[str, ...]]]:
    return {
        service: [(i.instance_id, i.address, i.deployment, i.identity) for i in instances]
        for service, instances in upstreams.items()
    }


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param([], {}, id="none"),
        pytest.param(
            [f"{_NOTIFY}=127.0.0.1:50051"],
            {_NOTIFY: [("static-0", "127.0.0.1:50051", "static", "")]},
            id="plaintext",
        ),
        pytest.param(
            [f"{_NOTIFY}=127.0.0.1:50051@notify"],
            {_NOTIFY: [("static-0", "127.0.0.1:50051", "notify", "spiffe://hms.local/svc/notify")]},
            id="with-deployment",
        ),
        pytest.param(
            [f"{_NOTIFY}=127.0.0.1:1@"],
            {_NOTIFY: [("static-0", "127.0.0.1:1", "static", "")]},
            id="empty-deployment-is-plaintext",
        ),
        pytest.param(
            [f"{_ECHO}=a:1,b:2@echo-b,[::1]:3"],
            {
                _ECHO: [
                    ("static-0", "a:1", "static", ""),
                    ("static-1", "b:2", "echo-b", "spiffe://hms.local/svc/echo-b"),
                    ("static-2", "[::1]:3", "static", ""),
                ]
            },
            id="several-addresses",
        ),
        pytest.param(
            [f"{_ECHO}=a:1", f"{_NOTIFY}=n:9", f"{_ECHO}=b:2@echo"],
            {
                _ECHO: [
                    ("static-0", "a:1", "static", ""),
                    ("static-1", "b:2", "echo", "spiffe://hms.local/svc/echo"),
                ],
                _NOTIFY: [("static-0", "n:9", "static", "")],
            },
            id="repeated-service-accumulates",
        ),
        pytest.param(
            ["a.B=h:65535"], {"a.B": [("static-0", "h:65535", "static", "")]}, id="max-port"
        ),
    ],
)
def test_parse_valid(specs: list[str], expected: dict[str, list[tuple[str, ...]]]) -> None:
    parsed = parse_upstreams(specs)
    assert _view(parsed) == expected
    for service, instances in parsed.items():
        assert isinstance(instances, tuple)
        assert all(i.service == service for i in instances)


def test_parse_accepts_any_iterable() -> None:
    parsed = parse_upstreams(iter([f"{_ECHO}=a:1"]))
    assert list(parsed) == [_ECHO]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        pytest.param(_NOTIFY, "expected SERVICE=HOST:PORT", id="no-equals"),
        pytest.param(f"{_NOTIFY}=", "expected SERVICE=HOST:PORT", id="empty-addresses"),
        pytest.param("=127.0.0.1:1", "expected SERVICE=HOST:PORT", id="empty-service"),
        pytest.param(f"{_NOTIFY}=a:1,,b:2", "address ''", id="empty-address-in-list"),
        pytest.param(f"{_NOTIFY}=a:1,", "address ''", id="trailing-comma"),
        pytest.param(f"{_NOTIFY}=@notify", "address ''", id="only-deployment"),
        pytest.param(f"{_NOTIFY}=localhost", "is not host:port", id="no-port"),
        pytest.param(f"{_NOTIFY}=localhost:", "is not host:port", id="empty-port"),
        pytest.param(f"{_NOTIFY}=:50051", "is not host:port", id="empty-host"),
        pytest.param(f"{_NOTIFY}=h:0", "is not host:port", id="port-zero"),
        pytest.param(f"{_NOTIFY}=h:65536", "is not host:port", id="port-too-big"),
        pytest.param(f"{_NOTIFY}=h:http", "is not host:port", id="port-not-digits"),
        pytest.param(f"{_NOTIFY}=h:-1", "is not host:port", id="port-negative"),
        pytest.param("NotifyService=h:1", "full gRPC service name", id="service-no-package"),
        pytest.param(
            f"{_NOTIFY}=h:1@Bad_Deployment",
            "Bad_Deployment",
            id="bad-deployment",
        ),
    ],
)
def test_parse_errors_name_the_spec(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"upstream {spec!r}")) as info:
        parse_upstreams([f"{_ECHO}=ok:1", spec])
    assert problem in str(info.value)


def _instances() -> list[Instance]:
    parsed = parse_upstreams([f"{_ECHO}=a:1,b:2", f"{_NOTIFY}=n:3"])
    return [*parsed[_ECHO], *parsed[_NOTIFY]]


@pytest.mark.parametrize(
    ("service", "addresses"),
    [
        pytest.param(None, ["a:1", "b:2", "n:3"], id="all"),
        pytest.param(_ECHO, ["a:1", "b:2"], id="one-service"),
        pytest.param(_NOTIFY, ["n:3"], id="other-service"),
        pytest.param("x.Unknown", [], id="unknown-service"),
    ],
)
def test_static_discovery_instances(service: str | None, addresses: list[str]) -> None:
    discovery = StaticDiscovery(_instances())
    assert [i.address for i in discovery.instances(service)] == addresses


async def test_static_discovery_lifecycle() -> None:
    discovery = StaticDiscovery(iter(_instances()))
    seen: list[object] = []
    unsubscribe = discovery.subscribe(seen.append)
    assert await discovery.start() is None
    assert await discovery.start(timeout=0.1) is None
    assert len(discovery.instances()) == 3
    unsubscribe()
    assert await discovery.stop() is None
    assert seen == []  # nothing ever changes
    assert len(discovery.instances()) == 3


def test_static_discovery_returns_copies() -> None:
    discovery = StaticDiscovery(_instances())
    discovery.instances().clear()
    assert len(discovery.instances()) == 3


@pytest.mark.parametrize(
    ("service", "addresses"),
    [
        pytest.param(_ECHO, ["a:1", "b:2"], id="known"),
        pytest.param("x.Unknown", [], id="unknown-has-none"),
    ],
)
def test_static_discovery_of(service: str, addresses: list[str]) -> None:
    upstreams = parse_upstreams([f"{_ECHO}=a:1,b:2", f"{_NOTIFY}=n:3"])
    discovery = static_discovery(upstreams, service)
    assert [i.address for i in discovery.instances()] == addresses
    assert [i.address for i in discovery.instances(service)] == addresses
