"""The audit hash chain (pure): every single change to a stored field, every removal and every
reordering of an entry is caught, at the entry where it was made."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hms_services.audit.chain import (
    GENESIS_HASH,
    Entry,
    Head,
    Record,
    Verdict,
    canonical_encoding,
    seal,
    verify,
)

texts = st.text(max_size=12)
records = st.builds(
    Record,
    event_id=texts,
    event_type=texts,
    source=texts,
    subject=texts,
    trace_id=texts,
    record_time_us=st.integers(min_value=-(2**62), max_value=2**62),
    payload_json=texts,
)
FIELDS = [f.name for f in dataclasses.fields(Entry)]


def chain_of(items: list[Record]) -> list[Entry]:
    entries: list[Entry] = []
    previous = GENESIS_HASH
    for sequence, record in enumerate(items, start=1):
        entry = seal(sequence, previous, record)
        entries.append(entry)
        previous = entry.hash
    return entries


def head_of(entries: list[Entry]) -> Head:
    return Head(len(entries), entries[-1].hash if entries else GENESIS_HASH)


def intact(count: int) -> Verdict:
    return Verdict(intact=True, entries=count, first_broken_sequence=0, problem="")


chains = st.lists(records, min_size=1, max_size=8).map(chain_of)


@given(st.lists(records, max_size=8))
def test_a_sealed_chain_verifies(items: list[Record]) -> None:
    entries = chain_of(items)
    assert verify(entries) == intact(len(items))
    assert verify(entries, head_of(entries)) == intact(len(items))
    assert [e.sequence for e in entries] == list(range(1, len(items) + 1))
    if entries:
        assert entries[0].previous_hash == GENESIS_HASH == "0" * 64
        assert all(e.hash == e.hash.lower() and len(e.hash) == 64 for e in entries)


def other_value(value: Any, data: st.DataObject) -> Any:
    """A different value of the same type."""
    if isinstance(value, int):
        return value + data.draw(st.integers(min_value=1, max_value=2**40) | st.just(-1))
    changed = data.draw(st.text(max_size=70))
    assume(changed != value)
    return changed


@given(chains, st.data())
def test_any_change_to_any_field_is_caught_at_its_entry(
    entries: list[Entry], data: st.DataObject
) -> None:
    position = data.draw(st.integers(min_value=1, max_value=len(entries)))
    field = data.draw(st.sampled_from(FIELDS))
    original = entries[position - 1]
    changed = dataclasses.replace(original, **{field: other_value(getattr(original, field), data)})
    tampered = [*entries[: position - 1], changed, *entries[position:]]
    for head in (None, head_of(entries)):
        verdict = verify(tampered, head)
        assert not verdict.intact
        assert verdict.first_broken_sequence == position, (field, verdict)
        assert verdict.problem


@given(chains, st.data())
def test_a_removed_entry_is_caught_at_its_place(entries: list[Entry], data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=1, max_value=len(entries)))
    shortened = entries[: position - 1] + entries[position:]
    verdict = verify(shortened, head_of(entries))
    assert not verdict.intact
    assert verdict.first_broken_sequence == position
    if position < len(entries):  # the chain alone shows a gap; only the head shows a cut end
        assert verify(shortened).first_broken_sequence == position


@given(chains.filter(lambda c: len(c) >= 2), st.data())
def test_reordered_entries_are_caught_at_the_first_place_that_moved(
    entries: list[Entry], data: st.DataObject
) -> None:
    first = data.draw(st.integers(min_value=1, max_value=len(entries) - 1))
    second = data.draw(st.integers(min_value=first + 1, max_value=len(entries)))
    swapped = list(entries)
    swapped[first - 1], swapped[second - 1] = swapped[second - 1], swapped[first - 1]
    moved = list(entries)
    moved.insert(second - 1, moved.pop(first - 1))  # one entry moved later
    for reordered in (swapped, moved):
        verdict = verify(reordered, head_of(entries))
        assert not verdict.intact
        assert verdict.first_broken_sequence == first


@given(chains, records)
def test_an_entry_added_behind_the_head_is_caught(entries: list[Entry], extra: Record) -> None:
    head = head_of(entries)
    longer = [*entries, seal(len(entries) + 1, entries[-1].hash, extra)]
    assert verify(longer) == intact(len(longer))  # a well-formed chain in itself
    verdict = verify(longer, head)
    assert (verdict.intact, verdict.first_broken_sequence) == (False, len(longer))


@given(chains)
def test_a_head_with_another_hash_is_caught_at_the_last_entry(entries: list[Entry]) -> None:
    verdict = verify(entries, Head(len(entries), GENESIS_HASH))
    assert (verdict.intact, verdict.first_broken_sequence) == (False, len(entries))


def test_an_empty_chain_is_intact_with_the_genesis_head() -> None:
    assert verify([], Head(0, GENESIS_HASH)) == intact(0)
    assert verify([], Head(2, "ab" * 32)).first_broken_sequence == 1


@given(records, st.text(min_size=1, max_size=5))
def test_moving_text_between_neighbouring_fields_changes_the_hash(
    record: Record, moved: str
) -> None:
    # With plain concatenation, ("ab", "c") and ("a", "bc") would hash alike.
    one = dataclasses.replace(record, source=record.source + moved)
    other = dataclasses.replace(record, subject=moved + record.subject)
    assert seal(1, GENESIS_HASH, one).hash != seal(1, GENESIS_HASH, other).hash


def test_the_hash_is_sha256_of_the_documented_encoding() -> None:
    record = Record(
        "ev-1", "hms.housing.v1.VoucherSubmitted", "housing", "A-1", "ab" * 16, 17, '{"x":"é"}'
    )
    entry = seal(3, "cd" * 32, record)
    written_out = json.dumps(
        [
            "hms.audit.v1",
            3,
            "ev-1",
            "hms.housing.v1.VoucherSubmitted",
            "housing",
            "A-1",
            "ab" * 16,
            17,
            '{"x":"é"}',
            "cd" * 32,
        ],
        separators=(",", ":"),
    ).encode("ascii")
    assert canonical_encoding(entry) == written_out
    assert entry.hash == hashlib.sha256(written_out).hexdigest()


def test_seal_refuses_a_sequence_below_one() -> None:
    record = Record("e", "t", "s", "c", "", 0, "{}")
    with pytest.raises(ValueError, match="sequence starts at 1"):
        seal(0, GENESIS_HASH, record)


@pytest.mark.parametrize(
    ("break_it", "words"),
    [
        pytest.param(lambda es: es[:1] + es[2:], "number 2 is missing", id="gap"),
        pytest.param(
            lambda es: [es[0], dataclasses.replace(es[1], previous_hash="0" * 64), es[2]],
            "not the hash of entry 1",
            id="relinked",
        ),
        pytest.param(
            lambda es: [es[0], dataclasses.replace(es[1], payload_json="{}"), es[2]],
            "does not match the entry's fields",
            id="edited",
        ),
    ],
)
def test_the_problem_says_what_is_wrong(break_it: Any, words: str) -> None:
    entries = chain_of([Record(f"e{n}", "t", "s", "c", "", n, '{"n":1}') for n in range(3)])
    verdict = verify(break_it(entries))
    assert verdict.first_broken_sequence == 2
    assert words in verdict.problem
