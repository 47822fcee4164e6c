"""Fixtures for the gateway's integration tests: one etcd, the mirror backend and a gateway
process per session, all real (etcd on a free port, mTLS, `mesh gateway` as its own process).
Tests that need another gateway configuration start one with `start_gateway`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hms_tools import certs
from hms_tools.devstack import EtcdProcess, GatewayProcess, ServiceProcess
from mesh.testing import wait_until

from ..conftest import clean_env, service_process

GATEWAY_IDENTITIES = ["mirror", "echo", "eligibility", "gateway", "ops"]


@dataclass
class GatewayStack:
    etcd: EtcdProcess
    tls_dir: Path
    base: Path
    mirror: ServiceProcess

    def start_service(
        self, package: str, deployment: str, *, ttl: int = 2, extra: tuple[str, ...] = ()
    ) -> ServiceProcess:
        return service_process(
            package,
            deployment,
            etcd=self.etcd.endpoint,
            tls_dir=self.tls_dir,
            base=self.base,
            ttl=ttl,
            grace=2,
            extra=extra,
        ).start()

    def start_gateway(self, *extra: str, name: str = "gateway") -> GatewayProcess:
        args = [
            f"--etcd={self.etcd.endpoint}",
            f"--tls-dir={self.tls_dir}",
            "--cert-name=gateway",
            *extra,
        ]
        log = self.base / "logs" / f"{name}.log"
        process = GatewayProcess(args, env=clean_env(), log_path=log).start()
        process.wait_url()
        return process


def wait_ready(url: str, services: set[str], timeout: float = 20.0) -> None:
    """Until the gateway at `url` has learnt `services` (polls /readyz, a condition)."""
    with httpx.Client(base_url=url, timeout=2) as client:

        def learnt() -> bool:
            response = client.get("/readyz")
            return response.status_code == 200 and services <= set(response.json()["services"])

        wait_until(learnt, timeout)


@pytest.fixture(scope="session")
def gateway_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    base = tmp_path_factory.mktemp("gateway-stack")
    tls_dir = base / "tls"
    certs.ensure(tls_dir, GATEWAY_IDENTITIES)
    etcd = EtcdProcess(base / "etcd.data")
    etcd.start()
    stack = GatewayStack(etcd, tls_dir, base, mirror=None)  # type: ignore[arg-type]
    try:
        stack.mirror = stack.start_service("mirror", "mirror")
        yield stack
    finally:
        if stack.mirror is not None:
            stack.mirror.stop(timeout=5)
        etcd.stop()


@pytest.fixture(scope="session")
def gateway_url(gateway_stack: GatewayStack) -> Iterator[str]:
    """A gateway with default settings that has learnt the mirror service."""
    process = gateway_stack.start_gateway()
    try:
        wait_ready(process.url, {"hms.testing.v1.MirrorService"})
        yield process.url
    finally:
        process.stop(timeout=5)


@pytest.fixture
def http(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        yield client
