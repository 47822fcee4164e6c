"""Runs the trace witness test backend: `python -m tests.backends.witness.main --help`
(it needs `--nats`, and an Echo service in the registry)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hms.testing.v1 import echo_pb2_grpc
from mesh import Runtime, run_service
from tests.backends.witness.service import TraceWitness


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "witness.sqlite3"
    runtime.outbox(path)  # creates the outbox table, relayed while the service runs
    db = sqlite3.connect(path, timeout=5)
    db.execute("CREATE TABLE IF NOT EXISTS seen (item TEXT NOT NULL)")
    runtime.on_stop(db.close)

    async def echo() -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(await runtime.channel())

    return [TraceWitness(echo=echo, db=db, publisher=runtime.publisher)]


def main() -> None:
    run_service("witness", _servicers)


if __name__ == "__main__":
    main()
