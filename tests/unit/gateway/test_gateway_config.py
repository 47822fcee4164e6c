"""GatewayConfig: validation on construction and is_public."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from hms_gateway.config import GatewayConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"default_timeout": 1.0, "max_timeout": 1.0}, id="default-equals-max"),
        pytest.param({"default_timeout": 0.001}, id="tiny-default"),
        pytest.param({"default_timeout": 30.0, "max_timeout": float("inf")}, id="max-infinite"),
        pytest.param({"body_limit": 0}, id="body-limit-zero"),
        pytest.param({"body_limit": 1}, id="body-limit-one"),
        pytest.param({"public": frozenset({"pkg.Service"})}, id="public-service"),
        pytest.param({"public": frozenset({"hms.notify.v1.NotifyService"})}, id="public-long"),
        pytest.param({"public": frozenset({"pkg.Service/Method"})}, id="public-method"),
        pytest.param(
            {"public": frozenset({"a.B", "c.D/E", "hms.testing.v1.EchoService/Echo"})},
            id="public-several",
        ),
    ],
)
def test_valid(kwargs: dict[str, Any]) -> None:
    config = GatewayConfig(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"default_timeout": 0.0}, "default_timeout", id="default-zero"),
        pytest.param({"default_timeout": -1.0}, "default_timeout", id="default-negative"),
        pytest.param({"default_timeout": float("nan")}, "default_timeout", id="default-nan"),
        pytest.param(
            {"default_timeout": 10.0, "max_timeout": 5.0}, "max_timeout (5.0)", id="over-max"
        ),
        pytest.param({"default_timeout": 301.0}, "got 301.0", id="over-default-max"),
        pytest.param({"body_limit": -1}, "body_limit", id="body-limit-negative"),
        pytest.param({"public": frozenset({"Service"})}, "'Service'", id="public-no-package"),
        pytest.param({"public": frozenset({"pkg..Service"})}, "pkg..Service", id="empty-part"),
        pytest.param({"public": frozenset({".pkg.Service"})}, ".pkg.Service", id="leading-dot"),
        pytest.param({"public": frozenset({"pkg.Service."})}, "pkg.Service.", id="trailing-dot"),
        pytest.param({"public": frozenset({""})}, "public", id="empty-name"),
        pytest.param({"public": frozenset({"/Method"})}, "/Method", id="method-only"),
        pytest.param(
            {"public": frozenset({"pkg.Service/A/B"})}, "pkg.Service/A/B", id="two-slashes"
        ),
        pytest.param(
            {"public": frozenset({"ok.Service", "bad"})}, "'bad'", id="one-bad-among-good"
        ),
        pytest.param(
            {"public": frozenset({"pkg.Service/"})},
            "pkg.Service/",
            id="empty-method",
        ),
    ],
)
def test_invalid(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        GatewayConfig(**kwargs)


def test_frozen() -> None:
    config = GatewayConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.body_limit = 1  # type: ignore[misc]


_PUBLIC = frozenset({"hms.notify.v1.NotifyService", "hms.testing.v1.EchoService/Echo"})


@pytest.mark.parametrize(
    ("service", "method", "expected"),
    [
        pytest.param("hms.notify.v1.NotifyService", "Send", True, id="whole-service"),
        pytest.param("hms.notify.v1.NotifyService", "Anything", True, id="whole-service-other"),
        pytest.param("hms.testing.v1.EchoService", "Echo", True, id="one-method"),
        pytest.param("hms.testing.v1.EchoService", "EchoOnce", False, id="other-method"),
        pytest.param("hms.testing.v1.EchoServiceX", "Echo", False, id="service-prefix-only"),
        pytest.param("hms.eligibility.v1.EligibilityService", "Check", False, id="not-listed"),
    ],
)
def test_is_public(service: str, method: str, expected: bool) -> None:
    assert GatewayConfig(public=_PUBLIC).is_public(service, method) is expected


def test_nothing_public_by_default() -> None:
    assert not GatewayConfig().is_public("hms.notify.v1.NotifyService", "Send")
