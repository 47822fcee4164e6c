"""Waiting for conditions no event announces; never a fixed sleep (re-exported by mesh.testing)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import (
    Awaitable,
    Callable,
)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 2.0,
    *,
    interval: float = 0.001,
) -> None:
    """Wait until predicate() holds, checking every `interval` s; AssertionError after
    `timeout` s. For conditions that no event announces; never a fixed sleep. The predicate
    may be a coroutine function (a condition read over the network, such as an HTTP answer)."""

    async def holds() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    try:
        async with asyncio.timeout(timeout):
            # Polling is the point: the condition has no event to wait on.
            while not await holds():  # noqa: ASYNC110
                await asyncio.sleep(interval)
    except TimeoutError:
        raise _still_false(predicate, timeout) from None


def wait_until(
    predicate: Callable[[], bool], timeout: float = 2.0, *, interval: float = 0.01
) -> None:
    """`eventually` for synchronous tests (a condition read by a blocking client)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise _still_false(predicate, timeout)
        time.sleep(interval)


def _still_false(predicate: object, timeout: float) -> AssertionError:
    return AssertionError(f"condition still false after {timeout} s: {predicate}")
