"""HMS Mesh: a proxyless gRPC service mesh for Python.

What a service author needs, in one import. A service is its generated servicer(s) and a
`main()`:

    from mesh import InvalidArgument, Runtime, run_service
    from hms.fees.v1 import fees_pb2, fees_pb2_grpc

    class FeeService(fees_pb2_grpc.FeeServiceServicer):
        async def Quote(self, request, context):
            if request.amount_pence < 0:
                raise InvalidArgument.field("amount_pence", f"must not be negative, got ...")
            return fees_pb2.QuoteResponse(...)

    def main() -> None:
        run_service("fees", lambda runtime: [FeeService()])

`run_service` serves them with mTLS, health, reflection and a graceful drain, registered in etcd;
`Runtime` is what the service gets from the edge (its flags, a `MeshChannel` to call others,
its events); errors are `MeshError` classes, one per gRPC code (`mesh.errors`); events come
with `EventMeta` and are applied once and in order by an `IdempotentHandler`. A caller outside
a service opens a `MeshChannel` with a `ClientConfig` and hands it to any generated stub.

Names are loaded on first use: `import mesh.identity` (say) does not load grpc's server and
NATS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.client import ClientConfig, MeshChannel
    from mesh.errors import (
        AlreadyExists,
        FailedPrecondition,
        InvalidArgument,
        MeshError,
        NotFound,
        PermissionDenied,
        Unavailable,
    )
    from mesh.events import EventMeta, IdempotentHandler
    from mesh.server.enduser import end_user, may_act_for, require_acting_for
    from mesh.server.runner import run_service
    from mesh.server.runtime import Runtime

__all__ = [
    "AlreadyExists",
    "ClientConfig",
    "EventMeta",
    "FailedPrecondition",
    "IdempotentHandler",
    "InvalidArgument",
    "MeshChannel",
    "MeshError",
    "NotFound",
    "PermissionDenied",
    "Runtime",
    "Unavailable",
    "end_user",
    "may_act_for",
    "require_acting_for",
    "run_service",
]

_HOMES = {
    "AlreadyExists": "mesh.errors",
    "ClientConfig": "mesh.client",
    "EventMeta": "mesh.events",
    "FailedPrecondition": "mesh.errors",
    "IdempotentHandler": "mesh.events",
    "InvalidArgument": "mesh.errors",
    "MeshChannel": "mesh.client",
    "MeshError": "mesh.errors",
    "NotFound": "mesh.errors",
    "PermissionDenied": "mesh.errors",
    "Runtime": "mesh.server.runtime",
    "Unavailable": "mesh.errors",
    "end_user": "mesh.server.enduser",
    "may_act_for": "mesh.server.enduser",
    "require_acting_for": "mesh.server.enduser",
    "run_service": "mesh.server.runner",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
