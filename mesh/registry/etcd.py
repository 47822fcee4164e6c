"""A thin, typed wrapper over etcd's v3 API, on aetcd's connection.

aetcd opens the channel and holds the stubs; the calls we depend on (transactions that report
their revision, one persistent LeaseKeepAlive stream, watches that resume from a revision) are
made on those stubs here, with etcd's failures translated into three exceptions:

    EtcdError
    ├── EtcdUnavailable    etcd did not answer (down, restarting, timed out): retry later
    ├── LeaseLost          the lease is gone (expired, revoked, or etcd lost its data)
    └── WatchCompacted     the watch's start revision was compacted: list again
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

__all__ = [
    "Etcd",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseLost",
    "WatchCompacted",
    "WatchEvent",
]

log = logging.getLogger(__name__)

# Reconnect fast after an etcd restart: grpc's default reconnect backoff grows to 120 s,
# which would keep services unregistered long after etcd is back. The C core also uses
# min_reconnect_backoff as the *connect timeout* of each attempt: too small and a loaded
# machine never completes a handshake, so it stays at 2 s while retries start at 100 ms.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 2000,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
}


class EtcdError(Exception):
    """Base of the etcd wrapper's errors."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer; the caller retries with backoff."""


class LeaseLost(EtcdError):
    """The lease no longer exists in etcd."""


class WatchCompacted(EtcdError):
    """The requested start revision is compacted away; list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """One change: `value` is None for a deletion."""

    key: bytes
    value: bytes | None
    revision: int

    @property
    def deleted(self) -> bool:
        return self.value is None


def _translate(exc: grpc.aio.AioRpcError) -> EtcdError:
    details = exc.details() or ""
    if "lease not found" in details:
        return LeaseLost(details)
    return EtcdUnavailable(f"etcd: {exc.code().name}: {details}")


def _aetcd_target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd builds its gRPC target as f"{host}:{port}"; several endpoints go through
    grpc's ipv4: resolver, which fails over between them."""
    if not endpoints:
        raise ValueError("no etcd endpoint given (set MESH_ETCD or --etcd)")
    parsed = []
    for endpoint in endpoints:
        host, sep, port = endpoint.strip().removeprefix("http://").rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
        parsed.append((host, int(port)))
    if len(parsed) == 1:
        return parsed[0]
    head = ",".join(f"{h}:{p}" for h, p in parsed[:-1])
    return f"ipv4:{head},{parsed[-1][0]}", parsed[-1][1]


class Etcd:
    """One connection to etcd.

    >>> etcd = Etcd(["127.0.0.1:2379"])
    >>> await etcd.connect()
    >>> revision, kvs = await etcd.get_prefix(b"/hms/services/")
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        host, port = _aetcd_target(self.endpoints)
        self._client = aetcd.Client(host=host, port=port, options=dict(_CHANNEL_OPTIONS))
        self._kv: rpc.KVStub | None = None
        self._lease: rpc.LeaseStub | None = None
        self._watch: rpc.WatchStub | None = None

    async def connect(self) -> None:
        """Open the channel (lazily: etcd need not be up yet)."""
        await self._client.connect()
        self._kv = self._client.kvstub
        self._lease = self._client.leasestub
        self._watch = rpc.WatchStub(self._client.channel)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stubs(self) -> tuple[rpc.KVStub, rpc.LeaseStub, rpc.WatchStub]:
        if self._kv is None or self._lease is None or self._watch is None:
            raise RuntimeError("Etcd.connect() was not called")
        return self._kv, self._lease, self._watch

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under prefix, with the store revision of the read."""
        kv, _, _ = self._stubs()
        request = rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix))
        try:
            response = await kv.Range(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        items = [KeyValue(x.key, x.value, x.mod_revision, x.lease) for x in response.kvs]
        return response.header.revision, items

    async def put_all(self, items: Sequence[tuple[bytes, bytes]], lease: int = 0) -> int:
        """Write several keys in one transaction; returns its revision."""
        kv, _, _ = self._stubs()
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease)) for k, v in items
        ]
        try:
            response = await kv.Txn(rpc.TxnRequest(success=ops), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        revision: int = response.header.revision
        return revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return await self.put_all([(key, value)], lease)

    async def delete(self, key: bytes) -> int:
        kv, _, _ = self._stubs()
        try:
            response = await kv.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        deleted: int = response.deleted
        return deleted

    async def compact(self, revision: int) -> None:
        kv, _, _ = self._stubs()
        try:
            await kv.Compact(rpc.CompactionRequest(revision=revision), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc

    async def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; returns its id."""
        _, lease, _ = self._stubs()
        try:
            response = await lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        if response.error:
            raise EtcdUnavailable(f"etcd refused the lease: {response.error}")
        lease_id: int = response.ID
        return lease_id

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on the lease; -1 when it does not exist."""
        _, lease, _ = self._stubs()
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        try:
            response = await lease.LeaseTimeToLive(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        ttl: int = response.TTL
        return ttl

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease: every key on it is deleted at once. A missing lease is not an error."""
        _, lease, _ = self._stubs()
        try:
            await lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc)
            if not isinstance(error, LeaseLost):
                raise error from exc

    async def keepalive(self, lease_id: int, interval: float) -> AsyncIterator[int]:
        """Keep a lease alive on ONE persistent stream (aetcd's refresh opens a stream per
        call); yields the TTL etcd grants at each answer. Raises LeaseLost when etcd answers
        TTL <= 0 and EtcdUnavailable when the stream breaks or an answer is overdue."""
        _, lease, _ = self._stubs()
        call = lease.LeaseKeepAlive()
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)
        try:
            while True:
                await call.write(request)
                try:
                    # Every answer is read (drained) before the next ping; one overdue
                    # answer means etcd is gone even if the connection looks open.
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that races with the read, and the loop would never stop.
                    async with asyncio.timeout(max(interval, 1.0)):
                        response = await call.read()
                except TimeoutError as exc:
                    raise EtcdUnavailable("etcd stopped answering lease keepalives") from exc
                if response is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd closed the lease keepalive stream")
                if response.TTL <= 0:
                    raise LeaseLost(f"lease {lease_id:x} not found")
                yield response.TTL
                await asyncio.sleep(interval)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        finally:
            call.cancel()

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Watch every key under prefix from start_revision (inclusive); yields each
        response's events in revision order. Raises WatchCompacted or EtcdUnavailable."""
        _, _, watch = self._stubs()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=prefix,
                range_end=prefix_range_end(prefix),
                start_revision=start_revision,
                progress_notify=True,
            )
        )

        call = watch.Watch()
        put = rpc.Event.EventType.Value("PUT")
        try:
            await call.write(create)
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.compact_revision:
                    raise WatchCompacted(response.compact_revision)
                if response.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.events:
                    yield [
                        WatchEvent(
                            key=e.kv.key,
                            value=e.kv.value if e.type == put else None,
                            revision=e.kv.mod_revision,
                        )
                        for e in response.events
                    ]
            raise EtcdUnavailable("etcd closed the watch stream")
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        finally:
            call.cancel()
