"""Issue 5 acceptance against a real nats-server: nothing lost through a NATS outage, and a
replica killed mid-handler has its event redelivered and applied once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import nats as nats_py
import pytest

from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.devstack import NatsProcess
from mesh.events.idempotency import IdempotentHandler
from mesh.events.outbox import Outbox, OutboxRelay
from mesh.events.publisher import Publisher, ensure_stream
from mesh.events.subjects import ConsumerSpec, events_stream
from mesh.events.subscriber import EventMeta, Subscriber
from mesh.resilience.backoff import BackoffPolicy
from mesh.testing import eventually

pytestmark = pytest.mark.integration

# nats-py gives up after 60 reconnect attempts 2 s apart by default; a service must outlive any
# outage and notice the server's return quickly.
RECONNECT = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2}
OUTAGE = 10.0
TOTAL = 1000
AGGREGATES = 5
WORKER = Path(__file__).with_name("events_worker.py")


class FeeCalc:
    """The publishing service: a business table and the outbox in one SQLite database."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(str(db))
        with self.conn:
            self.conn.execute("CREATE TABLE applicants (id TEXT PRIMARY KEY, submitted INT)")
            self.conn.executemany(
                "INSERT INTO applicants VALUES (?, 0)", [(f"a{n}",) for n in range(AGGREGATES)]
            )
        self.outbox = Outbox(db)

    async def submit(self, first: int, last: int) -> None:
        """Vouchers `first`..`last - 1`, spread over the applicants, one transaction each."""
        for i in range(first, last):
            applicant = f"a{i % AGGREGATES}"
            with self.conn:  # the business change and its event commit together
                self.conn.execute(
                    "UPDATE applicants SET submitted = submitted + 1 WHERE id = ?", (applicant,)
                )
                (number,) = self.conn.execute(
                    "SELECT submitted FROM applicants WHERE id = ?", (applicant,)
                ).fetchone()
                event = VoucherSubmitted(
                    voucher_id=f"v{i}", applicant_id=applicant, amount_pence=number
                )
                self.outbox.add(self.conn, event, aggregate=applicant)
            await asyncio.sleep(0)  # let the relay and the handler run between transactions

    def close(self) -> None:
        self.outbox.close()
        self.conn.close()


class Ledger:
    """The consuming service: records the number of each applied event, per applicant."""

    def __init__(self, db: Path) -> None:
        self.applied: dict[str, list[int]] = defaultdict(list)
        self.store = IdempotentHandler(db, "ledger", self.apply)

    def apply(self, conn: sqlite3.Connection, event: VoucherSubmitted, meta: EventMeta) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS seen (applicant TEXT, number INT)")
        conn.execute("INSERT INTO seen VALUES (?, ?)", (event.applicant_id, event.amount_pence))
        self.applied[event.applicant_id].append(event.amount_pence)

    def count(self) -> int:
        return sum(len(numbers) for numbers in self.applied.values())


async def test_outbox_loses_nothing_while_nats_is_down(nats: NatsProcess, tmp_path: Path) -> None:
    service_nc = await nats_py.connect(nats.url, **RECONNECT)
    ledger_nc = await nats_py.connect(nats.url, **RECONNECT)
    js = service_nc.jetstream()
    await ensure_stream(js, events_stream())
    fee_calc = FeeCalc(tmp_path / "fee-calc.sqlite3")
    relay = OutboxRelay(
        fee_calc.outbox,
        Publisher(js, "fee-calc", timeout=1.0),
        stream=events_stream(),
        backoff=BackoffPolicy(base=0.05, cap=1.0),
        poll=0.05,
    )
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    subscriber = Subscriber(
        ledger_nc.jetstream(),
        "ledger",
        spec=ConsumerSpec(ack_wait=2.0, backoff=(0.2, 0.5), max_deliver=10),
        poll=0.2,
    )
    try:
        await subscriber.subscribe(VoucherSubmitted, ledger.store)
        relay.start()
        writer = asyncio.create_task(fee_calc.submit(0, 300))
        await eventually(lambda: ledger.count() >= 100, timeout=10, interval=0.05)

        nats.kill()
        killed = time.monotonic()
        await writer
        await fee_calc.submit(300, TOTAL)  # the service goes on writing while NATS is down
        # The outage itself (not a wait for a condition): NATS stays down this long.
        await asyncio.sleep(OUTAGE - (time.monotonic() - killed))
        assert relay.pending() >= TOTAL - 300
        await asyncio.to_thread(nats.start)  # same port and data dir

        await eventually(
            lambda: ledger.count() >= TOTAL and relay.pending() == 0, timeout=30, interval=0.05
        )
        info = await js.stream_info("HMS_EVENTS")
    finally:
        await relay.stop()
        await subscriber.close()
        await service_nc.close()
        await ledger_nc.close()
        fee_calc.close()

    assert ledger.count() == TOTAL
    assert ledger.store.processed() == TOTAL
    ledger.store.close()
    for applicant, numbers in ledger.applied.items():
        assert numbers == list(range(1, TOTAL // AGGREGATES + 1)), applicant
    assert len(ledger.applied) == AGGREGATES
    assert info.state.messages == TOTAL  # ids re-sent after lost acks were stored once


@contextlib.contextmanager
def workers(
    nats: NatsProcess, db: Path, started: Path, logs: Path
) -> Iterator[Callable[[bool], subprocess.Popen[bytes]]]:
    """Yields `spawn(block)`, which starts a replica; every one still running is SIGKILLed at
    exit."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(block: bool) -> subprocess.Popen[bytes]:
        args = [sys.executable, str(WORKER), nats.url, str(db), str(started)]
        with open(logs / f"worker-{len(procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [*args, "--block"] if block else args, stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


async def test_replica_killed_mid_handler_event_redelivered_and_applied_once(
    nats: NatsProcess, tmp_path: Path
) -> None:
    nc = await nats_py.connect(nats.url, allow_reconnect=False)
    js = nc.jetstream()
    await ensure_stream(js, events_stream())
    db = tmp_path / "ledger.sqlite3"  # the deployment's store, shared by its replicas
    started = tmp_path / "started"
    names = ["before", "marked", "after-1", "after-2"]
    try:
        publisher = Publisher(js, "fee-calc")
        for name in names:
            await publisher.publish(VoucherSubmitted(voucher_id=name), event_id=f"evt-{name}")
        with workers(nats, db, started, tmp_path) as spawn:
            first = spawn(True)  # blocks in the handler of 'marked'
            await eventually(started.exists, timeout=15, interval=0.05)
            os.kill(first.pid, signal.SIGKILL)  # kill -9 inside the handler's transaction
            first.wait()
            second = spawn(False)

            def effects() -> list[tuple[str, int, int]]:
                with contextlib.closing(sqlite3.connect(str(db))) as conn:
                    return conn.execute(
                        "SELECT voucher_id, delivery, pid FROM effects ORDER BY rowid"
                    ).fetchall()

            await eventually(
                lambda: {row[0] for row in effects()} == set(names), timeout=15, interval=0.05
            )
            processed = sqlite3.connect(str(db))
            (count,) = processed.execute(
                "SELECT count(*) FROM processed_events WHERE consumer = 'ledger'"
            ).fetchone()
            processed.close()
            rows = effects()
    finally:
        await nc.close()

    assert count == len(names)
    assert sorted(row[0] for row in rows) == sorted(names)  # each applied once
    (marked,) = [row for row in rows if row[0] == "marked"]
    assert marked[1] >= 2  # a redelivery
    assert marked[2] == second.pid  # applied by the new replica; the killed one rolled back
