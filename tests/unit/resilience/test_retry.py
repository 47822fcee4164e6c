"""Retry decisions: the table of (code, attempt, idempotency, reached, pushback), pushback parsing,
delays, hedging, idempotency read from the proto descriptors."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from hypothesis import given, settings
from hypothesis import strategies as st

from hms.testing.v1 import echo_pb2  # registers EchoService in the default descriptor pool
from mesh.resilience.backoff import BackoffPolicy
from mesh.resilience.retry import (
    MAX_ATTEMPTS_CAP,
    Idempotency,
    Pushback,
    RetryDecision,
    RetryPolicy,
    can_hedge,
    hedge_continues,
    idempotency_of,
    parse_pushback,
    retry_delay,
    should_retry,
)

Code = grpc.StatusCode
IDEM, NSE, UNK = Idempotency.IDEMPOTENT, Idempotency.NO_SIDE_EFFECTS, Idempotency.UNKNOWN
DEFAULT = RetryPolicy()  # 3 attempts, UNAVAILABLE only
WIDE = RetryPolicy(max_attempts=5, retryable_codes={Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED})


@pytest.mark.parametrize(
    ("policy", "code", "attempt", "idem", "reached", "pushback", "retry", "reason"),
    [
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, IDEM, True, None, True,
            "status UNAVAILABLE is retryable, method is IDEMPOTENT, attempt 1 of 3",
            id="idempotent-unavailable-first-attempt",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 2, NSE, True, None, True,
            "status UNAVAILABLE is retryable, method is NO_SIDE_EFFECTS, attempt 2 of 3",
            id="no-side-effects-second-attempt",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, UNK, False, None, True,
            "status UNAVAILABLE is retryable, never reached the server, attempt 1 of 3",
            id="unknown-but-never-sent",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, UNK, True, None, False,
            "method is not idempotent (UNKNOWN) and the call reached the server",
            id="unknown-and-reached-server",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 3, IDEM, True, None, False,
            "attempts exhausted (3 of 3)",
            id="attempts-exhausted",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 7, IDEM, True, None, False,
            "attempts exhausted (7 of 3)",
            id="attempts-beyond-max",
        ),
        pytest.param(
            RetryPolicy(max_attempts=1), Code.UNAVAILABLE, 1, IDEM, False, None, False,
            "attempts exhausted (1 of 1)",
            id="max-attempts-one-never-retries",
        ),
        pytest.param(
            DEFAULT, Code.DEADLINE_EXCEEDED, 1, IDEM, True, None, False,
            "status DEADLINE_EXCEEDED is not retryable",
            id="deadline-not-retryable",
        ),
        pytest.param(
            DEFAULT, Code.INTERNAL, 1, IDEM, False, None, False,
            "status INTERNAL is not retryable",
            id="internal-not-retryable-even-unsent",
        ),
        pytest.param(
            DEFAULT, Code.RESOURCE_EXHAUSTED, 1, IDEM, True, None, False,
            "status RESOURCE_EXHAUSTED is not retryable",
            id="resource-exhausted-not-by-default",
        ),
        pytest.param(
            WIDE, Code.RESOURCE_EXHAUSTED, 4, IDEM, True, 200, True,
            "status RESOURCE_EXHAUSTED is retryable, method is IDEMPOTENT, attempt 4 of 5",
            id="configured-code-with-pushback",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, IDEM, True, 0, True,
            "status UNAVAILABLE is retryable, method is IDEMPOTENT, attempt 1 of 3",
            id="pushback-zero-retries-now",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, IDEM, True, "stop", False,
            "server pushback asks not to retry",
            id="pushback-stop",
        ),
        pytest.param(
            DEFAULT, Code.UNAVAILABLE, 1, UNK, False, "stop", False,
            "server pushback asks not to retry",
            id="pushback-stop-even-unsent",
        ),
        pytest.param(
            DEFAULT, Code.OK, 1, IDEM, True, None, False,
            "the call succeeded",
            id="ok-is-not-retried",
        ),
        pytest.param(
            RetryPolicy(retryable_codes=frozenset()), Code.UNAVAILABLE, 1, IDEM, False, None,
            False, "status UNAVAILABLE is not retryable",
            id="no-retryable-codes",
        ),
    ],
)  # fmt: skip
def test_should_retry(
    *,
    policy: RetryPolicy,
    code: grpc.StatusCode,
    attempt: int,
    idem: Idempotency,
    reached: bool,
    pushback: Pushback,
    retry: bool,
    reason: str,
) -> None:
    decision = should_retry(
        code=code,
        attempt=attempt,
        policy=policy,
        idempotency=idem,
        reached_server=reached,
        pushback_ms=pushback,
    )
    assert decision == RetryDecision(retry, reason)


@pytest.mark.parametrize(
    "attempt",
    [pytest.param(0, id="zero"), pytest.param(-1, id="negative"), pytest.param(1.0, id="float")],
)
def test_should_retry_refuses_bad_attempt(attempt: Any) -> None:
    with pytest.raises(ValueError, match="attempt"):
        should_retry(
            code=Code.UNAVAILABLE,
            attempt=attempt,
            policy=DEFAULT,
            idempotency=IDEM,
            reached_server=True,
            pushback_ms=None,
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("0", 0, id="zero"),
        pytest.param("250", 250, id="plain"),
        pytest.param("007", 7, id="leading-zeros"),
        pytest.param("2147483647", 2**31 - 1, id="int32-max"),
        pytest.param("2147483648", "stop", id="above-int32"),
        pytest.param("-1", "stop", id="negative"),
        pytest.param("-0", "stop", id="minus-zero"),
        pytest.param("+5", "stop", id="plus-sign"),
        pytest.param("", "stop", id="empty"),
        pytest.param(" 5", "stop", id="leading-space"),
        pytest.param("5 ", "stop", id="trailing-space"),
        pytest.param("1.5", "stop", id="fraction"),
        pytest.param("1e3", "stop", id="exponent"),
        pytest.param("5_0", "stop", id="underscore"),
        pytest.param("abc", "stop", id="letters"),
        pytest.param("٣", "stop", id="non-ascii-digit"),
        pytest.param("10,20", "stop", id="list"),
    ],
)
def test_parse_pushback(value: str | None, expected: Pushback) -> None:
    assert parse_pushback(value) == expected


@settings(database=None, derandomize=True, max_examples=500)
@given(value=st.text(max_size=12))
def test_parse_pushback_never_raises(value: str) -> None:
    result = parse_pushback(value)
    assert result == "stop" or (isinstance(result, int) and 0 <= result < 2**31)
    if isinstance(result, int):
        assert value.isascii()
        assert value.isdigit()
        assert int(value) == result


NO_JITTER = RetryPolicy(backoff=BackoffPolicy(base=0.1, cap=0.5, multiplier=2.0, jitter=0.0))


@pytest.mark.parametrize(
    ("policy", "attempt", "unit_random", "pushback", "expected"),
    [
        pytest.param(NO_JITTER, 1, 0.5, None, 0.1, id="first-retry-waits-base"),
        pytest.param(NO_JITTER, 2, 0.5, None, 0.2, id="second-doubles"),
        pytest.param(NO_JITTER, 3, 0.5, None, 0.4, id="third-doubles"),
        pytest.param(NO_JITTER, 4, 0.5, None, 0.5, id="capped"),
        pytest.param(NO_JITTER, 1, 0.5, 1500, 1.5, id="pushback-overrides-backoff"),
        pytest.param(NO_JITTER, 4, 0.5, 0, 0.0, id="pushback-zero"),
        pytest.param(DEFAULT, 1, 0.0, None, 0.04, id="default-jitter-low"),
        pytest.param(DEFAULT, 1, 0.5, None, 0.05, id="default-jitter-middle"),
    ],
)
def test_retry_delay(
    policy: RetryPolicy, attempt: int, unit_random: float, pushback: int | None, expected: float
) -> None:
    assert retry_delay(policy, attempt, unit_random, pushback) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "pushback", "match"),
    [
        pytest.param(0, None, "attempt", id="attempt-zero"),
        pytest.param(1, -5, "pushback_ms", id="negative-pushback"),
        pytest.param(1, "stop", "pushback_ms", id="stop-is-not-a-delay"),
        pytest.param(1, 1.5, "pushback_ms", id="float-pushback"),
    ],
)
def test_retry_delay_refuses(attempt: int, pushback: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        retry_delay(DEFAULT, attempt, 0.5, pushback)


HEDGED = RetryPolicy(hedging_delay=0.02)


@pytest.mark.parametrize(
    ("policy", "idem", "expected"),
    [
        pytest.param(HEDGED, IDEM, True, id="hedged-idempotent"),
        pytest.param(HEDGED, NSE, True, id="hedged-no-side-effects"),
        pytest.param(HEDGED, UNK, False, id="hedged-unknown-never"),
        pytest.param(DEFAULT, IDEM, False, id="no-hedging-delay"),
        pytest.param(RetryPolicy(hedging_delay=0.0), IDEM, True, id="zero-delay-all-at-once"),
        pytest.param(RetryPolicy(max_attempts=1, hedging_delay=0.02), IDEM, False, id="one-copy"),
    ],
)
def test_can_hedge(policy: RetryPolicy, idem: Idempotency, expected: bool) -> None:
    assert can_hedge(policy, idem) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(Code.UNAVAILABLE, True, id="unavailable-non-fatal"),
        pytest.param(Code.INVALID_ARGUMENT, False, id="invalid-argument-fatal"),
        pytest.param(Code.DEADLINE_EXCEEDED, False, id="deadline-fatal"),
    ],
)
def test_hedge_continues(code: grpc.StatusCode, expected: bool) -> None:
    assert hedge_continues(code, HEDGED) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/hms.testing.v1.EchoService/Echo", IDEM, id="echo-idempotent"),
        pytest.param("/hms.testing.v1.EchoService/EchoOnce", UNK, id="echo-once-default"),
        pytest.param("/hms.testing.v1.EchoService/Nope", UNK, id="unknown-method"),
        pytest.param("/hms.testing.v1.Nope/Echo", UNK, id="unknown-service"),
        pytest.param("hms.testing.v1.EchoService/Echo", UNK, id="no-leading-slash"),
        pytest.param("/hms.testing.v1.EchoService/Echo/", UNK, id="trailing-slash"),
        pytest.param("/hms.testing.v1.EchoService", UNK, id="no-method"),
        pytest.param("//Echo", UNK, id="empty-service"),
        pytest.param("", UNK, id="empty"),
    ],
)
def test_idempotency_of_default_pool(path: str, expected: Idempotency) -> None:
    assert idempotency_of(path) is expected


def test_echo_module_is_the_one_registered() -> None:
    service = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
    assert service.full_name == "hms.testing.v1.EchoService"


def test_idempotency_of_own_pool() -> None:
    levels = {
        "Read": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "Put": descriptor_pb2.MethodOptions.IDEMPOTENT,
        "Send": descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN,
    }
    proto = descriptor_pb2.FileDescriptorProto(name="t/retry_test.proto", package="t.v1")
    proto.message_type.add(name="M")
    service = proto.service.add(name="S")
    for name, level in levels.items():
        method = service.method.add(name=name, input_type=".t.v1.M", output_type=".t.v1.M")
        method.options.idempotency_level = level
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    assert idempotency_of("/t.v1.S/Read", pool) is NSE
    assert idempotency_of("/t.v1.S/Put", pool) is IDEM
    assert idempotency_of("/t.v1.S/Send", pool) is UNK
    assert idempotency_of("/hms.testing.v1.EchoService/Echo", pool) is UNK  # not in this pool


def test_policy_defaults_and_normalisation() -> None:
    assert DEFAULT.max_attempts == 3
    assert DEFAULT.retryable_codes == frozenset({Code.UNAVAILABLE})
    assert DEFAULT.non_fatal_codes == frozenset({Code.UNAVAILABLE})
    assert DEFAULT.backoff == BackoffPolicy(base=0.05, cap=1.0)
    assert DEFAULT.hedging_delay is None
    assert isinstance(WIDE.retryable_codes, frozenset)
    assert RetryPolicy(max_attempts=MAX_ATTEMPTS_CAP).max_attempts == 5
    assert hash(DEFAULT) == hash(RetryPolicy())


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"max_attempts": 0}, r"max_attempts.*\[1, 5\]", id="attempts-zero"),
        pytest.param({"max_attempts": 6}, r"max_attempts.*caps it at 5", id="attempts-above-cap"),
        pytest.param({"max_attempts": 3.0}, "max_attempts", id="attempts-float"),
        pytest.param({"max_attempts": True}, "max_attempts", id="attempts-bool"),
        pytest.param({"retryable_codes": {Code.OK}}, "retryable_codes", id="retry-on-ok"),
        pytest.param({"retryable_codes": {14}}, "retryable_codes", id="retry-int-code"),
        pytest.param({"retryable_codes": "UNAVAILABLE"}, "retryable_codes", id="retry-str"),
        pytest.param({"non_fatal_codes": [Code.OK]}, "non_fatal_codes", id="non-fatal-ok"),
        pytest.param({"non_fatal_codes": None}, "non_fatal_codes", id="non-fatal-none"),
        pytest.param({"backoff": 0.05}, "backoff", id="backoff-number"),
        pytest.param({"hedging_delay": -0.01}, "hedging_delay", id="hedging-negative"),
        pytest.param({"hedging_delay": math.nan}, "hedging_delay", id="hedging-nan"),
        pytest.param({"hedging_delay": math.inf}, "hedging_delay", id="hedging-inf"),
        pytest.param({"hedging_delay": "0.1"}, "hedging_delay", id="hedging-string"),
    ],
)
def test_invalid_policy_raises_value_error_naming_the_field(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**fields)


@settings(database=None, derandomize=True, max_examples=500)
@given(
    code=st.sampled_from(list(grpc.StatusCode)),
    attempt=st.integers(1, 10),
    max_attempts=st.integers(1, MAX_ATTEMPTS_CAP),
    idem=st.sampled_from(list(Idempotency)),
    reached=st.booleans(),
    pushback=st.none() | st.just("stop") | st.integers(0, 10_000),
)
def test_retry_only_when_every_rule_allows(
    *,
    code: grpc.StatusCode,
    attempt: int,
    max_attempts: int,
    idem: Idempotency,
    reached: bool,
    pushback: Pushback,
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    decision = should_retry(
        code=code,
        attempt=attempt,
        policy=policy,
        idempotency=idem,
        reached_server=reached,
        pushback_ms=pushback,
    )
    safe = idem is not UNK or not reached
    expected = (
        code in policy.retryable_codes and safe and pushback != "stop" and attempt < max_attempts
    )
    assert decision.retry is expected
    assert decision.reason
