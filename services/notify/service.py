"""gRPC handlers of hms.notify.v1.NotifyService: validate, record in the store, answer.

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from google.protobuf import timestamp_pb2

from hms.notify.v1 import notify_pb2, notify_pb2_grpc
from hms_services.notify.store import Cursor, Notification, NotificationStore
from mesh import InvalidArgument, PermissionDenied
from mesh.server.enduser import STAFF_SCOPE, may_act_for, require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "NotifyService"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_CHANNEL_NAMES = {number: name for name, number in notify_pb2.Channel.items()}
_SENDABLE_CHANNELS = frozenset(_CHANNEL_NAMES) - {notify_pb2.CHANNEL_UNSPECIFIED}
_ALLOWED_CHANNELS = ", ".join(_CHANNEL_NAMES[n] for n in sorted(_SENDABLE_CHANNELS))


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class NotifyService(notify_pb2_grpc.NotifyServiceServicer):
    """Records notifications in a `NotificationStore` and lists them, newest first.

    The clock and the id source are parameters so that tests can fix them.

    Example::

        service = NotifyService(NotificationStore("/var/lib/hms/notify.sqlite3"))
    """

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

    async def Send(
        self,
        request: notify_pb2.SendRequest,
        context: grpc.aio.ServicerContext[notify_pb2.SendRequest, notify_pb2.SendResponse],
    ) -> notify_pb2.SendResponse:
        _validate_send(request)
        stored = self._store.add(
            notification_id=self._new_id(),
            applicant_id=request.applicant_id,
            channel=request.channel,
            recipient=request.recipient,
            subject=request.subject,
            body=request.body,
            create_time=self._clock(),
        )
        return notify_pb2.SendResponse(notification=_notification_pb(stored))

    async def ListNotifications(
        self,
        request: notify_pb2.ListNotificationsRequest,
        context: grpc.aio.ServicerContext[
            notify_pb2.ListNotificationsRequest, notify_pb2.ListNotificationsResponse
        ],
    ) -> notify_pb2.ListNotificationsResponse:
        if request.page_size < 0:
            raise InvalidArgument.field(
                "page_size", f"must not be negative, got {request.page_size}"
            )
        if request.applicant_id:
            require_acting_for(request.applicant_id, "applicant_id")
        elif not may_act_for(""):  # everyone's notifications: staff (or another service) only
            raise PermissionDenied(
                "applicant_id: is required: list your own notifications "
                "(?applicantId=<your citizen id>); listing everyone's needs the "
                f"{STAFF_SCOPE!r} scope"
            )
        # 0 means "not set" in proto3; above the maximum is clamped, not refused (AIP-158).
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = Cursor.decode(request.page_token) if request.page_token else None
        items, next_token = self._store.list(
            applicant_id=request.applicant_id or None, page_size=page_size, after=after
        )
        return notify_pb2.ListNotificationsResponse(
            notifications=[_notification_pb(n) for n in items], next_page_token=next_token
        )


def _validate_send(request: notify_pb2.SendRequest) -> None:
    """Raise InvalidArgument naming the first missing or wrong field of `request`."""
    if not request.applicant_id.strip():
        raise InvalidArgument.field("applicant_id", "is required")
    if request.channel not in _SENDABLE_CHANNELS:
        # proto3 enums are open: an unknown number arrives as is, so this is a membership test.
        got = _CHANNEL_NAMES.get(request.channel, str(request.channel))
        raise InvalidArgument.field("channel", f"must be one of {_ALLOWED_CHANNELS}, got {got}")
    if not request.recipient.strip():
        raise InvalidArgument.field("recipient", "is required")
    if not request.body.strip():
        raise InvalidArgument.field("body", "is required")


def _notification_pb(n: Notification) -> notify_pb2.Notification:
    create_time = timestamp_pb2.Timestamp()
    create_time.FromDatetime(n.create_time)
    return notify_pb2.Notification(
        notification_id=n.notification_id,
        applicant_id=n.applicant_id,
        channel=cast("notify_pb2.Channel", n.channel),  # stored as the enum's number
        recipient=n.recipient,
        subject=n.subject,
        body=n.body,
        create_time=create_time,
    )
