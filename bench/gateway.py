"""What the REST gateway costs: the same unary echo call three ways, in one run.

- direct:      gRPC through a MeshChannel (`bench.loadgen --mode mesh`), no HTTP at all;
- handwritten: `POST /v1/echo` to `bench.rest_handler`, a REST handler written by hand for
               this one method (uvicorn + httptools, json_format, a grpc.aio stub over mTLS);
- gateway:     `POST /v1/echo` to `mesh gateway`, which learnt the route by reflection and
               calls through its mesh channel (discovery, deadline, retries, breaker, mTLS).

One echo server (real etcd, mTLS) serves all three. Load comes from a separate process
(`bench.loadgen`, `--mode http` being a raw asyncio HTTP/1.1 keep-alive client). The modes run
interleaved at concurrency 16 and then 64, `rounds` times, the order reversed every other
round; figures are medians, ratios the medians of ratios paired within a round.

Figures go under two entries: `gateway_vs_handwritten` (every per-mode figure and c/b) and
`gateway_vs_direct` (c/a). The issue's bar: c/b >= 1.0 at concurrency 64.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchmarkFailed, Figures
from bench.loadgen import Plan, Round, interleaved, run_loadgen
from hms_tools import certs
from hms_tools.devstack import DevStack, GatewayProcess, ListeningProcess, ServiceProcess
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery

NAME = "gateway_vs_handwritten"
DIRECT_ENTRY = "gateway_vs_direct"

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "hms.testing.v1.EchoService"
MODES = ("direct", "handwritten", "gateway")
CALLER = "ops"
STARTUP_TIMEOUT = 60.0
LOADGEN_SLACK = 30.0
TARGET_RATIO = 1.0


FULL = Plan(concurrencies=(16, 64), rounds=5, warmup=0.5, duration=3.0)
QUICK = Plan(concurrencies=(16, 64), rounds=1, warmup=0.3, duration=1.0)


class RestHandlerProcess(ListeningProcess):
    MODULE = ("bench.rest_handler",)
    LISTENING = "rest handler listening on "


@dataclass(frozen=True)
class Targets:
    etcd: str
    tls_dir: Path
    gateway: str
    handwritten: str

    def loadgen_args(self, mode: str, concurrency: int, plan: Plan) -> list[str]:
        if mode == "direct":
            target = ["--mode=mesh", f"--etcd={self.etcd}", f"--tls-dir={self.tls_dir}",
                      f"--cert-name={CALLER}"]  # fmt: skip
        else:
            target = ["--mode=http", f"--url={getattr(self, mode)}"]
        return [
            sys.executable,
            "-m",
            "bench.loadgen",
            *target,
            f"--concurrency={concurrency}",
            f"--warmup={plan.warmup}",
            f"--duration={plan.duration}",
        ]


@asynccontextmanager
async def stack(work_dir: Path) -> AsyncIterator[Targets]:
    """etcd, one echo server, the gateway and the hand-written handler."""
    tls_dir = work_dir / "tls"
    await asyncio.to_thread(certs.ensure, tls_dir, ["echo", "gateway", CALLER])
    dev = DevStack(work_dir, nats=False)
    await asyncio.to_thread(dev.start)
    endpoint = dev.etcd.endpoint
    echo = ServiceProcess(
        "echo",
        [f"--etcd={endpoint}", f"--tls-dir={tls_dir}", "--deployment=echo",
         f"--data-dir={work_dir / 'echo'}", "--tracing=off"],
        log_path=work_dir / "echo.log",
    )  # fmt: skip
    servers: list[ServiceProcess] = [echo]
    etcd = Etcd([endpoint])
    discovery = Discovery(etcd, "hms", SERVICE)
    try:
        echo.start()
        await etcd.connect()
        await discovery.start(timeout=STARTUP_TIMEOUT)
        try:
            (instance,) = await discovery.wait_for(bool, STARTUP_TIMEOUT)
        except TimeoutError:
            raise BenchmarkFailed(f"{NAME}: echo not registered:\n{echo.log_tail()}") from None
        gateway = GatewayProcess(
            [f"--etcd={endpoint}", f"--tls-dir={tls_dir}", "--cert-name=gateway"],
            log_path=work_dir / "gateway.log",
        )
        handwritten = RestHandlerProcess(
            "rest_handler",
            [f"--address={instance.address}", f"--identity={instance.identity}",
             f"--tls-dir={tls_dir}", f"--cert-name={CALLER}"],
            log_path=work_dir / "rest_handler.log",
        )  # fmt: skip
        for server in (gateway, handwritten):
            servers.append(server.start())
            await asyncio.to_thread(server.wait_url, STARTUP_TIMEOUT)
        yield Targets(endpoint, tls_dir, gateway.url, handwritten.url)
    finally:
        await discovery.stop()
        await etcd.close()
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))
        await asyncio.to_thread(dev.stop)


async def measure(targets: Targets, plan: Plan) -> dict[int, list[Round]]:
    async def run_mode(mode: str, concurrency: int) -> dict[str, Any]:
        command = targets.loadgen_args(mode, concurrency, plan)
        timeout = plan.warmup + plan.duration + LOADGEN_SLACK
        label = f"{mode:11} c={concurrency:<3}"
        return await run_loadgen(NAME, label, command, timeout, cwd=ROOT)

    return await interleaved(MODES, plan, run_mode)


def figures_of(rounds: dict[int, list[Round]]) -> Figures:
    """Per mode and concurrency, then c/b ratios; c/a ratios under `gateway_vs_direct.`."""
    figures: Figures = {}
    for concurrency, trios in rounds.items():
        for mode in MODES:
            for name in ("calls_per_s", "p50_ms", "p99_ms"):
                value = statistics.median(trio[mode][name] for trio in trios)
                figures[f"{mode}_c{concurrency}_{name}"] = round(value, 3)
    for concurrency, trios in rounds.items():
        for prefix, baseline in (("", "handwritten"), (f"{DIRECT_ENTRY}.", "direct")):
            for source, name in (("calls_per_s", "throughput"), ("p50_ms", "p50"),
                                 ("p99_ms", "p99")):  # fmt: skip
                ratio = statistics.median(
                    trio["gateway"][source] / trio[baseline][source] for trio in trios
                )
                figures[f"{prefix}{name}_ratio_c{concurrency}"] = round(ratio, 3)
    top = max(rounds)
    figures["rounds"] = len(rounds[top])
    met = figures[f"throughput_ratio_c{top}"] >= TARGET_RATIO  # type: ignore[operator]
    figures[f"target_c{top}"] = "met" if met else "missed"
    return figures


def table(figures: Figures, concurrencies: Sequence[int]) -> str:
    lines = [f"{'':16}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}   gateway vs this"]
    for c in concurrencies:
        for mode in MODES:
            row = [figures[f"{mode}_c{c}_{m}"] for m in ("calls_per_s", "p50_ms", "p99_ms")]
            line = f"{mode} c{c}".ljust(16) + f"{row[0]:>9.0f}{row[1]:>9.2f}{row[2]:>9.2f}"
            prefix = {"handwritten": "", "direct": f"{DIRECT_ENTRY}."}.get(mode)
            if prefix is not None:
                rps = figures[f"{prefix}throughput_ratio_c{c}"]
                p99 = figures[f"{prefix}p99_ratio_c{c}"]
                line += f"   x{rps:.3f} calls/s, x{p99:.2f} p99"
            lines.append(line)
    return "\n".join(lines) + "\n"


async def run(quick: bool) -> Figures:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        async with stack(Path(tmp)) as targets:
            rounds = await measure(targets, plan)
    figures = figures_of(rounds)
    print(table(figures, plan.concurrencies), end="", file=sys.stderr)
    return figures
