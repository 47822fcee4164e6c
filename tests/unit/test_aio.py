"""mesh.aio: `back_off` (the one backoff-and-sleep step of every retry loop) on virtual time,
and `cancel_and_wait` letting its caller's own cancellation through."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mesh.aio import back_off, cancel_and_wait
from mesh.resilience.backoff import Backoff, BackoffPolicy
from mesh.testing import VirtualClock


class VirtualSleep:
    """An injected sleep: moves the virtual clock instead of waiting, and writes it down."""

    def __init__(self, clock: VirtualClock, events: list[Any]) -> None:
        self.clock = clock
        self.events = events

    async def __call__(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))
        self.clock.advance(seconds)


@pytest.mark.parametrize(
    ("policy", "randoms", "expected"),
    [
        pytest.param(
            BackoffPolicy(base=0.1, cap=1.0, jitter=0.0),
            [0.5] * 6,
            [0.1, 0.2, 0.4, 0.8, 1.0, 1.0],
            id="doubles-up-to-the-cap",
        ),
        pytest.param(
            BackoffPolicy(base=0.1, cap=1.0, jitter=0.5),
            [0.0, 0.5, 0.999],
            [0.05, 0.2, 0.4 * 1.499],
            id="jitter-from-the-random-draws",
        ),
        pytest.param(
            BackoffPolicy(base=0.3, cap=0.3, multiplier=1.0, jitter=0.0),
            [0.5] * 3,
            [0.3, 0.3, 0.3],
            id="constant",
        ),
    ],
)
async def test_waits_out_each_next_delay(
    policy: BackoffPolicy, randoms: list[float], expected: list[float]
) -> None:
    clock = VirtualClock()
    events: list[Any] = []
    sleep = VirtualSleep(clock, events)
    values = iter(randoms)
    backoff = Backoff(policy, rand=lambda: next(values))
    started = clock()
    returned = [await back_off(backoff, sleep=sleep) for _ in expected]
    assert returned == pytest.approx(expected)
    assert [seconds for _, seconds in events] == pytest.approx(expected)
    assert clock() - started == pytest.approx(sum(expected))
    assert backoff.attempt == len(expected)


async def test_reset_starts_the_delays_over() -> None:
    clock = VirtualClock()
    events: list[Any] = []
    backoff = Backoff(BackoffPolicy(base=0.1, cap=1.0, jitter=0.0))
    sleep = VirtualSleep(clock, events)
    first = [await back_off(backoff, sleep=sleep) for _ in range(3)]
    backoff.reset()  # what a loop does after a success
    assert first == pytest.approx([0.1, 0.2, 0.4])
    assert await back_off(backoff, sleep=sleep) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("args", "kwargs", "said"),
    [
        pytest.param((), {}, (1.0,), id="delay-only"),
        pytest.param(("again in %.2f s",), {}, ("again in %.2f s", 1.0), id="message"),
        pytest.param(
            ("%s failed; again in %.2f s", "fetch"),
            {"exc_info": True},
            ("%s failed; again in %.2f s", "fetch", 1.0, {"exc_info": True}),
            id="message-args-and-keywords",
        ),
    ],
)
async def test_says_its_arguments_then_the_delay_before_it_sleeps(
    args: tuple[Any, ...], kwargs: dict[str, Any], said: tuple[Any, ...]
) -> None:
    clock = VirtualClock()
    events: list[Any] = []

    def say(*arguments: Any, **keywords: Any) -> None:
        events.append(("say", *arguments, *([keywords] if keywords else [])))

    backoff = Backoff(BackoffPolicy(base=1.0, jitter=0.0))  # exactly 1.0
    await back_off(backoff, say, *args, sleep=VirtualSleep(clock, events), **kwargs)
    assert events == [("say", *said), ("sleep", 1.0)]


async def test_the_log_line_sees_the_error_being_handled(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.aio")
    backoff = Backoff(BackoffPolicy(base=0.25, jitter=0.0))
    with caplog.at_level(logging.WARNING, logger="tests.aio"):
        try:
            raise ConnectionError("etcd down")
        except ConnectionError:
            await back_off(
                backoff,
                log.exception,
                "failed; again in %.2f s",
                sleep=VirtualSleep(VirtualClock(), []),
            )
    [record] = caplog.records
    assert record.getMessage() == "failed; again in 0.25 s"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConnectionError)


async def test_a_cancellation_during_the_wait_propagates() -> None:
    backoff = Backoff(BackoffPolicy(base=0.1, jitter=0.0))
    said: list[float] = []
    sleeping = asyncio.Event()

    async def sleep_until_cancelled(_seconds: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()  # never set: only a cancellation ends it

    task = asyncio.create_task(back_off(backoff, said.append, sleep=sleep_until_cancelled))
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert said == [pytest.approx(0.1)]  # said before the wait
    assert backoff.attempt == 1


async def test_cancel_and_wait_lets_the_callers_own_cancellation_through() -> None:
    release, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()  # takes its time to finish once cancelled
            raise

    worker = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)  # let the worker start waiting
    stopper = asyncio.create_task(cancel_and_wait(worker))
    await cancelled.wait()  # the stopper has cancelled the worker and waits for it
    stopper.cancel()  # now the stopper's own caller gives up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert worker.cancelled()
