"""Outbox table and IdempotentHandler against SQLite files: no NATS."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import context as otel_context

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.idempotency import IdempotentHandler
from mesh.events.outbox import Outbox
from mesh.events.subscriber import EventMeta


def business_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE IF NOT EXISTS vouchers (id TEXT PRIMARY KEY, state TEXT)")
    conn.commit()
    return conn


def meta(event_id: str, delivery: int = 1) -> EventMeta:
    return EventMeta(
        id=event_id,
        type="hms.testing.v1.VoucherSubmitted",
        source="test",
        time=datetime.now(UTC),
        delivery_count=delivery,
        subject="hms.events.hms.testing.v1.VoucherSubmitted",
        stream_sequence=1,
        trace_context=otel_context.Context(),
    )


def test_event_commits_with_the_business_change(tmp_path: Path) -> None:
    conn = business_db(tmp_path / "svc.sqlite3")
    outbox = Outbox(tmp_path / "svc.sqlite3")
    with conn:
        conn.execute("INSERT INTO vouchers VALUES ('v1', 'submitted')")
        event_id = outbox.add(conn, VoucherSubmitted(voucher_id="v1"), aggregate="v1")
    (row,) = outbox.unsent()
    assert (row.event_id, row.type, row.aggregate, row.sent_at) == (
        event_id,
        "hms.testing.v1.VoucherSubmitted",
        "v1",
        None,
    )
    assert VoucherSubmitted.FromString(row.payload).voucher_id == "v1"
    assert outbox.pending() == 1
    outbox.close()


def test_rollback_leaves_no_event(tmp_path: Path) -> None:
    conn = business_db(tmp_path / "svc.sqlite3")
    outbox = Outbox(tmp_path / "svc.sqlite3")

    def submit() -> None:
        with conn:
            conn.execute("INSERT INTO vouchers VALUES ('v1', 'submitted')")
            outbox.add(conn, VoucherSubmitted(voucher_id="v1"), aggregate="v1")
            raise RuntimeError("business rule failed after the event was written")

    with pytest.raises(RuntimeError):
        submit()
    assert conn.execute("SELECT count(*) FROM vouchers").fetchone() == (0,)
    assert outbox.pending() == 0
    outbox.close()


def test_shared_connection_and_given_event_id(tmp_path: Path) -> None:
    conn = business_db(tmp_path / "svc.sqlite3")
    outbox = Outbox(conn)
    with conn:
        assert outbox.add(conn.cursor(), VoucherSubmitted(), aggregate="a", event_id="e1") == "e1"
    assert [row.event_id for row in outbox.unsent()] == ["e1"]
    outbox.mark_sent([1])
    assert outbox.pending() == 0


def test_outbox_refuses_to_be_created_inside_a_transaction(tmp_path: Path) -> None:
    conn = business_db(tmp_path / "svc.sqlite3")
    conn.execute("INSERT INTO vouchers VALUES ('v1', 'x')")  # opens a transaction
    with pytest.raises(ValueError, match="outside a transaction"):
        Outbox(conn)


@pytest.mark.parametrize(
    ("aggregate", "event_id", "error"),
    [
        pytest.param("", None, "aggregate", id="empty-aggregate"),
        pytest.param("a", "", "event id", id="empty-event-id"),
        pytest.param("a", "x\ny", "event id", id="multi-line-event-id"),
    ],
)
def test_add_validates(tmp_path: Path, aggregate: str, event_id: str | None, error: str) -> None:
    outbox = Outbox(tmp_path / "svc.sqlite3")
    conn = sqlite3.connect(str(tmp_path / "svc.sqlite3"))
    with pytest.raises(ValueError, match=error):
        outbox.add(conn, VoucherSubmitted(), aggregate=aggregate, event_id=event_id)


async def test_idempotent_handler_applies_a_redelivery_once(tmp_path: Path) -> None:
    applied: list[tuple[str, int]] = []

    def apply(conn: sqlite3.Connection, event: VoucherSubmitted, m: EventMeta) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS seen (voucher TEXT)")
        conn.execute("INSERT INTO seen VALUES (?)", (event.voucher_id,))
        applied.append((event.voucher_id, m.delivery_count))

    handler = IdempotentHandler(tmp_path / "notify.sqlite3", "notify", apply)
    await handler(VoucherSubmitted(voucher_id="v1"), meta("e1"))
    await handler(VoucherSubmitted(voucher_id="v1"), meta("e1", delivery=2))
    await handler(VoucherSubmitted(voucher_id="v2"), meta("e2"))
    assert applied == [("v1", 1), ("v2", 1)]
    assert handler.processed() == 2
    other = IdempotentHandler(tmp_path / "notify.sqlite3", "audit", apply)
    await other(VoucherSubmitted(voucher_id="v1"), meta("e1"))  # another consumer: applied
    assert other.processed() == 1
    handler.close()
    other.close()


async def test_idempotent_handler_rolls_back_a_failed_apply(tmp_path: Path) -> None:
    attempts = 0

    async def apply(conn: sqlite3.Connection, event: VoucherSubmitted, m: EventMeta) -> None:
        nonlocal attempts
        attempts += 1
        conn.execute("CREATE TABLE IF NOT EXISTS effects (voucher TEXT)")
        conn.execute("INSERT INTO effects VALUES (?)", (event.voucher_id,))
        if attempts == 1:
            raise RuntimeError("downstream failed")

    db = tmp_path / "notify.sqlite3"
    handler = IdempotentHandler(db, "notify", apply)
    with pytest.raises(RuntimeError):
        await handler(VoucherSubmitted(voucher_id="v1"), meta("e1"))
    assert handler.processed() == 0
    await handler(VoucherSubmitted(voucher_id="v1"), meta("e1", delivery=2))
    assert handler.processed() == 1
    assert sqlite3.connect(str(db)).execute("SELECT count(*) FROM effects").fetchone() == (1,)
    handler.close()


async def test_idempotent_handler_needs_an_event_id(tmp_path: Path) -> None:
    handler = IdempotentHandler(tmp_path / "n.sqlite3", "notify", lambda c, e, m: None)
    with pytest.raises(ValueError, match="no id"):
        await handler(VoucherSubmitted(), meta(""))
    handler.close()
