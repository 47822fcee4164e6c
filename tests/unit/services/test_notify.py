"""NotifyService handlers, the SQLite notification store (a real file under tmp_path) and the
notification recorded for each case event."""

from __future__ import annotations

import base64
import datetime
import itertools
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from opentelemetry.context import Context

from hms.housing.v1 import housing_pb2
from hms.licensing.v1 import licensing_pb2
from hms.notify.v1 import notify_pb2
from hms.passport.v1 import passport_pb2
from hms_services.notify.events import NOTIFIED_EVENTS, Draft, EventNotifier, compose
from hms_services.notify.service import NotifyService
from hms_services.notify.store import Cursor, Notification, NotificationStore
from mesh.errors import AlreadyExists, InvalidArgument
from mesh.events import EventMeta
from mesh.testing import FakeContext, VirtualWallClock

T0 = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.UTC)


# The handlers use nothing of the context, and raise mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)


def counting_ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"id-{next(counter):04d}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "notify.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[NotificationStore]:
    with NotificationStore(db_path) as s:
        yield s


def send_request(**overrides: Any) -> notify_pb2.SendRequest:
    fields: dict[str, Any] = {
        "applicant_id": "app-1",
        "channel": notify_pb2.CHANNEL_EMAIL,
        "recipient": "ada@example.org",
        "subject": "Your application",
        "body": "We have received your application.",
    }
    fields.update(overrides)
    return notify_pb2.SendRequest(**fields)


def add(store: NotificationStore, notification_id: str, at: datetime.datetime, **kw: Any) -> None:
    store.add(
        notification_id=notification_id,
        applicant_id=kw.get("applicant_id", "app-1"),
        channel=notify_pb2.CHANNEL_SMS,
        recipient="+447700900000",
        subject="",
        body="hello",
        create_time=at,
    )


# --- Send ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "also_mentions"),
    [
        pytest.param({"applicant_id": ""}, "applicant_id", [], id="applicant_id-missing"),
        pytest.param({"applicant_id": " \t"}, "applicant_id", [], id="applicant_id-blank"),
        pytest.param(
            {"channel": notify_pb2.CHANNEL_UNSPECIFIED},
            "channel",
            ["CHANNEL_EMAIL", "CHANNEL_SMS", "CHANNEL_LETTER", "CHANNEL_UNSPECIFIED"],
            id="channel-unspecified",
        ),
        pytest.param(
            {"channel": 7}, "channel", ["CHANNEL_EMAIL", "got 7"], id="channel-unknown-number"
        ),
        pytest.param({"recipient": ""}, "recipient", [], id="recipient-missing"),
        pytest.param({"body": ""}, "body", [], id="body-missing"),
        pytest.param({"body": "\n "}, "body", [], id="body-blank"),
    ],
)
async def test_send_rejects_invalid_input(
    store: NotificationStore, overrides: dict[str, Any], field: str, also_mentions: list[str]
) -> None:
    service = NotifyService(store)
    with pytest.raises(InvalidArgument) as caught:
        await service.Send(send_request(**overrides), CONTEXT)
    assert [f for f, _ in caught.value.violations] == [field]
    assert caught.value.message.startswith(f"{field}: ")
    for text in also_mentions:
        assert text in caught.value.message
    # Nothing is recorded for a rejected request.
    assert store.list(page_size=10) == ([], "")


async def test_send_records_and_returns_the_notification(store: NotificationStore) -> None:
    service = NotifyService(
        store,
        clock=VirtualWallClock(T0, step=datetime.timedelta(milliseconds=1)),
        new_id=counting_ids(),
    )
    sent = (await service.Send(send_request(), CONTEXT)).notification
    assert sent.notification_id == "id-0001"
    assert sent.create_time.ToDatetime(tzinfo=datetime.UTC) == T0
    assert (sent.applicant_id, sent.channel, sent.recipient, sent.subject, sent.body) == (
        "app-1",
        notify_pb2.CHANNEL_EMAIL,
        "ada@example.org",
        "Your application",
        "We have received your application.",
    )

    listed = await service.ListNotifications(notify_pb2.ListNotificationsRequest(), CONTEXT)
    assert list(listed.notifications) == [sent]
    assert listed.next_page_token == ""


async def test_send_defaults_to_uuid4_hex_ids_and_utc_now(store: NotificationStore) -> None:
    service = NotifyService(store)
    before = datetime.datetime.now(datetime.UTC)
    first = (await service.Send(send_request(), CONTEXT)).notification
    second = (await service.Send(send_request(), CONTEXT)).notification
    after = datetime.datetime.now(datetime.UTC)
    assert len(first.notification_id) == 32
    int(first.notification_id, 16)  # hex
    assert first.notification_id != second.notification_id
    assert before <= first.create_time.ToDatetime(tzinfo=datetime.UTC) <= after


# --- ListNotifications --------------------------------------------------------------------


async def test_paging_across_three_pages_is_stable(store: NotificationStore) -> None:
    # Seven rows, several sharing a timestamp, so the id tie-break matters.
    times = [T0, T0, T0 + datetime.timedelta(seconds=1), T0, T0 + datetime.timedelta(seconds=2)]
    times += [T0 + datetime.timedelta(seconds=1), T0 - datetime.timedelta(seconds=5)]
    for i, at in enumerate(times):
        add(store, f"n{i}", at)
    # Newest first; equal times in descending id order.
    expected = ["n4", "n5", "n2", "n3", "n1", "n0", "n6"]
    service = NotifyService(store)

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await service.ListNotifications(
            notify_pb2.ListNotificationsRequest(page_size=3, page_token=token), CONTEXT
        )
        pages.append([n.notification_id for n in page.notifications])
        if len(pages) == 1:
            # A notification sent while paging is newer than the cursor: it shows up on a new
            # listing, never as a duplicate or a shift in the pages already being read.
            add(store, "late", T0 + datetime.timedelta(hours=1))
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert flat == expected
    assert len(set(flat)) == len(flat) == 7
    fresh = await service.ListNotifications(notify_pb2.ListNotificationsRequest(), CONTEXT)
    assert [n.notification_id for n in fresh.notifications] == ["late", *expected]


async def test_list_filters_by_applicant(store: NotificationStore) -> None:
    for i in range(4):
        add(store, f"n{i}", T0 + datetime.timedelta(seconds=i), applicant_id=f"app-{i % 2}")
    page = await NotifyService(store).ListNotifications(
        notify_pb2.ListNotificationsRequest(applicant_id="app-1"), CONTEXT
    )
    assert [n.notification_id for n in page.notifications] == ["n3", "n1"]


@pytest.mark.parametrize(
    ("page_size", "rows", "returned"),
    [
        pytest.param(0, 60, 50, id="unset-means-50"),
        pytest.param(10, 60, 10, id="as-asked"),
        pytest.param(501, 520, 500, id="clamped-to-500"),
    ],
)
async def test_page_size(
    store: NotificationStore, page_size: int, rows: int, returned: int
) -> None:
    for i in range(rows):
        add(store, f"n{i:04d}", T0)
    page = await NotifyService(store).ListNotifications(
        notify_pb2.ListNotificationsRequest(page_size=page_size), CONTEXT
    )
    assert len(page.notifications) == returned
    assert page.next_page_token


async def test_negative_page_size_is_invalid(store: NotificationStore) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await NotifyService(store).ListNotifications(
            notify_pb2.ListNotificationsRequest(page_size=-1), CONTEXT
        )
    assert [f for f, _ in caught.value.violations] == ["page_size"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not a token!", id="not-base64"),
        pytest.param("abc", id="short-garbage"),
        pytest.param(b64(b"\xff\xfe"), id="not-utf8"),
        pytest.param(b64(b"hello"), id="not-json"),
        pytest.param(b64(b'{"t": 1, "id": "x"}'), id="json-object"),
        pytest.param(b64(b"[1]"), id="too-short"),
        pytest.param(b64(b'[1, "x", 2]'), id="too-long"),
        pytest.param(b64(b'["1", "x"]'), id="time-not-int"),
        pytest.param(b64(b'[true, "x"]'), id="time-bool"),
        pytest.param(b64(b"[1, 2]"), id="id-not-str"),
        pytest.param(b64(b'[1.5, "x"]'), id="time-float"),
    ],
)
async def test_malformed_page_token_is_invalid(store: NotificationStore, token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await NotifyService(store).ListNotifications(
            notify_pb2.ListNotificationsRequest(page_token=token), CONTEXT
        )
    assert [f for f, _ in caught.value.violations] == ["page_token"]
    assert caught.value.message.startswith("page_token: ")


# --- store --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param(Cursor(0, ""), id="zero"),
        pytest.param(Cursor(1_714_555_800_123_456, "9f86d081884c7d65"), id="typical"),
        pytest.param(Cursor(2**62, 'quotes " and / + ='), id="odd-id"),
    ],
)
def test_cursor_round_trips_through_a_url_safe_token(cursor: Cursor) -> None:
    token = cursor.encode()
    assert Cursor.decode(token) == cursor
    assert not set(token) & set("+/= ")


def test_store_round_trip_keeps_every_field(store: NotificationStore) -> None:
    at = datetime.datetime(2024, 5, 1, 10, 0, 0, 123_456, tzinfo=datetime.UTC)
    added = store.add(
        notification_id="n1",
        applicant_id="app-1",
        channel=notify_pb2.CHANNEL_LETTER,
        recipient="1 High Street\nLondon",
        subject="Décision",
        body="Body with ünïcödé ✓",
        create_time=at,
    )
    assert added == Notification(
        "n1", "app-1", 3, "1 High Street\nLondon", "Décision", "Body with ünïcödé ✓", at
    )
    assert store.list(page_size=5) == ([added], "")


def test_store_normalises_create_time_to_utc(store: NotificationStore) -> None:
    paris = datetime.timezone(datetime.timedelta(hours=2))
    added = store.add(
        notification_id="n1",
        applicant_id="a",
        channel=1,
        recipient="r",
        subject="",
        body="b",
        create_time=datetime.datetime(2024, 5, 1, 11, 30, tzinfo=paris),
    )
    assert added.create_time == T0
    assert added.create_time.utcoffset() == datetime.timedelta(0)


def test_store_rejects_duplicate_id(store: NotificationStore) -> None:
    add(store, "n1", T0)
    with pytest.raises(AlreadyExists, match="n1"):
        add(store, "n1", T0)


def test_store_rejects_naive_create_time(store: NotificationStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add(store, "n1", datetime.datetime(2024, 5, 1))


def test_store_rejects_page_size_below_one(store: NotificationStore) -> None:
    with pytest.raises(ValueError, match="page_size"):
        store.list(page_size=0)


def test_store_persists_across_reopening(db_path: Path) -> None:
    with NotificationStore(db_path) as first:
        add(first, "n1", T0)
        add(first, "n2", T0 + datetime.timedelta(seconds=1))
    with NotificationStore(db_path) as second:
        items, token = second.list(page_size=10)
        add(second, "n3", T0 + datetime.timedelta(seconds=2))
    assert [n.notification_id for n in items] == ["n2", "n1"]
    assert token == ""
    with NotificationStore(db_path) as third:
        assert [n.notification_id for n in third.list(page_size=10)[0]] == ["n3", "n2", "n1"]


def test_store_uses_wal_mode(store: NotificationStore, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


# --- a notification per event -------------------------------------------------------------


def event_meta(event_id: str) -> EventMeta:
    return EventMeta(
        id=event_id,
        type="",
        source="housing",
        time=None,
        delivery_count=1,
        subject="hms.events.x",
        stream_sequence=1,
        trace_context=Context(),
    )


VOUCHER = housing_pb2.VoucherSubmitted(
    application=housing_pb2.Application(application_id="A-17", citizen_id="C-1")
)
RENEWAL = passport_pb2.RenewalSubmitted(
    renewal=passport_pb2.Renewal(renewal_id="R-4", citizen_id="C-2")
)
LICENCE = licensing_pb2.LicenceIssued(
    licence=licensing_pb2.Licence(licence_id="L-9", citizen_id="C-3", licence_type="street-trading")
)


@pytest.mark.parametrize(
    ("event", "draft"),
    [
        pytest.param(
            VOUCHER,
            Draft(
                "C-1",
                "Housing voucher application received",
                "Your housing voucher application A-17 was received.",
            ),
            id="voucher",
        ),
        pytest.param(
            RENEWAL,
            Draft("C-2", "Passport renewal received", "Your passport renewal R-4 was received."),
            id="renewal",
        ),
        pytest.param(
            LICENCE,
            Draft("C-3", "Licence issued", "Your street-trading licence L-9 was issued."),
            id="licence",
        ),
        pytest.param(
            licensing_pb2.LicenceIssued(
                licence=licensing_pb2.Licence(licence_id="L-1", citizen_id="C-3")
            ),
            Draft("C-3", "Licence issued", "Your licence L-1 was issued."),
            id="licence-of-no-type",
        ),
    ],
)
def test_each_event_s_notification(event: Message, draft: Draft) -> None:
    assert compose(event) == draft


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param(housing_pb2.VoucherSubmitted(), "application.citizen_id", id="no-citizen"),
        pytest.param(
            passport_pb2.RenewalSubmitted(renewal=passport_pb2.Renewal(citizen_id="C-2")),
            "renewal.renewal_id",
            id="no-case",
        ),
        pytest.param(
            licensing_pb2.LicenceIssued(
                licence=licensing_pb2.Licence(licence_id="L-1", citizen_id=" ")
            ),
            "licence.citizen_id",
            id="blank-citizen",
        ),
        pytest.param(licensing_pb2.LicenceRefused(citizen_id="C-1"), "LicenceRefused", id="other"),
    ],
)
def test_an_event_that_cannot_be_addressed_names_what_is_missing(
    event: Message, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        compose(event)


def test_every_notified_event_is_in_the_manifest() -> None:
    manifest = Path(__file__).parents[3] / "services" / "notify" / "service.toml"
    subscribes = tomllib.loads(manifest.read_text())["subscribes"]
    assert sorted(m.DESCRIPTOR.full_name for m in NOTIFIED_EVENTS) == sorted(subscribes)


async def test_an_event_is_notified_once_whatever_the_redeliveries(
    store: NotificationStore,
) -> None:
    notify = EventNotifier(store, clock=VirtualWallClock(T0), new_id=counting_ids())
    await notify(VOUCHER, event_meta("ev-1"))
    await notify(VOUCHER, event_meta("ev-1"))  # redelivered
    await notify(RENEWAL, event_meta("ev-2"))
    await notify(VOUCHER, event_meta("ev-1"))
    listed = await NotifyService(store).ListNotifications(
        notify_pb2.ListNotificationsRequest(applicant_id="C-1"), CONTEXT
    )
    assert len(listed.notifications) == 1
    sent = listed.notifications[0]
    assert (sent.notification_id, sent.channel, sent.recipient, sent.body) == (
        "id-0001",
        notify_pb2.CHANNEL_EMAIL,
        "citizen:C-1",
        "Your housing voucher application A-17 was received.",
    )
    assert store.for_event("ev-1") == store.list("C-1")[0][0]
    assert [n.applicant_id for n in store.list()[0]] == ["C-2", "C-1"]


async def test_an_event_without_an_id_is_refused(store: NotificationStore) -> None:
    with pytest.raises(ValueError, match="no id"):
        await EventNotifier(store)(VOUCHER, event_meta(""))
    assert store.list() == ([], "")


def test_record_event_needs_an_event_id(store: NotificationStore) -> None:
    with pytest.raises(ValueError, match="event_id"):
        store.record_event(
            event_id="",
            notification_id="n1",
            applicant_id="a",
            channel=1,
            recipient="r",
            subject="",
            body="b",
            create_time=T0,
        )


def test_notifications_sent_by_call_need_no_event(store: NotificationStore) -> None:
    add(store, "n1", T0)
    add(store, "n2", T0)  # two rows without an event id: no clash
    assert len(store.list()[0]) == 2


def test_a_file_from_before_events_gains_the_event_column(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.executescript(
        """
        CREATE TABLE notifications (
            id TEXT PRIMARY KEY, applicant_id TEXT NOT NULL, channel INTEGER NOT NULL,
            recipient TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
            create_time_us INTEGER NOT NULL
        );
        INSERT INTO notifications VALUES ('old', 'C-1', 1, 'r', 's', 'b', 0);
        """
    )
    conn.close()
    with NotificationStore(db_path) as store:
        stored = store.record_event(
            event_id="ev-1",
            notification_id="new",
            applicant_id="C-1",
            channel=1,
            recipient="r",
            subject="s",
            body="b",
            create_time=T0,
        )
        assert stored is not None
        assert [n.notification_id for n in store.list("C-1")[0]] == ["new", "old"]
    with NotificationStore(db_path) as reopened:  # the second open finds the column there
        assert reopened.for_event("ev-1") == stored
