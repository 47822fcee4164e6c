"""A whole mesh on this machine: etcd, NATS, certificates and every service, each its own
process. `mesh up`, the demo and end-to-end tests use it.

When all services are registered it writes `<state-dir>/stack.json`:

    {"etcd": "127.0.0.1:PORT", "nats": "nats://127.0.0.1:PORT", "namespace": "hms",
     "tls_dir": "/abs/.mesh/tls", "ops_cert": "ops", "gateway": "http://127.0.0.1:PORT",
     "services": {"<deployment>": {"pid": N, "log": "...", "instances": [
         {"service": "hms.notify.v1.NotifyService", "address": "127.0.0.1:PORT", ...}]}}}
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh import certs
from mesh.devstack import DevStack, GatewayProcess, ServiceProcess
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery

__all__ = ["Stack", "StackConfig", "discover_services", "read_stack_file"]

log = logging.getLogger(__name__)

OPS_IDENTITY = "ops"
GATEWAY_IDENTITY = "gateway"
STACK_FILE = "stack.json"


def discover_services() -> list[str]:
    """Deployments under services/: every folder with a main.py."""
    import services

    root = Path(services.__file__).parent
    return sorted(p.parent.name for p in root.glob("*/main.py"))


def read_stack_file(state_dir: Path) -> dict[str, Any]:
    path = Path(state_dir) / STACK_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} not found: is `mesh up` running?") from exc


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path = Path(".mesh")
    namespace: str = "hms"
    deployments: tuple[str, ...] = ()  # empty: every service under services/
    lease_ttl: int = 10
    ready_timeout: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Start the REST gateway too (its URL goes into stack.json).
    gateway: bool = True


class Stack:
    """Start with `await stack.start()`, stop with `await stack.stop()`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.tls_dir = self.state_dir / "tls"
        self.run_dir = self.state_dir / "run"
        self.deployments = config.deployments or tuple(discover_services())
        self.dev: DevStack | None = None
        self.procs: dict[str, ServiceProcess] = {}
        self.gateway: GatewayProcess | None = None
        self.info: dict[str, Any] = {}

    @property
    def etcd_endpoint(self) -> str:
        if self.dev is None:
            raise RuntimeError("stack not started")
        return self.dev.etcd.endpoint

    def env(self) -> dict[str, str]:
        if self.dev is None or self.dev.nats is None:
            raise RuntimeError("stack not started")
        return {
            **os.environ,
            "MESH_ETCD": self.dev.etcd.endpoint,
            "MESH_NATS": self.dev.nats.url,
            "MESH_TLS_DIR": str(self.tls_dir),
            "MESH_NAMESPACE": self.config.namespace,
            **self.config.extra_env,
        }

    async def start(self) -> dict[str, Any]:
        certs.ensure(self.tls_dir, [*self.deployments, OPS_IDENTITY, GATEWAY_IDENTITY])
        # Throwaway data: a new stack starts empty.
        shutil.rmtree(self.run_dir, ignore_errors=True)
        (self.run_dir / "logs").mkdir(parents=True)
        self.dev = DevStack(self.run_dir)
        await asyncio.to_thread(self.dev.start)
        try:
            for deployment in self.deployments:
                self.start_service(deployment)
            instances = await self._wait_registered()
            if self.config.gateway:
                await self._start_gateway()
        except BaseException:
            await self.stop()
            raise
        self.info = self._describe(instances)
        path = self.state_dir / STACK_FILE
        path.write_text(json.dumps(self.info, indent=2) + "\n")
        return self.info

    def start_service(self, deployment: str) -> ServiceProcess:
        args = [
            f"--ttl={self.config.lease_ttl}",
            f"--data-dir={self.run_dir / 'data' / deployment}",
        ]
        log_path = self.run_dir / "logs" / f"{deployment}.log"
        proc = ServiceProcess(deployment, args, env=self.env(), log_path=log_path).start()
        self.procs[deployment] = proc
        return proc

    async def _start_gateway(self) -> None:
        args = [
            f"--etcd={self.etcd_endpoint}",
            f"--namespace={self.config.namespace}",
            f"--tls-dir={self.tls_dir}",
            f"--cert-name={GATEWAY_IDENTITY}",
        ]
        log_path = self.run_dir / "logs" / "gateway.log"
        gateway = self.gateway = GatewayProcess(args, env=self.env(), log_path=log_path).start()
        await asyncio.to_thread(gateway.wait_url, self.config.ready_timeout)

    async def _wait_registered(self) -> list[Any]:
        etcd = Etcd([self.etcd_endpoint])
        await etcd.connect()
        discovery = Discovery(etcd, self.config.namespace)
        try:
            await discovery.start()

            def all_up(instances: list[Any]) -> bool:
                self._check_alive()
                return {i.deployment for i in instances} >= set(self.deployments)

            try:
                return await discovery.wait_for(all_up, self.config.ready_timeout)
            except TimeoutError:
                seen = {i.deployment for i in discovery.instances()}
                missing = sorted(set(self.deployments) - seen)
                raise TimeoutError(
                    f"not registered after {self.config.ready_timeout} s: {missing} "
                    f"(logs in {self.run_dir / 'logs'})"
                ) from None
        finally:
            await discovery.stop()
            await etcd.close()

    def _check_alive(self) -> None:
        for deployment, proc in self.procs.items():
            if not proc.running:
                raise RuntimeError(f"{deployment} exited:\n{proc.log_tail(1500)}")

    def _describe(self, instances: list[Any]) -> dict[str, Any]:
        if self.dev is None or self.dev.nats is None:
            raise RuntimeError("stack not started")
        services: dict[str, Any] = {}
        for deployment, proc in self.procs.items():
            services[deployment] = {
                "pid": proc.pid,
                "log": str(proc.log_path),
                "instances": [
                    {"service": i.service, "address": i.address, "identity": i.identity}
                    for i in instances
                    if i.deployment == deployment
                ],
            }
        return {
            "etcd": self.dev.etcd.endpoint,
            "nats": self.dev.nats.url,
            "namespace": self.config.namespace,
            "tls_dir": str(self.tls_dir),
            "ops_cert": OPS_IDENTITY,
            "gateway": self.gateway.url if self.gateway is not None else None,
            "services": services,
        }

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the gateway and every service (they drain and deregister), then stop NATS
        and etcd."""
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.stop, grace)
            self.gateway = None
        for proc in self.procs.values():
            proc.terminate()
        await asyncio.gather(*(asyncio.to_thread(p.stop, grace) for p in self.procs.values()))
        self.procs.clear()
        if self.dev is not None:
            await asyncio.to_thread(self.dev.stop)
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)
