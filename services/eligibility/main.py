"""Runs the eligibility service: `python -m services.eligibility.main --help`."""

from __future__ import annotations

from mesh.runner import run_service
from services.eligibility.service import EligibilityService


def main() -> None:
    run_service("eligibility", lambda _args: [EligibilityService()])


if __name__ == "__main__":
    main()
