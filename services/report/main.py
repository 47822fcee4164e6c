"""Runs the report service: `python -m hms_services.report.main --help`.

It keeps no state; it asks identity through the mesh channel.
"""

from __future__ import annotations

from hms_services.report.service import ReportService
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    return [ReportService(runtime.channel)]


def main() -> None:
    run_service("report", _servicers)


if __name__ == "__main__":
    main()
