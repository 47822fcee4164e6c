"""Runs the identity service: `python -m hms_services.identity.main --help`.

The citizen register is `<data-dir>/identity.sqlite3`, seeded on first start.
"""

from __future__ import annotations

from pathlib import Path

from hms_services.identity.service import IdentityService
from hms_services.identity.store import CitizenRegister
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    register = CitizenRegister(data_dir / "identity.sqlite3")
    runtime.on_stop(register.close)
    return [IdentityService(register)]


def main() -> None:
    run_service("identity", _servicers)


if __name__ == "__main__":
    main()
