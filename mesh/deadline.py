"""Deadlines: every outbound call has one, and a call made while serving another inherits
what is left of the inbound deadline (grpcio does not propagate deadlines: grpc/grpc#17489).

Deadlines are absolute `time.monotonic()` instants. The server side records the inbound
deadline in a context variable (`inbound_scope`); asyncio copies context variables into tasks,
so every outbound call made while handling that request sees it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = [
    "DeadlineConfig",
    "inbound_deadline",
    "inbound_scope",
    "outbound_deadline",
]

_INBOUND: ContextVar[float | None] = ContextVar("mesh_inbound_deadline", default=None)


def inbound_deadline() -> float | None:
    """The deadline of the request being served in this context, if any."""
    return _INBOUND.get()


@contextlib.contextmanager
def inbound_scope(time_remaining: float | None, now: float | None = None) -> Iterator[None]:
    """Record the inbound call's deadline (from `context.time_remaining()`) for its handler."""
    if time_remaining is None:
        token = _INBOUND.set(None)
    else:
        start = time.monotonic() if now is None else now
        token = _INBOUND.set(start + max(0.0, time_remaining))
    try:
        yield
    finally:
        _INBOUND.reset(token)


@dataclass(frozen=True)
class DeadlineConfig:
    """Per-method defaults (`/pkg.Service/Method` or `/pkg.Service/*`), a global default,
    and the least budget worth sending a call with."""

    default: float = 10.0
    per_method: Mapping[str, float] = field(default_factory=dict)
    minimum: float = 0.005

    def __post_init__(self) -> None:
        for name, value in [("default", self.default), ("minimum", self.minimum),
                            *self.per_method.items()]:  # fmt: skip
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"deadline {name}: must be a finite number >= 0, got {value}")
        if self.default <= 0:
            raise ValueError(f"deadline default must be > 0, got {self.default}")

    def for_method(self, method: str) -> float:
        if method in self.per_method:
            return self.per_method[method]
        service = method.rsplit("/", 1)[0]
        return self.per_method.get(f"{service}/*", self.default)


def outbound_deadline(
    config: DeadlineConfig,
    method: str,
    timeout: float | None,
    now: float,
    inbound: float | None,
) -> float:
    """The absolute deadline of an outbound call: the caller's timeout (or the method's
    default), never later than the inbound deadline it is made under."""
    own = now + (timeout if timeout is not None else config.for_method(method))
    return own if inbound is None else min(own, inbound)
