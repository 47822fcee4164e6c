"""The console's HTTP side, a plain ASGI app: the API (JSON; every error a JSON ``{"error":
"..."}`` with a 4xx/5xx), the live stream (``/api/events``, Server-Sent Events) and the page's
files from static/ (no build step: the files as they are).

    GET  /api/events                          SSE: instances, stats, decisions, nats, registry
    GET  /api/traces?limit=50                 recent traces, newest first
    GET  /api/traces/<trace id>               one trace: spans and events (404, 400)
    GET  /api/streams                         streams and their consumers
    GET  /api/deadletters?limit=50            the latest dead letters, newest first
    POST /api/deadletters/<sequence>/redrive  publish that dead letter's event again
    GET  /api/routes                          the gateway's routes and their access rules
    POST /api/explore                         a request through the gateway, with its trace id
    GET  /api/sd                              Prometheus HTTP service discovery
    GET  /api/manifests                       what the manifests declare: deployments, who
                                              publishes and subscribes to each event type
    GET  /, /<file>                           the page
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from mesh.aio import cancel_and_wait

if TYPE_CHECKING:
    from hms_tools.console.server import Console

__all__ = ["KEEP_ALIVE_S", "ApiError", "ConsoleApp"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KEEP_ALIVE_S = 15.0
#: A page that takes longer than this to take one message is gone: its stream is ended.
SEND_TIMEOUT_S = 30.0
MAX_BODY = 1024 * 1024
_TRACE = re.compile(r"/api/traces/(?P<id>[^/]*)")
_REDRIVE = re.compile(r"/api/deadletters/(?P<sequence>[^/]*)/redrive")
_PLACEHOLDER = b"""<!doctype html><meta charset="utf-8"><title>mesh console</title>
<p>console page not built yet: tools/console/static/index.html is missing.
The API answers under <a href="/api/sd">/api/</a>.</p>
"""
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def _json_body(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body, separators=(",", ":")).encode()


class ConsoleApp:
    def __init__(self, console: Console, static_dir: Path) -> None:
        self.console = console
        self.static_dir = static_dir.resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if path == "/api/events":
                _allow(method, "GET")
                await self._events(receive, send)
                return
            if path.startswith("/api/") or path == "/api":
                status, body = await self._api(method, path, scope, receive)
                await _answer(send, status, body, b"application/json")
                return
            await self._static(method, path, send)
        except ApiError as error:
            extra = [(b"allow", error.allow.encode())] if error.allow else []
            status, body = _json_body(error.status, {"error": error.message})
            await _answer(send, status, body, b"application/json", extra)
        except Exception as exc:
            log.exception("%s %s failed", method, path)
            status, body = _json_body(500, {"error": f"the console failed: {type(exc).__name__}"})
            await _answer(send, status, body, b"application/json")

    # -- the API ----------------------------------------------------------------------------

    async def _api(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes]:
        from hms_tools.console.server import parse_limit

        console = self.console
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/api/traces":
            _allow(method, "GET")
            return _json_body(200, console.recent_traces(parse_limit(query.get("limit"))))
        if match := _TRACE.fullmatch(path):
            _allow(method, "GET")
            return _json_body(200, console.trace(match["id"]))
        if path == "/api/streams":
            _allow(method, "GET")
            return _json_body(200, await console.streams())
        if path == "/api/deadletters":
            _allow(method, "GET")
            return _json_body(200, await console.dead_letters(parse_limit(query.get("limit"))))
        if match := _REDRIVE.fullmatch(path):
            _allow(method, "POST")
            text = match["sequence"]
            if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 19:
                raise ApiError(400, f"dead letter {text[:20]!r}: its sequence, a whole number")
            return _json_body(200, await console.redrive(int(text)))
        if path == "/api/routes":
            _allow(method, "GET")
            return _json_body(200, await console.routes())
        if path == "/api/explore":
            _allow(method, "POST")
            return _json_body(200, await console.explore(await _read_json(receive)))
        if path == "/api/sd":
            _allow(method, "GET")
            return _json_body(200, console.sd())
        if path == "/api/manifests":
            _allow(method, "GET")
            return _json_body(200, await console.manifests())
        raise ApiError(404, f"no API at {path[:200]}")

    async def _events(self, receive: Receive, send: Send) -> None:
        """The live stream until the page goes away or falls behind (then it reconnects)."""
        hub = self.console.hub
        client = hub.connect(*self.console.first_frames())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def write(body: bytes, more: bool = True) -> None:
            message = {"type": "http.response.body", "body": body, "more_body": more}
            await asyncio.wait_for(send(message), SEND_TIMEOUT_S)

        async def pump() -> None:
            # How soon a page reconnects after its stream ended (a dropped page, a restart).
            await write(b"retry: 1000\n\n")
            while (message := await client.next(KEEP_ALIVE_S)) is not None:
                await write(message)
            await write(b"", more=False)

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.disconnect(client)
            await cancel_and_wait(pumping, watching)

    # -- the page ---------------------------------------------------------------------------

    async def _static(self, method: str, path: str, send: Send) -> None:
        _allow(method, "GET", "HEAD")
        relative = "index.html" if path in ("/", "") else path.lstrip("/")
        target = (self.static_dir / relative).resolve()
        inside = target.is_relative_to(self.static_dir)
        if not inside or not target.is_file():
            if relative == "index.html":
                await _answer(send, 200, _PLACEHOLDER, b"text/html; charset=utf-8")
                return
            raise ApiError(404, f"no such file: {path[:200]}")
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        kind = kind or "application/octet-stream"
        if kind.startswith("text/") or kind == "text/javascript":
            kind += "; charset=utf-8"
        data = target.read_bytes()
        await _answer(send, 200, b"" if method == "HEAD" else data, kind.encode(), length=len(data))


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(
            405,
            f"{method} is not allowed here (only {', '.join(allowed)})",
            allow=", ".join(allowed),
        )


async def _read_json(receive: Receive) -> Any:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the request ended before its body")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY} bytes")
        if not message.get("more_body"):
            break
    if not body:
        raise ApiError(400, "the request has no body: send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}") from None


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    length: int | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
