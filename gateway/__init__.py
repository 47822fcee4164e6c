"""HMS Mesh REST gateway: google.api.http transcoding in front of the mesh.

``hms_gateway.template`` parses and matches path templates; ``hms_gateway.router`` picks the
route for a request (404 vs 405 in one pass). Both are pure: no I/O, no global state.
Installed as ``hms_gateway`` (the folder is gateway/).
"""
