"""One instance of one service, as a caller sees it: a lazily opened channel, its latency
estimate, its in-flight count and its health as the instance's own Health.Watch reports it.

A channel that goes away (the instance left the registry, or certificates rotated) is closed
with a grace: grpc.aio's `close()` without one cancels every call on it, and the callers'
`await` then raises `CancelledError` instead of an answer. With a grace the calls in flight
finish first (a draining server keeps answering them), and only what outlives it is cut."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.aio import back_off, cancel_and_wait
from mesh.client.call import rpc_error
from mesh.client.reach import Reachability
from mesh.registry.keys import Instance
from mesh.resilience.backoff import Backoff, BackoffPolicy
from mesh.resilience.ewma import PeakEwma

__all__ = ["ChannelFactory", "Endpoint"]

log = logging.getLogger(__name__)

ChannelFactory = Callable[[Instance], grpc.aio.Channel]

#: How long a channel that goes away keeps the calls already on it, by default (seconds).
DRAIN_GRACE = 10.0


class Endpoint:
    def __init__(
        self,
        instance: Instance,
        make_channel: ChannelFactory,
        clock: Callable[[], float],
        *,
        watch_health: bool = True,
        drain_grace: float = DRAIN_GRACE,
        on_draining: Callable[[Endpoint], None] | None = None,
    ) -> None:
        self.instance = instance
        self.key = instance.instance_id
        self.ewma = PeakEwma(clock)
        self.outstanding = 0
        #: False while the instance's Health.Watch says it is not SERVING (draining).
        self.serving = True
        #: True once a call to it has completed: until then it gets a warm-up call first.
        self.observed = False
        #: Whether it can be connected to (mesh.client.reach): not picked while it cannot.
        self.reach = Reachability()
        self._make_channel = make_channel
        self._watch_health = watch_health
        self._drain_grace = drain_grace
        #: Told when the instance's health turns from SERVING to not (it is draining).
        self._on_draining = on_draining
        self._closed = False
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[tuple[Any, ...], Any] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Endpoint({self.instance.address}, {self.key})"

    def callable(
        self,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> Any:
        """The grpc.aio multicallable for method on this instance (cached per channel).

        The method is registered with the channel, as generated stubs do: grpc's core then
        keeps one handle for its path instead of interning the path on every call. The cache
        key holds the (de)serializers, so a caller that learns a new version of a service (the
        gateway, by reflection) gets a callable with the new message classes.
        """
        key = (kind, method, serializer, deserializer)
        found = self._callables.get(key)
        if found is None:
            channel = self.channel()
            factory = getattr(channel, kind)
            found = factory(
                method,
                request_serializer=serializer,
                response_deserializer=deserializer,
                _registered_method=True,
            )
            self._callables[key] = found
        return found

    def channel(self) -> grpc.aio.Channel:
        if self._closed:
            # Nothing picks a closed endpoint; a late caller must not reopen (and leak) one.
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.instance.service} instance {self.key} has left: call not sent",
            )
        if self._channel is None:
            self._channel = self._make_channel(self.instance)
            if self._watch_health and self._health_task is None:
                self._health_task = asyncio.create_task(
                    self._watch(), name=f"mesh-health:{self.instance.address}"
                )
        return self._channel

    def rotate(self) -> None:
        """Open a new channel (new credentials) and swap it in at once; the old one closes
        after a grace period, so calls already on it finish (grpcio has no client reload)."""
        old = self._channel
        if old is None:
            return
        self._channel = self._make_channel(self.instance)
        self._callables = {}
        task = asyncio.create_task(old.close(grace=self._drain_grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, *, drain: bool = True) -> None:
        """Take no new calls; those in flight get the drain grace to finish (`drain=False`
        cancels them: the owner of the whole channel is going away)."""
        self._closed = True
        await cancel_and_wait(self._health_task)
        self._health_task = None
        channel, self._channel = self._channel, None
        self._callables = {}
        if channel is not None:
            await channel.close(grace=self._drain_grace if drain else None)
        if self._closing:
            await asyncio.wait(list(self._closing))  # rotated channels: bounded by the grace

    async def _watch(self) -> None:
        """Follow the instance's health for its service; NOT_SERVING means draining."""
        request = health_pb2.HealthCheckRequest(service=self.instance.service)
        backoff = Backoff(BackoffPolicy(base=0.1, cap=2.0))
        while True:
            try:
                stub = health_pb2_grpc.HealthStub(self.channel())
                # types-grpcio-health-checking declares HealthStub without its methods.
                async for answer in stub.Watch(request):  # type: ignore[attr-defined]
                    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
                    if self.serving and not serving and self._on_draining is not None:
                        self._on_draining(self)
                    self.serving = serving
                    backoff.reset()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return  # a server without health checking: judge it by its calls alone
                if exc.code() == grpc.StatusCode.CANCELLED:
                    continue
            await back_off(backoff)
