"""Runs the fees service: `python -m hms_services.fees.main --help`.

It keeps no state: the fee table is in the code (service.FEES_PENCE).
"""

from __future__ import annotations

from hms_services.fees.service import FeeService
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    return [FeeService()]


def main() -> None:
    run_service("fees", _servicers)


if __name__ == "__main__":
    main()
