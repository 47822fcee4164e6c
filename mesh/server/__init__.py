"""The server side of the mesh: the service host (`host`), its health that drains (`health`),
the interceptors it always runs (`errors`, `deadline`), the one combinator that wraps handlers
(`wrap`), and a service's `main()` (`runner`)."""

from mesh.server.host import HostConfig, ServiceHost, service_descriptor

__all__ = ["HostConfig", "ServiceHost", "service_descriptor"]
