"""Runs the eligibility service: `python -m hms_services.eligibility.main --help`."""

from __future__ import annotations

from hms_services.eligibility.service import EligibilityService
from mesh import run_service


def main() -> None:
    run_service("eligibility", lambda _args: [EligibilityService()])


if __name__ == "__main__":
    main()
