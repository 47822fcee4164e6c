"""Garbage-collector settings for long-running mesh processes (services and the gateway).

A server's heap after start-up is large and lives for ever (generated code, descriptor pools,
grpc and OpenTelemetry modules), and every full collection walks all of it again. Under load
the gateway spent 40-49 ms of every second in the collector, the hand-written handler of the
benchmark half that (`python -m bench.gateway_costs`, docs/benchmarks.md). So, once started:

- `gc.freeze()` moves everything alive into a permanent generation the collector skips; only
  what is allocated afterwards is ever scanned (the technique CPython added for servers);
- the young generation is collected every 10,000 allocations instead of 700: a request's
  short-lived containers are freed by reference counting anyway, and the collector is only
  needed for cycles, which a request rarely makes.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

YOUNG_THRESHOLD = 10_000


def settle_heap(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Call once start-up is done: collect, freeze what survived, collect young objects less
    often. Cyclic garbage made later is still collected."""
    if young_threshold < 1:
        raise ValueError(f"young_threshold must be >= 1, got {young_threshold}")
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
