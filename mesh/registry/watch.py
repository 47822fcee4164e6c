"""Discovery: the live instances of one gRPC service (or of all), kept current by a watch.

A snapshot, then a watch from the snapshot's revision + 1, so no event is missed or
reordered. On compaction it lists again instead of skipping history; when etcd is unreachable
it reconnects with jittered backoff and lists again, and meanwhile keeps serving the last known
instances (stale beats empty). A value that does not parse is skipped with a warning that
names its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from mesh.aio import back_off, cancel_and_wait
from mesh.registry import keys
from mesh.registry.etcd import Etcd, EtcdUnavailable, WatchCompacted, WatchEvent
from mesh.resilience.backoff import Backoff

__all__ = ["Change", "ChangeKind", "Discovery"]

log = logging.getLogger(__name__)


class ChangeKind(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    instance: keys.Instance


Listener = Callable[[Change], None]


class Discovery:
    """Watches `/<namespace>/services/<service>/` (every service when `service` is None).

    >>> discovery = Discovery(etcd, "hms", "hms.notify.v1.NotifyService")
    >>> await discovery.start()          # returns once the first snapshot is in
    >>> discovery.instances()            # current instances, no etcd round trip
    >>> async for change in discovery.changes(): ...
    """

    def __init__(
        self,
        etcd: Etcd,
        namespace: str,
        service: str | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.etcd = etcd
        self.namespace = namespace
        self.service = service
        self._prefix = (
            keys.service_prefix(namespace, service) if service else keys.services_prefix(namespace)
        )
        self._backoff = backoff or Backoff()
        self._view: dict[bytes, keys.Instance] = {}
        self._listeners: list[Listener] = []
        self._waiters: set[asyncio.Event] = set()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Revision of the last change applied (tests and `mesh ls` read it).
        self.revision = 0
        #: How many times the full list was read (1 + relists after errors or compaction).
        self.lists = 0

    # -- reading the view ---------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[keys.Instance]:
        """The current instances, in key order; never empty just because etcd is down."""
        return [i for _, i in sorted(self._view.items()) if service in (None, i.service)]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every change, in order; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def changes(self) -> AsyncIterator[Change]:
        """Every change from now on, in order."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    async def wait_for(
        self, predicate: Callable[[list[keys.Instance]], bool], timeout: float
    ) -> list[keys.Instance]:
        """Wait until predicate(instances) holds; checked at each change and each full list."""
        changed = asyncio.Event()
        self._waiters.add(changed)
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.instances()):
                    changed.clear()
                    await changed.wait()
        finally:
            self._waiters.discard(changed)
        return self.instances()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Start watching; waits for the first snapshot (up to timeout; None waits on)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mesh-discovery:{self._prefix!r}")
        if timeout is None or timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._synced.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                revision = await self._list()
                self._backoff.reset()
                async for events in self.etcd.watch(self._prefix, revision + 1):
                    for event in events:
                        self._apply(event)
            except WatchCompacted as exc:
                log.info("discovery watch compacted (%s): listing again", exc)
            except EtcdUnavailable as exc:
                await back_off(
                    self._backoff,
                    log.warning,
                    "discovery: etcd unavailable (%s); serving %d known instance(s), "
                    "retrying in %.2f s",
                    exc,
                    len(self._view),
                )
            except Exception:  # a bug must not end discovery: callers would lose instances
                await back_off(
                    self._backoff,
                    log.exception,
                    "discovery failed unexpectedly; listing again in %.2f s",
                )

    async def _list(self) -> int:
        revision, items = await self.etcd.get_prefix(self._prefix)
        self.lists += 1
        fresh = dict(self._parse_all((kv.key, kv.value) for kv in items))
        # Emit what the outage hid: removals first, then additions and updates.
        for key in sorted(self._view.keys() - fresh.keys()):
            self._emit(Change(ChangeKind.REMOVED, self._view.pop(key)))
        for key, instance in sorted(fresh.items()):
            old = self._view.get(key)
            if old != instance:
                self._view[key] = instance
                kind = ChangeKind.ADDED if old is None else ChangeKind.UPDATED
                self._emit(Change(kind, instance))
        self.revision = revision
        self._synced.set()
        self._wake()
        return revision

    def _parse_all(
        self, items: Iterable[tuple[bytes, bytes]]
    ) -> Iterable[tuple[bytes, keys.Instance]]:
        for key, value in items:
            instance = self._parse(key, value)
            if instance is not None:
                yield key, instance

    def _parse(self, key: bytes, value: bytes) -> keys.Instance | None:
        try:
            return keys.decode(self.namespace, key, value)
        except keys.RegistryValueError as exc:  # its message names the key
            log.warning("skipping malformed registry entry: %s", exc)
            return None

    def _apply(self, event: WatchEvent) -> None:
        self.revision = event.revision
        old = self._view.get(event.key)
        instance = None if event.deleted else self._parse(event.key, event.value or b"")
        if instance is None:
            # Deleted, or overwritten by something unusable: either way it cannot take calls.
            if old is not None:
                del self._view[event.key]
                self._emit(Change(ChangeKind.REMOVED, old))
            return
        if old != instance:
            self._view[event.key] = instance
            self._emit(Change(ChangeKind.ADDED if old is None else ChangeKind.UPDATED, instance))

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def _emit(self, change: Change) -> None:
        self._wake()
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # one bad listener must not stop discovery for the rest
                log.exception("discovery listener failed on %s", change)
