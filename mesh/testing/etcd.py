"""etcd without a server: FakeEtcd, the registry on an in-memory store (re-exported by
mesh.testing)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, field

from mesh.registry.etcd import (
    EtcdUnavailable,
    KeyValue,
    LeaseLost,
    WatchCompacted,
    WatchEvent,
)


@dataclass
class _Lease:
    ttl: int
    keys: set[bytes] = field(default_factory=set)


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class _Watcher:
    prefix: bytes
    start_revision: int
    pending: collections.deque[list[WatchEvent]] = field(default_factory=collections.deque)
    error: Exception | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, events: list[WatchEvent]) -> None:
        mine = [
            e for e in events if e.key.startswith(self.prefix) and e.revision >= self.start_revision
        ]
        if mine:
            self.pending.append(mine)
            self.wake.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.wake.set()


class FakeEtcd:
    """Stands in for `mesh.registry.etcd.Etcd`: the same async methods, the same results
    and the same three exceptions (`EtcdUnavailable`, `LeaseLost`, `WatchCompacted`), on an
    in-memory MVCC-ish store instead of a server:

    - one global revision (1 on an empty store, +1 per write transaction, as in etcd);
    - a history of events, so that `watch(prefix, start_revision)` replays from that revision and
      then follows live writes; `compact(revision)` drops history up to `revision`;
    - leases with keys attached: revoking or expiring a lease deletes its keys in one revision and
      emits their DELETE events.

    What it leaves out, on purpose, so that tests stay fast and deterministic:

    - No clock. Leases never expire by themselves; a test expires one with `expire_lease(id)`.
      `time_to_live` answers the granted TTL while the lease exists and -1 once it is gone.
    - `keepalive(lease_id, interval)` ignores `interval`: it answers once at once (the lease's TTL,
      or LeaseLost if the lease does not exist), then sleeps until something happens to the lease
      or to the server, and then raises what the real stream would: `LeaseLost` when the lease was
      revoked, expired or wiped, `EtcdUnavailable` when the server went down. A healthy lease thus
      costs no timer at all.
    - `watch` raises `WatchCompacted` when `start_revision <= compacted revision`, one revision
      stricter than etcd (which still serves the compact revision itself, but may have dropped a
      deletion made at it).

    Test controls, beside the Etcd interface:

        go_down()              every call, and every open stream, raises EtcdUnavailable ...
        come_back(wipe=False)  ... until this; wipe=True is etcd restarted on an empty data dir:
                               keys, leases and history lost, revision back to 1 (lease ids keep
                               counting, so a new lease never reuses an old id)
        expire_lease(id)       the lease runs out: its keys are deleted (DELETE events)
        after_list             one-shot async hooks, each run inside one get_prefix after its
                               snapshot was taken (e.g. write and compact: the next watch from that
                               snapshot then finds its start compacted)
        kvs(prefix), leases()  what is stored (copies), for assertions
        revision               the store's current revision
        calls, refused         how often each method was called / refused while down

    >>> etcd = FakeEtcd()
    >>> lease = await etcd.grant(10)
    >>> await etcd.put(b"/hms/services/a.v1.A/x", b"{}", lease)
    2
    >>> etcd.expire_lease(lease)   # the key is gone, watchers see its deletion
    """

    def __init__(self) -> None:
        self.endpoints = ("fake",)
        self._kvs: dict[bytes, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._history: list[WatchEvent] = []
        self._revision = 1
        self._compacted = 0
        self._next_lease = 0x7E57_0000
        self._watchers: set[_Watcher] = set()
        # Replaced on every lease change or outage; keepalive streams wait on it.
        self._changed = asyncio.Event()
        self._down = False
        self._epoch = 0  # +1 on every go_down(): streams opened before it are broken
        #: One-shot hooks run inside get_prefix, after the snapshot (see module docstring).
        self.after_list: list[Callable[[], Awaitable[None]]] = []
        #: Calls per method name, refused ones included.
        self.calls: collections.Counter[str] = collections.Counter()
        #: Calls refused because the fake was down.
        self.refused = 0
        self.connected = False

    # -- test controls -----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    @property
    def is_down(self) -> bool:
        return self._down

    def kvs(self, prefix: bytes = b"") -> dict[bytes, KeyValue]:
        """The stored keys under prefix (a copy), for assertions."""
        return {k: kv for k, kv in sorted(self._kvs.items()) if k.startswith(prefix)}

    def leases(self) -> dict[int, set[bytes]]:
        """Live lease ids and the keys attached to each (a copy)."""
        return {lease_id: set(lease.keys) for lease_id, lease in self._leases.items()}

    def go_down(self) -> None:
        """etcd stops answering: calls raise EtcdUnavailable and open streams break."""
        self._down = True
        self._epoch += 1
        for watcher in self._watchers:
            watcher.fail(EtcdUnavailable("fake etcd: watch stream broken (server down)"))
        self._notify()

    def come_back(self, wipe: bool = False) -> None:
        """etcd answers again; wipe=True: it restarted on an empty data dir."""
        if wipe:
            self._kvs.clear()
            self._leases.clear()
            self._history.clear()
            self._revision = 1
            self._compacted = 0
        self._down = False
        self._notify()

    def expire_lease(self, lease_id: int) -> None:
        """The lease runs out now: its keys are deleted, keepalives get LeaseLost."""
        if lease_id not in self._leases:
            raise KeyError(f"no lease {lease_id:x}")
        self._drop_lease(lease_id)

    # -- the Etcd interface ------------------------------------------------------------------

    async def connect(self) -> None:
        self._enter("connect", check=False)
        self.connected = True

    async def close(self) -> None:
        self._enter("close", check=False)
        self.connected = False

    async def __aenter__(self) -> FakeEtcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        self._enter("get_prefix")
        answer = self._revision, list(self.kvs(prefix).values())
        if self.after_list:
            await self.after_list.pop(0)()
        return answer

    async def put_all(self, items: Sequence[tuple[bytes, bytes]], lease: int = 0) -> int:
        self._enter("put_all")
        if lease and lease not in self._leases:
            raise LeaseLost("etcdserver: requested lease not found")
        revision = self._revision + 1
        events = []
        for key, value in items:
            old = self._kvs.get(key)
            if old is not None and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            self._kvs[key] = KeyValue(key, value, revision, lease)
            if lease:
                self._leases[lease].keys.add(key)
            events.append(WatchEvent(key, value, revision))
        self._commit(revision, events)
        return revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return await self.put_all([(key, value)], lease)

    async def delete(self, key: bytes) -> int:
        self._enter("delete")
        if key not in self._kvs:
            return 0  # etcd does not bump the revision for a delete of nothing
        self._delete_keys([key])
        return 1

    async def compact(self, revision: int) -> None:
        self._enter("compact")
        # The real wrapper turns etcd's refusals into EtcdUnavailable; so does the fake.
        if revision <= self._compacted:
            raise EtcdUnavailable("etcd: OUT_OF_RANGE: mvcc: required revision has been compacted")
        if revision > self._revision:
            raise EtcdUnavailable(
                "etcd: OUT_OF_RANGE: mvcc: required revision is a future revision"
            )
        self._compacted = revision
        self._history = [e for e in self._history if e.revision > revision]

    async def grant(self, ttl: int) -> int:
        self._enter("grant")
        self._next_lease += 1
        self._leases[self._next_lease] = _Lease(ttl)
        return self._next_lease

    async def time_to_live(self, lease_id: int) -> int:
        self._enter("time_to_live")
        lease = self._leases.get(lease_id)
        return -1 if lease is None else lease.ttl

    async def revoke(self, lease_id: int) -> None:
        self._enter("revoke")
        if lease_id in self._leases:  # a missing lease is not an error, as in Etcd.revoke
            self._drop_lease(lease_id)

    async def keepalive(self, lease_id: int, interval: float) -> AsyncIterator[int]:
        """Answers once, then waits for a lease change or an outage (interval is ignored)."""
        self._enter("keepalive")
        epoch = self._epoch
        answered = False
        while True:
            if self._down or self._epoch != epoch:
                raise EtcdUnavailable("fake etcd: keepalive stream broken (server down)")
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseLost(f"lease {lease_id:x} not found")
            if not answered:
                answered = True
                yield lease.ttl
                continue  # check again: things may have changed while the caller had it
            await self._changed.wait()

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        self._enter("watch")
        if 0 < start_revision <= self._compacted:
            raise WatchCompacted(self._compacted)
        watcher = _Watcher(prefix, start_revision or self._revision + 1)
        # Replay and subscribe with no await in between, so nothing falls in the gap.
        by_revision: dict[int, list[WatchEvent]] = {}
        for event in self._history:
            by_revision.setdefault(event.revision, []).append(event)
        for events in by_revision.values():
            watcher.push(events)
        self._watchers.add(watcher)
        try:
            while True:
                if watcher.error is not None:
                    raise watcher.error
                if watcher.pending:
                    yield watcher.pending.popleft()
                    continue
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            self._watchers.discard(watcher)

    # -- internals ---------------------------------------------------------------------------

    def _enter(self, method: str, *, check: bool = True) -> None:
        self.calls[method] += 1
        if check and self._down:
            self.refused += 1
            raise EtcdUnavailable(f"fake etcd is down ({method})")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _commit(self, revision: int, events: list[WatchEvent]) -> None:
        self._revision = revision
        self._history.extend(events)
        for watcher in self._watchers:
            watcher.push(events)

    def _delete_keys(self, keys: list[bytes]) -> None:
        revision = self._revision + 1
        events = []
        for key in sorted(keys):
            old = self._kvs.pop(key)
            if old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            events.append(WatchEvent(key, None, revision))
        self._commit(revision, events)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        if lease.keys:
            self._delete_keys(list(lease.keys))
        self._notify()
