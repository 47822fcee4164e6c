"""The notification each case event brings about: one per event, to the citizen it is about.

Notify keeps no contact details: a notification goes by email to `citizen:<citizen id>`, the
address the mail relay resolves from the citizen's record when it delivers, so an address
changed after the event is still the one used.

>>> from hms.passport.v1 import passport_pb2
>>> compose(passport_pb2.RenewalSubmitted(
...     renewal=passport_pb2.Renewal(renewal_id="R-7", citizen_id="C-1"))).body
'Your passport renewal R-7 was received.'
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from hms.housing.v1.housing_pb2 import VoucherSubmitted
from hms.licensing.v1.licensing_pb2 import LicenceIssued
from hms.notify.v1 import notify_pb2
from hms.passport.v1.passport_pb2 import RenewalSubmitted
from hms_services.notify.store import NotificationStore
from mesh.events import EventMeta

__all__ = ["NOTIFIED_EVENTS", "Draft", "EventNotifier", "compose", "recipient_of"]

log = logging.getLogger(__name__)

#: services/notify/service.toml, `subscribes`.
NOTIFIED_EVENTS: tuple[type[Message], ...] = (VoucherSubmitted, RenewalSubmitted, LicenceIssued)


@dataclass(frozen=True, slots=True)
class Draft:
    """A notification's words and whom it is for."""

    applicant_id: str  # the citizen id
    subject: str
    body: str


def _required(value: str, field: str, message: Message) -> str:
    if not value.strip():
        raise ValueError(
            f"{message.DESCRIPTOR.full_name}: {field} is empty, so no notification can be addressed"
        )
    return value


def _voucher(event: VoucherSubmitted) -> Draft:
    application = event.application
    citizen = _required(application.citizen_id, "application.citizen_id", event)
    case = _required(application.application_id, "application.application_id", event)
    return Draft(
        citizen,
        "Housing voucher application received",
        f"Your housing voucher application {case} was received.",
    )


def _renewal(event: RenewalSubmitted) -> Draft:
    renewal = event.renewal
    citizen = _required(renewal.citizen_id, "renewal.citizen_id", event)
    case = _required(renewal.renewal_id, "renewal.renewal_id", event)
    body = f"Your passport renewal {case} was received."
    return Draft(citizen, "Passport renewal received", body)


def _licence(event: LicenceIssued) -> Draft:
    licence = event.licence
    citizen = _required(licence.citizen_id, "licence.citizen_id", event)
    case = _required(licence.licence_id, "licence.licence_id", event)
    kind = f"{licence.licence_type} licence" if licence.licence_type.strip() else "licence"
    return Draft(citizen, "Licence issued", f"Your {kind} {case} was issued.")


def compose(message: Message) -> Draft:
    """The notification `message` brings about; ValueError naming an empty field it needs, or
    the type if notify has nothing to say about it."""
    match message:
        case VoucherSubmitted():
            return _voucher(message)
        case RenewalSubmitted():
            return _renewal(message)
        case LicenceIssued():
            return _licence(message)
    raise ValueError(f"no notification for {message.DESCRIPTOR.full_name} events")


def recipient_of(citizen_id: str) -> tuple[int, str]:
    """The channel and recipient of a citizen's notifications (see the module's doc)."""
    return notify_pb2.CHANNEL_EMAIL, f"citizen:{citizen_id}"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class EventNotifier:
    """The subscription handler: records the notification of each event once, by event id (a
    redelivered event records nothing). The clock and the id source are for tests."""

    def __init__(
        self,
        store: NotificationStore,
        *,
        clock: Callable[[], datetime.datetime] = _utc_now,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id

    async def __call__(self, message: Message, meta: EventMeta) -> None:
        if not meta.id:
            raise ValueError("the event has no id: a redelivery could not be told apart")
        draft = compose(message)
        channel, recipient = recipient_of(draft.applicant_id)
        stored = self._store.record_event(
            event_id=meta.id,
            notification_id=self._new_id(),
            applicant_id=draft.applicant_id,
            channel=channel,
            recipient=recipient,
            subject=draft.subject,
            body=draft.body,
            create_time=self._clock(),
        )
        if stored is None:
            log.info("event %s (%s) was notified already", meta.id, meta.type)
