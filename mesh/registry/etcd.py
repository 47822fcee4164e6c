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
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

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


def _grpc_target(endpoints: Sequence[str]) -> tuple[str, str]:
    """The gRPC target for `endpoints` (``host:port``, ``http://`` or ``https://``), and the
    host a TLS server certificate must name. Several endpoints go through grpc's ipv4:
    resolver, which fails over between them; over TLS each member's certificate must then
    carry the first endpoint's host."""
    if not endpoints:
        raise ValueError("no etcd endpoint given (set MESH_ETCD or --etcd)")
    parsed = []
    for endpoint in endpoints:
        bare = endpoint.strip()
        for scheme in ("http://", "https://"):
            bare = bare.removeprefix(scheme)
        host, sep, port = bare.rstrip("/").rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"etcd endpoint {endpoint!r} is not [https://]host:port")
        parsed.append((host, int(port)))
    if len(parsed) == 1:
        return f"{parsed[0][0]}:{parsed[0][1]}", parsed[0][0]
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in parsed), parsed[0][0]


class Etcd:
    """One connection to etcd.

    `tls` (see `mesh.controlplane.etcd_client_tls`) makes it TLS with that client certificate;
    ``https://`` endpoints without it are a ValueError.

    >>> etcd = Etcd(["127.0.0.1:2379"])
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
        self._target, self._server_name = _grpc_target(self.endpoints)
        self._channel: grpc.aio.Channel | None = None
        self._kv: rpc.KVStub | None = None
        self._lease: rpc.LeaseStub | None = None
        self._watch: rpc.WatchStub | None = None

    async def connect(self) -> None:
        """Open the channel (lazily: etcd need not be up yet). The TLS files are read now."""
        if self._channel is not None:
            return
        options: list[tuple[str, str | int]] = list(_CHANNEL_OPTIONS.items())
        if self.tls is None:
            channel = grpc.aio.insecure_channel(self._target, options=options)
        else:
            if self._target.startswith("ipv4:"):
                options.append(("grpc.ssl_target_name_override", self._server_name))
            credentials = self.tls.grpc_credentials()
            channel = grpc.aio.secure_channel(self._target, credentials, options=options)
        self._channel = channel
        self._kv = rpc.KVStub(channel)
        self._lease = rpc.LeaseStub(channel)
        self._watch = rpc.WatchStub(channel)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._kv = self._lease = self._watch = None
        if channel is not None:
            await channel.close()

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
