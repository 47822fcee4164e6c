"""Configuration of a mesh channel: a frozen dataclass validated on construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.authz.serving import ServingPolicy
from mesh.client.semver import VersionRange
from mesh.client.traffic import Locality
from mesh.controlplane import ClientTls
from mesh.deadline import DeadlineConfig
from mesh.registry.keys import Instance
from mesh.resilience.outlier import OutlierConfig
from mesh.resilience.retry import RetryPolicy
from mesh.tls import TlsFiles

__all__ = ["LAYERS", "ClientConfig"]

#: The middleware layers, outermost first (the documented default order). Telemetry sees the
#: call as its caller does (all attempts, final status); the deadline wraps retry so every
#: attempt shares one time budget; retry wraps pick so each attempt may go to another
#: instance; pick does the per-instance accounting (breaker, EWMA) around the call.
LAYERS = ("telemetry", "deadline", "retry", "pick")


@dataclass(frozen=True)
class ClientConfig:
    etcd: tuple[str, ...]
    namespace: str = "hms"
    #: mTLS identity of the caller; None means plaintext (only for --insecure stacks).
    tls: TlsFiles | None = None
    #: TLS to etcd with this client certificate; None: TLS with `tls` (the caller's own
    #: identity) for https:// endpoints, plaintext otherwise (mesh.controlplane).
    etcd_tls: ClientTls | None = None
    deadlines: DeadlineConfig = field(default_factory=DeadlineConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Overrides per `/pkg.Service/Method` or `/pkg.Service/*`.
    retry_per_method: Mapping[str, RetryPolicy] = field(default_factory=dict)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    budget_ratio: float = 0.2
    budget_window: float = 10.0
    budget_min_per_second: float = 10.0
    #: How long a call waits for a first instance of a service to appear before UNAVAILABLE.
    no_instance_wait: float = 1.0
    watch_health: bool = True
    #: Which identities may serve which services (mesh.authz.serving); None: anyone may.
    serving: ServingPolicy | None = None
    #: TCP-probe each instance as it appears, and gate the ones nothing answers at
    #: (mesh.client.reach); calls that fail to connect gate their instance either way.
    probe_connectivity: bool = True
    #: How long the calls in flight on an instance that left (or a channel replaced by a
    #: certificate rotation) get to finish before its channel closes under them (seconds).
    drain_grace: float = 10.0
    #: How often to look for rotated certificates (seconds; 0 turns it off).
    rotation_check: float = 1.0
    layers: tuple[str, ...] = LAYERS
    #: Wrap each per-instance channel with OpenTelemetry's gRPC client interceptor (a span per
    #: call, sending its context on). Off, the channel sends the current W3C trace context
    #: itself, without spans (mesh.tracecontext).
    tracing: bool = False
    #: Fixed instances per service, used instead of the registry for those services (see
    #: mesh.registry.static); with no etcd endpoint, the only services that can be called.
    upstreams: Mapping[str, tuple[Instance, ...]] = field(default_factory=dict)
    #: The largest answer a call takes (gRPC's default, 4 MiB); a larger one fails the call
    #: RESOURCE_EXHAUSTED. Sending has no limit on the client side.
    max_receive_message_bytes: int = 4 * 1024 * 1024
    #: A semver range per service (``{"hms.fees.v1.FeeService": ">=1.2 <2"}``): only instances
    #: of a matching version take its calls (mesh.client.traffic); a call's own
    #: ``x-hms-version`` metadata wins over it.
    version_pins: Mapping[str, str] = field(default_factory=dict)
    #: The caller's zone (``MESH_ZONE``): calls stay in it while it has healthy capacity
    #: ("": every zone alike), and may go elsewhere once its load is `locality_factor` times
    #: the other zones'.
    zone: str = ""
    locality_factor: float = 1.5
    #: Read the traffic policies (version splits) in etcd, ``/<ns>/traffic/<service>``, live.
    traffic_policies: bool = True

    def __post_init__(self) -> None:
        for service, text in self.version_pins.items():
            try:
                VersionRange.parse(text)
            except ValueError as exc:
                raise ValueError(f"version pin of {service}: {exc}") from None
        Locality(self.zone, self.locality_factor)  # ValueError naming a bad factor
        if not self.etcd and not self.upstreams:
            raise ValueError("etcd: at least one endpoint is required (or static upstreams)")
        unknown = [name for name in self.layers if name not in LAYERS]
        if unknown or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {self.layers!r}: use each of {LAYERS} at most once")
        if "pick" not in self.layers:
            raise ValueError("layers: 'pick' is required (it chooses the instance)")
        if not 0 <= self.budget_ratio <= 1:
            raise ValueError(f"budget_ratio must be within [0, 1], got {self.budget_ratio}")
        for name in ("budget_window", "no_instance_wait"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.budget_min_per_second < 0 or self.rotation_check < 0 or self.drain_grace < 0:
            raise ValueError("budget_min_per_second, rotation_check and drain_grace must be >= 0")
        if self.max_receive_message_bytes < 1:
            raise ValueError(
                f"max_receive_message_bytes must be >= 1, got {self.max_receive_message_bytes}"
            )

    def retry_for(self, method: str) -> RetryPolicy:
        if method in self.retry_per_method:
            return self.retry_per_method[method]
        service = method.rsplit("/", 1)[0]
        return self.retry_per_method.get(f"{service}/*", self.retry)
