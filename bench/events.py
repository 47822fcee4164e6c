"""What the mesh's event publisher costs against raw nats-py JetStream, on a real nats-server.

- Throughput, on one connection, N `VoucherSubmitted` events per mode:
  `raw_seq` awaits each `js.publish(subject, payload)` ack in turn; `raw_c64` keeps 64 in flight
  the naive way (64 workers awaiting `js.publish` on one shared iterator); `raw_async_c64`
  keeps a window of 64 acks outstanding with nats-py's pipelined `js.publish_async` (no round
  trip per message), the fastest raw mechanism; `mesh_seq` is `Publisher.publish` in turn;
  `mesh_c64` is `Publisher.publish_many(concurrency=64)` (pipelined the same way, with each
  ack awaited under a deadline). Raw sends the bare payload; the mesh adds its headers (a
  binary-mode CloudEvent: `ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`;
  `Nats-Msg-Id` for de-duplication; `traceparent`), so `throughput_ratio` (mesh_c64 /
  raw_c64) is the whole price against what a team would write by hand. `raw_headers_c64` and
  `raw_async_headers_c64` send the same headers built by hand (a fresh id each):
  `async_throughput_ratio` (mesh_c64 / raw_async_headers_c64) is what the mesh's own code
  costs over the fastest raw publishing of the same messages; `raw_msgid_c64` sends only
  `Nats-Msg-Id`, which shows what de-duplication alone costs.
  The modes run interleaved, in an order reversed every other round, three rounds; figures
  are medians and each ratio is the median of the ratios paired within a round.
- Latency: one event at a time (the next is published only after the handler saw the previous,
  so nothing queues), from just before `Publisher.publish` to the start of the handler of a
  `Subscriber` on another connection; the send time is kept in a dict keyed by event id.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from bench import BenchmarkFailed, Figures, percentile
from hms.testing.v1.events_pb2 import VoucherSubmitted
from hms_tools.devstack import NatsProcess
from mesh import tracecontext
from mesh.events import ConsumerSpec, EventMeta, Publisher, Subscriber, ensure_stream
from mesh.events.subjects import Headers, event_subject, events_stream

NAME = "events_vs_raw"

CONCURRENCY = 64
ROUNDS = 3
LATENCY_PREFIX = "benchlat"  # its own stream, so the subscriber does not replay the others
HANDLER_TIMEOUT = 5.0
#: The issue's targets: against raw gather without headers, and against raw pipelined
#: publishing of the same headers.
TARGET_RATIO = 0.8
TARGET_ASYNC_RATIO = 0.9


@dataclass(frozen=True)
class Plan:
    messages: int  # per mode per round
    warmup: int  # per mode, before the first round
    latency_samples: int
    latency_warmup: int


FULL = Plan(messages=5000, warmup=500, latency_samples=1000, latency_warmup=50)
QUICK = Plan(messages=1000, warmup=200, latency_samples=200, latency_warmup=20)

EVENT = VoucherSubmitted(voucher_id="v-000123", applicant_id="a-000456", amount_pence=125_000)
SUBJECT = event_subject("hms", EVENT.DESCRIPTOR.full_name)

Mode = Callable[[int], Awaitable[None]]


def _headers() -> dict[str, str]:
    """The mesh's header set, built by hand: what raw publishing of the same valid
    CloudEvents, with de-duplication and trace context, costs."""
    event_id = str(uuid.uuid4())
    return {
        Headers.MSG_ID: event_id,
        Headers.SPEC_VERSION: Headers.SPEC_VERSION_VALUE,
        Headers.ID: event_id,
        Headers.TYPE: EVENT.DESCRIPTOR.full_name,
        Headers.SOURCE: "bench",
        Headers.TIME: "2025-01-02T03:04:05.678000Z",
        Headers.TRACEPARENT: tracecontext.new_traceparent(),
    }


def raw_modes(js: JetStreamContext) -> dict[str, Mode]:
    payload = EVENT.SerializeToString()

    async def seq(n: int) -> None:
        for _ in range(n):
            await js.publish(SUBJECT, payload)

    def in_flight(headers_of: Callable[[], dict[str, str]] | None) -> Mode:
        async def c64(n: int) -> None:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    headers = headers_of() if headers_of is not None else None
                    await js.publish(SUBJECT, payload, headers=headers)

            async with asyncio.TaskGroup() as group:
                for _ in range(min(CONCURRENCY, n)):
                    group.create_task(worker())

        return c64

    def pipelined(headers_of: Callable[[], dict[str, str]] | None) -> Mode:
        async def async_c64(n: int) -> None:
            window: collections.deque[asyncio.Future[object]] = collections.deque()
            for _ in range(n):
                headers = headers_of() if headers_of is not None else None
                window.append(await js.publish_async(SUBJECT, payload, headers=headers))
                if len(window) >= CONCURRENCY:
                    await window.popleft()
            while window:
                await window.popleft()

        return async_c64

    return {
        "raw_seq": seq,
        "raw_c64": in_flight(None),
        "raw_msgid_c64": in_flight(lambda: {Headers.MSG_ID: str(uuid.uuid4())}),
        "raw_headers_c64": in_flight(_headers),
        "raw_async_c64": pipelined(None),
        "raw_async_headers_c64": pipelined(_headers),
    }


def mesh_modes(publisher: Publisher) -> dict[str, Mode]:
    async def seq(n: int) -> None:
        for _ in range(n):
            await publisher.publish(EVENT)

    async def c64(n: int) -> None:
        await publisher.publish_many([EVENT] * n, concurrency=CONCURRENCY)

    return {"mesh_seq": seq, "mesh_c64": c64}


async def throughput(js: JetStreamContext, publisher: Publisher, plan: Plan) -> Figures:
    modes = raw_modes(js) | mesh_modes(publisher)
    stream = events_stream().name
    for mode in modes.values():  # connections, stream files, code paths warmed
        await mode(plan.warmup)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    order = list(modes)
    for round_ in range(ROUNDS):
        await js.purge_stream(stream)  # every round writes to a stream of the same size
        for name in order if round_ % 2 == 0 else reversed(order):
            started = time.perf_counter()
            await modes[name](plan.messages)
            rates[name].append(plan.messages / (time.perf_counter() - started))
    figures: Figures = {
        f"{name}_msgs_per_s": round(statistics.median(values), 1) for name, values in rates.items()
    }

    def ratio(mesh: str, raw: str) -> float:
        paired = [m / r for m, r in zip(rates[mesh], rates[raw], strict=True)]
        return round(statistics.median(paired), 3)

    figures["throughput_ratio"] = ratio("mesh_c64", "raw_c64")
    figures["seq_throughput_ratio"] = ratio("mesh_seq", "raw_seq")
    figures["headers_throughput_ratio"] = ratio("raw_headers_c64", "raw_c64")
    figures["msgid_only_throughput_ratio"] = ratio("raw_msgid_c64", "raw_c64")
    figures["mesh_vs_raw_headers_throughput_ratio"] = ratio("mesh_c64", "raw_headers_c64")
    figures["async_throughput_ratio"] = ratio("mesh_c64", "raw_async_headers_c64")
    figures["raw_async_vs_gather_throughput_ratio"] = ratio("raw_async_c64", "raw_c64")
    figures["messages_per_mode"] = plan.messages
    figures["rounds"] = ROUNDS
    return figures


async def publish_to_handler(nc: Client, sub_nc: Client, plan: Plan) -> Figures:
    js, sub_js = nc.jetstream(), sub_nc.jetstream()
    await ensure_stream(js, events_stream(LATENCY_PREFIX))
    publisher = Publisher(js, "bench", prefix=LATENCY_PREFIX)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def handler(_message: VoucherSubmitted, meta: EventMeta) -> None:
        now = time.perf_counter()
        started = sent.pop(meta.id, None)
        if started is not None:
            latencies.append(now - started)
            arrived.set()

    subscriber = Subscriber(sub_js, "bench", prefix=LATENCY_PREFIX, spec=ConsumerSpec())
    await subscriber.subscribe(VoucherSubmitted, handler)
    try:
        for i in range(plan.latency_warmup + plan.latency_samples):
            event_id = f"lat-{i}"
            arrived.clear()
            sent[event_id] = time.perf_counter()
            await publisher.publish(EVENT, event_id=event_id)
            try:
                await asyncio.wait_for(arrived.wait(), HANDLER_TIMEOUT)
            except TimeoutError:
                raise BenchmarkFailed(
                    f"{NAME}: event {event_id} not handled within {HANDLER_TIMEOUT} s"
                ) from None
    finally:
        await subscriber.close()
    samples = [s * 1000 for s in latencies[plan.latency_warmup :]]
    return {
        "publish_to_handler_p50_ms": round(percentile(samples, 50), 3),
        "publish_to_handler_p99_ms": round(percentile(samples, 99), 3),
        "publish_to_handler_samples": len(samples),
    }


async def measure(url: str, plan: Plan) -> Figures:
    nc = await nats.connect(url, allow_reconnect=False)
    sub_nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await ensure_stream(js, events_stream())
        figures = await throughput(js, Publisher(js, "bench"), plan)
        figures |= await publish_to_handler(nc, sub_nc, plan)
        met = (
            figures["throughput_ratio"] >= TARGET_RATIO
            and figures["async_throughput_ratio"] >= TARGET_ASYNC_RATIO
        )
        figures["target"] = "met" if met else "missed"
        return figures
    finally:
        await sub_nc.close()
        await nc.close()


async def run(quick: bool) -> Figures:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        server = NatsProcess(Path(tmp) / "nats.data")
        await asyncio.to_thread(server.start)
        try:
            return await measure(server.url, plan)
        finally:
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    print(asyncio.run(run(quick=True)))
