"""The gateway's settings: one frozen dataclass, validated on construction (what a connection
may cost before the app sees a request is ``ServerLimits``, gateway/limits.py).

Files and the environment are read by the command line (tools/cli/gateway.py), never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hms_gateway.auth import JwtConfig
from hms_gateway.cors import CorsPolicy
from hms_gateway.ratelimit import RateLimit
from hms_gateway.transcode import JsonOptions
from mesh.client.semver import VersionRange

__all__ = ["OPS_ACCESS", "GatewayConfig"]

#: Where /metrics and /openapi.json are served (``GatewayConfig.ops``).
OPS_ACCESS = ("open", "gate", "listener")


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway reads, checks and forwards requests.

    ``public``: gRPC services (``pkg.Service``) or methods (``pkg.Service/Method``) that need no
    token when ``jwt`` is set, whatever their contract's ``(hms.api.v1.access)`` asks (methods
    whose contract says ``public: true`` need none either). ``default_timeout``: the deadline
    of a call whose request sends no ``Grpc-Timeout``; ``max_timeout`` caps what a client may
    ask for. ``ops``: where ``/metrics`` and ``/openapi.json`` are served: ``open`` (the public
    listener, to anyone), ``gate`` (the public listener, to a valid token only: needs ``jwt``)
    or ``listener`` (only on the ops listener, gateway/serve.py). ``/healthz`` and ``/readyz``
    are always open.
    """

    json: JsonOptions = field(default_factory=JsonOptions)
    default_timeout: float = 30.0
    max_timeout: float = 300.0
    body_limit: int = 4 * 1024 * 1024
    jwt: JwtConfig | None = None
    public: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    cors: CorsPolicy | None = None
    ops: str = "open"
    #: Route prefixes bound to version ranges (``("/v2/", ">=2")``, longest prefix first): a
    #: request under the prefix that sends no ``X-Hms-Version`` goes to those versions only.
    version_routes: tuple[tuple[str, str], ...] = ()

    def version_for(self, path: str) -> str | None:
        """The range a request to `path` is bound to by its prefix, or None."""
        for prefix, text in self.version_routes:
            if path.startswith(prefix):
                return text
        return None

    def __post_init__(self) -> None:
        for prefix, text in self.version_routes:
            if not prefix.startswith("/"):
                raise ValueError(f"version route {prefix!r}: a path prefix starts with /")
            try:
                VersionRange.parse(text)
            except ValueError as exc:
                raise ValueError(f"version route {prefix!r}: {exc}") from None
        ordered = tuple(sorted(self.version_routes, key=lambda r: -len(r[0])))
        object.__setattr__(self, "version_routes", ordered)
        if not 0 < self.default_timeout <= self.max_timeout:
            raise ValueError(
                f"default_timeout must be > 0 and <= max_timeout ({self.max_timeout}), "
                f"got {self.default_timeout}"
            )
        if self.body_limit < 0:
            raise ValueError(f"body_limit must be >= 0 bytes, got {self.body_limit}")
        if self.ops not in OPS_ACCESS:
            raise ValueError(f"ops must be one of {', '.join(OPS_ACCESS)}, got {self.ops!r}")
        if self.ops == "gate" and self.jwt is None:
            raise ValueError(
                "ops 'gate' puts /metrics and /openapi.json behind the gate: needs jwt"
            )
        bad = [name for name in self.public if not _is_public_name(name)]
        if bad:
            raise ValueError(f"public: {bad} are not pkg.Service or pkg.Service/Method names")

    def is_public(self, service: str, method: str) -> bool:
        return service in self.public or f"{service}/{method}" in self.public


def _is_public_name(name: str) -> bool:
    service, slash, method = name.partition("/")
    if slash and (not method or "/" in method):
        return False
    return "." in service and all(service.split("."))
