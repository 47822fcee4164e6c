"""A graceful drain as a caller in another process sees it: how long after a service's SIGTERM
a MeshChannel stops picking it (NOT_SERVING heard over Health.Watch) and drops it (its lease
revoked, seen by the registry watch), idle and under load. Part of the registry benchmark
(bench/registry.py); these figures are why the drain delay is 1 s (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from bench import BenchmarkFailed, Figures
from bench.echo_fleet import (
    CHANGE_TIMEOUT,
    STARTUP_TIMEOUT,
    EchoProcess,
    in_ms,
    reaped,
    spawn_echo,
    summary,
    within,
)
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from mesh.aio import cancel_and_wait
from mesh.client import ClientConfig, MeshChannel
from mesh.client.endpoint import Endpoint
from mesh.client.pool import ServicePool
from mesh.testing import eventually
from mesh.tls import TlsFiles

if TYPE_CHECKING:
    from bench.registry import Plan

__all__ = ["CALLER", "CallerDrain"]

NAME = "registry"
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent

# The drain as a caller sees it: echo replicas (mTLS) in a namespace of their own.
DRAIN_NAMESPACE = "bench-drain"
ECHO_SERVICE = "hms.testing.v1.EchoService"
CALLER = "ops"  # the caller's certificate name
DRAIN_DELAY = 1.0  # the services' default, passed explicitly: the margin under test
CALL_TIMEOUT = 5.0
LOAD_CONCURRENCY = 32
# Under load, a replica is signalled once it has answered this many calls (the load
# generator's, nearly all): it is taking its share of the load.
LOAD_CALLS = 200
# `Endpoint.serving` has no event: it is polled this often (the figure's resolution).
POLL = 0.001


# -- what a caller in another process sees of a graceful drain -------------------------------


@dataclass(frozen=True)
class DrainSample:
    """One SIGTERM as the caller's MeshChannel saw it (seconds from the SIGTERM)."""

    not_serving: float | None  # its Endpoint's Health.Watch said NOT_SERVING; None: dropped first
    dropped: float  # its Endpoint left the pool (registry watch: the lease was revoked)


def find_endpoint(pool: ServicePool, deployment: str) -> Endpoint | None:
    for endpoint in pool.endpoints.values():
        if endpoint.instance.deployment == deployment:
            return endpoint
    return None


async def unless_exited(echo: EchoProcess, awaitable: Awaitable[T], timeout: float, what: str) -> T:
    """`await awaitable`; BenchmarkFailed naming `what` if `echo`'s process exits first or
    `timeout` s go by (a process that dies changes nothing the caller could wait on)."""
    task = asyncio.ensure_future(awaitable)
    exited = asyncio.ensure_future(echo.proc.wait())
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait([task, exited], return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise BenchmarkFailed(
            f"{NAME}: {what} did not happen within {timeout} s; "
            f"{echo.deployment}'s log:\n{echo.tail()}"
        ) from None
    finally:
        await cancel_and_wait(task, exited)
    if task.done() and not task.cancelled():
        return task.result()
    raise BenchmarkFailed(
        f"{NAME}: {echo.deployment} exited with {echo.proc.returncode} before {what}:\n"
        f"{echo.tail()}"
    )


async def ready_in_pool(
    pool: ServicePool, stub: echo_pb2_grpc.EchoServiceStub, echo: EchoProcess
) -> Endpoint:
    """`echo`'s Endpoint, once it is in the caller's pool and has answered a call through the
    channel (so the channel to it and its Health.Watch stream are open)."""

    async def ready() -> Endpoint:
        while (endpoint := find_endpoint(pool, echo.deployment)) is None:
            await pool.wait_changed(STARTUP_TIMEOUT)  # the membership changed: look again
        # A fresh instance takes the pool's next call as its warm-up (ServicePool._choose).
        request = echo_pb2.EchoRequest(message="warm-up")
        while True:
            answer = await stub.Echo(request, timeout=CALL_TIMEOUT)
            if answer.served_by == echo.deployment:
                return endpoint

    what = f"{echo.deployment} in the caller's pool, with a call answered through it"
    return await unless_exited(echo, ready(), STARTUP_TIMEOUT, what)


def served_calls(metrics_address: str) -> float:
    """EchoService.Echo calls a service process has answered OK (its Prometheus counter)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=2) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mesh_server_requests_total"
        and sample.labels.get("method") == "Echo"
        and sample.labels.get("code") == "OK"
    )


async def loaded(
    echo: EchoProcess, endpoint: Endpoint, loadgen: asyncio.subprocess.Process
) -> None:
    """Wait until `echo` has answered LOAD_CALLS calls: the load generator reaches it too
    (its server-side call counter, read every 20 ms: a condition without an event)."""
    metrics = endpoint.instance.metadata.get("metrics", "")
    if not metrics:
        raise BenchmarkFailed(f"{NAME}: {echo.deployment} registered no metrics address")

    async def enough() -> bool:
        if loadgen.returncode is not None:
            raise BenchmarkFailed(f"{NAME}: the load generator exited ({loadgen.returncode})")
        return await asyncio.to_thread(served_calls, metrics) >= LOAD_CALLS

    # eventually's own bound is the longer one: the timeout that fires names what was awaited.
    polled = eventually(enough, STARTUP_TIMEOUT + 1, interval=0.02)
    what = f"{echo.deployment} answering {LOAD_CALLS} calls under load"
    await unless_exited(echo, polled, STARTUP_TIMEOUT, what)


async def sigterm_seen_by_caller(
    pool: ServicePool, endpoint: Endpoint, echo: EchoProcess
) -> DrainSample:
    """SIGTERM `echo`; when its Endpoint turned NOT_SERVING and when it left the pool.

    Leaving the pool is an event (the pool's membership change, stamped as this task wakes);
    `serving` is an attribute the Endpoint's health task sets, with no event: it is polled
    every POLL s, so that figure is late by up to one poll. Once dropped, the Endpoint's
    health watch is cancelled: if the registry removal came first, NOT_SERVING is never seen.
    """

    def gone() -> bool:
        return pool.endpoints.get(endpoint.key) is not endpoint

    async def dropped() -> float:
        while not gone():
            await pool.wait_changed(CHANGE_TIMEOUT)
        return time.perf_counter()

    async def not_serving() -> float | None:
        # Bounded by the wait below; this longer bound only ends a leftover poll.
        await eventually(lambda: not endpoint.serving or gone(), CHANGE_TIMEOUT + 1, interval=POLL)
        return None if endpoint.serving else time.perf_counter()

    heard = asyncio.ensure_future(not_serving())
    left = asyncio.ensure_future(dropped())
    sent = time.perf_counter()
    os.kill(echo.proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(CHANGE_TIMEOUT):
            await asyncio.wait([heard, left])
    except TimeoutError:
        missing = [
            what for what, task in (("NOT_SERVING", heard), ("removal", left)) if not task.done()
        ]
        raise BenchmarkFailed(
            f"{NAME}: the caller saw no {' and no '.join(missing)} of {echo.deployment} within "
            f"{CHANGE_TIMEOUT} s after SIGTERM; its log:\n{echo.tail()}"
        ) from None
    finally:
        await cancel_and_wait(heard, left)
    heard_at = heard.result()
    exit_within = DRAIN_DELAY + CHANGE_TIMEOUT
    code = await within(exit_within, f"{echo.deployment}'s exit after SIGTERM", echo.proc.wait())
    if code != 0:
        raise BenchmarkFailed(f"{NAME}: {echo.deployment} drained with exit {code}:\n{echo.tail()}")
    return DrainSample(None if heard_at is None else heard_at - sent, left.result() - sent)


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [float(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return total - idle, total


def _drain_figures(prefix: str, samples: Sequence[DrainSample]) -> Figures:
    heard = [s.not_serving for s in samples if s.not_serving is not None]
    figures: Figures = {}
    if heard:
        figures |= summary(f"sigterm_to_not_serving{prefix}", in_ms(heard), "ms", p99=True)
    figures[f"sigterm_dropped_first{prefix}_runs"] = len(samples) - len(heard)
    figures |= summary(
        f"sigterm_to_dropped{prefix}", in_ms([s.dropped for s in samples]), "ms", p99=True
    )
    return figures


class CallerDrain:
    """One MeshChannel (caller `ops`, mTLS) in this process, echo replicas in processes of
    their own: a keeper registered throughout, and one victim per run."""

    def __init__(self, endpoint: str, work_dir: Path, tls_dir: Path) -> None:
        self.endpoint = endpoint
        self.work_dir = work_dir
        self.tls_dir = tls_dir
        self.fleet: list[EchoProcess] = []
        self.runs = 0

    async def spawn(self, deployment: str) -> EchoProcess:
        echo = await spawn_echo(
            self.endpoint,
            deployment,
            10,
            self.work_dir,
            namespace=DRAIN_NAMESPACE,
            tls_dir=self.tls_dir,
            extra=[f"--drain-delay={DRAIN_DELAY}"],
        )
        self.fleet.append(echo)
        return echo

    def loadgen_command(self, duration: float) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--mode=mesh",
            f"--etcd={self.endpoint}",
            f"--namespace={DRAIN_NAMESPACE}",
            f"--tls-dir={self.tls_dir}",
            f"--cert-name={CALLER}",
            f"--concurrency={LOAD_CONCURRENCY}",
            "--warmup=0",
            f"--duration={duration}",
        ]

    async def one(
        self,
        pool: ServicePool,
        stub: echo_pb2_grpc.EchoServiceStub,
        loadgen: asyncio.subprocess.Process | None,
    ) -> DrainSample:
        self.runs += 1
        echo = await self.spawn(f"drain-{self.runs}")
        endpoint = await ready_in_pool(pool, stub, echo)
        if loadgen is not None:
            await loaded(echo, endpoint, loadgen)
        return await sigterm_seen_by_caller(pool, endpoint, echo)

    async def measure(self, plan: Plan) -> Figures:
        config = ClientConfig(
            etcd=(self.endpoint,),
            namespace=DRAIN_NAMESPACE,
            tls=TlsFiles(self.tls_dir, CALLER),
        )
        channel = await MeshChannel.connect(config)
        loadgen: asyncio.subprocess.Process | None = None
        try:
            async with reaped(self.fleet):
                stub = echo_pb2_grpc.EchoServiceStub(channel)
                pool = await channel.pool(ECHO_SERVICE)
                await ready_in_pool(pool, stub, await self.spawn("drain-keeper"))
                idle = [await self.one(pool, stub, None) for _ in range(plan.drain)]
                figures = _drain_figures("", idle)

                # The load generator runs until stopped: its duration only bounds a leftover.
                log_path = self.work_dir / "loadgen.log"
                with open(log_path, "ab") as log_file:  # noqa: ASYNC230
                    loadgen = await asyncio.create_subprocess_exec(
                        *self.loadgen_command(duration=plan.drain * 60.0),
                        stdout=log_file,
                        stderr=asyncio.subprocess.STDOUT,
                        stdin=asyncio.subprocess.DEVNULL,
                        cwd=ROOT,
                        start_new_session=True,
                    )
                busy_before, total_before = cpu_times()
                under_load = [await self.one(pool, stub, loadgen) for _ in range(plan.drain)]
                busy_after, total_after = cpu_times()
                if loadgen.returncode is not None:
                    raise BenchmarkFailed(
                        f"{NAME}: the load generator exited ({loadgen.returncode}):\n"
                        f"{log_path.read_text(errors='replace')[-1500:]}"
                    )
                figures |= _drain_figures("_loaded", under_load)
                busy = (busy_after - busy_before) / max(total_after - total_before, 1.0)
                figures["loaded_cpu_busy_fraction"] = round(busy, 3)
                figures["loaded_concurrency"] = LOAD_CONCURRENCY
            return figures
        finally:
            if loadgen is not None and loadgen.returncode is None:
                loadgen.kill()  # its figures are not wanted: it only made the load
            if loadgen is not None:
                await loadgen.wait()
            await within(CHANGE_TIMEOUT, "MeshChannel.close()", channel.close())
