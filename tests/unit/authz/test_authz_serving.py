"""Who may serve what: the binding's parsing, its precedence, and a pool that ignores entries
breaking it (naming key and identity), table-driven."""

from __future__ import annotations

import logging
import random
import re

import pytest

from mesh.authz.serving import ServingPolicy, load_serving
from mesh.client.pool import ServicePool
from mesh.registry.keys import Instance
from mesh.registry.watch import Change, ChangeKind
from mesh.resilience.outlier import OutlierConfig
from mesh.testing import DummyChannel, VirtualClock

POLICY = ServingPolicy.parse(
    """
[serve]
"hms.eligibility.v1.EligibilityService" = ["spiffe://hms.local/svc/eligibility"]
"hms.testing.v1.*" = ["spiffe://hms.local/svc/echo", "spiffe://hms.local/svc/mirror"]
"hms.testing.v1.SecretService" = ["spiffe://hms.local/svc/vault"]
"hms.shared.*" = ["spiffe://hms.local/svc/*"]
"""
)


@pytest.mark.parametrize(
    ("service", "identity", "refusal"),
    [
        pytest.param("hms.eligibility.v1.EligibilityService", "spiffe://hms.local/svc/eligibility",
                     None, id="its-own"),
        pytest.param("hms.eligibility.v1.EligibilityService", "spiffe://hms.local/svc/evil",
                     "spiffe://hms.local/svc/evil may not serve "
                     "hms.eligibility.v1.EligibilityService (allowed: "
                     "spiffe://hms.local/svc/eligibility)", id="the-hijack"),
        pytest.param("hms.testing.v1.EchoService", "spiffe://hms.local/svc/mirror", None,
                     id="package-rule"),
        pytest.param("hms.testing.v1.SecretService", "spiffe://hms.local/svc/echo",
                     "spiffe://hms.local/svc/echo may not serve hms.testing.v1.SecretService "
                     "(allowed: spiffe://hms.local/svc/vault)", id="exact-beats-package"),
        pytest.param("hms.shared.v1.Clock", "spiffe://hms.local/svc/anyone", None,
                     id="identity-pattern"),
        pytest.param("hms.fees.v1.FeeService", "spiffe://hms.local/svc/fees",
                     "no rule of <string> lets anyone serve hms.fees.v1.FeeService",
                     id="uncovered-service"),
        pytest.param("hms.testing.v1x.EchoService", "spiffe://hms.local/svc/echo",
                     "no rule of <string> lets anyone serve hms.testing.v1x.EchoService",
                     id="package-prefix-is-whole-segments"),
    ],
)  # fmt: skip
def test_refusal(service: str, identity: str, refusal: str | None) -> None:
    assert POLICY.refusal(service, identity) == refusal


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "needs a [serve] table", id="empty"),
        pytest.param("[serve", "not TOML", id="truncated"),
        pytest.param('[serve]\n"a.B" = "spiffe://x/svc/a"', "a list of spiffe:// identities",
                     id="not-a-list"),
        pytest.param('[serve]\n"a.B" = ["evil"]', "a list of spiffe:// identities",
                     id="not-spiffe"),
        pytest.param('[serve]\n"a*b" = ["spiffe://x/svc/a"]', "a service, pkg.*, or *",
                     id="bad-pattern"),
        pytest.param('[serve]\n"a.B" = []\n[other]\nx = 1', "unknown table", id="unknown-table"),
    ],
)  # fmt: skip
def test_a_bad_policy_names_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        ServingPolicy.parse(text)


def test_a_missing_file_is_named(tmp_path: object) -> None:
    with pytest.raises(ValueError, match=r"serving policy .*nope\.toml"):
        load_serving(tmp_path / "nope.toml")  # type: ignore[operator]


async def test_a_pool_ignores_an_instance_that_may_not_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = "hms.eligibility.v1.EligibilityService"
    pool = ServicePool(
        service,
        lambda _i: DummyChannel(),  # type: ignore[arg-type,return-value]
        outlier=OutlierConfig(),
        clock=VirtualClock(),
        rand=random.Random(1).random,
        watch_health=False,
        admit=lambda i: POLICY.refusal(i.service, i.identity),
    )
    good = Instance(service, "eligibility-1", "127.0.0.1:1", "eligibility",
                    identity="spiffe://hms.local/svc/eligibility")  # fmt: skip
    evil = Instance(service, "evil-1", "127.0.0.1:2", "evil", weight=10000,
                    identity="spiffe://hms.local/svc/evil")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mesh.client.pool"):
        for instance in (good, evil, evil):
            pool.apply(Change(ChangeKind.ADDED, instance))
    assert list(pool.endpoints) == ["eligibility-1"]
    (warning,) = [r.getMessage() for r in caplog.records]  # once, however often it shows up
    assert warning.startswith(f"ignoring registry entry evil-1 of {service}: ")
    assert "spiffe://hms.local/svc/evil may not serve" in warning
    await pool.close()
