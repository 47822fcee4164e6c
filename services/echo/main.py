"""Runs the echo test backend: `python -m services.echo.main --help`."""

from __future__ import annotations

from mesh.runner import run_service
from services.echo.service import EchoService


def main() -> None:
    run_service("echo", lambda args: [EchoService(args.deployment)])


if __name__ == "__main__":
    main()
