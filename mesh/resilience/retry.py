"""Retry and hedging decisions (gRFC A6 plus the mesh's safety rule), as pure functions.

A failed attempt is retried only when all of these hold:

* the status code is in the policy's `retryable_codes` (UNAVAILABLE by default);
* retrying is safe: the method is marked ``idempotency_level = IDEMPOTENT`` or
  ``NO_SIDE_EFFECTS`` in its proto, or the attempt never reached the server;
* the server did not push back with "do not retry" (a negative or malformed
  ``grpc-retry-pushback-ms`` trailer, gRFC A6);
* attempts are left (`max_attempts` counts the original call; gRFC A6 caps it at 5).

The retry budget is not consulted here: ask `RetryBudget.try_withdraw()` after a "retry"
decision, so that no token is spent on a failure that would not be retried anyway.

Example::

    pushback = parse_pushback(trailers.get("grpc-retry-pushback-ms"))
    decision = should_retry(code=code, attempt=1, policy=policy, idempotency=idem,
                            reached_server=True, pushback_ms=pushback)
    if decision.retry and budget.try_withdraw():
        delay = retry_delay(policy, 1, random.random(), pushback if pushback != "stop" else None)
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import MethodOptions

from mesh.resilience.backoff import BackoffPolicy, backoff_delay

__all__ = [
    "MAX_ATTEMPTS_CAP",
    "Idempotency",
    "Pushback",
    "RetryDecision",
    "RetryPolicy",
    "can_hedge",
    "hedge_continues",
    "idempotency_of",
    "parse_pushback",
    "retry_delay",
    "should_retry",
]

MAX_ATTEMPTS_CAP = 5  # gRFC A6: larger maxAttempts values are treated as 5
_INT32_MAX = 2**31 - 1

# What `parse_pushback` makes of the trailer: milliseconds to wait, "stop", or None (no trailer).
Pushback = int | Literal["stop"] | None
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take "+5", " 5", "5_0"


class Idempotency(enum.Enum):
    """`google.protobuf.MethodOptions.IdempotencyLevel`, with the same numbers."""

    UNKNOWN = MethodOptions.IDEMPOTENCY_UNKNOWN  # the default: not safe to resend
    NO_SIDE_EFFECTS = MethodOptions.NO_SIDE_EFFECTS
    IDEMPOTENT = MethodOptions.IDEMPOTENT


_SAFE = frozenset({Idempotency.IDEMPOTENT, Idempotency.NO_SIDE_EFFECTS})


def _codes(name: str, value: Collection[grpc.StatusCode]) -> frozenset[grpc.StatusCode]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise ValueError(f"retry {name} must be a collection of grpc.StatusCode, got {value!r}")
    codes = frozenset(value)
    for code in codes:
        if not isinstance(code, grpc.StatusCode):
            raise ValueError(f"retry {name} must hold grpc.StatusCode values, got {code!r}")
    if grpc.StatusCode.OK in codes:
        raise ValueError(f"retry {name} must not contain OK")
    return codes


@dataclass(frozen=True)
class RetryPolicy:
    """How a method is retried or hedged (gRFC A6 `retryPolicy` / `hedgingPolicy`).

    max_attempts: attempts in all, the original call included (1 = never retry), at most 5.
    retryable_codes: status codes after which a retry may follow.
    backoff: the delay between attempts when the server sent no pushback.
    hedging_delay: seconds between hedged attempts; None = no hedging (0 = all at once).
    non_fatal_codes: while hedging, a failure with one of these codes lets the other attempts
        carry on; any other code ends the call with that failure.
    """

    max_attempts: int = 3
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base=0.05, cap=1.0))
    hedging_delay: float | None = None
    non_fatal_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"retry max_attempts must be an int, got {n!r}")
        if not 1 <= n <= MAX_ATTEMPTS_CAP:
            raise ValueError(
                f"retry max_attempts must be within [1, {MAX_ATTEMPTS_CAP}] "
                f"(gRFC A6 caps it at {MAX_ATTEMPTS_CAP}), got {n}"
            )
        # Frozen: normalise through object.__setattr__ (sets and lists become frozensets).
        object.__setattr__(self, "retryable_codes", _codes("retryable_codes", self.retryable_codes))
        object.__setattr__(self, "non_fatal_codes", _codes("non_fatal_codes", self.non_fatal_codes))
        if not isinstance(self.backoff, BackoffPolicy):
            raise ValueError(f"retry backoff must be a BackoffPolicy, got {self.backoff!r}")
        delay = self.hedging_delay
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise ValueError(f"retry hedging_delay must be a number or None, got {delay!r}")
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(f"retry hedging_delay must be finite and >= 0, got {delay}")


@dataclass(frozen=True)
class RetryDecision:
    """Whether to retry, and why (for logs, span events and tests)."""

    retry: bool
    reason: str


def idempotency_of(
    method_path: str, pool: descriptor_pool.DescriptorPool | None = None
) -> Idempotency:
    """The idempotency level a method declares in its proto, found in a descriptor pool.

    `method_path` is the gRPC path, ``/pkg.Service/Method``; `pool` defaults to the default
    pool, where generated ``*_pb2`` modules register themselves on import. An unknown service
    or method, or a path of another shape, gives UNKNOWN: the answer that never retries a call
    that reached the server. Look-ups cost a few microseconds; cache per path if it matters.
    """
    parts = method_path.split("/") if isinstance(method_path, str) else []
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return Idempotency.UNKNOWN
    pool = pool if pool is not None else descriptor_pool.Default()
    try:
        service = pool.FindServiceByName(parts[1])
    except KeyError:
        return Idempotency.UNKNOWN
    method = service.methods_by_name.get(parts[2])
    if method is None:
        return Idempotency.UNKNOWN
    return Idempotency(method.GetOptions().idempotency_level)


def parse_pushback(value: str | None) -> Pushback:
    """Read the ``grpc-retry-pushback-ms`` trailer (gRFC A6).

    None (no trailer) -> None: retry as the policy says. Decimal digits within int32 -> that
    many milliseconds to wait before the retry. Anything else (negative, empty, signed, spaced,
    fractional, too large) -> "stop": the server asks not to retry. A trailer sent more than once
    is also "stop" (as grpc-go treats it); the caller checks that before calling this.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        return "stop"
    pushback = int(value)
    return pushback if pushback <= _INT32_MAX else "stop"


def should_retry(
    *,
    code: grpc.StatusCode,
    attempt: int,
    policy: RetryPolicy,
    idempotency: Idempotency,
    reached_server: bool,
    pushback_ms: Pushback,
) -> RetryDecision:
    """Decide whether to retry after attempt number `attempt` (1 = the original call) failed.

    `pushback_ms` is what `parse_pushback` made of the trailer. The first rule that refuses
    gives the reason; the checks run in the order of the module docstring.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1 (1 = the original call), got {attempt!r}")
    name = code.name
    if code is grpc.StatusCode.OK:
        return RetryDecision(False, "the call succeeded")
    if code not in policy.retryable_codes:
        return RetryDecision(False, f"status {name} is not retryable")
    if idempotency not in _SAFE and reached_server:
        return RetryDecision(
            False, f"method is not idempotent ({idempotency.name}) and the call reached the server"
        )
    if pushback_ms == "stop":
        return RetryDecision(False, "server pushback asks not to retry")
    if attempt >= policy.max_attempts:
        return RetryDecision(False, f"attempts exhausted ({attempt} of {policy.max_attempts})")
    why = "never reached the server" if not reached_server else f"method is {idempotency.name}"
    return RetryDecision(
        True, f"status {name} is retryable, {why}, attempt {attempt} of {policy.max_attempts}"
    )


def retry_delay(
    policy: RetryPolicy, attempt: int, unit_random: float, pushback_ms: int | None
) -> float:
    """Seconds to wait before the retry that follows attempt `attempt` (1-based).

    The server's pushback when given (it overrides backoff, gRFC A6), else
    ``backoff_delay(policy.backoff, attempt - 1, unit_random)``: the first retry waits about
    `backoff.base`. `unit_random` is in [0, 1).
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1 (1 = the original call), got {attempt!r}")
    if pushback_ms is not None:
        if isinstance(pushback_ms, bool) or not isinstance(pushback_ms, int) or pushback_ms < 0:
            raise ValueError(f"pushback_ms must be an int >= 0 or None, got {pushback_ms!r}")
        return pushback_ms / 1000.0
    return backoff_delay(policy.backoff, attempt - 1, unit_random)


def can_hedge(policy: RetryPolicy, idempotency: Idempotency) -> bool:
    """Hedging sends the same call to the server more than once: only for safe methods."""
    return policy.hedging_delay is not None and policy.max_attempts > 1 and idempotency in _SAFE


def hedge_continues(code: grpc.StatusCode, policy: RetryPolicy) -> bool:
    """While hedging, does a failure with `code` leave the other attempts running (gRFC A6
    `nonFatalStatusCodes`)? False: the call is committed to this failure."""
    return code in policy.non_fatal_codes
