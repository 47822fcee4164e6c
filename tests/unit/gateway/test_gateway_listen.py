"""The gateway's listening socket gives its connections TCP_NODELAY (no Nagle delay)."""

from __future__ import annotations

import asyncio
import socket

from hms_gateway.serve import listening_socket


async def test_accepted_connections_have_nodelay() -> None:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = listening_socket("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            assert await accepted != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_a_plain_socket_would_not_get_it() -> None:
    """Why listening_socket exists: the default proto (0) is not IPPROTO_TCP."""
    with socket.socket() as plain, listening_socket("127.0.0.1", 0) as ours:
        assert plain.proto == 0
        assert ours.proto == socket.IPPROTO_TCP
