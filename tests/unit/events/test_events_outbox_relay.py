"""OutboxRelay with a fake publisher: order, retries that never skip ahead, validation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.message import Message
from nats.js.api import PubAck

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.errors import Unavailable
from mesh.events.outbox import Outbox, OutboxRelay
from mesh.events.publisher import BatchResult, OutgoingEvent
from mesh.events.subjects import Headers, events_stream
from mesh.resilience.backoff import BackoffPolicy
from mesh.testing import VirtualWallClock, eventually

FAST = BackoffPolicy(base=0.001, cap=0.01)


class FakePublisher:
    """Records publishes; fails while `down` is set."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Message]] = []
        self.headers: list[dict[str, str]] = []
        self.attempts = 0
        self.fail_at: set[int] = set()  # attempt numbers (1-based) that fail
        self.changed = asyncio.Event()

    async def publish(
        self,
        message: Message,
        *,
        event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> object:
        self.attempts += 1
        if self.attempts in self.fail_at:
            raise Unavailable("nats down")
        assert event_id is not None
        self.published.append((event_id, message))
        self.headers.append(dict(headers or {}))
        self.changed.set()
        return None

    async def publish_batch(
        self, events: Sequence[OutgoingEvent], *, window: int = 64
    ) -> BatchResult:
        """In order, stopping at the first failure (as the real one reports it)."""
        acks: list[PubAck] = []
        for event in events:
            try:
                await self.publish(event.message, event_id=event.event_id, headers=event.headers)
            except Unavailable as exc:
                return BatchResult(acks, exc)
            acks.append(PubAck(stream="HMS_EVENTS", seq=len(self.published)))
        return BatchResult(acks, None)


def fill(path: Path, outbox: Outbox, count: int, aggregates: int = 3) -> list[str]:
    conn = sqlite3.connect(str(path))
    ids = []
    for i in range(count):
        with conn:
            event = VoucherSubmitted(voucher_id=f"v{i}", applicant_id=f"a{i % aggregates}")
            ids.append(outbox.add(conn, event, aggregate=event.applicant_id))
    conn.close()
    return ids


async def test_relays_in_seq_order_with_the_row_event_id(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    ids = fill(db, outbox, 7)
    publisher = FakePublisher()
    relay = OutboxRelay(outbox, publisher, stream=events_stream(), batch=3, backoff=FAST)
    assert [await relay.relay_once() for _ in range(4)] == [3, 3, 1, 0]
    assert [event_id for event_id, _ in publisher.published] == ids
    assert isinstance(publisher.published[0][1], VoucherSubmitted)
    assert publisher.published[0][1].voucher_id == "v0"
    assert relay.pending() == 0


async def test_each_event_carries_its_place_among_its_aggregates_events(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    fill(db, outbox, 7, aggregates=3)  # round robin: a0 a1 a2 a0 a1 a2 a0
    publisher = FakePublisher()
    relay = OutboxRelay(outbox, publisher, stream=events_stream(), backoff=FAST)
    await relay.relay_once()
    got = [(h[Headers.AGGREGATE], h[Headers.SEQUENCE]) for h in publisher.headers]
    oid = outbox.outbox_id
    assert got == [
        ("a0", f"{oid}:1"), ("a1", f"{oid}:1"), ("a2", f"{oid}:1"),
        ("a0", f"{oid}:2"), ("a1", f"{oid}:2"), ("a2", f"{oid}:2"), ("a0", f"{oid}:3"),
    ]  # fmt: skip


async def test_failure_stops_the_batch_and_the_retry_resumes_at_the_unsent_row(
    tmp_path: Path,
) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    ids = fill(db, outbox, 5)
    publisher = FakePublisher()
    publisher.fail_at = {3, 4}
    relay = OutboxRelay(outbox, publisher, stream=events_stream(), backoff=FAST)
    with pytest.raises(Unavailable):
        await relay.relay_once()
    assert relay.pending() == 3  # the two published before the failure are marked
    with pytest.raises(Unavailable):
        await relay.relay_once()
    assert await relay.relay_once() == 3
    assert [event_id for event_id, _ in publisher.published] == ids


async def test_running_relay_retries_until_everything_is_sent(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    ids = fill(db, outbox, 20)
    publisher = FakePublisher()
    publisher.fail_at = {5, 6, 7, 12}
    relay = OutboxRelay(outbox, publisher, stream=events_stream(), batch=4, backoff=FAST, poll=0.01)
    relay.start()
    try:
        # Marks land in the table, which no event announces.
        await eventually(lambda: relay.pending() == 0, timeout=5)
        # New rows are picked up by polling.
        more = fill(db, outbox, 2)
        await eventually(lambda: len(publisher.published) == 22, timeout=5)
    finally:
        await relay.stop()
    assert [event_id for event_id, _ in publisher.published] == ids + more


async def test_relay_leaves_a_shared_connection_alone_mid_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "svc.sqlite3"))
    outbox = Outbox(conn)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")  # the caller's transaction is open
    outbox.add(conn, VoucherSubmitted(), aggregate="a")
    relay = OutboxRelay(outbox, FakePublisher(), stream=events_stream(), backoff=FAST)
    assert await relay.relay_once() == 0
    conn.rollback()
    assert outbox.pending() == 0


async def test_unknown_type_stalls_rather_than_skips(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    conn = sqlite3.connect(str(db))
    with conn:
        conn.execute(
            "INSERT INTO outbox (event_id, type, payload, aggregate, created_at)"
            " VALUES ('e1', 'no.such.Type', x'', 'a', 'now')"
        )
    fill(db, outbox, 1)
    publisher = FakePublisher()
    relay = OutboxRelay(outbox, publisher, stream=events_stream(), backoff=FAST)
    with pytest.raises(LookupError, match=r"no\.such\.Type"):
        await relay.relay_once()
    assert publisher.published == []
    assert relay.pending() == 2


@pytest.mark.parametrize(
    ("window", "cap", "ok"),
    [
        pytest.param(120.0, 5.0, True, id="window-longer"),
        pytest.param(5.0, 5.0, False, id="window-equal"),
        pytest.param(2.0, 5.0, False, id="window-shorter"),
    ],
)
def test_duplicate_window_must_exceed_longest_backoff(
    tmp_path: Path, window: float, cap: float, ok: bool
) -> None:
    outbox = Outbox(tmp_path / "svc.sqlite3")
    stream = events_stream(duplicate_window=window)
    backoff = BackoffPolicy(base=0.1, cap=cap)
    if ok:
        OutboxRelay(outbox, FakePublisher(), stream=stream, backoff=backoff)
        return
    with pytest.raises(ValueError, match=r"HMS_EVENTS duplicate_window.*backoff\.cap"):
        OutboxRelay(outbox, FakePublisher(), stream=stream, backoff=backoff)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"batch": 0}, "batch", id="batch"),
        pytest.param({"poll": 0}, "poll", id="poll"),
        pytest.param({"keep_sent": -1}, "keep_sent", id="keep-sent"),
        pytest.param({"prune_every": 0}, "prune_every", id="prune-every"),
    ],
)
def test_relay_validates(tmp_path: Path, kwargs: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        OutboxRelay(
            Outbox(tmp_path / "s.sqlite3"), FakePublisher(), stream=events_stream(), **kwargs
        )  # type: ignore[arg-type]


async def test_sent_rows_are_pruned_after_keep_sent_and_unsent_rows_never(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    fill(db, outbox, 5)
    clock = VirtualWallClock(datetime(2026, 1, 1, tzinfo=UTC))
    publisher = FakePublisher()
    publisher.fail_at = {4}  # events 4 and 5 stay unsent
    relay = OutboxRelay(
        outbox, publisher, stream=events_stream(), backoff=FAST, keep_sent=60, clock=clock
    )
    with pytest.raises(Unavailable):
        await relay.relay_once()
    assert relay.pending() == 2
    # Marked sent at the wall clock's now; the relay's clock says when they are old enough.
    clock.now = datetime.now(UTC) + timedelta(seconds=59)
    assert relay.prune_sent() == 0
    clock.now += timedelta(seconds=2)
    assert relay.prune_sent() == 3
    assert [row.voucher_id for row in _all(db)] == ["v3", "v4"]
    assert relay.pending() == 2


def _all(db: Path) -> list[VoucherSubmitted]:
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [VoucherSubmitted.FromString(payload) for (payload,) in rows]


async def test_running_relay_prunes_on_its_own(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    outbox = Outbox(db)
    fill(db, outbox, 3)
    publisher = FakePublisher()
    relay = OutboxRelay(
        outbox, publisher, stream=events_stream(), backoff=FAST, poll=0.01, keep_sent=0
    )
    relay.start()
    try:
        # keep_sent=0: gone once sent and pruned by the relay's next round.
        await eventually(lambda: not _all(db), timeout=5)
    finally:
        await relay.stop()
    assert len(publisher.published) == 3
