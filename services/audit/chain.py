"""The audit hash chain: how an entry's hash is computed, and how a chain is checked. Pure.

Each entry's hash is the lower-case hex SHA-256 of a canonical encoding of its fields and the
hash of the entry before it (64 zeros for the first), so changing, removing or reordering any
entry breaks the chain at that entry. The encoding is a compact JSON array with a version tag:
JSON escapes every string, so no two different entries encode alike (a field cannot "borrow"
characters from its neighbour as it could with plain concatenation)::

    ["hms.audit.v1", sequence, event_id, event_type, source, subject, trace_id,
     record_time_us, payload_json, previous_hash]

A chain alone cannot tell that its last entries were cut off; the head (the last entry's
sequence and hash, kept apart by the store) can, so `verify` takes it too.

>>> first = seal(1, GENESIS_HASH, Record("e1", "hms.x.v1.E", "x", "case-1", "", 0, "{}"))
>>> second = seal(2, first.hash, Record("e2", "hms.x.v1.E", "x", "case-1", "", 1, "{}"))
>>> verify([first, second], head=Head(2, second.hash))
Verdict(intact=True, entries=2, first_broken_sequence=0, problem='')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "ENCODING_TAG",
    "GENESIS_HASH",
    "Entry",
    "Head",
    "Record",
    "Verdict",
    "canonical_encoding",
    "seal",
    "verify",
]

#: The previous hash of the first entry.
GENESIS_HASH = "0" * 64
#: The first element of every encoded entry; a new encoding would take a new tag.
ENCODING_TAG = "hms.audit.v1"


@dataclass(frozen=True, slots=True)
class Record:
    """What is recorded of one event, before it has a place in the chain."""

    event_id: str
    event_type: str  # the Protobuf full name
    source: str  # the publishing deployment
    subject: str  # the case id
    trace_id: str  # 32 hex digits, or "" when the event carried no trace
    record_time_us: int  # when it was recorded, microseconds since the Unix epoch (UTC)
    payload_json: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A recorded event in its place: `sequence` (1, 2, ...), and the hashes that chain it."""

    sequence: int
    event_id: str
    event_type: str
    source: str
    subject: str
    trace_id: str
    record_time_us: int
    payload_json: str
    previous_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry as the store noted it when appending: its sequence and hash."""

    sequence: int
    hash: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `verify`: intact, or the first broken entry's sequence and why."""

    intact: bool
    entries: int  # entries checked
    first_broken_sequence: int  # 0 when intact
    problem: str  # "" when intact


def canonical_encoding(entry: Entry) -> bytes:
    """The bytes an entry's hash is taken of: its fields but the hash, previous_hash last."""
    fields = [
        ENCODING_TAG,
        entry.sequence,
        entry.event_id,
        entry.event_type,
        entry.source,
        entry.subject,
        entry.trace_id,
        entry.record_time_us,
        entry.payload_json,
        entry.previous_hash,
    ]
    # ensure_ascii: pure ASCII whatever the texts hold (lone surrogates too), so encodable.
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _hash_of(entry: Entry) -> str:
    return hashlib.sha256(canonical_encoding(entry)).hexdigest()


def seal(sequence: int, previous_hash: str, record: Record) -> Entry:
    """`record` as entry number `sequence` after the entry whose hash is `previous_hash`."""
    if sequence < 1:
        raise ValueError(f"sequence starts at 1, got {sequence}")
    unsealed = Entry(
        sequence=sequence,
        event_id=record.event_id,
        event_type=record.event_type,
        source=record.source,
        subject=record.subject,
        trace_id=record.trace_id,
        record_time_us=record.record_time_us,
        payload_json=record.payload_json,
        previous_hash=previous_hash,
        hash="",
    )
    return replace(unsealed, hash=_hash_of(unsealed))


def verify(entries: Iterable[Entry], head: Head | None = None) -> Verdict:
    """Check `entries`, in their stored order, and against `head` if given.

    The entry at position n (1-based) must be number n, hold the hash of the entry before it
    (the genesis hash for the first), and its hash must be that of its fields. The first
    position where one fails is named, so a changed field is named at its own entry, a removed
    entry at its place, and two swapped entries at the earlier place. Entries are read one at
    a time: a chain of any length is checked in constant memory.
    """
    previous_hash = GENESIS_HASH
    count = 0
    last_hash = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        count = position
        if entry.sequence != position:
            return _broken(
                count,
                position,
                f"entry number {position} is missing: found number {entry.sequence} in its "
                "place (removed, reordered or renumbered)",
            )
        if entry.previous_hash != previous_hash:
            return _broken(
                count,
                position,
                f"previous_hash {entry.previous_hash!r} is not the hash of entry {position - 1} "
                f"({previous_hash})",
            )
        if _hash_of(entry) != entry.hash:
            return _broken(
                count,
                position,
                f"hash {entry.hash!r} does not match the entry's fields (changed after it was "
                "recorded)",
            )
        previous_hash = last_hash = entry.hash
    if head is not None:
        if head.sequence > count:
            return _broken(
                count,
                count + 1,
                f"entries {count + 1} to {head.sequence} are missing: the chain's head is "
                f"number {head.sequence}, the last entry number {count}",
            )
        if head.sequence < count:
            return _broken(
                count,
                head.sequence + 1,
                f"entries after number {head.sequence} were not appended through the chain "
                f"(its head is number {head.sequence}, the last entry number {count})",
            )
        if count and head.hash != last_hash:
            return _broken(
                count,
                count,
                f"the chain's head holds hash {head.hash!r} for entry {count}, not {last_hash}",
            )
    return Verdict(intact=True, entries=count, first_broken_sequence=0, problem="")


def _broken(count: int, sequence: int, problem: str) -> Verdict:
    return Verdict(intact=False, entries=count, first_broken_sequence=sequence, problem=problem)
