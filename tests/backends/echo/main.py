"""Runs the echo test backend: `python -m tests.backends.echo.main --help`."""

from __future__ import annotations

import argparse
import asyncio

from hms.testing.v1 import echo_pb2_grpc
from mesh import Runtime, run_service
from tests.backends.echo.service import EchoService


def _servicers(runtime: Runtime) -> list[object]:
    async def forward() -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(await runtime.channel())

    if runtime.args.hold_start:
        runtime.on_start(asyncio.Event().wait)  # never set: start-up does not end
    return [EchoService(runtime.args.deployment, forward=forward)]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hold-start",
        action="store_true",
        help="start-up (registered, serving) never ends: for tests of what a signal does then",
    )


def main() -> None:
    run_service("echo", _servicers, add_arguments=_arguments)


if __name__ == "__main__":
    main()
