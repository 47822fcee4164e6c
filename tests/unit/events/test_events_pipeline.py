"""The publisher's pipelined batch (`publish_batch` on JetStream's async publish) against a
JetStream whose acks the test scripts: answered, lost, refused. What is counted is the stored
prefix; what is waited for after an ack goes missing is bounded by one timeout, not one per
event (a window of acks lost with a restarting server once held the outbox relay for 100 s)."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.js.api import PubAck

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.errors import Unavailable
from mesh.events import Publisher
from mesh.events.publisher import OutgoingEvent
from mesh.testing import eventually

ANSWER, LOSE, REFUSE = "answer", "lose", "refuse"


class ScriptedJetStream:
    """publish_async hands out futures settled as `script` says, event by event (the default
    for events past its end is `ANSWER`)."""

    def __init__(self, script: dict[int, str]) -> None:
        self.script = script
        self.futures: list[asyncio.Future[PubAck]] = []

    async def publish_async(
        self, subject: str, payload: bytes, *, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        n = len(self.futures)
        action = self.script.get(n, ANSWER)
        if action == ANSWER:
            future.set_result(PubAck(stream="HMS_EVENTS", seq=n + 1))
        elif action == REFUSE:
            future.set_exception(nats.js.errors.NoStreamResponseError())
        self.futures.append(future)
        return future


def events(count: int) -> list[OutgoingEvent]:
    return [OutgoingEvent(VoucherSubmitted(voucher_id=f"v{n}"), f"evt-{n}") for n in range(count)]


@pytest.mark.parametrize(
    ("count", "script", "stored", "failure"),
    [
        (10, {}, 10, None),
        (100, {n: LOSE for n in range(10, 100)}, 10, "no ack within"),
        (100, {0: LOSE}, 0, "no ack within"),
        (20, {5: REFUSE}, 5, "publish hms.testing.v1.VoucherSubmitted"),
        (20, {5: LOSE, 6: REFUSE}, 5, "no ack within"),
    ],
    ids=["all-answered", "window-lost", "first-lost", "refused", "lost-then-refused"],
)
async def test_the_stored_prefix_is_counted_and_the_first_failure_given(
    count: int, script: dict[int, str], stored: int, failure: str | None
) -> None:
    js = ScriptedJetStream(script)
    publisher = Publisher(js, "housing", timeout=0.2)  # type: ignore[arg-type]

    # A hang guard, not a timing: one lost ack per event waited in turn would take 18 s.
    async with asyncio.timeout(5):
        result = await publisher.publish_batch(events(count), window=count)

    assert [ack.seq for ack in result.acks] == list(range(1, stored + 1))
    if failure is None:
        assert result.failure is None
    else:
        assert isinstance(result.failure, Unavailable)
        assert failure in str(result.failure)
    # Nothing is left pending in nats-py: an ack never answered is cancelled (its slot freed).
    assert all(f.done() for f in js.futures)
    assert len(js.futures) == count


async def test_a_late_ack_within_its_own_deadline_counts() -> None:
    js = ScriptedJetStream({0: LOSE})
    publisher = Publisher(js, "housing", timeout=5.0)  # type: ignore[arg-type]
    batch = asyncio.create_task(publisher.publish_batch(events(3), window=3))
    await eventually(lambda: len(js.futures) == 3)
    js.futures[0].set_result(PubAck(stream="HMS_EVENTS", seq=1))
    result = await batch
    assert [ack.seq for ack in result.acks] == [1, 2, 3]
    assert result.failure is None


async def test_publish_many_raises_the_first_failure() -> None:
    js = ScriptedJetStream({2: REFUSE})
    publisher = Publisher(js, "housing", timeout=0.2)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match=r"publish hms\.testing\.v1\.VoucherSubmitted"):
        await publisher.publish_many([VoucherSubmitted(voucher_id=f"v{n}") for n in range(5)])
