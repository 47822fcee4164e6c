"""HMS Mesh REST gateway: google.api.http transcoding in front of the mesh.

``gateway.template`` parses and matches path templates; ``gateway.router`` picks the route for a
request (404 vs 405 in one pass). Both are pure: no I/O, no global state.
"""
