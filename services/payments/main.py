"""Runs the payments service: `python -m hms_services.payments.main --help`.

Payments and their outbox are kept in `<data-dir>/payments.sqlite3`; the events
(PaymentCaptured, PaymentRefunded) are relayed to NATS while the service runs (--nats).
"""

from __future__ import annotations

from pathlib import Path

from hms_services.payments.service import PaymentService
from hms_services.payments.store import PaymentStore
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / "payments.sqlite3"
    store = PaymentStore(database)
    runtime.on_stop(store.close)
    return [PaymentService(store, runtime.outbox(database))]


def main() -> None:
    run_service("payments", _servicers)


if __name__ == "__main__":
    main()
