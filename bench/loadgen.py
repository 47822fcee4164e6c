"""One load-generator process for `bench.mesh_vs_bare`: N callers loop on EchoService.Echo.

    python -m bench.loadgen --mode bare --address 127.0.0.1:PORT \\
        --identity spiffe://hms.local/svc/echo --tls-dir DIR --concurrency 64
    python -m bench.loadgen --mode mesh --etcd 127.0.0.1:PORT --namespace bench3 \\
        --tls-dir DIR --concurrency 64

`bare` is a plain grpc.aio mTLS channel to one instance (`mesh.tls.instance_channel`); `mesh`
is a MeshChannel routed through the registry. Either way the caller's identity is `ops`.

Each caller awaits one call at a time (`await stub.Echo(EchoRequest(message="x"), timeout=5)`).
After `--warmup` seconds (channels and pools open, the first handshake, JIT-free Python's
caches) the next `--duration` seconds are measured: every call that completes inside that
window counts, with its latency from `time.perf_counter()`, and the process's CPU time over the
window is read too. It prints one JSON object on stdout and exits; it runs as a process of its
own so that the client has a whole core and nothing of the benchmark driver's loop in its way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import percentile
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from mesh import tls
from mesh.client import ClientConfig, MeshChannel

__all__ = ["main", "measure"]

CALL_TIMEOUT = 5.0


async def measure(
    stub: echo_pb2_grpc.EchoServiceStub, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Run `concurrency` callers for warmup + duration seconds; figures of the duration."""
    started = time.perf_counter()
    window_start = started + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cpu: list[float] = []

    async def caller() -> None:
        clock = time.perf_counter
        while True:
            began = clock()
            if began >= window_end:
                return
            try:
                await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if clock() >= window_start:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            ended = clock()
            if window_start <= ended < window_end:
                latencies.append(ended - began)

    async def cpu_meter() -> None:
        # CPU time of the whole process (grpc's C threads included) over the window.
        await asyncio.sleep(window_start - time.perf_counter())
        cpu.append(time.process_time())
        await asyncio.sleep(window_end - time.perf_counter())
        cpu.append(time.process_time())

    meter = asyncio.create_task(cpu_meter())
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await meter
    calls = len(latencies)
    ms = [v * 1000 for v in latencies] or [float("nan")]
    return {
        "calls": calls,
        "duration_s": duration,
        "calls_per_s": calls / duration,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu_s": cpu[1] - cpu[0],
        "cpu_per_call_ms": (cpu[1] - cpu[0]) * 1000 / calls if calls else float("nan"),
        "errors": errors,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    files = tls.TlsFiles(Path(args.tls_dir), args.cert_name)
    if args.mode == "bare":
        channel: Any = tls.instance_channel(args.address, args.identity, files)
    else:
        config = ClientConfig(
            etcd=tuple(e for e in args.etcd.split(",") if e), namespace=args.namespace, tls=files
        )
        channel = await MeshChannel.connect(config)
    try:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        figures = await measure(stub, args.concurrency, args.warmup, args.duration)
    finally:
        await channel.close()
    return {"mode": args.mode, "concurrency": args.concurrency, **figures}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--mode", choices=("bare", "mesh"), required=True)
    parser.add_argument("--address", help="bare: host:port of the instance")
    parser.add_argument("--identity", help="bare: the instance's SPIFFE ID (pinned)")
    parser.add_argument("--etcd", help="mesh: etcd endpoint(s), comma separated")
    parser.add_argument("--namespace", default="hms", help="mesh: registry namespace")
    parser.add_argument("--tls-dir", required=True)
    parser.add_argument("--cert-name", default="ops", help="the caller's certificate name")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    args = parser.parse_args(argv)
    if args.mode == "bare" and not (args.address and args.identity):
        parser.error("--mode bare needs --address and --identity")
    if args.mode == "mesh" and not args.etcd:
        parser.error("--mode mesh needs --etcd")
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency must be >= 1, --duration > 0 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
