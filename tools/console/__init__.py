"""`mesh console`: the live mesh in a browser page, served by one process that watches the
registry (etcd), listens to the mesh's telemetry and events (NATS) and asks the gateway.

- aggregate.py: svc.trace records -> per-method and per-edge figures, and traces (pure)
- instances.py: registry entries, leases, health and decisions -> the page's rows (pure)
- registry.py: the registry watch, leases and health checks (etcd, gRPC)
- feed.py: NATS: svc.trace, svc.mesh and the events' trace ids, and the connection's state
- streams.py: JetStream streams, consumers, dead letters and their redrive
- gateway.py: the gateway's routes, and requests sent to it with a development token
- sse.py: Server-Sent Events to every open page, none able to hold up the others
- app.py: the HTTP API and the page's files (ASGI)
- server.py: all of it wired together and served
"""
