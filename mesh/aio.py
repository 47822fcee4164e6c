"""Small asyncio helpers shared by the mesh's long-running loops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mesh.resilience.backoff import Backoff

__all__ = ["back_off", "cancel_and_wait", "cancelled_by_caller", "first_failure"]


async def back_off(
    backoff: Backoff,
    say: Callable[..., object] | None = None,
    *args: object,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    **kwargs: object,
) -> float:
    """Wait out `backoff`'s next delay, after `say(*args, delay, **kwargs)`: the delay comes
    last, as in a log call whose message ends "again in %.2f s". Returns the delay.

    The one step every retry loop shares; the loop itself decides when to back off and when
    to `backoff.reset()` (after a success). `say` runs before the wait, when the failure
    happens, and inside the caller's ``except`` block, so ``log.exception`` and
    ``exc_info=True`` see the error. A cancellation during the wait propagates.

    >>> except EtcdUnavailable as exc:
    ...     await back_off(retry, log.warning, "etcd unavailable (%s); again in %.2f s", exc)
    """
    delay = backoff.next_delay()
    if say is not None:
        say(*args, delay, **kwargs)
    await sleep(delay)
    return delay


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel tasks and wait until they have finished."""
    live = [t for t in tasks if t is not None and not t.done()]
    for task in live:
        task.cancel()
    if live:
        # asyncio.wait does not raise the tasks' errors, but a cancellation of the caller
        # itself still propagates (awaiting each task under suppress() would swallow it).
        await asyncio.wait(live)
    for task in live:
        if not task.cancelled():
            task.exception()  # mark it retrieved


async def first_failure(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run coroutines side by side until one of them ends; cancel the others and re-raise
    what the first one raised (unlike TaskGroup, which wraps it in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)
    # Read every finished task's outcome (so none is reported as never retrieved), and
    # re-raise the first failure.
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled()]
    for failure in failures:
        if failure is not None:
            raise failure


def cancelled_by_caller() -> bool:
    """Is the current task being cancelled (someone called `task.cancel()` on it)?

    Call it while handling an `asyncio.CancelledError`. grpc.aio raises CancelledError from
    `await call` when the call's *channel* was closed under it, though nobody cancelled the
    awaiting task: then this says False, and the error is the callee's failure to report,
    not a cancellation to pass on. `asyncio.timeout()` cancels the task too, so a timeout's
    CancelledError counts as the caller's.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
