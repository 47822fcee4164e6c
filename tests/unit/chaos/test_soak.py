"""The soak's arithmetic (least-squares slope, the flat judgement), its /proc readers, and one
short soak against a stand-in stack (a local HTTP server, this process and a child as the
processes sampled)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos.soak import count_fds, judge, read_rss_kib, slope_per_minute, soak


def series(values: list[float], step: float = 10.0) -> list[tuple[float, float]]:
    """Samples every `step` seconds from t=0."""
    return [(i * step, v) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(series([100.0] * 10), 0.0, id="constant"),
        pytest.param([(0.0, 0.0), (1.0, 1.0)], 60.0, id="one-a-second-is-sixty-a-minute"),
        pytest.param(series([0, 10, 20, 30]), 60.0, id="ten-every-ten-seconds"),
        pytest.param(series([1000, 990, 980]), -60.0, id="falling"),
        pytest.param([(0.0, 5.0), (60.0, 6.0), (120.0, 5.0)], 0.0, id="bump-in-the-middle"),
        pytest.param(
            [(0.0, 0.0), (60.0, 2.0), (120.0, 1.0)], 0.5, id="least-squares-not-end-points"
        ),
        pytest.param([(120.0, 7.0), (0.0, 1.0), (60.0, 4.0)], 3.0, id="order-does-not-matter"),
    ],
)
def test_slope_per_minute(samples: list[tuple[float, float]], expected: float) -> None:
    assert slope_per_minute(samples) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param([], id="none"),
        pytest.param([(0.0, 1.0)], id="one"),
        pytest.param([(5.0, 1.0), (5.0, 2.0)], id="same-time"),
    ],
)
def test_slope_needs_two_times(samples: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match="slope"):
        slope_per_minute(samples)


RAMP_TO_120 = [100.0 + 10 * i for i in range(13)]  # 100 at 0 s ... 220 at 120 s


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(
            series([100.0] * 61),
            {
                "start": 100.0,
                "end": 100.0,
                "growth_ratio": 0.0,
                "max_deviation": 0.0,
                "slope_per_min": 0.0,
                "flat": True,
                "verdict": "flat",
                "judged": 49,
            },
            id="flat",
        ),
        pytest.param(
            # 100 at 120 s, +1 a minute: 110 at 720 s, 10 % up.
            [(t, 100.0 + (t - 120) / 60) for t in range(0, 721, 10)],
            {
                "start": 100.0,
                "end": 110.0,
                "growth_ratio": pytest.approx(0.10),
                "max_deviation": pytest.approx(0.10),
                "slope_per_min": pytest.approx(1.0),
                "flat": False,
                "verdict": "not flat",
                "judged": 61,
            },
            id="growing-ten-percent",
        ),
        pytest.param(
            series([*RAMP_TO_120, *[220.0] * 48]),
            {
                "start": 220.0,
                "end": 220.0,
                "growth_ratio": 0.0,
                "max_deviation": 0.0,
                "slope_per_min": pytest.approx(0.0),
                "flat": True,
                "verdict": "flat",
                "judged": 49,
            },
            id="growing-during-warm-up-then-flat",
        ),
        pytest.param(
            series([*RAMP_TO_120[:-1], *[220.0] * 20, 222, 225, 230, 235]),
            {
                "start": 220.0,
                "end": 235.0,
                "growth_ratio": pytest.approx(15 / 220),
                "max_deviation": pytest.approx(15 / 220),
                "flat": False,
                "verdict": "not flat",
            },
            id="flat-then-growing-at-the-end",
        ),
        pytest.param(
            series([100.0] * 12 + [100, 104, 97, 103, 96, 105, 95, 102, 98, 100]),
            {
                "start": 100.0,
                "end": 100.0,
                "growth_ratio": 0.0,
                "max_deviation": pytest.approx(0.05),
                "flat": True,
                "verdict": "flat",
                "judged": 10,
            },
            id="noise-within-tolerance-either-way",
        ),
        pytest.param(
            series([100.0] * 12 + [100, 104, 94, 103, 100]),
            {"growth_ratio": 0.0, "max_deviation": pytest.approx(-0.06), "flat": False},
            id="one-dip-beyond-tolerance",
        ),
        pytest.param(
            series([40.0] * 12 + [40, 42, 40]),
            {"start": 40.0, "max_deviation": pytest.approx(0.05), "flat": True},
            id="small-counts-at-the-edge",
        ),
        pytest.param(
            series([0.0] * 15),
            {"start": 0.0, "growth_ratio": 0.0, "flat": True},
            id="zero-stays-zero",
        ),
        pytest.param(
            series([0.0] * 13 + [1.0]),
            {"start": 0.0, "growth_ratio": math.inf, "flat": False},
            id="zero-start-then-anything-is-growth",
        ),
        pytest.param(
            series([100.0] * 13),
            {
                "start": 100.0,
                "end": None,
                "growth_ratio": None,
                "max_deviation": None,
                "slope_per_min": None,
                "flat": False,
                "verdict": "too short",
                "judged": 1,
            },
            id="too-short-one-sample-after-skip",
        ),
        pytest.param(
            series([100.0] * 12),
            {"start": None, "flat": False, "verdict": "too short", "judged": 0},
            id="too-short-nothing-after-skip",
        ),
        pytest.param(
            [],
            {"start": None, "flat": False, "verdict": "too short", "judged": 0},
            id="too-short-empty",
        ),
    ],
)
def test_judge(samples: list[tuple[float, float]], expected: dict[str, Any]) -> None:
    verdict = judge(samples)  # skip_s=120, tolerance=0.05
    assert {key: verdict[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("kwargs", "flat", "start"),
    [
        pytest.param({"skip_s": 0.0}, False, 100.0, id="no-skip-judges-the-warm-up"),
        pytest.param({"skip_s": 25.0}, True, 130.0, id="skip-between-samples-starts-at-next"),
        pytest.param({"skip_s": 30.0}, True, 130.0, id="sample-at-skip-is-included"),
        pytest.param({"skip_s": 30.0, "tolerance": 0.001}, False, 130.0, id="tighter-tolerance"),
    ],
)
def test_judge_settings(kwargs: dict[str, float], flat: bool, start: float) -> None:
    samples = series([100, 110, 120, 130, 130, 130.5, 130])
    verdict = judge(samples, **kwargs)
    assert (verdict["flat"], verdict["start"]) == (flat, start)


def test_read_rss_kib_of_this_process() -> None:
    assert read_rss_kib(os.getpid()) > 0


def test_count_fds_of_this_process(tmp_path: Path) -> None:
    before = count_fds(os.getpid())
    assert before > 0
    with open(tmp_path / "one", "w"):
        assert count_fds(os.getpid()) == before + 1
    assert count_fds(os.getpid()) == before


@pytest.mark.parametrize("read", [read_rss_kib, count_fds])
def test_a_process_that_is_gone(read: Any) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError, whatever the reader
        read(2**22 + 1)  # above the largest pid Linux hands out (pid_max <= 2**22)


@contextlib.asynccontextmanager
async def http_ok() -> AsyncIterator[str]:
    """A keep-alive HTTP server on loopback answering every request 200 `{}`; its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


class StandInStack:
    """What soak reads of a Stack: info["gateway"], gateway.proc.pid, supervisor.deployments
    and supervisor.replicas(d) (name, proc.pid, exited.done())."""

    def __init__(self, url: str, echo_pid: int) -> None:
        self.info = {"gateway": url}
        self.gateway = SimpleNamespace(proc=SimpleNamespace(pid=os.getpid()))
        self.supervisor = self
        self.deployments = ["echo"]
        self.echo_pid = echo_pid

    def replicas(self, deployment: str) -> list[SimpleNamespace]:
        running = SimpleNamespace(done=lambda: False)
        return [
            SimpleNamespace(name="echo-1", proc=SimpleNamespace(pid=self.echo_pid), exited=running)
        ]


async def test_soak_against_a_stand_in_stack() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        async with http_ok() as url:
            stack = StandInStack(url, echo_pid=os.getpid())

            async def replace_echo() -> None:  # as the supervisor would after a crash
                await asyncio.sleep(0.35)
                stack.echo_pid = child.pid

            lines: list[str] = []
            replaced = asyncio.ensure_future(replace_echo())
            result = await soak(
                stack,  # type: ignore[arg-type]
                1.0, rate=40, workers=2, interval=0.25, skip_s=0.5, report=lines.append,
            )  # fmt: skip
            await replaced
    finally:
        child.kill()
        await child.wait()

    assert result["failed"] == {}
    assert 20 <= result["calls"] <= 42  # 40 due; fewer if this machine is busy
    assert set(result["processes"]) == {"gateway", "echo-1"}
    gateway, echo = result["processes"]["gateway"], result["processes"]["echo-1"]
    assert [t for t, _, _ in gateway["samples"]] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1.0], abs=0.15
    )
    assert all(rss > 0 and fds > 0 for _, rss, fds in gateway["samples"])
    assert [pid for _, pid in echo["pids"]] == [os.getpid(), child.pid]
    assert gateway["rss"]["judged"] == 3  # 0.5, 0.75 and 1.0
    assert result["flat"] == all(p["flat"] for p in result["processes"].values())
    assert sum(" s  calls " in line for line in lines) == 5  # one line a sampling round
    assert any(f"pid {os.getpid()} -> {child.pid}" in line for line in lines)
    assert any(
        line.startswith("echo-1 ") and f"{os.getpid()}->{child.pid}" in line for line in lines
    )
