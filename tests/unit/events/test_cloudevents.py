"""Every event the publisher sends is a valid CloudEvent in binary content mode, decoded here by
the rules of the CloudEvents 1.0 specification (core attributes, their types, naming), with
the attributes carried as ``ce-`` headers as the protocol bindings' binary mode maps them: a
CloudEvents consumer reads our events as they are."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from nats.js.api import PubAck

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events import Publisher
from mesh.events.subjects import Headers

_PREFIX = "ce-"
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")  # spec: lower-case letters and digits
_REQUIRED = ("id", "source", "specversion", "type")


class InvalidCloudEvent(ValueError):
    pass


def decode_binary(headers: Mapping[str, str], data: bytes) -> dict[str, Any]:
    """The CloudEvent a binary-mode message carries; InvalidCloudEvent naming the rule broken."""
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        if not name.lower().startswith(_PREFIX):
            continue
        attribute = name.lower()[len(_PREFIX) :]
        if not _ATTRIBUTE_NAME.fullmatch(attribute):
            raise InvalidCloudEvent(f"attribute name {attribute!r}")
        if attribute in attributes:
            raise InvalidCloudEvent(f"attribute {attribute} given twice")
        attributes[attribute] = value
    for attribute in _REQUIRED:
        if not attributes.get(attribute):
            raise InvalidCloudEvent(f"required attribute {attribute} missing or empty")
    if attributes["specversion"] != "1.0":
        raise InvalidCloudEvent(f"specversion {attributes['specversion']!r}")
    source = attributes["source"]
    if any(c.isspace() for c in source):
        raise InvalidCloudEvent(f"source {source!r} is not a URI-reference")
    urlsplit(source)  # raises ValueError on a malformed one
    if "time" in attributes:
        moment = datetime.fromisoformat(attributes["time"])  # RFC 3339
        if moment.tzinfo is None:
            raise InvalidCloudEvent(f"time {attributes['time']!r} has no offset")
        attributes["time"] = moment
    attributes["data"] = data
    return attributes


class CapturingJetStream:
    """A JetStream that stores what it is given and acks it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(
        self, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str]
    ) -> PubAck:
        self.sent.append((subject, payload, dict(headers)))
        return PubAck(stream="HMS_EVENTS", seq=len(self.sent))

    async def publish_async(
        self, subject: str, payload: bytes, *, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        future.set_result(await self.publish(subject, payload, timeout=5.0, headers=headers))
        return future


async def test_a_published_event_decodes_as_a_cloudevent() -> None:
    js = CapturingJetStream()
    publisher = Publisher(
        js,  # type: ignore[arg-type]
        "housing",
        clock=lambda: datetime(2026, 12, 2, 15, 0, 1, 250_000, tzinfo=UTC),
    )
    message = VoucherSubmitted(voucher_id="v1")

    await publisher.publish(message, event_id="evt-1")

    (_, payload, headers) = js.sent[0]
    event = decode_binary(headers, payload)
    assert event["specversion"] == "1.0"
    assert event["id"] == headers[Headers.MSG_ID] == "evt-1"
    assert event["type"] == "hms.testing.v1.VoucherSubmitted"
    assert event["source"] == "housing"
    assert event["time"] == datetime(2026, 12, 2, 15, 0, 1, 250_000, tzinfo=UTC)
    assert VoucherSubmitted.FromString(event["data"]) == message


async def test_generated_ids_are_the_cloudevent_id_too() -> None:
    js = CapturingJetStream()
    publisher = Publisher(js, "housing")  # type: ignore[arg-type]
    await publisher.publish_many([VoucherSubmitted(voucher_id=f"v{n}") for n in range(3)])
    ids = [decode_binary(h, p)["id"] for _, p, h in js.sent]
    assert ids == [h[Headers.MSG_ID] for _, _, h in js.sent]
    assert len(set(ids)) == 3


GOOD = {
    "ce-specversion": "1.0",
    "ce-id": "e1",
    "ce-source": "housing",
    "ce-type": "a.B",
    "ce-time": "2026-12-02T15:00:00.000000Z",
}


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"ce-specversion": None}, "specversion missing"),
        ({"ce-id": None}, "id missing"),
        ({"ce-id": ""}, "id missing or empty"),
        ({"ce-source": None}, "source missing"),
        ({"ce-type": None}, "type missing"),
        ({"ce-specversion": "0.3"}, "specversion '0.3'"),
        ({"ce-source": "not a uri"}, "not a URI-reference"),
        ({"ce-time": "2026-12-02T15:00:00"}, "no offset"),
        ({"ce-Bad_Name": "x"}, "attribute name"),
        ({"ce-averyveryverylongattributename": "x"}, "attribute name"),
    ],
)
def test_the_decoder_refuses_what_the_specification_refuses(
    change: dict[str, str | None], rule: str
) -> None:
    headers = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(InvalidCloudEvent, match=rule):
        decode_binary(headers, b"")


def test_the_decoder_takes_a_minimal_event() -> None:
    event = decode_binary({k: v for k, v in GOOD.items() if k != "ce-time"}, b"x")
    assert event["id"] == "e1"
    assert event["data"] == b"x"
