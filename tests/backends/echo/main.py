"""Runs the echo test backend: `python -m tests.backends.echo.main --help`."""

from __future__ import annotations

from hms.testing.v1 import echo_pb2_grpc
from mesh import Runtime, run_service
from tests.backends.echo.service import EchoService


def _servicers(runtime: Runtime) -> list[object]:
    async def forward() -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(await runtime.channel())

    return [EchoService(runtime.args.deployment, forward=forward)]


def main() -> None:
    run_service("echo", _servicers)


if __name__ == "__main__":
    main()
