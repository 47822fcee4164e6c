"""`mesh events`: URL resolution, subject resolution and output formatting, without NATS."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.cli import events as events_cli
from hms_tools.cli.events import nats_url
from hms_tools.event_view import (
    ConsumerRow,
    StreamRow,
    TypeRegistry,
    format_event,
    format_ls,
    resolve_subject,
)
from mesh.events.subjects import DEFAULT_PREFIX

VOUCHER = "hms.testing.v1.VoucherSubmitted"
REGISTRY = TypeRegistry.generated()


@pytest.mark.parametrize(
    ("flag", "env", "stack", "expected"),
    [
        pytest.param(
            "nats://a:1",
            {"MESH_NATS": "nats://b:2"},
            {"nats": "nats://c:3"},
            "nats://a:1",
            id="flag-first",
        ),
        pytest.param(
            None, {"MESH_NATS": "nats://b:2"}, {"nats": "nats://c:3"}, "nats://b:2", id="env-next"
        ),
        pytest.param(
            None, {"MESH_NATS": ""}, {"nats": "nats://c:3"}, "nats://c:3", id="stack-file-last"
        ),
    ],
)
def test_nats_url_order(
    tmp_path: Path, flag: str | None, env: dict[str, str], stack: dict[str, str], expected: str
) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(stack))
    assert nats_url(flag, env, tmp_path) == expected


@pytest.mark.parametrize(
    ("stack", "error", "text"),
    [
        pytest.param(None, FileNotFoundError, "pass --nats, set MESH_NATS", id="no-stack-file"),
        pytest.param({"etcd": "127.0.0.1:1"}, ValueError, 'has no "nats"', id="stack-without-nats"),
    ],
)
def test_nats_url_missing(
    tmp_path: Path, stack: dict[str, str] | None, error: type[Exception], text: str
) -> None:
    if stack is not None:
        (tmp_path / "stack.json").write_text(json.dumps(stack))
    with pytest.raises(error, match=text):
        nats_url(None, {}, tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(VOUCHER, f"hms.events.{VOUCHER}", id="type-name"),
        pytest.param(">", "hms.events.>", id="every-event"),
        pytest.param("hms.testing.v1.*", "hms.events.hms.testing.v1.*", id="type-pattern"),
        pytest.param(f"hms.events.{VOUCHER}", f"hms.events.{VOUCHER}", id="full-subject"),
        pytest.param("hms.dlq.>", "hms.dlq.>", id="dead-letters"),
    ],
)
def test_resolve_subject(text: str, expected: str) -> None:
    assert resolve_subject("hms", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a..b", id="empty-token"),
        pytest.param("a.>.b", id="inner-full-wildcard"),
        pytest.param("a b", id="whitespace"),
    ],
)
def test_resolve_subject_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="token"):
        resolve_subject("hms", text)


EVENTS = StreamRow("HMS_EVENTS", 3, 420, ("hms.events.>",))
DLQ = StreamRow("HMS_DLQ", 1, 210, ("hms.dlq.>",))
CONSUMER = ConsumerRow("notify__T", "HMS_EVENTS", 2, 1, 4)


@pytest.mark.parametrize(
    ("streams", "consumers", "expected"),
    [
        pytest.param([], [], "(no streams)", id="empty-server"),
        pytest.param(
            [DLQ, EVENTS],
            [CONSUMER],
            "STREAM      MESSAGES  BYTES  SUBJECTS\n"
            "HMS_DLQ     1         210    hms.dlq.>\n"
            "HMS_EVENTS  3         420    hms.events.>\n"
            "\n"
            "CONSUMER   STREAM      PENDING  ACK_PENDING  REDELIVERED\n"
            "notify__T  HMS_EVENTS  2        1            4\n"
            "\n"
            "dead letters: 1 in HMS_DLQ",
            id="streams-consumers-dead-letters",
        ),
        pytest.param(
            [EVENTS],
            [],
            "STREAM      MESSAGES  BYTES  SUBJECTS\n"
            "HMS_EVENTS  3         420    hms.events.>\n"
            "\n"
            "(no consumers)\n"
            "\n"
            "dead letters: no HMS_DLQ stream",
            id="no-dead-letter-stream",
        ),
    ],
)
def test_format_ls(streams: list[StreamRow], consumers: list[ConsumerRow], expected: str) -> None:
    assert format_ls(streams, consumers, "HMS_DLQ") == expected


VOUCHER_EVENT = VoucherSubmitted(voucher_id="v1", applicant_id="a1", amount_pence=1250)
BASE_HEADERS = {
    "ce-id": "evt-1",
    "ce-type": VOUCHER,
    "ce-source": "fee-calc",
    "ce-time": "2025-01-02T03:04:05Z",
}


@pytest.mark.parametrize(
    ("headers", "data", "expected"),
    [
        pytest.param(
            BASE_HEADERS,
            VOUCHER_EVENT.SerializeToString(),
            {"data": {"voucher_id": "v1", "applicant_id": "a1", "amount_pence": "1250"}},
            id="decoded",
        ),
        pytest.param(
            {**BASE_HEADERS, "ce-type": "hms.unknown.v1.Nope"},
            b"\x01\x02",
            {
                "note": "unknown type hms.unknown.v1.Nope: payload shown as base64",
                "data_base64": base64.b64encode(b"\x01\x02").decode(),
            },
            id="unknown-type",
        ),
        pytest.param(
            {k: v for k, v in BASE_HEADERS.items() if k != "ce-type"},
            b"raw",
            {"note": "no ce-type header: payload shown as base64", "data_base64": "cmF3"},
            id="no-type",
        ),
        pytest.param(
            {**BASE_HEADERS, "Hms-Dlq-Reason": "handler-failed", "Hms-Dlq-Error": "boom"},
            VOUCHER_EVENT.SerializeToString(),
            {
                "dead_letter": {"Hms-Dlq-Reason": "handler-failed", "Hms-Dlq-Error": "boom"},
                "data": {"voucher_id": "v1", "applicant_id": "a1", "amount_pence": "1250"},
            },
            id="dead-letter",
        ),
    ],
)
def test_format_event(headers: dict[str, str], data: bytes, expected: dict[str, object]) -> None:
    line = format_event("hms.events.x", 7, headers, data, REGISTRY)
    event = json.loads(line)
    assert "\n" not in line
    assert event["seq"] == 7
    assert event["subject"] == "hms.events.x"
    assert event["id"] == "evt-1"
    assert event["source"] == "fee-calc"
    assert {k: event[k] for k in expected} == expected
    assert set(event) - set(expected) == {"subject", "seq", "id", "type", "source", "time"}


def test_format_event_undecodable_payload_never_raises() -> None:
    event = json.loads(format_event("s", None, BASE_HEADERS, b"\xff\xff\xff", REGISTRY))
    assert event["note"].startswith(f"payload does not decode as {VOUCHER}")
    assert event["data_base64"] == base64.b64encode(b"\xff\xff\xff").decode()


def test_registry_finds_generated_types() -> None:
    assert REGISTRY.message_class(VOUCHER) is not None
    assert REGISTRY.message_class("hms.testing.v1.EchoRequest") is not None
    assert REGISTRY.message_class("no.such.Type") is None


def test_the_cli_default_prefix_is_the_libraries() -> None:
    assert events_cli.DEFAULT_PREFIX == DEFAULT_PREFIX
