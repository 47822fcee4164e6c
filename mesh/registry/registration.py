"""An instance's registration: its keys on one lease, held for the life of the process.

The loop never gives up. Every etcd registry studied has shipped a "services vanish after an
etcd outage" bug, each from a loop that stopped on some error; this one handles each case:

- etcd unreachable: retry with jittered backoff; the keys are written again once it answers;
- lease gone (expired during a long outage, or etcd restarted on an empty data dir):
  grant a new lease and write the keys again, at once;
- a key deleted by another process: write it back on the same lease.

The instance id is fixed for the life of the process, so writing again never duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from mesh.aio import back_off, cancel_and_wait, first_failure
from mesh.registry import keys
from mesh.registry.etcd import Etcd, EtcdError, EtcdUnavailable, LeaseLost
from mesh.resilience.backoff import Backoff

__all__ = ["Registration"]

log = logging.getLogger(__name__)


class _KeyDeleted(Exception):
    """One of our keys was deleted while our lease lives."""


class Registration:
    """Holds `instances` in the registry until `stop()`.

    >>> registration = Registration(etcd, "hms", instances, ttl=10)
    >>> registration.start()
    >>> await registration.wait_registered()
    >>> await registration.stop()   # revokes the lease: the keys vanish at once
    """

    def __init__(
        self,
        etcd: Etcd,
        namespace: str,
        instances: Sequence[keys.Instance],
        *,
        ttl: int = 10,
        backoff: Backoff | None = None,
    ) -> None:
        if ttl < 2:
            raise ValueError(f"lease ttl must be >= 2 s, got {ttl}")
        if not instances:
            raise ValueError("nothing to register")
        self.etcd = etcd
        self.namespace = namespace
        self.ttl = ttl
        self._items = [(i.key(namespace), keys.encode(i)) for i in instances]
        self._keys = {k for k, _ in self._items}
        self._backoff = backoff or Backoff()
        self._lease: int | None = None
        self._registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: How many times the keys were (re)written; tests and metrics read it.
        self.writes = 0

    @property
    def lease_id(self) -> int | None:
        return self._lease

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mesh-registration")

    async def wait_registered(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._registered.wait()

    async def stop(self) -> None:
        """Stop holding the keys and revoke the lease so they vanish now, not at expiry."""
        if self._task is not None:
            await cancel_and_wait(self._task)  # lets a cancellation of our caller through
            self._task = None
        self._registered.clear()
        if self._lease is not None:
            try:
                await self.etcd.revoke(self._lease)
            except EtcdError as exc:  # the keys will expire with the lease instead
                log.warning("could not revoke lease %x: %s", self._lease, exc)
            self._lease = None

    async def _run(self) -> None:
        while True:
            try:
                lease, revision = await self._register()
                self._backoff.reset()
                await self._hold(lease, revision)
            except LeaseLost as exc:
                log.warning("registration lease lost (%s): registering again", exc)
                self._lease = None
            except _KeyDeleted as exc:
                log.warning("registry key %s deleted by someone else: writing it back", exc)
            except EtcdUnavailable as exc:
                self._registered.clear()
                await back_off(
                    self._backoff,
                    log.warning,
                    "etcd unavailable (%s); retrying registration in %.2f s",
                    exc,
                )
            except Exception:  # a bug must not end the registration: keys would vanish
                self._registered.clear()
                await back_off(
                    self._backoff,
                    log.exception,
                    "registration failed unexpectedly; retrying in %.2f s",
                )

    async def _register(self) -> tuple[int, int]:
        """Write every key on a live lease; keeps the current lease if etcd still has it."""
        if self._lease is not None and await self.etcd.time_to_live(self._lease) <= 0:
            self._lease = None
        if self._lease is None:
            self._lease = await self.etcd.grant(self.ttl)
        revision = await self.etcd.put_all(self._items, self._lease)
        self.writes += 1
        self._registered.set()
        log.info("registered %d key(s) on lease %x", len(self._items), self._lease)
        return self._lease, revision

    async def _hold(self, lease: int, revision: int) -> None:
        """Keep the lease alive and guard the keys; ends only by raising."""
        await first_failure(self._keepalive(lease), self._guard_keys(revision + 1))
        raise EtcdUnavailable("registration streams ended")

    async def _keepalive(self, lease: int) -> None:
        async for _ttl in self.etcd.keepalive(lease, interval=self.ttl / 3):
            pass

    async def _guard_keys(self, start_revision: int) -> None:
        prefix = keys.services_prefix(self.namespace)
        async for events in self.etcd.watch(prefix, start_revision):
            for event in events:
                if event.deleted and event.key in self._keys:
                    raise _KeyDeleted(event.key.decode())
