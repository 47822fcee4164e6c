"""Runs the echo test backend: `python -m services.echo.main --help`."""

from __future__ import annotations

import argparse

from hms.testing.v1 import echo_pb2_grpc
from mesh.runner import mesh_channel_opener, run_service
from services.echo.service import EchoService


def _servicers(args: argparse.Namespace) -> list[object]:
    open_channel = mesh_channel_opener(args)

    async def forward() -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(await open_channel())

    return [EchoService(args.deployment, forward=forward)]


def main() -> None:
    run_service("echo", _servicers)


if __name__ == "__main__":
    main()
