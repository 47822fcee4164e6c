"""Runs the gateway's conformance backend: `python -m services.mirror.main --help`."""

from __future__ import annotations

from mesh.runner import Runtime, run_service
from services.mirror.service import MirrorService


def _servicers(runtime: Runtime) -> list[object]:
    return [MirrorService()]


def main() -> None:
    run_service("mirror", _servicers)


if __name__ == "__main__":
    main()
