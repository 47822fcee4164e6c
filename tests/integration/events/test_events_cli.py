"""`mesh events ls|tail` as a subprocess against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.devstack import NatsProcess
from mesh.events.publisher import Publisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


async def mesh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hms_tools.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def publish_three(js: JetStreamContext) -> None:
    publisher = Publisher(js, "fee-calc")
    for i in range(3):
        await publisher.publish(
            VoucherSubmitted(voucher_id=f"v{i}", amount_pence=100 * i), event_id=f"evt-{i}"
        )


async def test_ls_shows_streams_consumers_and_dead_letters(
    nats: NatsProcess, js: JetStreamContext
) -> None:
    await publish_three(js)
    await js.add_consumer(
        "HMS_EVENTS", ConsumerConfig(durable_name="audit", ack_policy=AckPolicy.EXPLICIT)
    )
    await js.publish(
        "hms.dlq.notify.hms.testing.v1.VoucherSubmitted", b"", headers={"Hms-Dlq-Reason": "x"}
    )

    code, out, err = await mesh("events", "ls", "--nats", nats.url)

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["STREAM", "MESSAGES", "BYTES", "SUBJECTS"]
    assert lines[1].split()[:2] == ["HMS_DLQ", "1"]
    assert lines[2].split()[:2] == ["HMS_EVENTS", "3"]
    assert lines[2].split()[3] == "hms.events.>"
    consumer_header = lines.index("CONSUMER  STREAM      PENDING  ACK_PENDING  REDELIVERED")
    assert lines[consumer_header + 1].split() == ["audit", "HMS_EVENTS", "3", "0", "0"]
    assert lines[-1] == "dead letters: 1 in HMS_DLQ"


async def test_tail_from_start_decodes_events(nats: NatsProcess, js: JetStreamContext) -> None:
    await publish_three(js)

    code, out, err = await mesh(
        "events",
        "tail",
        "hms.testing.v1.VoucherSubmitted",
        "--from-start",
        "--count",
        "2",
        env={"MESH_NATS": nats.url},
    )

    assert (code, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["id"] for e in events] == ["evt-0", "evt-1"]
    assert [e["seq"] for e in events] == [1, 2]
    assert events[1]["type"] == "hms.testing.v1.VoucherSubmitted"
    assert events[1]["source"] == "fee-calc"
    assert events[1]["subject"] == "hms.events.hms.testing.v1.VoucherSubmitted"
    assert events[1]["data"] == {"voucher_id": "v1", "amount_pence": "100"}


async def test_tail_shows_unknown_types_as_base64(nats: NatsProcess, js: JetStreamContext) -> None:
    await js.publish(
        "hms.events.other.v1.Thing", b"\x08\x01", headers={"ce-type": "other.v1.Thing"}
    )

    code, out, _ = await mesh(
        "events", "tail", ">", "--from-start", "--count", "1", "--nats", nats.url
    )

    assert code == 0
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["data_base64"] == "CAE="
    assert event["note"] == "unknown type other.v1.Thing: payload shown as base64"


async def test_unreachable_nats_exits_2(tmp_path: Path) -> None:
    code, out, err = await mesh(
        "events", "ls", "--nats", "nats://127.0.0.1:1", "--state-dir", str(tmp_path)
    )
    assert (code, out) == (2, "")
    assert "NATS at nats://127.0.0.1:1" in err


async def test_no_nats_url_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MESH_NATS"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hms_tools.cli",
        "events",
        "ls",
        "--state-dir",
        str(tmp_path),
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "no NATS URL: pass --nats, set MESH_NATS" in err.decode()
