"""The service host: turns servicers into a running mesh service.

It serves the servicers on a grpc.aio server (mTLS unless asked for plaintext), adds
grpc.health.v1.Health (overall and per service) and server reflection, registers every gRPC
service in etcd once health says SERVING, and drains on stop, in this order:

1. health NOT_SERVING: every caller's Health.Watch hears it at once and sends no new call;
2. the lease revoked: the keys vanish, and every caller's registry watch drops the instance;
3. the drain delay (`drain_delay`, 1 s): new calls are still served normally, because a caller
   that picked this instance just before it heard of 1 or 2 may still send one;
4. stop accepting; the calls in flight get `grace` seconds to finish, then are cancelled.

A second signal during the drain stops at once (in-flight calls cancelled).

>>> host = ServiceHost(HostConfig(deployment="notify", etcd=("127.0.0.1:2379",), tls=files))
>>> host.add_servicer(NotifyService(store))
>>> await host.start()
>>> exit_status = await host.serve_until_signalled()   # SIGTERM / SIGINT, then the drain
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh import tls
from mesh.aio import cancel_and_wait
from mesh.controlplane import ClientTls, etcd_client_tls
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.registration import Registration
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.enduser import DEFAULT_GATEWAY_IDENTITIES, EndUserInterceptor
from mesh.server.errors import ErrorInterceptor
from mesh.server.health import DrainingHealth

__all__ = [
    "DEFAULT_MAX_RECEIVE_MESSAGE_BYTES",
    "HostConfig",
    "ServiceHost",
    "service_descriptor",
]

log = logging.getLogger(__name__)

#: Callers' keepalive pings are welcome every second, however long a call stays quiet (a
#: watch stream): the mesh channel pings every 2 s while calls are open, to learn within
#: seconds that a host went away silently (mesh.client.channel.INSTANCE_KEEPALIVE). grpc's
#: default (5 min between pings without data, 2 strikes) would end such connections with
#: GOAWAY "too_many_pings".
PING_POLICY: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
)

SERVING = health_pb2.HealthCheckResponse.SERVING

#: grpc core's own limit on a received message.
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HostConfig:
    """How to run one service process. `tls=None` means plaintext (only with --insecure);
    an empty `etcd` means do not register (tests of the host alone)."""

    deployment: str
    version: str = "0.1.0"
    host: str = "127.0.0.1"
    port: int = 0
    tls: tls.TlsFiles | None = None
    etcd: tuple[str, ...] = ()
    #: TLS to etcd with this client certificate; None: TLS with `tls` (this instance's own
    #: identity) for https:// endpoints, plaintext otherwise (mesh.controlplane).
    etcd_tls: ClientTls | None = None
    namespace: str = "hms"
    lease_ttl: int = 10
    #: After deregistering, how long new calls are still served (callers learn of the
    #: removal within milliseconds: docs/reliability.md has the figures).
    drain_delay: float = 1.0
    grace: float = 10.0
    zone: str = ""
    weight: int = 100
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: The registry's id of this instance; "" makes a new one (a supervisor that starts the
    #: process passes its own, to know the instance when it registers).
    instance_id: str = ""
    #: The identities whose end-user metadata (x-hms-subject, x-hms-claims) is believed.
    gateway_identities: tuple[str, ...] = DEFAULT_GATEWAY_IDENTITIES
    #: The largest request message taken (gRPC's default, 4 MiB); a larger one is refused
    #: RESOURCE_EXHAUSTED by grpc core before any handler runs.
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not self.deployment:
            raise ValueError("deployment is required")
        if self.instance_id and not keys.is_valid_segment(self.instance_id):
            raise ValueError(f"instance_id {self.instance_id!r} is not a valid registry key part")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} is outside 0..65535")
        if self.lease_ttl < 2:
            raise ValueError(f"lease_ttl must be >= 2 s, got {self.lease_ttl}")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0 s, got {self.grace}")
        if self.drain_delay < 0:
            raise ValueError(f"drain_delay must be >= 0 s, got {self.drain_delay}")
        if self.max_receive_message_bytes < 1:
            raise ValueError(
                f"max_receive_message_bytes must be >= 1, got {self.max_receive_message_bytes}"
            )


def service_descriptor(servicer: object) -> tuple[ServiceDescriptor, Any]:
    """The service descriptor and the generated `add_..._to_server` function of a servicer,
    found from the generated base class it subclasses."""
    for base in type(servicer).__mro__:
        module_name = base.__module__
        if base.__name__.endswith("Servicer") and module_name.endswith("_pb2_grpc"):
            grpc_module = importlib.import_module(module_name)
            pb2 = importlib.import_module(module_name.removesuffix("_grpc"))
            name = base.__name__.removesuffix("Servicer")
            add = getattr(grpc_module, f"add_{base.__name__}_to_server")
            return pb2.DESCRIPTOR.services_by_name[name], add
    raise TypeError(f"{type(servicer).__name__} does not subclass a generated ...Servicer")


class ServiceHost:
    """One process serving one or more gRPC services on one port."""

    def __init__(
        self, config: HostConfig, *, interceptors: list[grpc.aio.ServerInterceptor] | None = None
    ) -> None:
        self.config = config
        self.instance_id = config.instance_id or keys.new_instance_id(config.deployment)
        self.health = DrainingHealth()
        self._servicers: list[tuple[ServiceDescriptor, Any, object]] = []
        # Outermost first: errors are translated for everything below, including authz.
        self._interceptors = [
            ErrorInterceptor(),
            DeadlineInterceptor(),
            EndUserInterceptor(config.gateway_identities),
            *(interceptors or []),
        ]
        self._server: grpc.aio.Server | None = None
        self._etcd: Etcd | None = None
        self.registration: Registration | None = None
        self.port = 0
        self.identity = ""
        self._signals = 0
        self._signalled = asyncio.Event()
        self._again = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def service_names(self) -> list[str]:
        return [descriptor.full_name for descriptor, _, _ in self._servicers]

    def add_servicer(self, servicer: object) -> None:
        descriptor, add = service_descriptor(servicer)
        self._servicers.append((descriptor, add, servicer))

    async def start(self) -> None:
        if not self._servicers:
            raise ValueError("add at least one servicer before start()")
        self._server = server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[
                ("grpc.max_receive_message_length", self.config.max_receive_message_bytes),
                *PING_POLICY,
            ],
        )
        for _, add, servicer in self._servicers:
            add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        bind = f"{self.config.host}:{self.config.port}"
        if self.config.tls is None:
            log.warning("%s serving PLAINTEXT on %s (--insecure)", self.config.deployment, bind)
            self.port = server.add_insecure_port(bind)
        else:
            self.identity = tls.identity_of(self.config.tls)
            self.port = server.add_secure_port(bind, tls.server_credentials(self.config.tls))
        if self.port == 0:
            raise OSError(f"could not bind {bind}")
        await server.start()
        for name in self.service_names:
            await self.health.set(name, SERVING)
        await self.health.set("", SERVING)
        log.info("%s serving %s on %s", self.config.deployment, self.service_names, self.address)
        if self.config.etcd:
            await self._register()
        else:
            log.warning(
                "%s is NOT REGISTERED: no etcd endpoint was given (--etcd or MESH_ETCD), so no "
                "mesh channel and no gateway will find it; only callers given %s directly can",
                self.config.deployment,
                self.address,
            )

    async def _register(self) -> None:
        # Registered only now, after health says SERVING: callers never find a cold instance.
        instances = [
            keys.Instance(
                service=name,
                instance_id=self.instance_id,
                address=self.address,
                deployment=self.config.deployment,
                version=self.config.version,
                identity=self.identity,
                zone=self.config.zone,
                weight=self.config.weight,
                metadata=self.config.metadata,
            )
            for name in self.service_names
        ]
        etcd_tls = etcd_client_tls(self.config.etcd, self.config.etcd_tls, self.config.tls)
        self._etcd = Etcd(self.config.etcd, tls=etcd_tls)
        await self._etcd.connect()
        self.registration = Registration(
            self._etcd, self.config.namespace, instances, ttl=self.config.lease_ttl
        )
        self.registration.start()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: %s, draining", self.config.deployment, sig.name)
            self._signalled.set()
        else:
            self._again.set()

    async def wait_for_signal(self) -> None:
        self.install_signal_handlers()
        await self._signalled.wait()

    async def serve_until_signalled(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain (`stop`); a second signal during the
        drain stops at once. The process's exit status: 0 drained, 1 cut short."""
        await self.wait_for_signal()
        draining = asyncio.ensure_future(self.stop())
        again = asyncio.ensure_future(self._again.wait())
        await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
        if draining.done():
            await cancel_and_wait(again)
            draining.result()
            return 0
        log.warning("%s: second signal, stopping at once", self.config.deployment)
        await cancel_and_wait(draining)
        await self.stop_now()
        return 1

    async def stop(self) -> None:
        """Drain (see the module's docstring): NOT_SERVING, deregister, serve on for the
        drain delay, stop accepting, finish in-flight calls within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.registration is not None:
            await self.registration.stop()
        if self._etcd is not None:
            await self._etcd.close()
            self._etcd = None
        if self._server is not None:
            await asyncio.sleep(self.config.drain_delay)  # serving on, on purpose
            self.health.end_watches()
            await self._server.stop(self.config.grace)
        log.info("%s stopped", self.config.deployment)

    async def stop_now(self) -> None:
        """Stop at once: in-flight calls cancelled; the lease expires on its own if the
        drain had not revoked it yet."""
        self.health.end_watches()
        if self._server is not None:
            await self._server.stop(None)
        if self._etcd is not None:
            await self._etcd.close()
            self._etcd = None
        log.info("%s stopped at once", self.config.deployment)
