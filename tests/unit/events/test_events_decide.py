"""What the subscriber does with an event, decided apart from doing it: `decide(outcome,
delivery, spec)` for every branch (ack, nak with the retry delay, dead letters)."""

from __future__ import annotations

import pytest

from mesh.events.subjects import ConsumerSpec
from mesh.events.subscriber import (
    Ack,
    DeadLetter,
    Decision,
    Handled,
    HandlerFailed,
    Nak,
    Outcome,
    Undecodable,
    decide,
)

SPEC = ConsumerSpec(backoff=(1.0, 5.0, 30.0), max_deliver=5)
ONCE = ConsumerSpec(backoff=(2.0,), max_deliver=1)
BUG = "KeyError: 'applicant'"
GARBLED = "payload does not decode as hms.Voucher: Error parsing message"


@pytest.mark.parametrize(
    ("outcome", "delivery", "spec", "expected"),
    [
        # The handler returned: ack, whatever the delivery.
        pytest.param(Handled(), 1, SPEC, Ack(), id="handled-first-delivery"),
        pytest.param(Handled(), 5, SPEC, Ack(), id="handled-last-delivery"),
        # Undecodable: dead letters at once (the same bytes would fail again).
        pytest.param(
            Undecodable(GARBLED), 1, SPEC, DeadLetter("undecodable", GARBLED), id="undecodable"
        ),
        pytest.param(
            Undecodable(GARBLED),
            5,
            SPEC,
            DeadLetter("undecodable", GARBLED),
            id="undecodable-last-delivery",
        ),
        # The handler failed with deliveries left: nak with the delay for this delivery.
        pytest.param(HandlerFailed(BUG), 1, SPEC, Nak(1.0, BUG), id="failed-first-delivery"),
        pytest.param(HandlerFailed(BUG), 2, SPEC, Nak(5.0, BUG), id="failed-second-delivery"),
        pytest.param(HandlerFailed(BUG), 3, SPEC, Nak(30.0, BUG), id="failed-last-delay"),
        pytest.param(
            HandlerFailed(BUG), 4, SPEC, Nak(30.0, BUG), id="failed-beyond-delays-repeats-last"
        ),
        # ... and on the last delivery: dead letters (JetStream would not redeliver it).
        pytest.param(
            HandlerFailed(BUG),
            5,
            SPEC,
            DeadLetter("handler-failed", BUG),
            id="failed-last-delivery",
        ),
        pytest.param(
            HandlerFailed(BUG),
            6,
            SPEC,
            DeadLetter("handler-failed", BUG),
            id="failed-beyond-max-deliver",
        ),
        pytest.param(
            HandlerFailed(BUG),
            1,
            ONCE,
            DeadLetter("handler-failed", BUG),
            id="failed-single-delivery-spec",
        ),
    ],
)
def test_decide(outcome: Outcome, delivery: int, spec: ConsumerSpec, expected: Decision) -> None:
    assert decide(outcome, delivery, spec) == expected


def test_a_failure_on_delivery_zero_is_refused() -> None:
    # JetStream counts deliveries from 1; a zero means the metadata was misread.
    with pytest.raises(ValueError, match="delivery count starts at 1"):
        decide(HandlerFailed(BUG), 0, SPEC)


def test_anything_else_is_not_an_outcome() -> None:
    with pytest.raises(TypeError, match="not an outcome"):
        decide("handled", 1, SPEC)  # type: ignore[arg-type]
