"""Runs the passport service: `python -m hms_services.passport.main --help`.

The register of issued passports, the renewals and their outbox are kept in
`<data-dir>/passport.sqlite3`.
"""

from __future__ import annotations

from pathlib import Path

from hms_services.passport.service import PassportService
from hms_services.passport.store import PassportStore
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = PassportStore(data_dir / "passport.sqlite3")
    runtime.outbox(store.path)  # relays RenewalSubmitted while the service runs
    runtime.on_stop(store.close)
    return [PassportService(store, channel=runtime.channel)]


def main() -> None:
    run_service("passport", _servicers)


if __name__ == "__main__":
    main()
