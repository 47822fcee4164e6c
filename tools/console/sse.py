"""Server-Sent Events to every open page: one bounded queue per client, filled without
waiting. A client whose queue is full (a page that stopped reading) is dropped, its stream
ended, so it never holds up the others; its browser reconnects and gets the whole state again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["KEEP_ALIVE", "Hub", "SseClient", "frame"]

KEEP_ALIVE = b": keep-alive\n\n"


def frame(event: str, data: Any) -> bytes:
    """One SSE message; the JSON is one line (json.dumps escapes newlines in strings)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class SseClient:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = False

    def offer(self, message: bytes) -> bool:
        """Queue `message`; False (and the client is ended) if its queue is full."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.end()
            return False
        return True

    def end(self) -> None:
        """Drop what is queued and end the stream after it."""
        self.dropped = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def next(self, timeout: float) -> bytes | None:
        """The next message, KEEP_ALIVE after `timeout` s of nothing, None at the end."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return KEEP_ALIVE


class Hub:
    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self.clients: set[SseClient] = set()
        #: Clients dropped for not reading fast enough, since the start.
        self.dropped = 0

    def connect(self, *first: bytes) -> SseClient:
        """A new client, its queue starting with `first` (the state as it is now)."""
        client = SseClient(max(self.queue_size, len(first) + 1))
        for message in first:
            client.offer(message)
        self.clients.add(client)
        return client

    def disconnect(self, client: SseClient) -> None:
        self.clients.discard(client)

    def publish(self, event: str, data: Any) -> None:
        if not self.clients:
            return
        message = frame(event, data)
        for client in list(self.clients):
            if not client.offer(message):
                self.clients.discard(client)
                self.dropped += 1
