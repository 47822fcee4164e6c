"""The console's view of the registry (tools/console/instances.py): the `instances` rows,
Prometheus service discovery, and what svc.mesh decisions say about instances."""

from __future__ import annotations

from typing import Any

import pytest

from hms.mesh.v1 import trace_pb2
from hms_tools.console.instances import Decisions, instance_rows, rfc3339, sd_groups
from mesh.registry import keys

NOTIFY = "hms.notify.v1.NotifyService"
IDENTITY = "hms.identity.v1.IdentityService"


def instance(
    service: str = NOTIFY,
    instance_id: str = "notify-1-aaa",
    address: str = "127.0.0.1:5001",
    deployment: str = "notify",
    metrics: str | None = "127.0.0.1:9001",
    **more: Any,
) -> keys.Instance:
    metadata = {"metrics": metrics} if metrics is not None else {}
    return keys.Instance(
        service=service,
        instance_id=instance_id,
        address=address,
        deployment=deployment,
        identity=f"spiffe://hms.local/svc/{deployment}",
        metadata=metadata,
        **more,
    )


def decision(kind: int, instance: str, by: str = "report", **more: Any) -> bytes:
    return trace_pb2.MeshDecision(
        kind=kind, deployment=by, service=NOTIFY, instance=instance, **more
    ).SerializeToString()


def test_rows_carry_lease_health_and_decisions() -> None:
    a = instance(version="1.2.0", zone="z1")
    b = instance(instance_id="notify-2-bbb", address="127.0.0.1:5002", metrics=None)
    decisions = Decisions()
    decisions.add_message(decision(trace_pb2.DECISION_KIND_EJECTED, "notify-2-bbb"))
    rows = instance_rows(
        [b, a],
        leases={(NOTIFY, "notify-1-aaa"): 7},
        health={("127.0.0.1:5001", NOTIFY): "SERVING"},
        decisions=decisions,
    )
    assert rows == [
        {
            "service": NOTIFY,
            "deployment": "notify",
            "instance_id": "notify-1-aaa",
            "address": "127.0.0.1:5001",
            "version": "1.2.0",
            "zone": "z1",
            "identity": "spiffe://hms.local/svc/notify",
            "lease_ttl_s": 7,
            "health": "SERVING",
            "ejected": False,
            "draining": False,
            "metrics": "127.0.0.1:9001",
        },
        {
            "service": NOTIFY,
            "deployment": "notify",
            "instance_id": "notify-2-bbb",
            "address": "127.0.0.1:5002",
            "version": "0.0.0",
            "zone": "",
            "identity": "spiffe://hms.local/svc/notify",
            "lease_ttl_s": None,  # etcd did not say
            "health": "UNKNOWN",  # not known yet
            "ejected": True,
            "draining": False,
            "metrics": "",
        },
    ]


@pytest.mark.parametrize(
    ("decided", "ejected", "draining"),
    [
        pytest.param([("EJECTED", "report")], True, False, id="ejected"),
        pytest.param([("EJECTED", "report"), ("READMITTED", "report")], False, False, id="back"),
        # Two callers eject on their own: out until both readmit it.
        pytest.param(
            [("EJECTED", "report"), ("EJECTED", "gateway"), ("READMITTED", "report")],
            True,
            False,
            id="still-out-for-one-caller",
        ),
        pytest.param([("DRAINING", "report")], False, True, id="draining"),
        pytest.param([("BUDGET_REFUSED", "report")], False, False, id="budget-says-nothing"),
        pytest.param([("UNREACHABLE", "report")], False, False, id="unreachable"),
    ],
)
def test_decisions_make_state(
    decided: list[tuple[str, str]], ejected: bool, draining: bool
) -> None:
    decisions = Decisions()
    for kind, by in decided:
        kind_number = trace_pb2.DecisionKind.Value(f"DECISION_KIND_{kind}")
        decisions.add_message(decision(kind_number, "notify-1-aaa", by=by))
    assert decisions.ejected(instance()) is ejected
    assert decisions.draining(instance()) is draining


def test_a_decision_naming_the_address_counts_too() -> None:
    decisions = Decisions()
    decisions.add_message(decision(trace_pb2.DECISION_KIND_EJECTED, "", address="127.0.0.1:5001"))
    assert decisions.ejected(instance())


def test_decision_events() -> None:
    decisions = Decisions()
    event = decisions.add_message(
        decision(
            trace_pb2.DECISION_KIND_EJECTED,
            "notify-1-aaa",
            address="127.0.0.1:5001",
            reason="5 consecutive failures",
            time_unix_nanos=1_700_000_000_123_456_789,
        )
    )
    assert event == {
        "kind": "ejected",
        "deployment": "report",
        "service": NOTIFY,
        "instance": "notify-1-aaa",
        "address": "127.0.0.1:5001",
        "reason": "5 consecutive failures",
        "time": "2023-11-14T22:13:20.123456Z",
    }
    assert list(decisions.recent) == [event]
    unknown = decisions.add_message(decision(42, "x"))
    assert unknown is not None
    assert unknown["kind"] == "unknown"
    assert unknown["time"] == ""


def test_a_decision_that_does_not_decode_is_counted() -> None:
    decisions = Decisions()
    assert decisions.add_message(b"\xff\xff") is None
    assert decisions.malformed == 1
    assert not decisions.recent


def test_gone_instances_are_forgotten() -> None:
    decisions = Decisions()
    decisions.add_message(decision(trace_pb2.DECISION_KIND_EJECTED, "notify-1-aaa"))
    decisions.add_message(decision(trace_pb2.DECISION_KIND_DRAINING, "notify-1-aaa"))
    decisions.forget([instance(instance_id="notify-2-bbb", address="127.0.0.1:5002")])
    assert not decisions.ejected(instance())
    assert not decisions.draining(instance())


def test_service_discovery_has_one_target_per_metrics_address() -> None:
    both = [
        instance(),
        # the same process registers a second service: scraped once
        instance(service="hms.notify.v1.AdminService"),
        instance(
            service=IDENTITY,
            instance_id="identity-1-ccc",
            address="127.0.0.1:6001",
            deployment="identity",
            metrics="127.0.0.1:9101",
            version="2.0.0",
            zone="eu-1",
        ),
        instance(instance_id="notify-3-ddd", metrics=None),  # nothing to scrape
    ]
    assert sd_groups(both) == [
        {
            "targets": ["127.0.0.1:9001"],
            "labels": {
                "service": "hms.notify.v1.AdminService,hms.notify.v1.NotifyService",
                "deployment": "notify",
                "version": "0.0.0",
                "zone": "",
                "instance": "notify-1-aaa",
            },
        },
        {
            "targets": ["127.0.0.1:9101"],
            "labels": {
                "service": IDENTITY,
                "deployment": "identity",
                "version": "2.0.0",
                "zone": "eu-1",
                "instance": "identity-1-ccc",
            },
        },
    ]
    assert sd_groups([]) == []


def test_times_are_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1_700_000_000_000_001_999) == "2023-11-14T22:13:20.000001Z"
