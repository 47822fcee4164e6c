"""The registry, live: the instances (a `Discovery` watch, read as the operator `ops`), the
seconds left on their leases (etcd's lease TTL, asked every `lease_poll_s`), and their health
(a grpc.health.v1 Watch per instance and service, over mTLS as `ops`).

etcd down: the last known instances stay (stale beats empty), leases read None and
`state` says why; the watch and the polls carry on and recover by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh import tls
from mesh.aio import cancel_and_wait
from mesh.registry import keys
from mesh.registry.etcd import Etcd, EtcdError
from mesh.registry.watch import Change, Discovery

if TYPE_CHECKING:
    from mesh.controlplane import ClientTls

__all__ = ["RegistryWatch"]

log = logging.getLogger(__name__)

#: Health retried this long after a Watch ends or fails, while the instance is registered.
HEALTH_RETRY_S = 1.0


class RegistryWatch:
    """`on_change()` is called (on the loop) whenever what `instances()`, `leases` or
    `health` hold changes, and when `state` does."""

    def __init__(
        self,
        endpoints: Sequence[str],
        namespace: str,
        *,
        etcd_tls: ClientTls | None,
        identity: tls.TlsFiles | None,
        on_change: Callable[[], None],
        lease_poll_s: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.identity = identity
        self.on_change = on_change
        self.lease_poll_s = lease_poll_s
        self.etcd = Etcd(endpoints, tls=etcd_tls)
        self.discovery = Discovery(self.etcd, namespace)
        #: Seconds left by (service, instance id); None when etcd did not say.
        self.leases: dict[tuple[str, str], int | None] = {}
        #: SERVING, NOT_SERVING or UNKNOWN by (address, service).
        self.health: dict[tuple[str, str], str] = {}
        #: {"connected": bool | None, "error": str}: etcd as the lease poll last found it
        #: (None until the first poll: a page must not show "etcd down" before anyone asked).
        self.state: dict[str, object] = {"connected": None, "error": ""}
        #: Has the registry been read once (an empty registry is then really empty)?
        self.synced = False
        self._watches: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def instances(self) -> list[keys.Instance]:
        return self.discovery.instances()

    async def start(self) -> None:
        await self.etcd.connect()
        self._unsubscribe = self.discovery.subscribe(self._changed)
        await self.discovery.start(timeout=0)  # etcd may be down: the page says so meanwhile
        self._tasks.append(asyncio.create_task(self._poll_leases(), name="console-leases"))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait(*self._tasks, *self._watches.values())
        self._watches.clear()
        await self.discovery.stop()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await self.etcd.close()

    # -- registry changes ---------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        self.synced = True
        self._follow_health()
        self.on_change()

    def _follow_health(self) -> None:
        """One health Watch per registered (address, service); those gone are stopped."""
        live = {(i.address, i.service): i for i in self.instances()}
        for key in list(self._watches):
            if key not in live:
                self._watches.pop(key).cancel()
                self.health.pop(key, None)
        for key, instance in live.items():
            if key not in self._watches:
                self._watches[key] = asyncio.create_task(
                    self._watch_health(instance), name=f"console-health:{key}"
                )
        in_use = {(i.address, i.identity) for i in live.values()}
        for key in list(self._channels):
            if key not in in_use:
                closing = asyncio.ensure_future(self._channels.pop(key).close())
                self._closing.add(closing)  # held until done: a bare task may be collected
                closing.add_done_callback(self._closing.discard)

    def _channel(self, instance: keys.Instance) -> grpc.aio.Channel:
        key = (instance.address, instance.identity)
        channel = self._channels.get(key)
        if channel is None:
            if self.identity is None or not instance.identity:
                channel = grpc.aio.insecure_channel(instance.address)
            else:
                channel = tls.instance_channel(instance.address, instance.identity, self.identity)
            self._channels[key] = channel
        return channel

    def _set_health(self, key: tuple[str, str], status: str) -> None:
        if self.health.get(key) != status:
            self.health[key] = status
            self.on_change()

    async def _watch_health(self, instance: keys.Instance) -> None:
        key = (instance.address, instance.service)
        request = health_pb2.HealthCheckRequest(service=instance.service)
        while True:
            try:
                stub = health_pb2_grpc.HealthStub(self._channel(instance))
                async for answer in stub.Watch(request):
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                    self._set_health(key, status if status != "SERVICE_UNKNOWN" else "UNKNOWN")
                # The stream ended (the instance drains): it serves no more.
                self._set_health(key, "NOT_SERVING")
            except grpc.aio.AioRpcError as exc:
                log.debug("health of %s %s: %s", *key, exc.details())
                self._set_health(key, "UNKNOWN")
            except asyncio.CancelledError:
                raise
            except Exception:  # a channel closed under the watch, a bad answer: try again
                log.debug("health of %s %s failed", *key, exc_info=True)
                self._set_health(key, "UNKNOWN")
            await asyncio.sleep(HEALTH_RETRY_S)

    # -- leases -----------------------------------------------------------------------------

    async def _poll_leases(self) -> None:
        while True:
            try:
                leases = await self._read_leases()
            except (EtcdError, ValueError) as exc:
                self._set_state(False, str(exc))
                leases = dict.fromkeys(self.leases)
            except Exception as exc:  # kept going: the page shows it
                log.exception("reading the leases failed")
                self._set_state(False, f"{type(exc).__name__}: {exc}")
                leases = dict.fromkeys(self.leases)
            else:
                self._set_state(True, "")
                if not self.synced:
                    self.synced = self.discovery.lists > 0
            if leases != self.leases:
                self.leases = leases
                self.on_change()
            await asyncio.sleep(self.lease_poll_s)

    async def _read_leases(self) -> dict[tuple[str, str], int | None]:
        _, items = await self.etcd.get_prefix(keys.services_prefix(self.namespace))
        by_key: dict[tuple[str, str], int] = {}
        for item in items:
            with contextlib.suppress(keys.RegistryValueError):
                by_key[keys.parse_key(self.namespace, item.key)] = item.lease
        distinct = sorted({lease for lease in by_key.values() if lease})
        answers = await asyncio.gather(*(self.etcd.time_to_live(lease) for lease in distinct))
        ttl = dict(zip(distinct, answers, strict=True))
        return {
            key: (ttl[lease] if lease and ttl[lease] >= 0 else None)
            for key, lease in by_key.items()
        }

    def _set_state(self, connected: bool, error: str) -> None:
        state = {"connected": connected, "error": error}
        if state != self.state:
            self.state = state
            self.on_change()
