"""Where the gateway's time goes, next to the hand-written handler: a profiling aid, not part of
`make bench` (run it by hand: `python -m bench.gateway_costs`, about 2 minutes).

One process serves, in turn, three ASGI apps on the same uvicorn setup, each loaded by a
`bench.loadgen --mode http` process at 64 in flight, against one echo server (etcd, mTLS):

- `handwritten`: bench.rest_handler's app on a plain grpc.aio stub;
- `gateway`: the gateway's app (the route learnt from descriptors) on a MeshChannel;
- `gateway-bare`: the same app on a channel that calls one grpc.aio multicallable directly,
  so `gateway - gateway-bare` is what the mesh channel's chain costs.

For each it reports this process's CPU per call over a 3 s window inside the run (from
`os.times()`, grpc's threads included) and the garbage collector's time in that window (from
`gc.callbacks`). The rounds run with Python's default collector, then again after
`mesh.gc_tuning.settle_heap()`, the setting the gateway runs with. Last, the CPU of a grpc.aio
call with no metadata against the three entries the gateway forwards (`x-request-id`,
`x-forwarded-for`, `x-forwarded-host`), sequentially per caller, 32 callers. `--profile` adds,
after the settled rounds, one more window per app under cProfile (this process: uvicorn, the
app and grpc.aio's Python), by own time; cProfile slows Python code more than C, so read the
shares, not the times.

`python -m bench.gateway_costs --in-process` (about 15 s, no servers) drives both apps through
ASGI directly, 64 requests at a time, with an upstream that answers at once (a coroutine for the
handler's stub, a channel whose only step returns the answer for the gateway): the CPU of each
app's own Python per request, without grpc, sockets or uvicorn; `--profile` adds the gateway's
cProfile, by cumulative time. It ends with the JSON steps of the echo route by `timeit`: the
gateway's against the handler's json_format calls.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import uvicorn
from google.protobuf import json_format

from bench.gateway import CALLER, ROOT, stack
from bench.rest_handler import make_app
from hms.testing.v1 import echo_pb2, echo_pb2_grpc
from hms_gateway.app import Gateway
from hms_gateway.config import GatewayConfig
from hms_gateway.endpoint import endpoints_of
from hms_gateway.routes import RouteTable
from hms_gateway.serve import listening_socket
from hms_gateway.transcode import render_response
from mesh.client.call import CallInfo, CallKind, service_of
from mesh.client.channel import MeshChannel
from mesh.client.config import ClientConfig
from mesh.client.rpc import MeshCall
from mesh.gc_tuning import settle_heap
from mesh.resilience.retry import idempotency_of
from mesh.tls import TlsFiles, instance_channel

ECHO = "/hms.testing.v1.EchoService/Echo"
ROUNDS = 3
WINDOW = 3.0
FORWARDED = (
    ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-host", "127.0.0.1:8080"),
)


class BareChannel:
    """`call` as the gateway calls it, on one grpc.aio multicallable: no mesh chain."""

    def __init__(self, multicallable: Any) -> None:
        self._multicallable = multicallable

    def call(self, method: str, request: Any, **options: Any) -> MeshCall:
        """A `MeshChannel.call` whose only step is the multicallable."""
        info = CallInfo(
            kind=options.get("kind", CallKind.UNARY_UNARY),
            method=method,
            service=service_of(method),
            request=request,
            metadata=list(options.get("metadata", ())),
            serializer=options.get("serializer"),
            deserializer=options.get("deserializer"),
            idempotency=options.get("idempotency") or idempotency_of(method),
            timeout=options.get("timeout"),
        )
        return MeshCall(info, self.invoke)

    async def invoke(self, call: CallInfo) -> Any:
        rpc = call.rpc = self._multicallable(
            call.request, timeout=call.timeout, metadata=call.metadata
        )
        return await rpc


async def measure(app: Any, profile: bool = False) -> dict[str, float]:
    """Serve `app`, load it from another process, read CPU and GC over a window inside
    (`profile`: and print this process's cProfile over that window, by own time)."""
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app, http="httptools", loop="none", lifespan="off", access_log=False,
                       log_level="warning", proxy_headers=False)
    )  # fmt: skip
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "--mode=http", f"--url={url}",
        "--concurrency=64", "--warmup=1.5", f"--duration={WINDOW + 1.5}",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    collected = [0.0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collected[0] += time.perf_counter() - started[0]

    await asyncio.sleep(2.5)  # loadgen's imports and warm-up: the window starts inside the run
    gc.callbacks.append(on_gc)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    before, wall = os.times(), time.perf_counter()
    await asyncio.sleep(WINDOW)
    after, wall = os.times(), time.perf_counter() - wall
    gc.callbacks.remove(on_gc)
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    result = json.loads((await load.communicate())[0].decode().strip().splitlines()[-1])
    server.should_exit = True
    await serving
    cpu = (after.user + after.system) - (before.user + before.system)
    calls = result["calls_per_s"] * wall
    return {
        "calls_per_s": result["calls_per_s"],
        "cpu_us_per_call": cpu / calls * 1e6,
        "gc_ms_per_s": collected[0] / wall * 1000,
    }


async def metadata_cost(multicallable: Any) -> dict[str, float]:
    request = echo_pb2.EchoRequest(message="x")

    async def cpu_per_call(metadata: Any, calls: int = 3200) -> float:
        async def caller() -> None:
            for _ in range(calls // 32):
                await multicallable(request, timeout=30, metadata=metadata)

        before = time.process_time()
        await asyncio.gather(*(caller() for _ in range(32)))
        return (time.process_time() - before) / calls * 1e6

    await cpu_per_call(None, 640)  # warm-up
    none, three = [], []
    for _ in range(5):
        none.append(await cpu_per_call(None))
        three.append(await cpu_per_call(FORWARDED))
    return {"none": statistics.median(none), "three": statistics.median(three)}


ECHO_BODY = b'{"message":"hello"}'


def _echo_scope() -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/echo", "raw_path": b"/v1/echo", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
        "headers": [
            (b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(ECHO_BODY)), (b"user-agent", b"bench"),
        ],
    }  # fmt: skip


async def _asgi_request(app: Any) -> None:
    """One POST /v1/echo through `app`; AssertionError unless it answered 200."""
    messages = [{"type": "http.request", "body": ECHO_BODY, "more_body": False}]
    answers: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect: the request is whole
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    await app(_echo_scope(), receive, send)
    if not answers or answers[0]["status"] != 200:
        raise AssertionError(f"the app answered {answers}")


async def cpu_per_request(app: Any, requests: int, concurrency: int = 64) -> float:
    """This process's CPU per request, in us, with `concurrency` requests at a time."""

    async def caller() -> None:
        for _ in range(requests // concurrency):
            await _asgi_request(app)

    before = time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return (time.process_time() - before) / requests * 1e6


class AnsweringChannel(BareChannel):
    """A channel whose only step answers the echo at once: no grpc."""

    def __init__(self) -> None:
        super().__init__(None)

    async def invoke(self, call: CallInfo) -> Any:
        return echo_pb2.EchoResponse(message=call.request.message)


class AnsweringStub:
    """The hand-written handler's stub, answering at once."""

    async def Echo(self, request: Any, timeout: float | None = None) -> Any:
        return echo_pb2.EchoResponse(message=request.message)


def codec_costs(number: int = 20000) -> dict[str, float]:
    """The gateway's JSON steps for the echo route against the handler's json_format calls."""
    endpoint = next(endpoints_of(echo_pb2.DESCRIPTOR.services_by_name["EchoService"]))
    answer = echo_pb2.EchoResponse(message="hello")
    steps = {
        "gateway build_request": lambda: endpoint.mapping.build_request(
            endpoint.request_class, {}, [], ECHO_BODY
        ),
        "gateway render_response": lambda: render_response(answer),
        "handler json_format.Parse": lambda: json_format.Parse(ECHO_BODY, echo_pb2.EchoRequest()),
        "handler json_format.MessageToJson": lambda: json_format.MessageToJson(answer, indent=None),
    }
    return {
        name: min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6
        for name, step in steps.items()
    }


async def in_process(profile: bool) -> None:
    table = RouteTable()
    service = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
    table.set_service(service.full_name, endpoints_of(service))
    apps = {
        "handwritten": make_app(AnsweringStub()),  # type: ignore[arg-type]
        "gateway": Gateway(GatewayConfig(), table, AnsweringChannel()),  # type: ignore[arg-type]
    }
    settle_heap()
    for app in apps.values():
        await cpu_per_request(app, 1280)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(5):
        for name, app in apps.items():
            runs[name].append(await cpu_per_request(app, 12800))
    print("in process, upstream answering at once: CPU per request, medians of 5 rounds at c64")
    for name, figures in runs.items():
        print(f"  {name:13} {statistics.median(figures):5.0f} us "
              f"(rounds {', '.join(f'{f:.0f}' for f in figures)})")  # fmt: skip
    print("the JSON of one echo request and answer, us (best of 5 timeit runs):")
    for name, us in codec_costs().items():
        print(f"  {name:34} {us:5.1f}")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await cpu_per_request(apps["gateway"], 12800)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(50)


async def main() -> None:
    profile = "--profile" in sys.argv[1:]
    if "--in-process" in sys.argv[1:]:
        await in_process(profile)
        return
    with tempfile.TemporaryDirectory(prefix="bench-gateway-costs-") as tmp:
        async with stack(Path(tmp)) as targets:
            files = TlsFiles(targets.tls_dir, CALLER)
            channel = await MeshChannel.connect(
                ClientConfig(etcd=(targets.etcd,), tls=files, layers=("deadline", "retry", "pick"))
            )
            instance = next(
                iter((await channel.pool(ECHO.split("/")[1])).endpoints.values())
            ).instance
            grpc_channel = instance_channel(instance.address, instance.identity, files)
            multicallable = grpc_channel.unary_unary(
                ECHO,
                request_serializer=echo_pb2.EchoRequest.SerializeToString,
                response_deserializer=echo_pb2.EchoResponse.FromString,
                _registered_method=True,
            )
            table = RouteTable()
            service = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
            table.set_service(service.full_name, endpoints_of(service))
            apps = {
                "handwritten": make_app(echo_pb2_grpc.EchoServiceStub(grpc_channel)),
                "gateway": Gateway(GatewayConfig(), table, channel),
                "gateway-bare": Gateway(GatewayConfig(), table, BareChannel(multicallable)),  # type: ignore[arg-type]
            }
            for phase in ("default gc", "settled heap"):
                if phase == "settled heap":
                    settle_heap()
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
                for _ in range(ROUNDS):
                    for name, app in apps.items():
                        runs[name].append(await measure(app))
                print(f"{phase}: medians of {ROUNDS} rounds, {WINDOW:.0f} s windows at c64")
                for name, results in runs.items():
                    figures = {k: statistics.median(r[k] for r in results) for k in results[0]}
                    print(f"  {name:13} {figures['calls_per_s']:6.0f} calls/s  "
                          f"{figures['cpu_us_per_call']:5.0f} us CPU/call  "
                          f"gc {figures['gc_ms_per_s']:5.1f} ms/s")  # fmt: skip
            if profile:
                for name, app in apps.items():
                    print(f"cProfile of {name}, one {WINDOW:.0f} s window at c64:")
                    await measure(app, profile=True)
            cost = await metadata_cost(multicallable)
            print(f"grpc.aio call CPU, 32 callers: no metadata {cost['none']:.0f} us, "
                  f"the gateway's three entries {cost['three']:.0f} us")  # fmt: skip
            await grpc_channel.close()
            await channel.close()


if __name__ == "__main__":
    asyncio.run(main())
