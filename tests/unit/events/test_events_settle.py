"""The subscription carries out each decision (see test_events_decide.py) on a fake JetStream
message: ack, nak with the delay, dead letter then term; and a stop() that comes as the handler
returns cancels the subscription without losing the finished event's ack."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.subjects import ConsumerSpec, Headers, dead_letter_subject
from mesh.events.subscriber import EventMeta, Subscriber, Subscription

SPEC = ConsumerSpec(ack_wait=30.0, backoff=(0.05, 0.1), max_deliver=3)
TYPE = VoucherSubmitted.DESCRIPTOR.full_name
DLQ = dead_letter_subject("hms", "notify", TYPE)


@dataclass
class FakeMsg:
    """A JetStream message that writes down how it was settled."""

    data: bytes
    delivery: int
    headers: dict[str, str] = field(default_factory=dict)
    subject: str = f"hms.events.{TYPE}"
    settled: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def metadata(self) -> Any:
        sequence = SimpleNamespace(stream=7)
        return SimpleNamespace(num_delivered=self.delivery, stream="HMS_EVENTS", sequence=sequence)

    async def ack(self) -> None:
        self.settled.append(("ack",))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append(("term",))

    async def in_progress(self) -> None:
        self.settled.append(("in progress",))


class FakeJetStream:
    """Stores what is published (the dead letters)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    async def publish(self, subject: str, _payload: bytes, headers: dict[str, str]) -> None:
        self.published.append((subject, headers[Headers.DLQ_REASON]))


async def ok(_event: VoucherSubmitted, _meta: EventMeta) -> None:
    return None


async def fails(_event: VoucherSubmitted, _meta: EventMeta) -> None:
    raise RuntimeError("amount_pence must be positive")


def subscription(js: FakeJetStream, handler: Any) -> Subscription[VoucherSubmitted]:
    owner = Subscriber(js, "notify", spec=SPEC)  # type: ignore[arg-type]
    return Subscription(owner, VoucherSubmitted, handler, "notify__voucher")


PAYLOAD = VoucherSubmitted(voucher_id="v1").SerializeToString()


@pytest.mark.parametrize(
    ("handler", "msg", "settled", "dead_letters"),
    [
        pytest.param(ok, FakeMsg(PAYLOAD, 1), [("ack",)], [], id="handled-ack"),
        pytest.param(fails, FakeMsg(PAYLOAD, 1), [("nak", 0.05)], [], id="failed-nak"),
        pytest.param(fails, FakeMsg(PAYLOAD, 2), [("nak", 0.1)], [], id="failed-nak-later"),
        pytest.param(
            fails,
            FakeMsg(PAYLOAD, 3),
            [("term",)],
            [(DLQ, "handler-failed")],
            id="failed-last-delivery-dead-letter",
        ),
        pytest.param(
            ok,
            FakeMsg(PAYLOAD, 1, headers={Headers.TYPE: "hms.Other"}),
            [("term",)],
            [(DLQ, "undecodable")],
            id="undecodable-dead-letter",
        ),
    ],
)
async def test_each_decision_is_carried_out(
    handler: Any, msg: FakeMsg, settled: list[tuple[Any, ...]], dead_letters: list[Any]
) -> None:
    js = FakeJetStream()
    await subscription(js, handler)._handle(msg)  # type: ignore[arg-type]
    assert msg.settled == settled
    assert js.published == dead_letters


async def test_a_stop_as_the_handler_returns_keeps_the_ack_and_is_not_swallowed() -> None:
    async def stopped_as_it_returns(_event: VoucherSubmitted, _meta: EventMeta) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # what stop() does; it lands at the next pause

    msg = FakeMsg(PAYLOAD, 1)
    handling = subscription(FakeJetStream(), stopped_as_it_returns)._handle(msg)  # type: ignore[arg-type]
    task = asyncio.create_task(handling)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert msg.settled == [("ack",)]
