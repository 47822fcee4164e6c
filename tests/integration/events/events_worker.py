"""A subscriber replica as its own process, for the kill -9 acceptance test.

    python events_worker.py NATS_URL DB_PATH STARTED_FILE [--block]

Subscribes deployment `ledger` to VoucherSubmitted through an IdempotentHandler on DB_PATH (shared
by every replica). Its effect is a row in `effects`. With --block, the handler of the event whose
voucher_id is `marked` writes "started" to STARTED_FILE, then hangs inside its transaction until
the process is killed. Runs until SIGTERM or SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import nats

from hms.testing.v1.events_pb2 import VoucherSubmitted
from mesh.events.idempotency import IdempotentHandler
from mesh.events.subjects import ConsumerSpec
from mesh.events.subscriber import EventMeta, Subscriber

DEPLOYMENT = "ledger"
# A silent replica's event is redelivered after ack_wait + backoff[0] = 1.1 s.
SPEC = ConsumerSpec(ack_wait=1.0, backoff=(0.1, 0.2), max_deliver=5, max_in_flight=8)


async def main(url: str, db: Path, started: Path, block: bool) -> None:
    setup = sqlite3.connect(str(db), isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(
        "CREATE TABLE IF NOT EXISTS effects (event_id TEXT, voucher_id TEXT, delivery INT, pid INT)"
    )
    setup.close()

    async def apply(conn: sqlite3.Connection, event: VoucherSubmitted, meta: EventMeta) -> None:
        conn.execute(
            "INSERT INTO effects VALUES (?, ?, ?, ?)",
            (meta.id, event.voucher_id, meta.delivery_count, os.getpid()),
        )
        if block and event.voucher_id == "marked":
            await asyncio.to_thread(started.write_text, "started")
            await asyncio.Event().wait()  # hangs here, transaction open, until killed

    handler = IdempotentHandler(db, DEPLOYMENT, apply)
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    subscriber = Subscriber(nc.jetstream(), DEPLOYMENT, spec=SPEC, poll=0.2)
    await subscriber.subscribe(VoucherSubmitted, handler)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await subscriber.close()
    await nc.close()
    handler.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("db", type=Path)
    parser.add_argument("started", type=Path)
    parser.add_argument("--block", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.db, args.started, args.block))
