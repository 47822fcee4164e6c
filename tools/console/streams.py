"""The event streams as an operator sees them: streams and their consumers (JetStream's info,
which `ops` may read), the dead letters (read with an ephemeral ordered consumer, as `mesh
events tail` does), and a dead letter's redrive.

Redrive republishes the letter's event, payload and headers as they were (its `Hms-Dlq-*`
headers aside), on the subject it was first published on, and then deletes the letter:

- It keeps the event's id (the letter's ``ce-id``) and sends no ``Nats-Msg-Id``. JetStream
  de-duplicates by ``Nats-Msg-Id`` within its window, so the event is stored again however soon
  the redrive; consumers take the event id from ``Nats-Msg-Id``, else ``ce-id``
  (mesh/events/subscriber.py), so every idempotent handler still knows it: one that handled it
  already skips it, the one that failed applies it.
- `ops` may publish nothing, so a redrive is published by the control plane's administrator
  (root's certificate, `<state-dir>/controlplane/`, which `mesh up` made); without it, the
  redrive is refused, saying so. A plaintext control plane needs no certificate.
- A second redrive of the same letter finds it gone (404): one click, one redrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from mesh.events.subjects import Headers

__all__ = [
    "DeadLetterGone",
    "RedriveRefused",
    "dead_letter_row",
    "dead_letters",
    "redrive",
    "redrive_headers",
    "stream_rows",
]

#: How long reading dead letters may wait for the next one before it stops.
READ_TIMEOUT = 2.0


class DeadLetterGone(LookupError):
    """No dead letter with that sequence (never, or redriven already)."""


class RedriveRefused(PermissionError):
    """The console cannot publish the event again (no administrator's certificate)."""


async def stream_rows(js: Any) -> list[dict[str, Any]]:
    """`/api/streams`: every stream with its consumers."""
    rows = []
    for info in sorted(await js.streams_info(), key=lambda i: i.config.name or ""):
        name = info.config.name or "?"
        consumers = []
        for c in sorted(await js.consumers_info(name), key=lambda c: c.name or ""):
            consumers.append(
                {
                    "name": c.name,
                    "pending": c.num_pending or 0,
                    "ack_pending": c.num_ack_pending or 0,
                    "redelivered": c.num_redelivered or 0,
                    "waiting": c.num_waiting or 0,
                }
            )
        rows.append(
            {
                "stream": name,
                "subjects": list(info.config.subjects or ()),
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "consumers": consumers,
            }
        )
    return rows


def dead_letter_row(
    sequence: int, subject: str, headers: dict[str, str], time: str
) -> dict[str, Any]:
    """One dead letter as `/api/deadletters` lists it (its letter's stream `sequence`)."""
    deliveries = headers.get(Headers.DLQ_DELIVERIES, "")
    parts = subject.split(".")
    return {
        "sequence": sequence,
        "subject": headers.get(Headers.DLQ_SUBJECT, ""),
        "type": headers.get(Headers.TYPE, ""),
        "reason": headers.get(Headers.DLQ_REASON, ""),
        "error": headers.get(Headers.DLQ_ERROR, ""),
        "deliveries": int(deliveries) if deliveries.isdigit() else None,
        "consumer": headers.get(Headers.DLQ_CONSUMER, ""),
        # <prefix>.dlq.<deployment>.<type>: the deployment whose consumer gave up.
        "deployment": parts[2] if len(parts) > 3 else "",
        "event_id": headers.get(Headers.ID, ""),
        "time": time,
    }


def _time(metadata: Any) -> str:
    stamp = getattr(metadata, "timestamp", None)
    if stamp is None:
        return ""
    return str(stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"))


async def dead_letters(js: Any, stream: str, subjects: str, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` dead letters of `stream` (on `subjects`), newest first."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    state = (await js.stream_info(stream)).state
    if not state.messages:
        return []
    # The latest `limit` letters lie among the last `limit` + deleted sequences.
    start = max(state.first_seq, state.last_seq - limit - (state.num_deleted or 0) + 1)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    sub = await js.subscribe(subjects, stream=stream, ordered_consumer=True, config=config)
    rows: list[dict[str, Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
            except TimeoutError:
                break
            meta = msg.metadata
            rows.append(
                dead_letter_row(
                    meta.sequence.stream, msg.subject, dict(msg.headers or {}), _time(meta)
                )
            )
            if not meta.num_pending:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    rows.reverse()
    return rows[:limit]


def redrive_headers(letter: dict[str, str]) -> dict[str, str]:
    """The event's headers again: the letter's, without its own and with no Nats-Msg-Id."""
    return {
        name: value
        for name, value in letter.items()
        if not name.startswith("Hms-Dlq-") and name != Headers.MSG_ID
    }


@dataclass(frozen=True)
class Redriven:
    sequence: int  # the letter's
    subject: str
    event_id: str
    stream_sequence: int  # the event's new place in its stream


_lock = asyncio.Lock()


async def redrive(admin_js: Any, stream: str, sequence: int) -> Redriven:
    """Publish dead letter `sequence` of `stream` again, then delete it; `admin_js` is a
    JetStream context of a connection allowed to read, publish and delete."""
    from nats.js.errors import NotFoundError

    async with _lock:  # two clicks at once: the second finds the letter gone
        try:
            letter = await admin_js.get_msg(stream, sequence)
        except NotFoundError as exc:
            raise DeadLetterGone(f"no dead letter {sequence} in {stream}") from exc
        headers = dict(letter.headers or {})
        subject = headers.get(Headers.DLQ_SUBJECT, "")
        if not subject:
            raise ValueError(
                f"dead letter {sequence} names no original subject ({Headers.DLQ_SUBJECT})"
            )
        ack = await admin_js.publish(subject, letter.data or b"", headers=redrive_headers(headers))
        await admin_js.delete_msg(stream, sequence)
    return Redriven(sequence, subject, headers.get(Headers.ID, ""), ack.seq)
