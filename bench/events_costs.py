"""Where an event's publishing time goes, raw nats-py against the mesh's publisher: a profiling
aid, not part of `make bench` (run it by hand: `python -m bench.events_costs`, about 40 s;
`--profile` adds a cProfile window per mode, about a minute more).

One nats-server (JetStream on, a throwaway data dir); this process publishes N events per mode
with the modes of `bench.events`, interleaved over three rounds:

- `raw_c64`: 64 `js.publish` in flight, no headers (the `throughput_ratio` baseline);
- `raw_async_c64`: nats-py's pipelined `js.publish_async`, a window of 64, no headers;
- `raw_async_headers_c64`: the same with the mesh's seven headers built by hand (a binary-mode
  CloudEvent, `Nats-Msg-Id`, `traceparent`);
- `mesh_c64`: `Publisher.publish_many(concurrency=64)`.

For each it prints the rate, this process's CPU per message (`os.times()`: the publisher, all
of it in this process) and nats-server's (from /proc), medians of the rounds. On 2 cores the
publishing process is the one at a full core, so its CPU per message bounds the rate.
`--profile` then runs each mode once more under cProfile and prints, per message, the own time
of nats-py's `Client._send_publish` and of the calls it makes (where each header is stripped,
checked, translated and encoded), against the process's whole profiled time: the share of the
header encoding. cProfile slows Python more than C: read the shares, not the times.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import nats

from bench.events import mesh_modes, raw_modes
from bench.loadgen import processes_cpu
from hms_tools.devstack import NatsProcess
from mesh.events import Publisher, ensure_stream
from mesh.events.subjects import events_stream

MODES = ("raw_c64", "raw_async_c64", "raw_async_headers_c64", "mesh_c64")
MESSAGES = 20000  # CPU is read in 10 ms ticks: 0.5 us a message
WARMUP = 500
ROUNDS = 3
#: The nats-py function that turns a headers dict into the HPUB header block.
SEND_PUBLISH = "_send_publish"


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def header_encoding(stats: pstats.Stats) -> tuple[float, float]:
    """(seconds in `_send_publish`'s own code and the calls it makes directly, the profile's
    whole own time)."""
    inside = 0.0
    whole = 0.0
    for (filename, _line, name), (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        whole += tt
        if name == SEND_PUBLISH and filename.endswith("client.py"):
            inside += tt
            continue
        for (caller_file, _caller_line, caller_name), entry in callers.items():
            if caller_name == SEND_PUBLISH and caller_file.endswith("client.py"):
                inside += entry[2]  # own time of this function when called from there
    return inside, whole


async def main(profile: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-costs-") as tmp:
        server = NatsProcess(Path(tmp) / "nats.data")
        await asyncio.to_thread(server.start)
        assert server.proc is not None
        server_pid = server.proc.pid
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await ensure_stream(js, events_stream())
            everything = raw_modes(js) | mesh_modes(Publisher(js, "bench"))
            modes = {name: everything[name] for name in MODES}
            for mode in modes.values():
                await mode(WARMUP)
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in modes}
            for round_ in range(ROUNDS):
                await js.purge_stream(events_stream().name)
                for name in MODES if round_ % 2 == 0 else reversed(MODES):
                    client, served = own_cpu(), processes_cpu([server_pid])
                    started = time.perf_counter()
                    await modes[name](MESSAGES)
                    wall = time.perf_counter() - started
                    rows[name].append(
                        (
                            MESSAGES / wall,
                            (own_cpu() - client) / MESSAGES * 1e6,
                            (processes_cpu([server_pid]) - served) / MESSAGES * 1e6,
                        )
                    )
            print(f"{MESSAGES} messages per mode, medians of {ROUNDS} rounds")
            print(f"{'mode':<24}{'msg/s':>9}{'client us/msg':>15}{'server us/msg':>15}")
            for name, values in rows.items():
                rate, client, served = (statistics.median(v) for v in zip(*values, strict=True))
                print(f"{name:<24}{rate:>9.0f}{client:>15.1f}{served:>15.1f}")
            if profile:
                print("\nunder cProfile, per message: _send_publish and the calls it makes")
                print(f"{'mode':<24}{'_send_publish us':>17}{'all us':>9}{'share':>8}")
                for name, mode in modes.items():
                    await js.purge_stream(events_stream().name)
                    profiler = cProfile.Profile()
                    profiler.enable()
                    await mode(MESSAGES)
                    profiler.disable()
                    inside, whole = header_encoding(pstats.Stats(profiler))
                    print(
                        f"{name:<24}{inside / MESSAGES * 1e6:>17.1f}"
                        f"{whole / MESSAGES * 1e6:>9.1f}{inside / whole:>8.1%}"
                    )
        finally:
            await nc.close()
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="add a cProfile window per mode")
    asyncio.run(main(parser.parse_args().profile))
