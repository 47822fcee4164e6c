"""Soak: a steady rate of REST calls through the gateway of a running stack for a long while,
the resident memory (RSS) and open file descriptors of the gateway and of every service
replica sampled on a fixed schedule, and each series judged "flat" or not.

    result = await soak(stack, 600)        # 10 minutes at 200 calls/s, a sample every 10 s
    result["flat"]                         # every process's RSS and fds stayed within 5 %

What is sampled: the gateway (`stack.gateway`) and each replica the supervisor runs, by
replica name (`echo-1`): a replica restarted after a crash or by a rolling restart keeps its
name, and the new pid is noted (`"pids"`) and reported as it is seen. A process that cannot be
read at a sampling round (it just exited) misses that round (`"missed"`).

How a series is judged (`judge`): the first `skip_s` seconds are warm-up (imports, caches,
connection pools, the allocator settling) and left out; what follows must stay within
`tolerance` of the first sample taken at or after `skip_s`.

The readers of /proc (`read_rss_kib`, `count_fds`) are Linux only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chaos.load import Recorder, http_target, run_load

if TYPE_CHECKING:
    from hms_tools.stack import Stack

__all__ = ["count_fds", "judge", "read_rss_kib", "slope_per_minute", "soak"]

PATH = "/v1/echo"  # EchoService.Echo: idempotent, answers with what it was sent
BODY = b'{"message":"soak"}'
GATEWAY = "gateway"


def read_rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB (VmRSS of /proc/PID/status). OSError when the process
    is gone; ProcessLookupError for one without memory (a zombie not reaped yet)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # "VmRSS:	   48372 kB"
    raise ProcessLookupError(f"pid {pid} has no resident memory (exited, not reaped yet)")


def count_fds(pid: int) -> int:
    """Open file descriptors of `pid` (entries of /proc/PID/fd); OSError when it is gone."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, in value units per minute.
    ValueError with fewer than two samples or when all are at the same time."""
    if len(samples) < 2:
        raise ValueError(f"a slope needs at least two samples, got {len(samples)}")
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    try:
        return statistics.linear_regression(times, values).slope * 60.0
    except statistics.StatisticsError as exc:  # every sample at the same time
        raise ValueError(f"no slope: {exc}") from None


def judge(
    samples: list[tuple[float, float]], *, skip_s: float = 120.0, tolerance: float = 0.05
) -> dict[str, Any]:
    """Is the series flat after its first `skip_s` seconds?

    Only the samples with t >= `skip_s` are judged. Of these:

    - "start" is the value of the first one (one sample, not a mean), and the reference;
    - "end" is the value of the last one; "growth_ratio" is end / start - 1;
    - "max_deviation" is value / start - 1 of the sample farthest from start (signed);
    - "slope_per_min" is their least-squares slope (value units per minute);
    - "flat" is True when every one of them is within `tolerance` of start, above or below:
      |value / start - 1| <= tolerance (a start of 0 allows only 0).

    Fewer than two samples after `skip_s` cannot be judged: "verdict" says "too short", "flat"
    is False and the figures that need two samples are None. Otherwise "verdict" is "flat" or
    "not flat". "judged" counts the samples judged.
    """
    after = sorted((t, v) for t, v in samples if t >= skip_s)
    if len(after) < 2:
        return {
            "start": after[0][1] if after else None,
            "end": None,
            "growth_ratio": None,
            "max_deviation": None,
            "slope_per_min": None,
            "flat": False,
            "verdict": "too short",
            "judged": len(after),
        }
    start, end = after[0][1], after[-1][1]
    deviations = [_ratio(v, start) - 1 for _, v in after]
    farthest = max(deviations, key=abs)
    flat = all(abs(d) <= tolerance + _EDGE for d in deviations)
    return {
        "start": start,
        "end": end,
        "growth_ratio": _ratio(end, start) - 1,
        "max_deviation": farthest,
        "slope_per_min": slope_per_minute(after),
        "flat": flat,
        "verdict": "flat" if flat else "not flat",
        "judged": len(after),
    }


_EDGE = 1e-9  # 105 / 100 - 1 is 0.050000000000000044: the edge itself is within tolerance


def _ratio(value: float, start: float) -> float:
    if start == 0:
        return 1.0 if value == 0 else math.copysign(math.inf, value)
    return value / start


async def soak(
    stack: Stack,
    seconds: float,
    *,
    rate: float = 200.0,
    workers: int = 16,
    interval: float = 10.0,
    skip_s: float = 120.0,
    tolerance: float = 0.05,
    report: Callable[[str], None] = print,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Load the stack's gateway for `seconds` (POST /v1/echo at `rate` calls/s over `workers`
    connections, with `headers`: a gated gateway's Authorization), sample every process at 0,
    `interval`, 2 * `interval`, ... and at the end; one line per sampling round, a table at the
    end, the figures returned (see `judge` for what "flat" means)."""
    if seconds <= 0 or interval <= 0:
        raise ValueError(f"seconds and interval must be > 0, got {seconds} and {interval}")
    url = stack.info.get("gateway")
    if not url:
        raise ValueError("the stack runs no gateway (StackConfig(gateway=True) and start() it)")
    rounds = math.ceil(seconds / interval - 1e-9)
    dues = [k * interval for k in range(rounds)] + [seconds]
    recorder = Recorder()
    stop = asyncio.Event()
    samples: dict[str, list[list[float]]] = {}
    pids: dict[str, list[list[float]]] = {}
    missed: dict[str, int] = {}
    report(
        f"soak: POST {url}{PATH} at {rate:g} calls/s over {workers} connections for "
        f"{seconds:g} s; RSS and fds sampled every {interval:g} s, judged after {skip_s:g} s"
    )
    async with http_target(url, "POST", PATH, BODY, headers) as target:
        began = time.monotonic()
        load = asyncio.ensure_future(
            run_load(target, rate=rate, workers=workers, until=stop, recorder=recorder)
        )
        load.add_done_callback(lambda _: stop.set())  # a load that ends early ends the soak
        try:
            for due in dues:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, began + due - time.monotonic())):
                        await stop.wait()
                if stop.is_set():
                    break
                elapsed = time.monotonic() - began
                _sample(
                    stack,
                    round(elapsed, 2),
                    samples=samples,
                    pids=pids,
                    missed=missed,
                    report=report,
                )
                failed = recorder.failures()
                failures = sum(failed.values())
                report(
                    f"  {elapsed:7.1f} s  calls {len(recorder.records):8d}  failed {failures}"
                    + (f" {failed}" if failed else "")
                )
        finally:
            stop.set()
            await load  # the workers finish their call in flight (and raise what load raised)
        elapsed = time.monotonic() - began

    processes: dict[str, Any] = {}
    for name, seen in pids.items():  # every process seen, even one never read: "too short"
        series = samples.get(name, [])
        rss = judge([(t, r) for t, r, _ in series], skip_s=skip_s, tolerance=tolerance)
        fds = judge([(t, f) for t, _, f in series], skip_s=skip_s, tolerance=tolerance)
        processes[name] = {
            "rss": rss,
            "fds": fds,
            "samples": series,
            "pids": seen,
            "missed": missed.get(name, 0),
            "flat": rss["flat"] and fds["flat"],
        }
    result: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        **recorder.window(),
        "processes": processes,
        "flat": bool(processes) and all(p["flat"] for p in processes.values()),
    }
    for line in _table(processes, skip_s, tolerance):
        report(line)
    report(
        f"soak: {result['calls']} calls in {result['seconds']:g} s, failed {result['failed']}, "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
        f"{'flat' if result['flat'] else 'NOT flat'}"
    )
    return result


def _processes(stack: Stack) -> dict[str, int]:
    """Name -> pid of the gateway and every replica whose process has not exited; of two
    replicas with one name (a rolling restart's old and new), the newer."""
    found: dict[str, int] = {}
    if stack.gateway is not None and stack.gateway.proc is not None:
        found[GATEWAY] = stack.gateway.proc.pid
    supervisor = stack.supervisor
    if supervisor is not None:
        for deployment in supervisor.deployments:
            for replica in supervisor.replicas(deployment):  # oldest first
                if not replica.exited.done():
                    found[replica.name] = replica.proc.pid
    return found


def _sample(
    stack: Stack,
    elapsed: float,
    *,
    samples: dict[str, list[list[float]]],
    pids: dict[str, list[list[float]]],
    missed: dict[str, int],
    report: Callable[[str], None],
) -> None:
    for name, pid in _processes(stack).items():
        seen = pids.setdefault(name, [])
        if seen and seen[-1][1] != pid:
            report(f"  {name}: pid {seen[-1][1]} -> {pid} (a new process) at {elapsed:.0f} s")
        if not seen or seen[-1][1] != pid:
            seen.append([elapsed, pid])
        try:
            sample = [elapsed, read_rss_kib(pid), count_fds(pid)]
        except OSError:  # exited between the listing and the reading
            missed[name] = missed.get(name, 0) + 1
            continue
        samples.setdefault(name, []).append(sample)


def _table(processes: dict[str, Any], skip_s: float, tolerance: float) -> list[str]:
    header = ("process", "pid", "RSS MiB start -> end", "RSS KiB/min", "fds start -> end", "flat")
    rows = [header]
    for name, p in sorted(processes.items(), key=lambda item: (item[0] != GATEWAY, item[0])):
        rss, fds = p["rss"], p["fds"]
        pid = "->".join(str(int(pid)) for _, pid in p["pids"])
        if rss["verdict"] == "too short" or fds["verdict"] == "too short":
            rows.append((name, pid, "-", "-", "-", f"too short (after {skip_s:g} s)"))
            continue
        failed = [
            f"{what} {j['max_deviation']:+.1%}"
            for what, j in (("rss", rss), ("fds", fds))
            if not j["flat"]
        ]
        rows.append(
            (
                name,
                pid,
                f"{rss['start'] / 1024:.1f} -> {rss['end'] / 1024:.1f} "
                f"({rss['growth_ratio']:+.1%})",
                f"{rss['slope_per_min']:+.0f}",
                f"{fds['start']:.0f} -> {fds['end']:.0f}",
                "yes" if not failed else f"no ({', '.join(failed)})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return [
        f"start: first sample at or after {skip_s:g} s; end: last sample; flat: RSS and fds "
        f"of every sample from start on within {tolerance:.0%} of start",
        *(line.rstrip() for line in lines),
    ]
