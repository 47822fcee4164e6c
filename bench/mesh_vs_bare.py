"""What the mesh channel costs a caller: unary echo over mTLS, bare grpc.aio against the mesh.

Five modes, each measured by its own client process (`bench.loadgen`) at concurrency 1, 16
and 64 (callers each awaiting one call at a time):

- bare:  a grpc.aio mTLS channel straight to echo-1 (`mesh.tls.instance_channel`);
- mesh1: a MeshChannel in namespace `bench1`, where echo-1 is the only instance;
- mesh3: a MeshChannel in namespace `bench3`, where echo-1, echo-2 and echo-3 are registered;
- trace1, trace100: mesh1 with svc.trace records on (mesh.tracerecords) at 1 % and at 100 %,
  on both sides: the client's channel and its own echo server (echo-t1, echo-t100, each alone
  in its namespace, `--trace-sample` 0.01 and 1), sending to the run's NATS. Their ratios are
  against mesh1, the same run without records (`trace1_vs_mesh1_*`). The loadgen's calls are
  made outside any trace, so its channel starts one per call (a service's calls run inside
  their handler's): the client's figure includes that, a little more than a service pays.

Three echo processes (real etcd, mTLS, each registered by its own ServiceHost in `bench3`);
the driver writes echo-1's registration once more under `bench1` (a registry key may point at
any server), so bare and mesh1 load the very same server process. mesh3 runs three servers and
the client on 2 cores: it shows the balancing works, not that three instances are faster.

The modes run interleaved (bare, mesh1, mesh3 at c=1, `rounds` times with the order reversed
every other time; then c=16; then c=64) so that drift on a noisy machine falls on all three.
Per-mode figures are medians over the rounds; ratios are medians of the ratios paired within
each round.

`python -m bench.mesh_vs_bare --serve` starts the same stack and prints the loadgen command
lines, for profiling one client by hand (`py-spy record -- <command>`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
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
from hms_tools.devstack import DevStack, ServiceProcess
from mesh.registry import keys
from mesh.registry.etcd import Etcd
from mesh.registry.registration import Registration
from mesh.registry.watch import Discovery

NAME = "mesh_vs_bare"

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "hms.testing.v1.EchoService"
ONE, THREE = "bench1", "bench3"  # registry namespaces with one and with three instances
ECHOES = ("echo-1", "echo-2", "echo-3")
MODES = ("bare", "mesh1", "mesh3", "trace1", "trace100")
#: svc.trace modes: sampling rate, and the echo server (alone in a namespace of its own name).
TRACED = {"trace1": 0.01, "trace100": 1.0}
CALLER = "ops"  # the client's certificate name
STARTUP_TIMEOUT = 60.0
# A loadgen process needs ~1 s to import grpc and protobuf, plus its warm-up and window.
LOADGEN_SLACK = 30.0
#: The issue's bar, at the highest concurrency: mesh1 / bare.
TARGET_THROUGHPUT_RATIO = 0.85
TARGET_P99_RATIO = 1.2


FULL = Plan(concurrencies=(1, 16, 64), rounds=3, warmup=0.5, duration=3.0)
QUICK = Plan(concurrencies=(1, 16, 64), rounds=1, warmup=0.3, duration=1.0)


@dataclass(frozen=True)
class Stack:
    """Where the loadgen finds the servers."""

    etcd: str
    tls_dir: Path
    address: str  # echo-1's, for the bare channel
    identity: str
    nats: str  # for the svc.trace modes

    def loadgen_args(self, mode: str, concurrency: int, plan: Plan) -> list[str]:
        if mode == "bare":
            target = ["--mode=bare", f"--address={self.address}", f"--identity={self.identity}"]
        elif mode in TRACED:
            target = [
                "--mode=mesh", f"--etcd={self.etcd}", f"--namespace=bench-{mode}",
                f"--nats={self.nats}", f"--trace-sample={TRACED[mode]}",
            ]  # fmt: skip
        else:
            namespace = ONE if mode == "mesh1" else THREE
            target = ["--mode=mesh", f"--etcd={self.etcd}", f"--namespace={namespace}"]
        return [
            sys.executable,
            "-m",
            "bench.loadgen",
            *target,
            f"--tls-dir={self.tls_dir}",
            f"--cert-name={CALLER}",
            f"--concurrency={concurrency}",
            f"--warmup={plan.warmup}",
            f"--duration={plan.duration}",
        ]


def _echo(
    endpoint: str,
    deployment: str,
    work_dir: Path,
    tls_dir: Path,
    *,
    namespace: str = THREE,
    extra: Sequence[str] = (),
) -> ServiceProcess:
    return ServiceProcess(
        "echo",
        [
            f"--etcd={endpoint}",
            f"--namespace={namespace}",
            f"--tls-dir={tls_dir}",
            "--cert-name=echo",
            f"--deployment={deployment}",
            f"--data-dir={work_dir / deployment}",
            "--tracing=off",
            *extra,
        ],
        log_path=work_dir / f"{deployment}.log",
    )


def _traced_echo(mode: str, endpoint: str, nats: str, work_dir: Path, tls_dir: Path) -> Any:
    """The echo server of a svc.trace mode: alone in namespace bench-<mode>, recording."""
    extra = (f"--nats={nats}", f"--trace-sample={TRACED[mode]}")
    return _echo(
        endpoint, _traced_name(mode), work_dir, tls_dir, namespace=f"bench-{mode}", extra=extra
    )


def _traced_name(mode: str) -> str:
    """trace1 -> echo-t1."""
    return f"echo-t{mode.removeprefix('trace')}"


async def _wait_registered(
    discovery: Discovery, fleet: Sequence[ServiceProcess], names: Sequence[str] = ECHOES
) -> dict[str, Any]:
    """deployment -> its Instance, once all `names` are in the registry; fails on a process
    exit."""

    def all_seen(instances: list[keys.Instance]) -> bool:
        if any(not echo.running for echo in fleet):
            return True
        return {i.deployment for i in instances} >= set(names)

    async def poll_exits() -> None:
        # A dead process changes nothing in the registry, and a Popen's exit is no event.
        while all(echo.running for echo in fleet):  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(discovery.wait_for(all_seen, STARTUP_TIMEOUT))
    exits = asyncio.ensure_future(poll_exits())
    try:
        await asyncio.wait([watcher, exits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watcher, exits):
            task.cancel()
        await asyncio.gather(watcher, exits, return_exceptions=True)
    for echo in fleet:
        if not echo.running:
            raise BenchmarkFailed(f"{NAME}: an echo server exited:\n{echo.log_tail()}")
    if watcher.cancelled() or watcher.exception() is not None:
        raise BenchmarkFailed(
            f"{NAME}: echo servers not registered within {STARTUP_TIMEOUT} s:\n"
            f"{fleet[0].log_tail()}"
        )
    return {i.deployment: i for i in discovery.instances() if i.deployment in names}


@asynccontextmanager
async def stack(work_dir: Path) -> AsyncIterator[Stack]:
    """etcd and NATS, three echo servers in `bench3`, echo-1 registered again in `bench1`,
    and a recording echo server per svc.trace mode in its own namespace."""
    tls_dir = work_dir / "tls"
    await asyncio.to_thread(certs.ensure, tls_dir, ["echo", CALLER])
    dev = DevStack(work_dir)
    await asyncio.to_thread(dev.start)
    assert dev.nats is not None
    fleet = [_echo(dev.etcd.endpoint, name, work_dir, tls_dir) for name in ECHOES]
    traced = {
        mode: _traced_echo(mode, dev.etcd.endpoint, dev.nats.url, work_dir, tls_dir)
        for mode in TRACED
    }
    etcd = Etcd([dev.etcd.endpoint])
    discovery = Discovery(etcd, THREE, SERVICE)
    watches = {mode: Discovery(etcd, f"bench-{mode}", SERVICE) for mode in TRACED}
    registration: Registration | None = None
    try:
        for echo in (*fleet, *traced.values()):
            echo.start()
        await etcd.connect()
        await discovery.start(timeout=STARTUP_TIMEOUT)
        first = (await _wait_registered(discovery, fleet))[ECHOES[0]]
        for mode, watch in watches.items():
            await watch.start(timeout=STARTUP_TIMEOUT)
            await _wait_registered(watch, [traced[mode]], [_traced_name(mode)])
        registration = Registration(etcd, ONE, [first], ttl=10)
        registration.start()
        await registration.wait_registered(timeout=STARTUP_TIMEOUT)
        yield Stack(dev.etcd.endpoint, tls_dir, first.address, first.identity, dev.nats.url)
    finally:
        if registration is not None:
            await registration.stop()
        for watch in (discovery, *watches.values()):
            await watch.stop()
        await etcd.close()
        stopping = (*fleet, *traced.values())
        await asyncio.gather(*(asyncio.to_thread(echo.stop) for echo in stopping))
        await asyncio.to_thread(dev.stop)


async def loadgen(where: Stack, mode: str, concurrency: int, plan: Plan) -> dict[str, Any]:
    """One measurement by one client process: the JSON it printed."""
    command = where.loadgen_args(mode, concurrency, plan)
    timeout = plan.warmup + plan.duration + LOADGEN_SLACK
    return await run_loadgen(NAME, f"{mode:5} c={concurrency:<3}", command, timeout, cwd=ROOT)


async def measure(where: Stack, plan: Plan) -> dict[int, list[Round]]:
    """concurrency -> one Round per trio, run interleaved."""

    async def run_mode(mode: str, concurrency: int) -> dict[str, Any]:
        return await loadgen(where, mode, concurrency, plan)

    return await interleaved(MODES, plan, run_mode)


def figures_of(rounds: dict[int, list[Round]]) -> Figures:
    """Flat figures: per mode and concurrency, then the paired ratios against bare."""
    figures: Figures = {}
    # loadgen's name -> the figure's (the CPU is the client process's).
    names = {"calls_per_s": "calls_per_s", "p50_ms": "p50_ms", "p99_ms": "p99_ms",
             "cpu_per_call_ms": "client_cpu_per_call_ms"}  # fmt: skip
    for concurrency, trios in rounds.items():
        for mode in MODES:
            for source, name in names.items():
                value = statistics.median(trio[mode][source] for trio in trios)
                figures[f"{mode}_c{concurrency}_{name}"] = round(value, 3)
    # (mode, against, prefix): mesh1 and mesh3 against bare; the svc.trace modes against
    # mesh1, the same channel without records.
    pairs = [("mesh1", "bare", ""), ("mesh3", "bare", "mesh3_")]
    pairs += [(mode, "mesh1", f"{mode}_vs_mesh1_") for mode in TRACED]
    for concurrency, trios in rounds.items():
        for mode, against, prefix in pairs:
            for source, name in (("calls_per_s", "throughput"), ("p50_ms", "p50"),
                                 ("p99_ms", "p99")):  # fmt: skip
                ratio = statistics.median(
                    trio[mode][source] / trio[against][source] for trio in trios
                )
                figures[f"{prefix}{name}_ratio_c{concurrency}"] = round(ratio, 3)
    top = max(rounds)
    figures["rounds"] = len(rounds[top])
    met = (
        figures[f"throughput_ratio_c{top}"] >= TARGET_THROUGHPUT_RATIO  # type: ignore[operator]
        and figures[f"p99_ratio_c{top}"] <= TARGET_P99_RATIO  # type: ignore[operator]
    )
    figures[f"target_c{top}"] = "met" if met else "missed"
    return figures


def table(figures: Figures, concurrencies: Sequence[int]) -> str:
    """The figures as a mode x concurrency table with the ratios, for the terminal (the
    svc.trace modes against mesh1, the others against bare)."""
    lines = [f"{'':13}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu µs':>8}   ratios"]
    prefixes = {"mesh1": ("", "bare"), "mesh3": ("mesh3_", "bare")}
    prefixes |= {mode: (f"{mode}_vs_mesh1_", "mesh1") for mode in TRACED}
    for c in concurrencies:
        for mode in MODES:
            row = [figures[f"{mode}_c{c}_{m}"] for m in ("calls_per_s", "p50_ms", "p99_ms")]
            cpu = float(figures[f"{mode}_c{c}_client_cpu_per_call_ms"]) * 1000
            line = f"{mode} c{c}".ljust(13)
            line += f"{row[0]:>9.0f}{row[1]:>9.2f}{row[2]:>9.2f}{cpu:>8.0f}"
            if mode in prefixes:
                p, against = prefixes[mode]
                rps, p50, p99 = (
                    figures[f"{p}{m}_ratio_c{c}"] for m in ("throughput", "p50", "p99")
                )
                line += f"   x{rps:.3f} calls/s, x{p50:.2f} p50, x{p99:.2f} p99 vs {against}"
            lines.append(line)
    return "\n".join(lines) + "\n"


async def run(quick: bool) -> Figures:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-mesh-vs-bare-") as tmp:
        async with stack(Path(tmp)) as where:
            rounds = await measure(where, plan)
    figures = figures_of(rounds)
    print(table(figures, plan.concurrencies), end="", file=sys.stderr)
    return figures


async def serve(work_dir: Path, plan: Plan) -> None:
    """Start the stack, print each mode's loadgen command line, wait for Ctrl-C."""
    async with stack(work_dir) as where:
        top = max(plan.concurrencies)
        for mode in MODES:
            print(" ".join(where.loadgen_args(mode, top, plan)), flush=True)
        print("serving; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
        # A handler of our own: a shell's background job starts with SIGINT ignored.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_vs_bare")
    parser.add_argument("--serve", action="store_true", help="start the stack for profiling")
    parser.add_argument("--duration", type=float, default=FULL.duration)
    args = parser.parse_args(argv)
    if not args.serve:
        parser.error("run the benchmark with `python -m bench --only mesh_vs_bare`")
    plan = Plan(FULL.concurrencies, 1, FULL.warmup, args.duration)
    with tempfile.TemporaryDirectory(prefix="bench-mesh-vs-bare-") as tmp:
        asyncio.run(serve(Path(tmp), plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
