"""A thin, typed wrapper over etcd's v3 API, on aetcd's generated stubs.

The channel is ours (aetcd 1.0 opens only plaintext channels): plaintext, or TLS with a client
certificate whose CN is the etcd user (`mesh.controlplane`: ``https://`` endpoints). The calls
we depend on (transactions that report their revision, one persistent LeaseKeepAlive stream,
watches that resume from a revision) are made on aetcd's stubs here, with etcd's failures
translated into these exceptions:

    EtcdError
    ├── EtcdUnavailable    etcd did not answer (down, restarting, timed out): retry later
    │   └── EtcdDenied     etcd answered no: this identity may not (a role, or no user)
    ├── LeaseLost          the lease is gone (expired, revoked, or etcd lost its data)
    └── WatchCompacted     the watch's start revision was compacted: list again

`EtcdDenied` is an `EtcdUnavailable` so that the loops that hold registrations and watches
keep retrying (a role may be granted later) while saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from mesh.controlplane import ClientTls, etcd_uses_tls

__all__ = [
    "Etcd",
    "EtcdDenied",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseLost",
    "WatchCompacted",
    "WatchEvent",
]

log = logging.getLogger(__name__)

_R = TypeVar("_R")

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


class EtcdDenied(EtcdUnavailable):
    """etcd refused the request for this identity: permission denied, or no such user."""


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


_DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _translate(exc: grpc.aio.AioRpcError) -> EtcdError:
    details = exc.details() or ""
    if "lease not found" in details:
        return LeaseLost(details)
    if exc.code() in _DENIED or "user name not found" in details:
        return EtcdDenied(f"etcd refused: {exc.code().name}: {details}")
    return EtcdUnavailable(f"etcd: {exc.code().name}: {details}")


def _grpc_targets(endpoints: Sequence[str]) -> list[str]:
    """One gRPC target per endpoint (``host:port``, ``http://`` or ``https://``); over TLS,
    each member's certificate must name the host its endpoint gives."""
    if not endpoints:
        raise ValueError("no etcd endpoint given (set MESH_ETCD or --etcd)")
    targets = []
    for endpoint in endpoints:
        bare = endpoint.strip()
        for scheme in ("http://", "https://"):
            bare = bare.removeprefix(scheme)
        host, sep, port = bare.rstrip("/").rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"etcd endpoint {endpoint!r} is not [https://]host:port")
        targets.append(f"{host}:{port}")
    return targets


#: On watch and keepalive streams: the member cancels the stream when it has no leader (as
#: etcd's own client does with WithRequireLeader), so a member cut off from its quorum does
#: not hold a stream that will never hear of a change.
_REQUIRE_LEADER = (("hasleader", "true"),)


class _Member:
    """One etcd endpoint's channel and stubs."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel: grpc.aio.Channel | None = None
        self.kv: rpc.KVStub
        self.lease: rpc.LeaseStub
        self.watch: rpc.WatchStub

    def open(self, tls: ClientTls | None) -> None:
        options: list[tuple[str, str | int]] = list(_CHANNEL_OPTIONS.items())
        if tls is None:
            channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            channel = grpc.aio.secure_channel(self.target, tls.grpc_credentials(), options=options)
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)


class Etcd:
    """A client of an etcd cluster: one channel per endpoint, one of them in use.

    etcd's gRPC API answers on every member, so when the member in use fails (does not
    answer, answers late, or has lost its leader) the client moves to the next endpoint: a
    unary call is tried once on each member that refuses the connection, and the streams
    (lease keepalive, watch) are opened again by their owners' retry loops on the member now
    in use. A lease lives in the cluster, not in a member, so it survives the move.

    `tls` (see `mesh.controlplane.etcd_client_tls`) makes it TLS with that client certificate;
    ``https://`` endpoints without it are a ValueError.

    >>> etcd = Etcd(["127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"])
    >>> await etcd.connect()
    >>> revision, kvs = await etcd.get_prefix(b"/hms/services/")
    """

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 2.0, tls: ClientTls | None = None
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        if tls is None and etcd_uses_tls(self.endpoints):
            raise ValueError(
                f"etcd at {','.join(self.endpoints)} is TLS (https://): give Etcd(tls=...)"
            )
        self.tls = tls
        self._members = [_Member(target) for target in _grpc_targets(self.endpoints)]
        self._current = 0
        self._open = False

    async def connect(self) -> None:
        """Open the channels (lazily: etcd need not be up yet). The TLS files are read now."""
        if self._open:
            return
        for member in self._members:
            member.open(self.tls)
        self._open = True

    async def close(self) -> None:
        self._open = False
        for member in self._members:
            channel, member.channel = member.channel, None
            if channel is not None:
                await channel.close()

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _member(self) -> tuple[int, _Member]:
        if not self._open:
            raise RuntimeError("Etcd.connect() was not called")
        return self._current, self._members[self._current]

    def _failed(self, index: int, error: EtcdError) -> None:
        """The member at `index` failed a call: use the next one (unless another call has
        moved on already)."""
        if len(self._members) == 1 or index != self._current:
            return
        self._current = (index + 1) % len(self._members)
        log.warning(
            "etcd member %s failed (%s): moving to %s",
            self._members[index].target,
            error,
            self._members[self._current].target,
        )

    def _translate(self, index: int, exc: grpc.aio.AioRpcError) -> EtcdError:
        """etcd's failure as ours; a member that did not answer is left for the next."""
        error = _translate(exc)
        if type(error) is EtcdUnavailable:
            self._failed(index, error)
        return error

    async def _call(self, method: Callable[[_Member], Awaitable[_R]]) -> _R:
        """A unary call on the member in use; when the member refuses the connection, on
        each of the others in turn. A call that timed out is not repeated here (it may have
        been applied): the next call goes to the next member."""
        last: EtcdError | None = None
        for _ in range(len(self._members)):
            index, member = self._member()
            try:
                return await method(member)
            except grpc.aio.AioRpcError as exc:
                error = self._translate(index, exc)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or type(error) is not EtcdUnavailable:
                    raise error from exc
                last = error
        assert last is not None  # the loop ran at least once: there is a member
        raise last

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under prefix, with the store revision of the read."""
        request = rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix))
        response = await self._call(lambda m: m.kv.Range(request, timeout=self.timeout))
        items = [KeyValue(x.key, x.value, x.mod_revision, x.lease) for x in response.kvs]
        return response.header.revision, items

    async def put_all(self, items: Sequence[tuple[bytes, bytes]], lease: int = 0) -> int:
        """Write several keys in one transaction; returns its revision."""
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease)) for k, v in items
        ]
        request = rpc.TxnRequest(success=ops)
        response = await self._call(lambda m: m.kv.Txn(request, timeout=self.timeout))
        revision: int = response.header.revision
        return revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return await self.put_all([(key, value)], lease)

    async def delete(self, key: bytes) -> int:
        request = rpc.DeleteRangeRequest(key=key)
        response = await self._call(lambda m: m.kv.DeleteRange(request, timeout=self.timeout))
        deleted: int = response.deleted
        return deleted

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision)
        await self._call(lambda m: m.kv.Compact(request, timeout=self.timeout))

    async def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; returns its id."""
        request = rpc.LeaseGrantRequest(TTL=ttl)
        response = await self._call(lambda m: m.lease.LeaseGrant(request, timeout=self.timeout))
        if response.error:
            raise EtcdUnavailable(f"etcd refused the lease: {response.error}")
        lease_id: int = response.ID
        return lease_id

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on the lease; -1 when it does not exist."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        response = await self._call(
            lambda m: m.lease.LeaseTimeToLive(request, timeout=self.timeout)
        )
        ttl: int = response.TTL
        return ttl

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease: every key on it is deleted at once. A missing lease is not an error."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseLost):
            await self._call(lambda m: m.lease.LeaseRevoke(request, timeout=self.timeout))

    async def keepalive(self, lease_id: int, interval: float) -> AsyncIterator[int]:
        """Keep a lease alive on ONE persistent stream (aetcd's refresh opens a stream per
        call); yields the TTL etcd grants at each answer. Raises LeaseLost when etcd answers
        TTL <= 0 and EtcdUnavailable when the stream breaks or an answer is overdue."""
        index, member = self._member()
        call = member.lease.LeaseKeepAlive(metadata=_REQUIRE_LEADER)
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
                    error = EtcdUnavailable("etcd stopped answering lease keepalives")
                    self._failed(index, error)
                    raise error from exc
                if response is grpc.aio.EOF:
                    error = EtcdUnavailable("etcd closed the lease keepalive stream")
                    self._failed(index, error)
                    raise error
                if response.TTL <= 0:
                    raise LeaseLost(f"lease {lease_id:x} not found")
                yield response.TTL
                await asyncio.sleep(interval)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(index, exc) from exc
        finally:
            call.cancel()

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Watch every key under prefix from start_revision (inclusive); yields each
        response's events in revision order. Raises WatchCompacted or EtcdUnavailable."""
        index, member = self._member()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=prefix,
                range_end=prefix_range_end(prefix),
                start_revision=start_revision,
                progress_notify=True,
            )
        )

        call = member.watch.Watch(metadata=_REQUIRE_LEADER)
        put = rpc.Event.EventType.Value("PUT")
        try:
            await call.write(create)
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.compact_revision:
                    raise WatchCompacted(response.compact_revision)
                if response.canceled:
                    error = EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                    self._failed(index, error)
                    raise error
                if response.events:
                    yield [
                        WatchEvent(
                            key=e.kv.key,
                            value=e.kv.value if e.type == put else None,
                            revision=e.kv.mod_revision,
                        )
                        for e in response.events
                    ]
            error = EtcdUnavailable("etcd closed the watch stream")
            self._failed(index, error)
            raise error
        except grpc.aio.AioRpcError as exc:
            raise self._translate(index, exc) from exc
        finally:
            call.cancel()
