"""HMS Mesh: a proxyless gRPC service mesh for Python."""
