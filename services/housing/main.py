"""Runs the housing service: `python -m hms_services.housing.main --help`.

The applications and their outbox are kept in `<data-dir>/housing.sqlite3`.
"""

from __future__ import annotations

from pathlib import Path

from hms_services.housing.service import HousingService
from hms_services.housing.store import HousingStore
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = HousingStore(data_dir / "housing.sqlite3")
    runtime.outbox(store.path)  # relays VoucherSubmitted while the service runs
    runtime.on_stop(store.close)
    return [HousingService(store, channel=runtime.channel)]


def main() -> None:
    run_service("housing", _servicers)


if __name__ == "__main__":
    main()
