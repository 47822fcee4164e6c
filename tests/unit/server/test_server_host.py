"""The service host on its own (no registry): it says loudly that nobody will find it."""

from __future__ import annotations

import logging

import pytest

from mesh.server import HostConfig, ServiceHost
from tests.backends.echo.service import EchoService


async def test_a_host_without_a_registry_warns_that_it_cannot_be_found(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = ServiceHost(HostConfig(deployment="echo", tls=None, drain_delay=0, grace=0))
    host.add_servicer(EchoService("echo"))
    with caplog.at_level(logging.WARNING, logger="mesh.server.host"):
        await host.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if "NOT REGISTERED" in r.getMessage()]
        assert warnings == [
            f"echo is NOT REGISTERED: no etcd endpoint was given (--etcd or MESH_ETCD), so no "
            f"mesh channel and no gateway will find it; only callers given {host.address} "
            "directly can"
        ]
    finally:
        await host.stop()
