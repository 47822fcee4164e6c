"""Outbox table and IdempotentHandler against SQLite files: no NATS."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry import context as otel_context

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.idempotency import BadSequence, IdempotentHandler, NotYet
from mesh.events.outbox import Outbox
from mesh.events.subjects import Headers
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


# -- each aggregate's events numbered, and applied in that order ---------------------------


def test_numbers_per_aggregate_survive_pruning_and_reopening(tmp_path: Path) -> None:
    db = tmp_path / "svc.sqlite3"
    conn = business_db(db)
    outbox = Outbox(db)
    for aggregate in ("a", "b", "a"):
        with conn:
            outbox.add(conn, VoucherSubmitted(voucher_id=aggregate), aggregate=aggregate)
    assert [(r.aggregate, r.aggregate_seq) for r in outbox.unsent()] == [
        ("a", 1), ("b", 1), ("a", 2),
    ]  # fmt: skip
    outbox.mark_sent([r.seq for r in outbox.unsent()])
    assert outbox.prune(datetime.now(UTC) + timedelta(seconds=1)) == 3
    first_id = outbox.outbox_id
    outbox.close()
    again = Outbox(db)  # the same database: the same outbox id, the numbers carry on
    with conn:
        again.add(conn, VoucherSubmitted(voucher_id="a"), aggregate="a")
    assert [(r.aggregate, r.aggregate_seq) for r in again.unsent()] == [("a", 3)]
    assert again.outbox_id == first_id
    again.close()


def test_a_table_made_before_numbering_gets_the_column(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    old = sqlite3.connect(str(db))
    old.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL"
        " UNIQUE, type TEXT NOT NULL, payload BLOB NOT NULL, aggregate TEXT NOT NULL,"
        " created_at TEXT NOT NULL, sent_at TEXT, trace TEXT NOT NULL DEFAULT '{}');"
        "INSERT INTO outbox (event_id, type, payload, aggregate, created_at)"
        " VALUES ('e0', 'hms.testing.v1.VoucherSubmitted', x'', 'a', '2026-01-01');"
    )
    old.close()
    outbox = Outbox(db)
    conn = sqlite3.connect(str(db))
    with conn:
        outbox.add(conn, VoucherSubmitted(voucher_id="a"), aggregate="a")
    assert [(r.event_id, r.aggregate_seq) for r in outbox.unsent()][:1] == [("e0", None)]
    assert outbox.unsent()[1].aggregate_seq == 1
    outbox.close()


@pytest.mark.parametrize("aggregate", ["", "two\nlines"], ids=["empty", "two-lines"])
def test_an_aggregate_must_be_one_nonempty_line(tmp_path: Path, aggregate: str) -> None:
    conn = business_db(tmp_path / "svc.sqlite3")
    outbox = Outbox(tmp_path / "svc.sqlite3")
    with pytest.raises(ValueError, match="aggregate"):
        outbox.add(conn, VoucherSubmitted(), aggregate=aggregate)
    outbox.close()


def ordered(event_id: str, aggregate: str, number: int | str, outbox: str = "ob1") -> EventMeta:
    base = meta(event_id)
    headers = {Headers.AGGREGATE: aggregate, Headers.SEQUENCE: f"{outbox}:{number}"}
    return dataclasses.replace(base, headers=headers)


async def deliver(handler: IdempotentHandler[VoucherSubmitted], m: EventMeta) -> str:
    """What the subscriber would do: "applied" (ack), or the error's class (nak)."""
    try:
        await handler(VoucherSubmitted(voucher_id=m.id), m)
    except (NotYet, BadSequence) as exc:
        return type(exc).__name__
    return "acked"


@pytest.mark.parametrize(
    ("deliveries", "outcomes", "applied"),
    [
        pytest.param([("e1", "a", 1), ("e2", "a", 2)], ["acked", "acked"], ["e1", "e2"],
                     id="in-order"),
        pytest.param([("e2", "a", 2), ("e1", "a", 1), ("e2", "a", 2)],
                     ["NotYet", "acked", "acked"], ["e1", "e2"], id="early-waits-for-its-turn"),
        pytest.param([("e1", "a", 1), ("e1", "a", 1)], ["acked", "acked"], ["e1"],
                     id="redelivery-applied-once"),
        pytest.param([("e1", "a", 1), ("x1", "b", 1), ("e2", "a", 2)],
                     ["acked", "acked", "acked"], ["e1", "x1", "e2"],
                     id="aggregates-independent"),
        pytest.param([("e1", "a", 1), ("e9", "a", 1)], ["acked", "BadSequence"], ["e1"],
                     id="behind-what-was-applied"),
        pytest.param([("e1", "a", "x")], ["BadSequence"], [], id="malformed-number"),
        pytest.param([("e1", "", 1)], ["BadSequence"], [], id="no-aggregate"),
        pytest.param([("e3", "a", 3)], ["NotYet"], [], id="first-seen-is-not-number-one"),
    ],
)  # fmt: skip
async def test_events_of_an_aggregate_are_applied_in_order(
    tmp_path: Path,
    deliveries: list[tuple[str, str, int | str]],
    outcomes: list[str],
    applied: list[str],
) -> None:
    seen: list[str] = []
    handler = IdempotentHandler(
        tmp_path / "c.sqlite3", "consumer", lambda conn, msg, m: seen.append(m.id)
    )
    got = [await deliver(handler, ordered(*d)) for d in deliveries]
    assert got == outcomes
    assert seen == applied
    handler.close()


async def test_another_outbox_numbers_the_same_aggregate_on_its_own(tmp_path: Path) -> None:
    handler = IdempotentHandler(tmp_path / "c.sqlite3", "consumer", lambda conn, msg, m: None)
    assert await deliver(handler, ordered("e1", "a", 1, outbox="ob1")) == "acked"
    assert await deliver(handler, ordered("f1", "a", 1, outbox="ob2")) == "acked"
    assert await deliver(handler, ordered("f3", "a", 3, outbox="ob2")) == "NotYet"
    handler.close()


async def test_not_yet_names_what_it_waits_for(tmp_path: Path) -> None:
    handler = IdempotentHandler(tmp_path / "c.sqlite3", "consumer", lambda conn, msg, m: None)
    with pytest.raises(NotYet, match=r"number 2 of aggregate 'a'; waiting for number 1"):
        await handler(VoucherSubmitted(), ordered("e2", "a", 2))
    assert handler.processed() == 0
    handler.close()
