"""Steady load at a fixed rate, every call recorded: the chaos runner's and the operations
tests' load generator.

`run_load` starts `workers` callers, each on its own connection, each calling at `rate /
workers` calls a second on a fixed schedule (a slow call delays that worker's next one; the
schedule does not make up for it later, so a stall shows as fewer calls, not as a burst). Each
call is recorded with when it started (`time.monotonic()`, comparable across processes on one
machine), how long it took and its outcome: "OK", a gRPC code name ("UNAVAILABLE"), an HTTP
status ("HTTP 503") or a connection failure ("connection: ..."). Nothing here retries: the
mesh under test does that or the failure is counted.

    recorder = Recorder()
    async with http_target(url, "POST", "/v1/echo", b'{"message":"x"}') as target:
        await run_load(target, rate=200, workers=8, until=stop_event, recorder=recorder)
    recorder.window(start, end)   # {"calls": ..., "failed": {...}, "p50_ms": ..., "p99_ms": ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["CallFailed", "Record", "Recorder", "Target", "grpc_target", "http_target", "run_load"]

OK = "OK"

#: One call on one worker's connection; raises CallFailed (or a gRPC error) on failure.
Call = Callable[[], Awaitable[None]]
#: Opens one worker's connection and returns its call, and a function that closes it.
Target = Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]


class CallFailed(Exception):
    """A call that did not succeed; the argument names its outcome."""


@dataclass(frozen=True)
class Record:
    started: float
    latency: float
    outcome: str


@dataclass
class Recorder:
    records: list[Record] = field(default_factory=list)

    def add(self, started: float, latency: float, outcome: str) -> None:
        self.records.append(Record(started, latency, outcome))

    def failures(self, start: float = float("-inf"), end: float = float("inf")) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            if start <= record.started < end and record.outcome != OK:
                counts[record.outcome] = counts.get(record.outcome, 0) + 1
        return counts

    def window(self, start: float = float("-inf"), end: float = float("inf")) -> dict[str, Any]:
        """Calls started in [start, end): how many, failures by outcome, latency of the OK."""
        inside = [r for r in self.records if start <= r.started < end]
        ok = sorted(r.latency * 1000 for r in inside if r.outcome == OK)
        return {
            "calls": len(inside),
            "failed": self.failures(start, end),
            "p50_ms": round(_percentile(ok, 50), 2),
            "p99_ms": round(_percentile(ok, 99), 2),
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_load(
    target: Target,
    *,
    rate: float,
    workers: int,
    until: asyncio.Event,
    recorder: Recorder,
    timeout: float = 5.0,
) -> None:
    """Call `target` at `rate` calls/s over `workers` connections until `until` is set."""
    if rate <= 0 or workers < 1:
        raise ValueError(f"rate must be > 0 and workers >= 1, got {rate} and {workers}")
    interval = workers / rate
    began = time.monotonic()

    async def worker(index: int) -> None:
        call, close = await target()
        due = began + index * interval / workers  # spread the workers over one interval
        try:
            while not until.is_set():
                wait = due - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await until.wait()
                    if until.is_set():
                        return
                due = max(due + interval, time.monotonic() - interval)
                started = time.monotonic()
                outcome = OK
                try:
                    async with asyncio.timeout(timeout):
                        await call()
                except grpc.aio.AioRpcError as exc:
                    outcome = exc.code().name
                except CallFailed as exc:
                    outcome = str(exc)
                except TimeoutError:
                    outcome = f"no answer within {timeout:.0f} s"
                recorder.add(started, time.monotonic() - started, outcome)
        finally:
            await close()

    await asyncio.gather(*(worker(i) for i in range(workers)))


@contextlib.asynccontextmanager
async def http_target(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> AsyncIterator[Target]:
    """HTTP/1.1 keep-alive connections to `url`; a call is 2xx or CallFailed("HTTP <status>").
    A connection the server closed, or that a cancelled call left mid-answer, is opened again
    for the next call."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def open_connection() -> tuple[Call, Callable[[], Awaitable[None]]]:
        conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def call() -> None:
            if not conn:
                try:
                    conn.append(await asyncio.open_connection(host, port))
                except OSError as exc:
                    raise CallFailed(f"connection: {exc.strerror or exc}") from None
            reader, writer = conn[0]
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length, closing = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        closing = True
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                await _close(conn)
                raise CallFailed(f"connection: {type(exc).__name__}") from None
            except asyncio.CancelledError:
                # The load's timeout: the late answer must not be read as the next call's.
                await _close(conn)
                raise
            if closing:
                await _close(conn)
            status = head[9:12].decode(errors="replace")
            if not status.startswith("2"):
                raise CallFailed(f"HTTP {status}")

        return call, lambda: _close(conn)

    yield open_connection


async def _close(conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    while conn:
        _, writer = conn.pop()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def grpc_target(call_once: Callable[[], Awaitable[Any]]) -> AsyncIterator[Target]:
    """Calls through one shared channel (a mesh channel multiplexes its own connections)."""

    async def open_worker() -> tuple[Call, Callable[[], Awaitable[None]]]:
        async def call() -> None:
            await call_once()

        async def close() -> None:
            return None

        return call, close

    yield open_worker
