"""Traffic policies kept in etcd (``/<ns>/traffic/<service>``, JSON ``{"0.1.0": 95, ...}``:
mesh.client.traffic), watched live by every mesh channel and so by the gateway.

The watch never gives up (etcd down: retried with backoff, listed again once it answers). A
value that is not a valid policy is kept out: the service's last good policy stays in force and
a warning names the key and what is wrong, once per value; a deleted key clears the policy.

>>> policies = TrafficPolicies(etcd, "hms")
>>> policies.start()
>>> policies.get("hms.fees.v1.FeeService")
TrafficPolicy(splits=(('0.1.0', 95), ('0.2.0', 5)))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.aio import back_off, cancel_and_wait
from mesh.client.traffic import TrafficPolicy, traffic_prefix
from mesh.registry.etcd import Etcd, EtcdError, WatchCompacted
from mesh.resilience.backoff import Backoff

__all__ = ["TrafficPolicies"]

log = logging.getLogger(__name__)

Listener = Callable[[str, TrafficPolicy | None], None]


class TrafficPolicies:
    """Every service's traffic policy in one namespace, current."""

    def __init__(self, etcd: Etcd, namespace: str) -> None:
        self.etcd = etcd
        self.namespace = namespace
        self._prefix = traffic_prefix(namespace)
        self._policies: dict[str, TrafficPolicy] = {}
        self._refused: dict[str, bytes] = {}  # key -> the value last refused (warned once)
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    def get(self, service: str) -> TrafficPolicy | None:
        return self._policies.get(service)

    def subscribe(self, listener: Listener) -> None:
        """`listener(service, policy or None)` at each change."""
        self._listeners.append(listener)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mesh-traffic-policies")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                revision = await self._list()
                backoff.reset()
                async for events in self.etcd.watch(self._prefix, revision + 1):
                    for event in events:
                        self._apply(event.key, event.value)
            except WatchCompacted:
                continue  # list again
            except EtcdError as exc:
                await back_off(backoff, log.warning, "traffic policies: %s; again in %.2f s", exc)
            except Exception:  # a bug must not end the watch: policies would freeze
                await back_off(
                    backoff, log.exception, "traffic policies: unexpected; again in %.2f s"
                )

    async def _list(self) -> int:
        revision, items = await self.etcd.get_prefix(self._prefix)
        present = {item.key for item in items}
        for service in list(self._policies):
            if self._key(service) not in present:
                self._apply(self._key(service), None)
        for item in items:
            self._apply(item.key, item.value)
        return revision

    def _key(self, service: str) -> bytes:
        return self._prefix + service.encode()

    def _apply(self, key: bytes, value: bytes | None) -> None:
        service = key[len(self._prefix) :].decode(errors="replace")
        if value is None:
            self._refused.pop(service, None)
            if self._policies.pop(service, None) is not None:
                log.info("traffic policy of %s cleared", service)
                self._tell(service, None)
            return
        try:
            policy = TrafficPolicy.parse(value)
        except ValueError as exc:
            if self._refused.get(service) != value:
                self._refused[service] = value
                kept = self._policies.get(service)
                log.warning(
                    "traffic policy %s refused (%s): %s",
                    key.decode(errors="replace"),
                    exc,
                    f"keeping {dict(kept.splits)}" if kept else "no policy in force",
                )
            return
        self._refused.pop(service, None)
        if self._policies.get(service) != policy:
            self._policies[service] = policy
            log.info("traffic policy of %s: %s", service, dict(policy.splits))
            self._tell(service, policy)

    def _tell(self, service: str, policy: TrafficPolicy | None) -> None:
        for listener in self._listeners:
            listener(service, policy)
