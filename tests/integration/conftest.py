"""Fixtures for integration tests: real etcd on free loopback ports, real TLS, real service
processes. Everything started here is stopped at teardown, even when the test fails."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import nats as nats_py
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from hms_tools import certs
from hms_tools.devstack import EtcdProcess, NatsProcess, ServiceProcess
from hms_tools.stack import discover_services
from mesh import tls
from mesh.events.publisher import ensure_stream
from mesh.events.subjects import dead_letter_stream, events_stream
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery

# Every deployment under services/, the test backends, the gateway and operators.
IDENTITIES = [*discover_services(), "echo", "mirror", "gateway", "ops"]


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls")
    certs.ensure(path, IDENTITIES)
    return path


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    process = EtcdProcess(tmp_path / "etcd.data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsProcess]:
    """A real nats-server with JetStream, its data in the test's temporary directory."""
    process = NatsProcess(tmp_path / "nats.data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def nats_client(nats: NatsProcess) -> AsyncIterator[Client]:
    client = await nats_py.connect(nats.url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nats_client: Client) -> JetStreamContext:
    """JetStream with the events and dead-letter streams, as `mesh up` creates them before
    any service starts."""
    context = nats_client.jetstream()
    await ensure_stream(context, events_stream())
    await ensure_stream(context, dead_letter_stream())
    return context


@pytest.fixture
async def etcd_client(etcd: EtcdProcess) -> AsyncIterator[Etcd]:
    client = Etcd([etcd.endpoint])
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def discovery(etcd: EtcdProcess) -> AsyncIterator[Discovery]:
    # Its own connection, as a watcher in another process would have.
    client = Etcd([etcd.endpoint])
    await client.connect()
    watcher = Discovery(client, "hms")
    await watcher.start(timeout=10)
    try:
        yield watcher
    finally:
        await watcher.stop()
        await client.close()


ServiceFactory = Callable[..., ServiceProcess]


def clean_env() -> dict[str, str]:
    """This process's environment without MESH_*: a child takes only the flags it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}


def service_process(
    package: str,
    deployment: str,
    *,
    etcd: str,
    tls_dir: Path,
    base: Path,
    ttl: int = 2,
    grace: float = 5,
    extra: tuple[str, ...] = (),
) -> ServiceProcess:
    """The service or test backend `package` (tools/devstack.py, `service_module`) with its
    certificate, data dir and log under `base` (not started)."""
    args = [
        f"--etcd={etcd}",
        f"--tls-dir={tls_dir}",
        f"--cert-name={package}",
        f"--deployment={deployment}",
        f"--ttl={ttl}",
        f"--grace={grace}",
        f"--data-dir={base / 'data' / deployment}",
        *extra,
    ]
    return ServiceProcess(package, args, env=clean_env(), log_path=base / f"{deployment}.log")


@pytest.fixture
def start_service(etcd: EtcdProcess, tls_dir: Path, tmp_path: Path) -> Iterator[ServiceFactory]:
    """start_service("echo", ttl=2, deployment="echo-a") -> a running ServiceProcess."""
    started: list[ServiceProcess] = []

    def start(
        package: str, *, ttl: int = 2, deployment: str | None = None, extra: tuple[str, ...] = ()
    ) -> ServiceProcess:
        name = deployment or package
        proc = service_process(
            package, name, etcd=etcd.endpoint, tls_dir=tls_dir, base=tmp_path, ttl=ttl, extra=extra
        ).start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(timeout=5)


async def wait_for_deployment(
    discovery: Discovery, deployment: str, proc: ServiceProcess | None = None, timeout: float = 20
) -> keys.Instance:
    """The instance of `deployment` once it is registered (fails early if the process died)."""

    def registered(instances: list[keys.Instance]) -> bool:
        if proc is not None and not proc.running:
            raise AssertionError(f"{deployment} exited:\n{proc.log_tail()}")
        return any(i.deployment == deployment for i in instances)

    try:
        instances = await discovery.wait_for(registered, timeout)
    except TimeoutError:
        tail = proc.log_tail() if proc is not None else ""
        raise AssertionError(f"{deployment} not registered within {timeout} s\n{tail}") from None
    return next(i for i in instances if i.deployment == deployment)


def mesh_channel(instance: keys.Instance, tls_dir: Path, name: str = "ops") -> grpc.aio.Channel:
    """An mTLS channel to one instance that insists on the identity it registered."""
    return tls.instance_channel(instance.address, instance.identity, tls.TlsFiles(tls_dir, name))
