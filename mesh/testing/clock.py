"""Time that moves only when a test says so (re-exported by mesh.testing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class VirtualClock:
    """A monotonic clock that moves only when told: `clock()` reads, `advance(s)` moves (a
    negative `s`, or setting `now`, steps it back, as a test of a clock going back may want).

    It stands wherever the code takes a `Callable[[], float]` such as `time.monotonic`:

    >>> clock = VirtualClock()
    >>> budget = RetryBudget(clock)
    >>> clock.advance(10.0)   # ten seconds later, at once
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: Where a `VirtualWallClock` starts unless told.
WALL_CLOCK_START = datetime(2026, 1, 1, tzinfo=UTC)
_STANDING_STILL = timedelta(0)


class VirtualWallClock:
    """A wall clock (timezone-aware datetimes) that moves only when told, for code that takes
    a `Callable[[], datetime]` such as `lambda: datetime.now(UTC)`: `clock()` reads,
    `advance(s)` moves it on, `now` may be set.

    With `step`, each reading also moves it on by `step` after answering, so that the
    timestamps a test makes are distinct and ordered (`step=timedelta(0)`, the default, makes
    ties on purpose):

    >>> clock = VirtualWallClock(step=timedelta(milliseconds=1))
    >>> clock(), clock()   # 2026-01-01 00:00:00, then 00:00:00.001
    """

    def __init__(
        self, now: datetime = WALL_CLOCK_START, *, step: timedelta = _STANDING_STILL
    ) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.step
        return now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeSleep:
    """An injected `asyncio.sleep` that does not wait: it writes each delay down in `delays`
    and moves `clock` (when given) on by it, so that what reads the clock afterwards (a
    deadline, a `FakeContext.time_remaining()`) sees the time pass. It does not yield to the
    event loop either: a coroutine that sleeps runs on without a switch.

    >>> clock = VirtualClock()
    >>> service = EchoService("echo-a", sleep=FakeSleep(clock))
    """

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock
        #: Every delay asked for, in order (seconds).
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
