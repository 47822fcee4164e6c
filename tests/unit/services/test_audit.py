"""The audit service: its SQLite log (a real file under tmp_path), what it records of an event,
its gRPC handlers, and `mesh audit verify --db`."""

from __future__ import annotations

import dataclasses
import datetime
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hms.audit.v1 import audit_pb2
from hms.housing.v1 import housing_pb2
from hms.payments.v1 import payments_pb2
from hms_services.audit.chain import GENESIS_HASH, Record
from hms_services.audit.record import (
    AUDITED_EVENTS,
    parse_traceparent,
    record_of,
    subject_of,
    trace_id_of,
)
from hms_services.audit.service import AuditService, entry_pb, recorder
from hms_services.audit.store import AuditLog, verify_database
from mesh.errors import InvalidArgument
from mesh.events import EventMeta, Headers
from mesh.events.idempotency import NotYet
from mesh.testing import FakeContext, VirtualWallClock

T0 = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
CONTEXT = FakeContext(allow_abort=False)


def meta(event_id: str, **headers: str) -> EventMeta:
    return EventMeta(
        id=event_id,
        type="",
        source="housing",
        time=None,
        delivery_count=1,
        subject="hms.events.x",
        stream_sequence=1,
        trace_context=Context(),
        headers=headers,
    )


def record(n: int, subject: str = "case-1") -> Record:
    return Record(f"ev-{n}", "hms.x.v1.Event", "housing", subject, TRACE, n, f'{{"n":{n}}}')


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def log(db_path: Path) -> Iterator[AuditLog]:
    with AuditLog(db_path) as opened:
        yield opened


def raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(db_path), isolation_level=None)


# --- the log ------------------------------------------------------------------------------


def test_appends_chain_entries_and_record_each_event_once(log: AuditLog) -> None:
    first = log.append(record(1))
    second = log.append(record(2))
    assert first is not None
    assert second is not None
    assert (first.sequence, first.previous_hash) == (1, GENESIS_HASH)
    assert (second.sequence, second.previous_hash) == (2, first.hash)
    assert log.append(record(1)) is None  # a redelivery
    assert log.count() == 2
    assert log.verify().intact


def test_lists_a_subjects_entries_in_the_order_recorded(log: AuditLog) -> None:
    for n, subject in enumerate(["a", "b", "a", "c", "a"], start=1):
        log.append(record(n, subject))
    assert [e.sequence for e in log.entries_for("a")] == [1, 3, 5]
    assert log.entries_for("nobody") == []


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        pytest.param("UPDATE entries SET payload_json = '{}' WHERE sequence = 1", "UPDATE refused"),
        pytest.param("DELETE FROM entries WHERE sequence = 2", "DELETE refused"),
        pytest.param(
            "INSERT OR REPLACE INTO entries SELECT 3, event_id, event_type, source, subject,"
            " trace_id, record_time_us, payload_json, previous_hash, hash FROM entries"
            " WHERE sequence = 1",
            "recorded already",
            id="replace-moving-an-entry",
        ),
        pytest.param(
            "INSERT OR REPLACE INTO entries VALUES (1, 'new', 't', 's', 'c', '', 0, '{}', '', '')",
            "continue the chain",
            id="replace-over-an-entry",
        ),
        pytest.param(
            "INSERT INTO entries SELECT 3, 'other', event_type, source, subject, trace_id,"
            " record_time_us, payload_json, previous_hash, hash FROM entries WHERE sequence = 1",
            "continue the chain",
            id="fork-from-entry-1",
        ),
        pytest.param("UPDATE chain_head SET sequence = 1", "only moves forward"),
        pytest.param("DELETE FROM chain_head", "cannot be deleted"),
        pytest.param(
            "INSERT OR REPLACE INTO chain_head VALUES (1, 7, 'x')", "one head", id="replace-head"
        ),
    ],
)
def test_the_database_refuses_what_an_append_only_chain_must_not_do(
    log: AuditLog, db_path: Path, statement: str, refusal: str
) -> None:
    log.append(record(1))
    log.append(record(2))
    conn = raw(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match=refusal):
            conn.execute(statement)
    finally:
        conn.close()
    assert log.count() == 2
    assert log.verify().intact


def test_a_second_entry_for_an_event_is_refused_by_the_database(
    log: AuditLog, db_path: Path
) -> None:
    first = log.append(record(1))
    assert first is not None
    conn = raw(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="recorded already"):
            conn.execute(
                "INSERT INTO entries VALUES (2, 'ev-1', 't', 's', 'c', '', 0, '{}', ?, 'h')",
                (first.hash,),
            )
    finally:
        conn.close()


def tamper(db_path: Path, *statements: str) -> None:
    """What someone with the file and a SQLite shell can do: drop the guards, then edit."""
    conn = raw(db_path)
    try:
        for trigger in ("entries_no_update", "entries_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("statement", "broken_at"),
    [
        pytest.param("UPDATE entries SET payload_json = '{}' WHERE sequence = 3", 3, id="edited"),
        pytest.param("UPDATE entries SET subject = 'x' WHERE sequence = 1", 1, id="re-filed"),
        pytest.param("DELETE FROM entries WHERE sequence = 2", 2, id="removed"),
        pytest.param("DELETE FROM entries WHERE sequence = 4", 4, id="last-removed"),
        pytest.param(
            "UPDATE entries SET record_time_us = record_time_us + 1 WHERE sequence = 4",
            4,
            id="backdated",
        ),
    ],
)
def test_a_tampered_file_is_named_at_the_broken_entry(
    log: AuditLog, db_path: Path, statement: str, broken_at: int
) -> None:
    for n in range(1, 5):
        log.append(record(n))
    assert verify_database(db_path).intact
    tamper(db_path, statement)
    verdict = verify_database(db_path)
    assert (verdict.intact, verdict.first_broken_sequence) == (False, broken_at)
    assert log.verify() == verdict


def test_two_writers_on_one_file_never_fork_the_chain(db_path: Path) -> None:
    # Two replicas' logs on one file, appending at once: BEGIN IMMEDIATE serialises them.
    logs = [AuditLog(db_path), AuditLog(db_path)]
    start = threading.Barrier(2)

    def write(index: int) -> None:
        start.wait()
        for n in range(40):
            logs[index].append(record(index * 1000 + n))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        verdict = verify_database(db_path)
        assert verdict.intact, verdict
        assert verdict.entries == 80
    finally:
        for opened in logs:
            opened.close()


def test_verifying_a_file_never_creates_or_changes_it(tmp_path: Path, db_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        verify_database(tmp_path / "missing.sqlite3")
    assert not (tmp_path / "missing.sqlite3").exists()
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).close()
    with pytest.raises(ValueError, match="not an audit database"):
        verify_database(other)
    (tmp_path / "text.sqlite3").write_text("not a database at all, just text" * 10)
    with pytest.raises(ValueError, match="cannot be read"):
        verify_database(tmp_path / "text.sqlite3")


# --- what is recorded of an event ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "trace_id"),
    [
        pytest.param(TRACEPARENT, TRACE, id="valid"),
        pytest.param(f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE, id="later-version"),
        pytest.param("", "", id="missing"),
        pytest.param(f"00-{'0' * 32}-00f067aa0ba902b7-01", "", id="zero-trace"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", "", id="zero-parent"),
        pytest.param(f"ff-{TRACE}-00f067aa0ba902b7-01", "", id="version-ff"),
        pytest.param(f"00-{TRACE.upper()}-00f067aa0ba902b7-01", "", id="upper-case"),
        pytest.param(f"00-{TRACE}-00f067aa0ba902b7-01-extra", "", id="v00-with-more"),
        pytest.param(f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", "", id="short-trace"),
    ],
)
def test_trace_id_from_traceparent(value: str, trace_id: str) -> None:
    assert parse_traceparent(value) == trace_id


def test_subject_is_the_outbox_aggregate_else_the_event_id() -> None:
    assert subject_of(meta("ev-1", **{Headers.AGGREGATE: "A-1"})) == "A-1"
    assert subject_of(meta("ev-1")) == "ev-1"


def test_trace_id_is_the_events_trace() -> None:
    # The mesh's: EventMeta.trace_id, from the context the subscriber extracted.
    extracted = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT})
    traced = dataclasses.replace(meta("e"), trace_context=extracted)
    assert trace_id_of(traced) == TRACE
    # Else the traceparent header, read here; else none.
    assert trace_id_of(meta("e", traceparent=TRACEPARENT)) == TRACE
    assert trace_id_of(meta("e")) == ""


def test_record_of_an_event() -> None:
    event = housing_pb2.VoucherSubmitted(
        application=housing_pb2.Application(
            application_id="A-1", citizen_id="C-9", annual_income_pence=2_800_000
        )
    )
    headers = {Headers.AGGREGATE: "A-1", "traceparent": TRACEPARENT}
    made = record_of(event, meta("ev-1", **headers), T0 + datetime.timedelta(microseconds=7))
    assert made == Record(
        event_id="ev-1",
        event_type="hms.housing.v1.VoucherSubmitted",
        source="housing",
        subject="A-1",
        trace_id=TRACE,
        record_time_us=1_740_830_400_000_007,
        payload_json=(
            '{"application":{"annualIncomePence":"2800000","applicationId":"A-1",'
            '"citizenId":"C-9"}}'
        ),
    )
    with pytest.raises(ValueError, match="no id"):
        record_of(event, meta(""), T0)


def test_every_audited_event_is_in_the_manifest() -> None:
    import tomllib

    manifest = Path(__file__).parents[3] / "services" / "audit" / "service.toml"
    subscribes = tomllib.loads(manifest.read_text())["subscribes"]
    assert sorted(m.DESCRIPTOR.full_name for m in AUDITED_EVENTS) == sorted(subscribes)


async def test_the_recorder_records_an_event_once_and_in_its_outbox_order(db_path: Path) -> None:
    log = AuditLog(db_path)
    handle = recorder(db_path, clock=VirtualWallClock(T0, step=datetime.timedelta(seconds=1)))
    captured = payments_pb2.PaymentCaptured(payment=payments_pb2.Payment(payment_id="P-1"))
    refunded = payments_pb2.PaymentRefunded(payment=payments_pb2.Payment(payment_id="P-1"))
    order = {Headers.AGGREGATE: "P-1"}
    try:
        with pytest.raises(NotYet):  # number 2 of P-1 before number 1
            await handle(refunded, meta("ev-2", **order, **{Headers.SEQUENCE: "ob:2"}))
        await handle(captured, meta("ev-1", **order, **{Headers.SEQUENCE: "ob:1"}))
        await handle(captured, meta("ev-1", **order, **{Headers.SEQUENCE: "ob:1"}))  # again
        await handle(refunded, meta("ev-2", **order, **{Headers.SEQUENCE: "ob:2"}))
        entries = log.entries_for("P-1")
        assert [(e.sequence, e.event_id, e.event_type) for e in entries] == [
            (1, "ev-1", "hms.payments.v1.PaymentCaptured"),
            (2, "ev-2", "hms.payments.v1.PaymentRefunded"),
        ]
        assert log.verify().intact
    finally:
        handle.close()
        log.close()


# --- the gRPC handlers --------------------------------------------------------------------


async def test_list_entries_needs_a_subject(log: AuditLog) -> None:
    for subject in ("", "  "):
        with pytest.raises(InvalidArgument) as caught:
            await AuditService(log).ListEntries(
                audit_pb2.ListEntriesRequest(subject=subject), CONTEXT
            )
        assert [f for f, _ in caught.value.violations] == ["subject"]


async def test_list_entries_answers_the_case_s_entries_with_every_field(log: AuditLog) -> None:
    log.append(record(1, "A-1"))
    log.append(record(2, "A-2"))
    third = log.append(dataclasses.replace(record(3, "A-1"), record_time_us=1_740_830_400_000_007))
    assert third is not None
    answer = await AuditService(log).ListEntries(
        audit_pb2.ListEntriesRequest(subject="A-1"), CONTEXT
    )
    assert [e.sequence for e in answer.entries] == [1, 3]
    last = answer.entries[1]
    assert last == entry_pb(third)
    assert (last.event_id, last.subject, last.trace_id, last.payload_json) == (
        "ev-3",
        "A-1",
        TRACE,
        '{"n":3}',
    )
    assert last.record_time.ToDatetime(tzinfo=datetime.UTC) == T0 + datetime.timedelta(
        microseconds=7
    )
    assert (last.previous_hash, last.hash) == (third.previous_hash, third.hash)


async def test_verify_chain_answers_intact_or_the_first_broken_entry(
    log: AuditLog, db_path: Path
) -> None:
    for n in range(1, 4):
        log.append(record(n))
    service = AuditService(log)
    answer = await service.VerifyChain(audit_pb2.VerifyChainRequest(), CONTEXT)
    assert (answer.intact, answer.entries, answer.first_broken_sequence) == (True, 3, 0)
    tamper(db_path, "UPDATE entries SET source = 'mallory' WHERE sequence = 2")
    answer = await service.VerifyChain(audit_pb2.VerifyChainRequest(), CONTEXT)
    assert (answer.intact, answer.first_broken_sequence) == (False, 2)
    assert "does not match" in answer.problem


# --- mesh audit verify --db ---------------------------------------------------------------


def test_mesh_audit_verify_db(
    log: AuditLog, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hms_tools.cli import main as mesh_main

    for n in range(1, 4):
        log.append(record(n))
    assert mesh_main(["audit", "verify", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out == f"audit chain intact ({db_path}): 3 entries\n"

    tamper(db_path, "UPDATE entries SET payload_json = '{\"n\":9}' WHERE sequence = 2")
    assert mesh_main(["audit", "verify", "--db", str(db_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"audit chain BROKEN ({db_path}) at entry 2 (2 entries checked)"
    assert "does not match" in out[1]


def test_mesh_audit_verify_names_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hms_tools.cli import main as mesh_main

    assert mesh_main(["audit", "verify", "--db", str(tmp_path / "nope.sqlite3")]) == 2
    assert "nope.sqlite3: no such file" in capsys.readouterr().err
