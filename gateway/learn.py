"""Where the gateway's routes come from: the live registry (dynamic mode) or a file (static).

Dynamic mode watches every service in the registry. When a service first shows an instance,
or an instance of another version joins, its descriptors are fetched by server reflection and
its routes replace the old ones. A failed fetch is retried with backoff while the service has
instances. When the last instance leaves, the routes stay: calls to them answer 503 ("no ready
instance"), which tells a client to come back, where a 404 would say the API does not exist.

Static mode reads a descriptor set (``buf build -o x.binpb`` or ``protoc
--descriptor_set_out --include_imports``) and routes every annotated service in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2

from hms_gateway.endpoint import Endpoint, endpoints_of, http_rule_of
from hms_gateway.reflection import (
    Opener,
    ReflectionError,
    build_pool,
    fetch_service,
    via_channel,
)
from hms_gateway.routes import RouteTable
from mesh.aio import back_off, cancel_and_wait
from mesh.client.channel import MeshChannel
from mesh.registry.watch import Change, ChangeKind, Discovery
from mesh.resilience.backoff import Backoff, BackoffPolicy

__all__ = ["RegistryLearner", "load_descriptor_set"]

log = logging.getLogger(__name__)

# Failed attempts to learn a service between two warnings (at the 5 s cap: about a minute).
_WARN_EVERY = 12


def load_descriptor_set(path: Path, table: RouteTable) -> list[str]:
    """Route every annotated service of the descriptor set at `path`; returns their names.

    Raises ``ValueError`` naming the file and the problem (unreadable, not a descriptor set,
    missing imports, a rule that does not fit its messages).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"descriptor set {path}: {exc.strerror}") from None
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    except Exception as exc:  # protobuf raises DecodeError or others for non-protobuf bytes
        raise ValueError(f"descriptor set {path}: not a FileDescriptorSet ({exc})") from None
    try:
        pool = build_pool(files)
    except ReflectionError as exc:
        raise ValueError(f"descriptor set {path}: {exc} (build it with imports included)") from None
    routed: dict[str, list[Endpoint]] = {}
    for proto in files:
        for service_proto in proto.service:
            name = f"{proto.package}.{service_proto.name}" if proto.package else service_proto.name
            service = pool.FindServiceByName(name)
            if not any(http_rule_of(method) for method in service.methods):
                continue
            try:
                routed[name] = list(endpoints_of(service))
            except ValueError as exc:
                raise ValueError(f"descriptor set {path}: {exc}") from None
    # All or nothing: every service's rules were checked before any route is served.
    for name, endpoints in routed.items():
        try:
            table.set_service(name, endpoints)
        except ValueError as exc:
            raise ValueError(f"descriptor set {path}: {exc}") from None
    return list(routed)


class RegistryLearner:
    """Keeps a route table in step with the services in the registry.

    >>> learner = RegistryLearner(channel, Discovery(etcd, "hms"), table)
    >>> await learner.start()     # returns once the registry's first snapshot is in
    """

    def __init__(
        self,
        channel: MeshChannel,
        discovery: Discovery,
        table: RouteTable,
        *,
        fetch_timeout: float = 5.0,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.channel = channel
        self.discovery = discovery
        self.table = table
        self.fetch_timeout = fetch_timeout
        self._backoff = backoff or BackoffPolicy(base=0.1, cap=5.0)
        # Service -> the versions its routes were learnt from (one per distinct version seen).
        self._learnt: dict[str, set[str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.synced = False

    async def start(self, timeout: float | None = None) -> None:
        self._unsubscribe = self.discovery.subscribe(self._on_change)
        await self.discovery.start(timeout)
        for instance in self.discovery.instances():
            self._learn_if_new(instance.service, instance.version)
        # Ready (/readyz) once the routes of what is registered now are learnt: a client told
        # the gateway is up must not get 404 for a route it will serve a moment later.
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        self.synced = True

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in list(self._tasks.values()):
            await cancel_and_wait(task)
        await self.discovery.stop()

    async def wait_idle(self) -> None:
        """Until every fetch in progress has finished (tests and start-up use it)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def _on_change(self, change: Change) -> None:
        service = change.instance.service
        if change.kind is not ChangeKind.REMOVED:
            self._learn_if_new(service, change.instance.version)
        elif not self.discovery.instances(service):
            # Its last instance left: its routes own nothing any more (they answer 503 until
            # something replaces them), and the services refused because of it learn again.
            for refused in self.table.depart(service):
                self._learnt.pop(refused, None)
                for instance in self.discovery.instances(refused)[:1]:
                    self._learn_if_new(refused, instance.version)

    def _learn_if_new(self, service: str, version: str) -> None:
        if version in self._learnt.get(service, ()) or service in self._tasks:
            return
        task = asyncio.create_task(self._learn(service, version), name=f"gateway-learn:{service}")
        self._tasks[service] = task
        task.add_done_callback(lambda _: self._tasks.pop(service, None))

    def _opener(self, service: str, version: str) -> Opener:
        """Ask an instance of the version being learnt: during a rolling upgrade, any instance
        could still be an old one, and its descriptors would be taken for the new version's."""
        return via_channel(self.channel, service, self.fetch_timeout, version=version)

    async def _learn(self, service: str, version: str) -> None:
        backoff = Backoff(self._backoff)
        while self.discovery.instances(service):
            try:
                descriptor = await fetch_service(self._opener(service, version), service)
                endpoints = list(endpoints_of(descriptor))
                if endpoints:
                    self.table.set_service(service, endpoints)
            except (ReflectionError, ValueError, grpc.aio.AioRpcError) as exc:
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                # A server that never serves reflection would otherwise warn every few seconds.
                attempt = backoff.attempt + 1
                level = logging.WARNING if attempt % _WARN_EVERY == 1 else logging.DEBUG
                await back_off(
                    backoff,
                    log.log,
                    level,
                    "cannot learn the routes of %s (attempt %d: %s); again in %.1f s",
                    service,
                    attempt,
                    why,
                )
                continue
            self._learnt.setdefault(service, set()).add(version)
            if endpoints:
                log.info("learnt %d route(s) of %s (version %s)", len(endpoints), service, version)
            return
