"""The mesh client: one channel for every generated stub.

    channel = await MeshChannel.connect(ClientConfig(etcd=("127.0.0.1:2379",), tls=files))
    stub = NotifyServiceStub(channel)
    await stub.Send(request)

Each call is routed by the gRPC service in its method path to a live instance from the
registry watch, through one middleware chain (see `mesh.client.middleware`).
"""

from mesh.client.channel import MeshChannel
from mesh.client.config import ClientConfig

__all__ = ["ClientConfig", "MeshChannel"]
