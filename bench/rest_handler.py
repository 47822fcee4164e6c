"""The baseline of `bench.gateway`: a REST handler written by hand for one method.

What a team writes when it needs `POST /v1/echo` and nothing else: a bare ASGI function on the
same server as the gateway (uvicorn with httptools), `json_format` both ways and a `grpc.aio`
stub on an mTLS channel to one echo instance. It maps a bad body to 400 and a gRPC error to
502; it has no routing table, no header mapping, no discovery, no retries.

    python -m bench.rest_handler --address 127.0.0.1:PORT \\
        --identity spiffe://hms.local/svc/echo --tls-dir DIR

prints `rest handler listening on http://127.0.0.1:PORT` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from google.protobuf import json_format

from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_gateway.serve import listening_socket
from mesh import tls


def make_app(stub: echo_pb2_grpc.EchoServiceStub) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/echo":
            await _answer(send, 404, b'{"message":"not found"}')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json_format.Parse(body, echo_pb2.EchoRequest())
        except json_format.ParseError as exc:
            await _answer(send, 400, json.dumps({"message": str(exc)}).encode())
            return
        try:
            response = await stub.Echo(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            await _answer(send, 502, json.dumps({"message": exc.details()}).encode())
            return
        await _answer(send, 200, json_format.MessageToJson(response, indent=None).encode())

    return app


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(args: argparse.Namespace) -> None:
    files = tls.TlsFiles(Path(args.tls_dir), args.cert_name)
    channel = tls.instance_channel(args.address, args.identity, files)
    sock = listening_socket("127.0.0.1", 0)  # the gateway's own: TCP_NODELAY on connections
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(echo_pb2_grpc.EchoServiceStub(channel)),
            http="httptools",
            loop="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            proxy_headers=False,
        )
    )
    print(f"rest handler listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        await channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rest_handler", description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--tls-dir", required=True)
    parser.add_argument("--cert-name", default="ops")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
