"""Runs the gateway's conformance backend: `python -m tests.backends.mirror.main --help`."""

from __future__ import annotations

from mesh import Runtime, run_service
from tests.backends.mirror.service import MirrorService


def _servicers(runtime: Runtime) -> list[object]:
    return [MirrorService()]


def main() -> None:
    run_service("mirror", _servicers)


if __name__ == "__main__":
    main()
