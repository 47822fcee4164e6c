"""Chaos scenario 6, small: NATS down while events go through the outbox; every event applied
exactly once, in order per aggregate (chaos/events.py runs it at full size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.events import outbox_through_outage
from hms_tools.devstack import NatsProcess

pytestmark = pytest.mark.integration

EVENTS = 300
AGGREGATES = 10
OUTAGE = 3.0


async def test_events_written_during_an_outage_are_applied_once_in_order(
    nats: NatsProcess, tmp_path: Path
) -> None:
    lines: list[str] = []

    figures = await outbox_through_outage(
        nats,
        tmp_path / "work",
        events=EVENTS,
        aggregates=AGGREGATES,
        outage=OUTAGE,
        report=lines.append,
        # Usually ~10 s. When nats-py drops fetched messages as NATS goes down, they return only
        # after the ack wait (30 s), and their successors, refused as NotYet, come back on the
        # retry schedule (1, 5, 30 s): the worst case is about 66 s (docs/events.md).
        drain_timeout=90.0,
    )

    assert figures["applied"] == EVENTS, figures
    assert figures["applied_twice"] == 0, figures
    assert figures["out_of_order"] == 0, figures
    assert figures["missing"] == 0, figures
    # The effects and the processed ids committed once each, and JetStream stored each event once.
    assert figures["ledger_rows"] == figures["processed_ids"] == EVENTS, figures
    assert figures["stream_messages"] == EVENTS, figures
    # Events piled up in the outbox while NATS was down, and NATS was down as long as asked.
    assert figures["pending_at_peak"] > 0, figures
    assert figures["outage_s"] >= OUTAGE, figures
    assert nats.running  # the scenario leaves NATS up
    assert any(line.startswith("NATS down") for line in lines), lines
    assert any(line.startswith("NATS back") for line in lines), lines
    assert any(line.startswith(f"all {EVENTS} applied") for line in lines), lines
