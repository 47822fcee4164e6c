"""Every core: one worker against two, for a service behind the mesh channel and for the gateway.

Four modes, each measured by its own client process (`bench.loadgen`) at concurrency 64:

- mesh_w1, mesh_w2: gRPC through a MeshChannel to echo run with `--workers=1` (namespace
  `scale1`) and with `--workers=2` (`scale2`: two processes, each registered);
- gateway_w1, gateway_w2: `POST /v1/echo` to `mesh gateway --workers=1` and `--workers=2`
  (processes sharing one listening socket), both in front of the two-worker echo.

Besides throughput, the CPU of each call with the client included: the load generator's own
CPU over its measured window plus that of the servers it loads (every process of the echo
deployment, and of the gateway for the gateway modes, read from /proc over the same window),
divided by the calls. `*_throughput_ratio` is w2 / w1; `*_cpu_per_call_ratio` is w2 / w1 (a
second process costs some CPU of its own).

On this machine's C cores the load generator itself needs a share: the bound printed beside
each ratio is what two workers could give at most, ``min(2, (C - client) / server)``, with
`client` and `server` the cores (CPU seconds per second) the client and the loaded servers
used in the one-worker run; the client's share only grows with the throughput, so the real
bound is lower still. The modes run interleaved, `rounds` times, the order reversed every
other round; figures are medians, ratios medians of ratios paired within a round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchmarkFailed, Figures
from bench.loadgen import Plan, Round, interleaved, run_loadgen
from hms_tools import certs
from hms_tools.devstack import DevStack, GatewayProcess, ServiceProcess
from mesh.registry.etcd import Etcd
from mesh.registry.watch import Discovery

NAME = "scaling"

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "hms.testing.v1.EchoService"
MODES = ("mesh_w1", "mesh_w2", "gateway_w1", "gateway_w2")
CALLER = "ops"
CONCURRENCY = 64
STARTUP_TIMEOUT = 60.0
LOADGEN_SLACK = 30.0

FULL = Plan(concurrencies=(CONCURRENCY,), rounds=3, warmup=0.5, duration=3.0)
QUICK = Plan(concurrencies=(CONCURRENCY,), rounds=1, warmup=0.3, duration=1.0)


@dataclass(frozen=True)
class Targets:
    etcd: str
    tls_dir: Path
    echo_pids: dict[str, int]  # namespace -> the echo supervisor's pid
    gateways: dict[str, tuple[str, int]]  # mode -> (url, pid)

    def loadgen_args(self, mode: str, plan: Plan) -> list[str]:
        if mode.startswith("mesh_"):
            namespace = "scale1" if mode == "mesh_w1" else "scale2"
            target = [
                "--mode=mesh", f"--etcd={self.etcd}", f"--namespace={namespace}",
                f"--tls-dir={self.tls_dir}", f"--cert-name={CALLER}",
            ]  # fmt: skip
            watch = [self.echo_pids[namespace]]
        else:
            url, pid = self.gateways[mode]
            target = ["--mode=http", f"--url={url}"]
            watch = [pid, self.echo_pids["scale2"]]
        return [
            sys.executable, "-m", "bench.loadgen", *target,
            f"--concurrency={CONCURRENCY}", f"--warmup={plan.warmup}",
            f"--duration={plan.duration}", f"--watch-pids={','.join(map(str, watch))}",
        ]  # fmt: skip


def _echo(endpoint: str, namespace: str, workers: int, work_dir: Path, tls_dir: Path) -> Any:
    return ServiceProcess(
        "echo",
        [f"--etcd={endpoint}", f"--namespace={namespace}", f"--tls-dir={tls_dir}",
         "--cert-name=echo", f"--deployment=echo-{namespace}", f"--workers={workers}",
         f"--data-dir={work_dir / namespace}", "--tracing=off"],
        log_path=work_dir / f"echo-{namespace}.log",
    )  # fmt: skip


async def _registered(etcd: Etcd, namespace: str, count: int, echo: ServiceProcess) -> None:
    discovery = Discovery(etcd, namespace, SERVICE)
    await discovery.start(timeout=STARTUP_TIMEOUT)
    try:
        await discovery.wait_for(lambda found: len(found) >= count, STARTUP_TIMEOUT)
    except TimeoutError:
        raise BenchmarkFailed(f"{NAME}: echo in {namespace}:\n{echo.log_tail()}") from None
    finally:
        await discovery.stop()


@asynccontextmanager
async def stack(work_dir: Path) -> AsyncIterator[Targets]:
    """etcd; echo with one worker in `scale1` and with two in `scale2`; two gateways (one and
    two workers) in front of `scale2`."""
    tls_dir = work_dir / "tls"
    await asyncio.to_thread(certs.ensure, tls_dir, ["echo", "gateway", CALLER])
    dev = DevStack(work_dir, nats=False)
    await asyncio.to_thread(dev.start)
    endpoint = dev.etcd.endpoint
    workers = {"scale1": 1, "scale2": 2}
    echoes = {ns: _echo(endpoint, ns, n, work_dir, tls_dir) for ns, n in workers.items()}
    servers: list[ServiceProcess] = []
    etcd = Etcd([endpoint])
    try:
        for echo in echoes.values():
            servers.append(echo.start())
        await etcd.connect()
        await _registered(etcd, "scale1", 1, echoes["scale1"])
        await _registered(etcd, "scale2", 2, echoes["scale2"])
        gateways: dict[str, tuple[str, int]] = {}
        for count in (1, 2):
            gateway = GatewayProcess(
                [f"--etcd={endpoint}", "--namespace=scale2", f"--tls-dir={tls_dir}",
                 "--cert-name=gateway", f"--workers={count}"],
                log_path=work_dir / f"gateway-w{count}.log",
            )  # fmt: skip
            servers.append(gateway.start())
            await asyncio.to_thread(gateway.wait_url, STARTUP_TIMEOUT)
            await asyncio.to_thread(gateway.wait_ready, STARTUP_TIMEOUT)
            gateways[f"gateway_w{count}"] = (gateway.url, gateway.pid)
        pids = {namespace: echo.pid for namespace, echo in echoes.items()}
        yield Targets(endpoint, tls_dir, pids, gateways)
    finally:
        await etcd.close()
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))
        await asyncio.to_thread(dev.stop)


async def measure(targets: Targets, plan: Plan) -> list[Round]:
    async def run_mode(mode: str, _concurrency: int) -> dict[str, Any]:
        command = targets.loadgen_args(mode, plan)
        timeout = plan.warmup + plan.duration + LOADGEN_SLACK
        return await run_loadgen(NAME, f"{mode:10}", command, timeout, cwd=ROOT)

    return (await interleaved(MODES, plan, run_mode))[CONCURRENCY]


def figures_of(rounds: list[Round], cores: int) -> Figures:
    """Per mode: calls/s, p99, CPU per call (client included); per pair: the w2/w1 ratios and
    the bound two workers could reach on `cores` cores."""
    figures: Figures = {}

    def per_call_us(result: dict[str, Any]) -> float:
        return (result["cpu_s"] + result["servers_cpu_s"]) * 1e6 / result["calls"]

    for mode in MODES:
        runs = [r[mode] for r in rounds]
        figures[f"{mode}_calls_per_s"] = round(statistics.median(x["calls_per_s"] for x in runs))
        figures[f"{mode}_p99_ms"] = round(statistics.median(x["p99_ms"] for x in runs), 2)
        figures[f"{mode}_cpu_per_call_us"] = round(statistics.median(map(per_call_us, runs)), 1)
    for kind in ("mesh", "gateway"):
        one, two = f"{kind}_w1", f"{kind}_w2"
        figures[f"{kind}_throughput_ratio"] = round(
            statistics.median(r[two]["calls_per_s"] / r[one]["calls_per_s"] for r in rounds), 3
        )
        figures[f"{kind}_cpu_per_call_ratio"] = round(
            statistics.median(per_call_us(r[two]) / per_call_us(r[one]) for r in rounds), 3
        )
        client = statistics.median(r[one]["cpu_s"] / r[one]["duration_s"] for r in rounds)
        server = statistics.median(r[one]["servers_cpu_s"] / r[one]["duration_s"] for r in rounds)
        figures[f"{kind}_w1_client_cores"] = round(client, 2)
        figures[f"{kind}_w1_server_cores"] = round(server, 2)
        figures[f"{kind}_bound_ratio"] = round(min(2.0, (cores - client) / server), 3)
    figures["cores"] = cores
    figures["concurrency"] = CONCURRENCY
    figures["rounds"] = len(rounds)
    return figures


def table(figures: Figures) -> str:
    lines = [f"{'':12}{'calls/s':>9}{'p99 ms':>9}{'µs/call':>9}"]
    for mode in MODES:
        row = (figures[f"{mode}_{m}"] for m in ("calls_per_s", "p99_ms", "cpu_per_call_us"))
        calls, p99, cpu = row
        lines.append(f"{mode:12}{calls:>9.0f}{p99:>9.2f}{cpu:>9.0f}")
    for kind in ("mesh", "gateway"):
        lines.append(
            f"{kind}: 2 workers / 1 = x{figures[f'{kind}_throughput_ratio']:.3f} calls/s "
            f"(bound on {figures['cores']} cores with this client: "
            f"x{figures[f'{kind}_bound_ratio']:.2f}), "
            f"x{figures[f'{kind}_cpu_per_call_ratio']:.3f} CPU per call"
        )
    return "\n".join(lines) + "\n"


async def run(quick: bool) -> Figures:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        async with stack(Path(tmp)) as targets:
            rounds = await measure(targets, plan)
    figures = figures_of(rounds, os.cpu_count() or 1)
    print(table(figures), end="", file=sys.stderr)
    return figures
