"""A NATS node lost while events go through the outbox (issue: beyond one machine): a 3-node
JetStream cluster, the stream on 3 replicas, the clients given every node. The node leading
the stream is killed (kill -9) mid-run and started again later on its data; every event is
applied exactly once, in order per aggregate, the stream holds each once, and the node comes
back current (chaos/events.py runs the scenario; `NodeLoss` is the disruption)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import nats as nats_py
import pytest

from chaos.events import NodeLoss, outbox_through_outage
from hms_tools.devstack import NatsCluster
from mesh.events.subjects import stream_name
from mesh.testing import eventually

pytestmark = pytest.mark.integration

EVENTS = 5000
AGGREGATES = 50
OUTAGE = 5.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path / "nats", size=3)
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


async def test_a_lost_node_loses_no_event_and_applies_none_twice(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    stream = stream_name(prefix, "events")
    loss = NodeLoss(cluster, stream=stream)
    lines: list[str] = []

    figures = await outbox_through_outage(
        loss,
        tmp_path / "work",
        events=EVENTS,
        aggregates=AGGREGATES,
        outage=OUTAGE,
        report=lines.append,
        drain_timeout=90.0,
        prefix=prefix,
        replicas=3,
    )

    print("\n".join(lines), figures)
    assert loss.lost  # a node was killed: the stream's leader at that moment
    assert figures["applied"] == EVENTS, figures
    assert figures["applied_twice"] == 0, figures
    assert figures["out_of_order"] == 0, figures
    assert figures["missing"] == 0, figures
    assert figures["ledger_rows"] == figures["processed_ids"] == EVENTS, figures
    assert figures["stream_messages"] == EVENTS, figures  # stored once each: none duplicated
    assert cluster.running

    # Back on its data, the node is a current replica again and the stream is whole on it.
    nc = await nats_py.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()

        async def healthy() -> bool:
            info = await js.stream_info(stream)
            replicas = info.cluster.replicas if info.cluster is not None else None
            return (
                info.state.messages == EVENTS
                and replicas is not None
                and len(replicas) == 2
                and all(r.current and not r.offline for r in replicas)
            )

        await eventually(healthy, 30, interval=0.2)
    finally:
        await nc.close()
