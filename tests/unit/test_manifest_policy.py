"""What `mesh up` makes of the manifests: the one authorization policy composed from every
[[accepts]] (tools/authz_matrix.py), decided by mesh.authz as the services will; the NATS
permissions from `publishes` (tools/controlplane.py); replicas and drain delay (tools/stack.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hms_tools.authz_matrix import ANY_MESH_IDENTITY, compose_policy
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.controlplane import Grant, policy_for
from hms_tools.errors import OperatorError
from hms_tools.manifest import Manifest, load_manifests, manifest_from_mapping
from hms_tools.stack import Stack, StackConfig
from mesh.authz.policy import Policy
from mesh.identity import spiffe_id

from .test_manifest import BANK, CONTRACTS, SHOP, STOCK

SELL, GET, RESTOCK, CHARGE = (
    f"/{SHOP}/SellItem",
    f"/{SHOP}/GetItem",
    f"/{STOCK}/Restock",
    f"/{BANK}/Charge",
)


def manifest(name: str, serves: list[str], accepts: list[dict[str, Any]]) -> Manifest:
    data = {
        "name": name,
        "version": "1.0.0",
        "description": name,
        "replicas": 1,
        "state": "none",
        "serves": serves,
        "accepts": accepts,
    }
    return manifest_from_mapping(data, source=name, folder=name, contracts=CONTRACTS)


SHOP_MANIFEST = manifest(
    "shop",
    [SHOP, STOCK],
    [
        {"from": ["gateway"], "methods": [f"/{SHOP}/*"]},
        {"from": ["till"], "methods": ["SellItem", "Restock"]},
    ],
)
BANK_MANIFEST = manifest("bank", [BANK], [{"from": ["*"], "methods": ["Charge"]}])
NOBODY = manifest("vault", [BANK], [])


def decide(policy: Policy, caller: str | None, method: str) -> bool:
    return policy.decide(spiffe_id(caller) if caller else None, method).allowed


@pytest.mark.parametrize(
    ("caller", "method", "allowed"),
    [
        pytest.param("gateway", SELL, True, id="gateway-sells"),
        pytest.param("gateway", GET, True, id="gateway-gets"),
        pytest.param("gateway", RESTOCK, False, id="gateway-not-stock"),
        pytest.param("till", SELL, True, id="till-sells"),
        pytest.param("till", RESTOCK, True, id="till-restocks"),
        pytest.param("till", GET, False, id="till-not-get"),
        pytest.param("ops", SELL, False, id="ops-not-named"),
        pytest.param("till", CHARGE, True, id="star-any-identity"),
        pytest.param("ops", CHARGE, True, id="star-ops-too"),
        pytest.param(None, CHARGE, False, id="star-not-unauthenticated"),
        pytest.param("gateway", "/grpc.health.v1.Health/Check", True, id="health-always"),
        pytest.param("gateway", "/hms.other.v1.Other/Get", False, id="nothing-else"),
    ],
)
def test_the_composed_policy_allows_what_the_manifests_accept(
    caller: str | None, method: str, allowed: bool
) -> None:
    text = compose_policy([SHOP_MANIFEST, BANK_MANIFEST, NOBODY])
    assert decide(Policy.parse(text), caller, method) is allowed


def test_the_policy_names_each_rule_after_its_table() -> None:
    policy = Policy.parse(compose_policy([BANK_MANIFEST, SHOP_MANIFEST]))
    assert [rule.name for rule in policy.allow] == [
        "bank accepts[0]",
        "shop accepts[0]",
        "shop accepts[1]",
    ]
    assert policy.allow[0].callers == (ANY_MESH_IDENTITY,)
    assert policy.allow[2].methods == (SELL, RESTOCK)
    assert policy.decide(spiffe_id("till"), GET).reason == "no allow rule matches (default deny)"


def test_no_accepts_at_all_is_a_closed_policy_not_an_open_one() -> None:
    policy = Policy.parse(compose_policy([NOBODY]))
    assert policy.allow == ()
    assert not decide(policy, "gateway", CHARGE)


def test_a_deployment_without_a_manifest_is_open_to_the_mesh_only() -> None:
    echo = "hms.testing.v1.EchoService"
    policy = Policy.parse(compose_policy([SHOP_MANIFEST], open_to_mesh={"echo": [echo]}))
    assert decide(policy, "ops", f"/{echo}/Echo")
    assert decide(policy, "shop", f"/{echo}/Echo")
    assert not decide(policy, None, f"/{echo}/Echo")
    assert not decide(policy, "ops", SELL)  # the manifests' rules stand


# -- the platform's matrix, as its manifests say it ----------------------------------------------


@pytest.fixture(scope="module")
def platform() -> dict[str, Manifest]:
    return load_manifests(REPO / "services", Contracts.load(default_descriptor_set()))


@pytest.mark.parametrize(
    ("caller", "method", "allowed"),
    [
        ("licensing", "/hms.payments.v1.PaymentService/Charge", True),
        ("gateway", "/hms.payments.v1.PaymentService/Charge", False),
        ("passport", "/hms.documents.v1.DocumentsService/GetDocument", True),
        ("passport", "/hms.documents.v1.DocumentsService/CreateDocument", False),
        ("housing", "/hms.eligibility.v1.EligibilityService/Check", True),
        ("housing", "/hms.eligibility.v1.EligibilityService/ListRules", False),
        ("ops", "/hms.audit.v1.AuditService/VerifyChain", True),
        ("gateway", "/hms.audit.v1.AuditService/VerifyChain", False),
        ("ops", "/hms.eligibility.v1.EligibilityService/Check", False),
    ],
)
def test_the_platforms_matrix(
    platform: dict[str, Manifest], caller: str, method: str, allowed: bool
) -> None:
    policy = Policy.parse(compose_policy(platform.values()))
    assert decide(policy, caller, method) is allowed


# -- NATS: what a deployment may publish ---------------------------------------------------------


def test_publish_permissions_come_from_the_manifests() -> None:
    voucher = "hms.housing.v1.VoucherSubmitted"
    made = policy_for(["notify", "echo"], publishes={"notify": [voucher]})
    assert made.grants == (
        Grant("notify", ("hms.notify.v1.NotifyService",), (voucher,)),
        Grant("echo", ("hms.testing.v1.EchoService",), None),  # no manifest: its package's
    )
    users = {user.user: user for user in made.nats_users()}
    notify = users[spiffe_id("notify")].publish
    assert f"hms.events.{voucher}" in notify
    assert not any(p.startswith("hms.events.hms.notify") for p in notify)
    assert "hms.events.hms.echo.>" in users[spiffe_id("echo")].publish


def test_a_manifest_that_publishes_nothing_may_publish_no_event() -> None:
    made = policy_for(["notify"], publishes={"notify": []})
    publish = next(u for u in made.nats_users() if u.user == spiffe_id("notify")).publish
    assert [p for p in publish if p.startswith("hms.events.")] == []
    assert "hms.dlq.notify.>" in publish  # its own dead letters, still


# -- the stack: replicas, drain delay, what it refuses -------------------------------------------


def test_replicas_scale_then_manifest_then_one() -> None:
    config = StackConfig(scale={"a": 3})
    assert config.replicas(("a", "b", "c"), {"a": 2, "b": 0}) == {"a": 3, "b": 0, "c": 1}
    with pytest.raises(ValueError, match="not in this stack"):
        StackConfig(scale={"z": 1}).replicas(("a",), {"z": 2})


def test_the_stack_runs_what_the_manifests_declare(
    platform: dict[str, Manifest], tmp_path: Path
) -> None:
    stack = Stack(StackConfig(state_dir=tmp_path, deployments=("eligibility", "echo")))
    assert stack.counts == {"eligibility": platform["eligibility"].replicas, "echo": 1}
    assert stack.manifests == platform  # all of them make the policy
    assert not any(a.startswith("--drain-delay") for a in stack.service_args("echo", 1, "e"))
    assert stack.policy_path == tmp_path.resolve() / "policy.toml"


def test_the_manifests_version_is_what_the_replica_registers(tmp_path: Path) -> None:
    stack = Stack(StackConfig(state_dir=tmp_path, deployments=("eligibility", "echo")))
    version = stack.manifests["eligibility"].version
    assert f"--version={version}" in stack.service_args("eligibility", 1, "x")
    assert not any(a.startswith("--version") for a in stack.service_args("echo", 1, "e"))


def test_a_declared_drain_delay_is_passed(tmp_path: Path) -> None:
    stack = Stack(StackConfig(state_dir=tmp_path, deployments=("eligibility",)))
    declared = stack.manifests["eligibility"]
    stack.manifests = {**stack.manifests, "eligibility": replace(declared, drain_delay=2.5)}
    assert "--drain-delay=2.5" in stack.service_args("eligibility", 1, "x")
    stack.manifests["eligibility"] = replace(declared, drain_delay=None)
    assert not any(a.startswith("--drain-delay") for a in stack.service_args("eligibility", 1, "x"))


def test_a_deployment_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match=r"services/nosuch/service.toml not found"):
        Stack(StackConfig(state_dir=tmp_path, deployments=("nosuch",)))
