"""Echo: the mesh's test and benchmark backend (hms.testing.v1.EchoService)."""
