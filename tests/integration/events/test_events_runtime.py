"""A service's events through its Runtime, against a real nats-server: an outbox relayed and a
subscription served from start to stop, a publish with no stream to take it, and a service
that uses events with no NATS URL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.devstack import NatsProcess
from mesh.errors import Unavailable
from mesh.events import EventMeta
from mesh.server.runner import parse_args
from mesh.server.runtime import Runtime

pytestmark = pytest.mark.integration


def runtime_for(tmp_path: Path, nats_url: str, deployment: str = "fees") -> Runtime:
    argv = ["--insecure", f"--nats={nats_url}", "--metrics-port=0", f"--data-dir={tmp_path}"]
    return Runtime(parse_args(deployment, argv, environ={}))


async def test_outbox_and_subscription_run_from_start_to_close(
    js: JetStreamContext, nats: NatsProcess, tmp_path: Path
) -> None:
    db = tmp_path / "fees.sqlite3"
    seen: list[tuple[str, str]] = []
    all_seen = asyncio.Event()

    async def on_voucher(event: VoucherSubmitted, meta: EventMeta) -> None:
        seen.append((event.voucher_id, meta.source))
        if len(seen) == 3:
            all_seen.set()

    runtime = runtime_for(tmp_path, nats.url)
    outbox = runtime.outbox(db)
    runtime.subscribe(VoucherSubmitted, on_voucher)
    stopped: list[str] = []
    runtime.on_stop(lambda: stopped.append("hook"))
    conn = sqlite3.connect(str(db))
    try:
        await runtime.start()
        with pytest.raises(RuntimeError, match="before the service starts"):
            runtime.subscribe(VoucherSubmitted, on_voucher)
        for n in range(3):
            with conn:
                outbox.add(conn, VoucherSubmitted(voucher_id=f"v{n}"), aggregate="a")
        async with asyncio.timeout(10):
            await all_seen.wait()
    finally:
        conn.close()
        await runtime.close()
    assert seen == [("v0", "fees"), ("v1", "fees"), ("v2", "fees")]
    assert stopped == ["hook"]


async def test_a_publish_no_stream_takes_says_so(nats: NatsProcess, tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, nats.url)  # this server has no streams at all
    try:
        publisher = await runtime.publisher()
        with pytest.raises(Unavailable, match=r"no JetStream stream takes subject hms\.events"):
            await publisher.publish(VoucherSubmitted(voucher_id="v1"))
    finally:
        await runtime.close()


async def test_events_without_a_nats_url_say_how_to_give_one(tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, "")
    try:
        with pytest.raises(ValueError, match="fees uses events but has no NATS URL"):
            await runtime.publisher()
    finally:
        await runtime.close()
