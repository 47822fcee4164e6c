"""The control socket of a running `mesh up`: how `mesh restart` and `mesh scale` reach the
supervisor that owns the processes.

A Unix socket at `<state-dir>/control.sock`, mode 0600 (only the user who started the stack
may use it; nothing listens on the network). One request per connection, one JSON object on
one line:

    {"command": "restart", "deployment": "eligibility"}
    {"command": "scale", "deployment": "eligibility", "replicas": 3}

The answer is JSON lines: `{"progress": "..."}` for each step as it happens, then one
`{"ok": true}` or `{"error": "..."}`. A request longer than `MAX_REQUEST` bytes, one that does
not arrive within `REQUEST_TIMEOUT` seconds, or one that is not such an object gets an error
naming what was wrong, and the connection is closed; the stack is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hms_tools.errors import OperatorError

__all__ = [
    "MAX_REQUEST",
    "REQUEST_TIMEOUT",
    "ControlError",
    "Handler",
    "answering",
    "parse_request",
    "send_request",
    "serve_control",
]

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0

Progress = Callable[[str], None]
Handler = Callable[[dict[str, Any], Progress], Awaitable[None]]

_FIELDS = {
    "restart": {"deployment": str},
    "scale": {"deployment": str, "replicas": int},
}


class ControlError(OperatorError):
    """A request the stack refused, or a stack that could not be reached."""


def parse_request(line: bytes) -> dict[str, Any]:
    """The request in `line`, checked; ControlError naming what is wrong otherwise."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError(f"request must be a JSON object, got {type(request).__name__}")
    command = request.get("command")
    fields = _FIELDS.get(command) if isinstance(command, str) else None
    if fields is None:
        raise ControlError(f"unknown command {command!r}; known: {', '.join(sorted(_FIELDS))}")
    for name, kind in fields.items():
        value = request.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ControlError(f"{command}: {name!r} must be a {kind.__name__}, got {value!r}")
    extra = set(request) - {"command", *fields}
    if extra:
        raise ControlError(f"{command}: unknown field(s) {sorted(extra)}")
    return request


async def answering(path: Path) -> bool:
    """Does a stack answer on the socket at `path` (a stale file does not)?"""
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return True


async def serve_control(path: Path, handle: Handler) -> asyncio.Server:
    """Listen on `path` (replacing a stale socket file); `handle` runs each request."""
    if await answering(path):
        raise ControlError(f"another stack is running with its control socket at {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")

        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    line = await reader.readuntil(b"\n")
                request = parse_request(line)
            except TimeoutError:
                raise ControlError(f"no request within {REQUEST_TIMEOUT:.0f} s") from None
            except asyncio.LimitOverrunError:
                raise ControlError(f"request longer than {MAX_REQUEST} bytes") from None
            except asyncio.IncompleteReadError:
                raise ControlError("request ended before its newline") from None
            await handle(request, lambda text: send({"progress": text}))
            send({"ok": True})
        except ControlError as exc:
            send({"error": str(exc)})
        except Exception as exc:  # the stack must outlive a failed operation
            log.exception("control request failed")
            send({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # Created 0600 from the start: a umask keeps the socket from existing, even briefly,
    # with wider permissions.
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connection, path=str(path), limit=MAX_REQUEST)
    finally:
        os.umask(old)
    return server


async def send_request(
    path: Path, request: dict[str, Any], progress: Progress, timeout: float = 600.0
) -> None:
    """Send one request and pass each progress line on; ControlError if the stack says no."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(
            f"no running stack answers at {path} ({exc.strerror}): is `mesh up` running "
            "with this --state-dir?"
        ) from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            while line := await reader.readline():
                message = json.loads(line)
                if "progress" in message:
                    progress(str(message["progress"]))
                elif "error" in message:
                    raise ControlError(str(message["error"]))
                elif message.get("ok"):
                    return
        raise ControlError("the stack closed the connection without an answer")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
