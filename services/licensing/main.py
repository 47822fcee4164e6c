"""Runs the licensing service: `python -m hms_services.licensing.main --help`.

Applications, licences and the outbox of LicenceIssued / LicenceRefused are kept in
`<data-dir>/licensing.sqlite3`. At start, applications a crash left half done are resumed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hms_services.licensing.service import LicensingService
from hms_services.licensing.store import LicenceStore
from mesh import Runtime, run_service
from mesh.aio import cancel_and_wait


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "licensing.sqlite3"
    store = LicenceStore(path, runtime.outbox(path))
    service = LicensingService(store, runtime.channel)
    resuming: list[asyncio.Task[None]] = []

    def resume() -> None:
        # In the background: start-up does not wait on fees, payments and documents.
        resuming.append(asyncio.create_task(service.resume_unfinished()))

    async def stop() -> None:
        await cancel_and_wait(*resuming)
        store.close()

    runtime.on_start(resume)
    runtime.on_stop(stop)
    return [service]


def main() -> None:
    run_service("licensing", _servicers)


if __name__ == "__main__":
    main()
