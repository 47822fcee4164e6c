"""One load-generator process for the benchmarks: N callers loop on the same echo call.

    python -m bench.loadgen --mode bare --address 127.0.0.1:PORT \\
        --identity spiffe://hms.local/svc/echo --tls-dir DIR --concurrency 64
    python -m bench.loadgen --mode mesh --etcd 127.0.0.1:PORT --namespace bench3 \\
        --tls-dir DIR --concurrency 64
    python -m bench.loadgen --mode http --url http://127.0.0.1:PORT --concurrency 64

`bare` is a plain grpc.aio mTLS channel to one instance (`mesh.tls.instance_channel`); `mesh`
is a MeshChannel routed through the registry (with `--trace-sample` and `--nats`, recording
svc.trace as a service's channel does); either way the caller's identity is `ops`.
`http` is `POST /v1/echo {"message": "x"}` over HTTP/1.1, one keep-alive connection per caller,
written on asyncio streams so that the client costs as little as it can (httpx would spend more
CPU per request than the servers it measures).

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
import os
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import BenchmarkFailed, percentile
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from mesh import tls
from mesh.client import ClientConfig, MeshChannel
from mesh.tracerecords import TraceEmitter

__all__ = ["CallFailed", "Plan", "Round", "interleaved", "main", "measure", "run_loadgen"]

CALL_TIMEOUT = 5.0


class CallFailed(Exception):
    """A call that did not succeed; its argument names the outcome (a code, an HTTP status)."""


Call = Callable[[], Awaitable[object]]


def processes_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by the processes `pids` and their children
    (a supervisor's workers), from /proc; a process that is gone counts 0."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        todo += [int(child) for child in children]
    return total / tick


async def measure(
    new_caller: Callable[[], Awaitable[Call]],
    concurrency: int,
    warmup: float,
    duration: float,
    watch_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run `concurrency` callers for warmup + duration seconds; figures of the duration.

    ``new_caller()`` gives each caller its call (its own connection, for HTTP). The CPU time
    of `watch_pids` (the servers, their workers included) over the same window is reported
    as ``servers_cpu_s``.
    """
    started = time.perf_counter()
    window_start = started + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cpu: list[float] = []
    servers: list[float] = []

    async def caller() -> None:
        call = await new_caller()
        clock = time.perf_counter
        while True:
            began = clock()
            if began >= window_end:
                return
            try:
                await call()
            except (grpc.aio.AioRpcError, CallFailed) as exc:
                name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                if clock() >= window_start:
                    errors[name] = errors.get(name, 0) + 1
                continue
            ended = clock()
            if window_start <= ended < window_end:
                latencies.append(ended - began)

    async def cpu_meter() -> None:
        # CPU time of the whole process (grpc's C threads included) over the window.
        await asyncio.sleep(window_start - time.perf_counter())
        cpu.append(time.process_time())
        servers.append(processes_cpu(watch_pids))
        await asyncio.sleep(window_end - time.perf_counter())
        cpu.append(time.process_time())
        servers.append(processes_cpu(watch_pids))

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
        "servers_cpu_s": servers[1] - servers[0],
        "errors": errors,
    }


@dataclass(frozen=True)
class Plan:
    """How a side-by-side benchmark loads: at each concurrency, `rounds` runs of every mode."""

    concurrencies: tuple[int, ...]
    rounds: int
    warmup: float  # seconds of each run not measured
    duration: float  # seconds measured


Round = dict[str, dict[str, Any]]  # mode -> one loadgen result


async def interleaved(
    modes: Sequence[str],
    plan: Plan,
    run_mode: Callable[[str, int], Awaitable[dict[str, Any]]],
) -> dict[int, list[Round]]:
    """concurrency -> one Round per pass over `modes`, run interleaved: the order reverses every
    other round, so no mode always runs first after a pause or last, and drift on a noisy
    machine falls on all of them."""
    rounds: dict[int, list[Round]] = {}
    for concurrency in plan.concurrencies:
        for index in range(plan.rounds):
            order = modes if index % 2 == 0 else modes[::-1]
            trio = {mode: await run_mode(mode, concurrency) for mode in order}
            rounds.setdefault(concurrency, []).append(trio)
    return rounds


async def run_loadgen(
    benchmark: str, label: str, command: Sequence[str], timeout: float, *, cwd: Path
) -> dict[str, Any]:
    """Run one loadgen process (`command`) and return the JSON it printed; a hang, an exit
    code or more than 1 % failed calls is a BenchmarkFailed naming `benchmark` and `label`."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchmarkFailed(f"{benchmark}: loadgen {label} hung") from None
    if proc.returncode != 0:
        raise BenchmarkFailed(
            f"{benchmark}: loadgen {label} exited with {proc.returncode}:\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    failed = sum(result["errors"].values())
    if result["calls"] == 0 or failed > 0.01 * result["calls"]:
        raise BenchmarkFailed(
            f"{benchmark}: {label}: {result['calls']} calls, errors {result['errors']}"
        )
    print(
        f"bench: {benchmark} {label} {result['calls_per_s']:7.0f} calls/s  "
        f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
        f"cpu {result['cpu_per_call_ms'] * 1000:4.0f} µs/call",
        file=sys.stderr,
    )
    return result


_HTTP_BODY = b'{"message":"x"}'


async def http_caller(url: str) -> Call:
    """One keep-alive HTTP/1.1 connection; each call POSTs the echo request and reads the
    answer (by its Content-Length)."""
    parsed = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    request = (
        f"POST /v1/echo HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(_HTTP_BODY)}\r\n\r\n"
    ).encode() + _HTTP_BODY

    async def call() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if status != b"200":
            raise CallFailed(f"HTTP {status.decode()}")

    return call


async def run(args: argparse.Namespace) -> dict[str, Any]:
    watch = tuple(int(p) for p in args.watch_pids.split(",") if p)
    if args.mode == "http":
        figures = await measure(
            lambda: http_caller(args.url), args.concurrency, args.warmup, args.duration, watch
        )
        return {"mode": args.mode, "concurrency": args.concurrency, **figures}
    files = tls.TlsFiles(Path(args.tls_dir), args.cert_name)
    records = None
    if args.mode == "bare":
        channel: Any = tls.instance_channel(args.address, args.identity, files)
    else:
        config = ClientConfig(
            etcd=tuple(e for e in args.etcd.split(",") if e), namespace=args.namespace, tls=files
        )
        if args.trace_sample > 0:
            records = await _records(args.nats, args.trace_sample, tls.identity_of(files))
        channel = await MeshChannel.connect(config, records=records)
    try:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        request = echo_pb2.EchoRequest(message="x")

        async def grpc_caller() -> Call:
            return lambda: stub.Echo(request, timeout=CALL_TIMEOUT)

        figures = await measure(grpc_caller, args.concurrency, args.warmup, args.duration, watch)
    finally:
        await channel.close()
        if records is not None:
            await records.close()
    result = {"mode": args.mode, "concurrency": args.concurrency, **figures}
    if records is not None:
        result["trace_records_dropped"] = records.dropped
    return result


async def _records(url: str, rate: float, identity: str) -> TraceEmitter:
    """A started svc.trace emitter on its own NATS connection (left open until exit)."""
    import nats

    async def connect() -> Any:
        return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)

    emitter = TraceEmitter("loadgen", connect=connect, sample=rate, identity=identity)
    emitter.start()
    return emitter


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--mode", choices=("bare", "mesh", "http"), required=True)
    parser.add_argument("--url", help="http: the server's base URL")
    parser.add_argument("--address", help="bare: host:port of the instance")
    parser.add_argument("--identity", help="bare: the instance's SPIFFE ID (pinned)")
    parser.add_argument("--etcd", help="mesh: etcd endpoint(s), comma separated")
    parser.add_argument("--namespace", default="hms", help="mesh: registry namespace")
    parser.add_argument("--tls-dir", help="bare and mesh: the certificates")
    parser.add_argument("--cert-name", default="ops", help="the caller's certificate name")
    parser.add_argument("--nats", default="", help="mesh: NATS URL for svc.trace records")
    parser.add_argument(
        "--trace-sample", type=float, default=0.0, help="mesh: svc.trace sampling rate (0: off)"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument(
        "--watch-pids",
        default="",
        help="comma-separated pids whose CPU time (theirs and their children's) over the "
        "window is reported as servers_cpu_s",
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    args = parser.parse_args(argv)
    if args.mode == "bare" and not (args.address and args.identity):
        parser.error("--mode bare needs --address and --identity")
    if args.mode == "mesh" and not args.etcd:
        parser.error("--mode mesh needs --etcd")
    if args.mode == "http" and not args.url:
        parser.error("--mode http needs --url")
    if args.trace_sample > 0 and not (args.mode == "mesh" and args.nats):
        parser.error("--trace-sample is for --mode mesh, with --nats")
    if args.mode != "http" and not args.tls_dir:
        parser.error(f"--mode {args.mode} needs --tls-dir")
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency must be >= 1, --duration > 0 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
