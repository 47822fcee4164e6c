"""Subject layout, header names and the stream / consumer specs: pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.events.subjects import (
    ConsumerSpec,
    Headers,
    StreamSpec,
    consumer_name,
    dead_letter_stream,
    dead_letter_subject,
    event_subject,
    events_stream,
    stream_name,
    validate_subject,
)

VOUCHER = "hms.testing.v1.VoucherSubmitted"


@pytest.mark.parametrize(
    ("prefix", "full_name", "expected"),
    [
        pytest.param("hms", VOUCHER, "hms.events.hms.testing.v1.VoucherSubmitted", id="default"),
        pytest.param("acme.prod", "a.B", "acme.prod.events.a.B", id="dotted-prefix"),
        pytest.param("hms", "Top", "hms.events.Top", id="no-package"),
        pytest.param("hms-2", "a_b.C_d", "hms-2.events.a_b.C_d", id="dash-and-underscore"),
    ],
)
def test_event_subject(prefix: str, full_name: str, expected: str) -> None:
    assert event_subject(prefix, full_name) == expected


@pytest.mark.parametrize(
    ("prefix", "full_name"),
    [
        pytest.param("", VOUCHER, id="empty-prefix"),
        pytest.param("hms.", VOUCHER, id="prefix-trailing-dot"),
        pytest.param("h ms", VOUCHER, id="prefix-space"),
        pytest.param("hms.*", VOUCHER, id="prefix-star"),
        pytest.param("hms.>", VOUCHER, id="prefix-gt"),
        pytest.param("hms\tx", VOUCHER, id="prefix-tab"),
        pytest.param("hms", "", id="empty-name"),
        pytest.param("hms", "a..B", id="empty-name-token"),
        pytest.param("hms", "a.B ", id="name-space"),
        pytest.param("hms", "a.*", id="name-star"),
        pytest.param("hms", "1a.B", id="name-starts-with-digit"),
    ],
)
def test_event_subject_refuses(prefix: str, full_name: str) -> None:
    with pytest.raises(ValueError, match=r"subject|full name"):
        event_subject(prefix, full_name)


@pytest.mark.parametrize(
    ("subject", "wildcards", "ok"),
    [
        pytest.param("a.b", False, True, id="plain"),
        pytest.param("a.*", True, True, id="star-allowed"),
        pytest.param("a.>", True, True, id="gt-last"),
        pytest.param("a.>.b", True, False, id="gt-not-last"),
        pytest.param("a.*", False, False, id="star-not-allowed"),
        pytest.param("a.b*", True, False, id="star-inside-token"),
        pytest.param("a..b", True, False, id="empty-token"),
    ],
)
def test_validate_subject(subject: str, wildcards: bool, ok: bool) -> None:
    if ok:
        assert validate_subject(subject, wildcards=wildcards) == subject
    else:
        with pytest.raises(ValueError, match="token"):
            validate_subject(subject, wildcards=wildcards)


def test_dead_letter_subject_is_outside_the_events_stream() -> None:
    dlq = dead_letter_subject("hms", "fee-calc", VOUCHER)
    assert dlq == "hms.dlq.fee-calc.hms.testing.v1.VoucherSubmitted"
    assert not dlq.startswith(events_stream("hms").subjects[0][:-1])
    assert dlq.startswith(dead_letter_stream("hms").subjects[0][:-1])


@pytest.mark.parametrize(
    "deployment",
    [
        pytest.param("fee calc", id="space"),
        pytest.param("a.b", id="dot"),
        pytest.param("", id="empty"),
    ],
)
def test_names_refuse_bad_deployments(deployment: str) -> None:
    with pytest.raises(ValueError, match="deployment"):
        dead_letter_subject("hms", deployment, VOUCHER)
    with pytest.raises(ValueError, match="deployment"):
        consumer_name(deployment, VOUCHER)


def test_consumer_and_stream_names() -> None:
    assert consumer_name("fee-calc", VOUCHER) == "fee-calc__hms_testing_v1_VoucherSubmitted"
    assert stream_name("hms", "events") == "HMS_EVENTS"
    assert stream_name("acme.prod-1", "dlq") == "ACME_PROD_1_DLQ"
    assert events_stream().name == "HMS_EVENTS"
    assert events_stream().subjects == ("hms.events.>",)
    assert dead_letter_stream(max_age=3600.0).max_age == 3600.0


def test_header_names_are_distinct_and_single_line() -> None:
    names = [v for k, v in vars(Headers).items() if k.isupper() and not k.endswith("_VALUE")]
    assert len(names) == len({n.lower() for n in names})
    assert all(" " not in n and ":" not in n for n in names)
    assert Headers.MSG_ID == "Nats-Msg-Id"
    assert Headers.TRACEPARENT == "traceparent"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"name": "HMS.EVENTS"}, "stream name", id="dot-in-name"),
        pytest.param({"name": ""}, "stream name", id="empty-name"),
        pytest.param({"subjects": ()}, "at least one subject", id="no-subjects"),
        pytest.param({"subjects": "a.>"}, "tuple", id="subjects-as-string"),
        pytest.param({"subjects": ("a.>.b",)}, "token", id="bad-subject"),
        pytest.param({"max_age": -1.0}, "max_age", id="negative-age"),
        pytest.param({"max_age": float("inf")}, "max_age", id="infinite-age"),
        pytest.param({"duplicate_window": 0.0}, "duplicate_window", id="no-window"),
        pytest.param({"max_age": 60.0}, "exceeds", id="window-beyond-age"),
        pytest.param({"max_msgs": 0}, "max_msgs", id="zero-msgs"),
        pytest.param({"max_bytes": -2}, "max_bytes", id="negative-bytes"),
        pytest.param({"retention": "forever"}, "retention", id="bad-retention"),
        pytest.param({"storage": "disk"}, "storage", id="bad-storage"),
        pytest.param({"replicas": 0}, "replicas", id="no-replicas"),
    ],
)
def test_stream_spec_refuses(changes: dict[str, Any], problem: str) -> None:
    fields: dict[str, Any] = {"name": "HMS_EVENTS", "subjects": ("hms.events.>",), **changes}
    with pytest.raises(ValueError, match=problem):
        StreamSpec(**fields)


def test_stream_spec_unlimited_age_allows_any_window() -> None:
    spec = StreamSpec("S", ("s.>",), max_age=0.0, duplicate_window=3600.0)
    assert spec.duplicate_window == 3600.0


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"ack_wait": 0.0}, "ack_wait", id="zero-ack-wait"),
        pytest.param({"ack_wait": float("nan")}, "ack_wait", id="nan-ack-wait"),
        pytest.param({"backoff": ()}, "at least one", id="empty-backoff"),
        pytest.param({"backoff": 1.0}, "tuple", id="backoff-number"),
        pytest.param({"backoff": (1.0, -1.0)}, ">= 0", id="negative-delay"),
        pytest.param({"max_deliver": 0}, "max_deliver", id="zero-deliveries"),
        pytest.param({"max_deliver": -1}, "max_deliver", id="unlimited-deliveries"),
        pytest.param({"backoff": (1.0, 2.0, 3.0), "max_deliver": 2}, "refuses", id="too-many"),
        pytest.param({"max_in_flight": 0}, "max_in_flight", id="no-in-flight"),
    ],
)
def test_consumer_spec_refuses(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ConsumerSpec(**changes)


@pytest.mark.parametrize(
    ("delivery", "delay"),
    [
        pytest.param(1, 1.0, id="first-failure"),
        pytest.param(2, 5.0, id="second"),
        pytest.param(4, 120.0, id="last-listed"),
        pytest.param(9, 120.0, id="beyond-list-repeats-last"),
    ],
)
def test_retry_delay(delivery: int, delay: float) -> None:
    assert ConsumerSpec().retry_delay(delivery) == delay


def test_retry_delay_refuses_zero() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        ConsumerSpec().retry_delay(0)


def test_server_backoff_keeps_ack_wait_as_the_floor() -> None:
    spec = ConsumerSpec(ack_wait=0.3, backoff=(0.1, 0.2), max_deliver=3)
    assert spec.server_backoff() == pytest.approx([0.4, 0.5])
    assert spec.heartbeat == pytest.approx(0.1)


def test_public_surface() -> None:
    import mesh.events

    assert sorted(mesh.events.__all__) == [
        "ConsumerSpec",
        "DEFAULT_PREFIX",
        "EventMeta",
        "Headers",
        "IdempotentHandler",
        "Outbox",
        "OutboxRelay",
        "Publisher",
        "StreamSpec",
        "Subscriber",
        "Subscription",
        "dead_letter_stream",
        "ensure_stream",
        "events_stream",
    ]
    assert all(hasattr(mesh.events, name) for name in mesh.events.__all__)
