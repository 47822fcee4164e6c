"""Runs the audit service: `python -m hms_services.audit.main --help`.

Entries are kept in `<data-dir>/audit.sqlite3`; replicas given the same file share one chain.
"""

from __future__ import annotations

from pathlib import Path

from hms_services.audit.record import AUDITED_EVENTS
from hms_services.audit.service import AuditService, recorder
from hms_services.audit.store import AuditLog
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = AuditLog(data_dir / "audit.sqlite3")  # creates the schema before the handler opens it
    runtime.on_stop(log.close)
    record = recorder(log.path)
    runtime.on_stop(record.close)
    for event_type in AUDITED_EVENTS:
        runtime.subscribe(event_type, record)
    return [AuditService(log)]


def main() -> None:
    run_service("audit", _servicers)


if __name__ == "__main__":
    main()
