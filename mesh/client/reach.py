"""Connectivity gating: an instance that cannot be connected to is not picked while that
lasts, whatever the outlier detector's cap and the warm-up rule say (gRPC's own balancers pick
only READY subchannels; this is the same rule for a pool that connects lazily).

An instance is known unreachable when a connection to it fails (a call that was never sent,
or the pool's probe: a TCP connect when the instance appears). After a failed call the gate
opens by itself after 0.5 s, 1 s, 2 s ... 30 s while failures repeat; after a failed probe it
stays closed, and the probe is repeated on that schedule until something answers. Pure: the
clock is passed in.

>>> reach = Reachability()
>>> reach.failed(now=10.0)
0.5
>>> reach.usable(now=10.2), reach.usable(now=10.5)
(False, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import math

__all__ = ["Reachability", "tcp_reachable"]

_BASE = 0.5
_CAP = 30.0


class Reachability:
    __slots__ = ("failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0

    def usable(self, now: float) -> bool:
        return now >= self.until

    def failed(self, now: float) -> float:
        """A connection failed at `now`: gated for the returned number of seconds."""
        self.failures += 1
        delay: float = min(_CAP, _BASE * 2.0 ** min(self.failures - 1, 16))
        self.until = now + delay
        return delay

    def hold(self) -> None:
        """Closed until `succeeded()`: for an instance whose probe keeps failing, the gate
        does not open by itself while the next probe is still to come."""
        self.until = math.inf

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0


async def tcp_reachable(address: str, timeout: float = 1.0) -> bool:
    """Does something accept a TCP connection at `address` (host:port) within `timeout`?"""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
