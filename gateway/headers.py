"""HTTP headers <-> gRPC metadata, as grpc-gateway does it; pure functions, no I/O.

Request headers that reach the backend as metadata (everything else is dropped):

    Authorization: ...           -> authorization
    Grpc-Metadata-Foo: v         -> foo: v
    Grpc-Metadata-Foo-Bin: <b64> -> foo-bin: <bytes>      (padded or not, standard or URL-safe)
    X-Request-Id: r              -> x-request-id: r
    X-Forwarded-For: a           -> x-forwarded-for: a, <client ip>
    X-Forwarded-Host / Host      -> x-forwarded-host
    X-Hms-Version: >=1.2 <2      -> x-hms-version       (the versions that may serve the call)

A ``Grpc-Metadata-`` header whose target is a key gRPC or HTTP/2 keeps for itself (``grpc-*``,
``te``, ``content-type``, ``user-agent``, connection headers), one the gateway sets itself
(``x-forwarded-*``, ``x-request-id``), ``authorization`` (the gate verifies the ``Authorization``
header, so a second value beside it would reach the backend unverified) or one of the caller's
``reserved`` keys (the gate's verified identity) is dropped silently, so a client can neither
break the call nor forge what the gateway vouches for. ``Authorization`` sent twice is a 400
(:func:`single_header`): which one the gate verified must not be a question.
A value gRPC cannot carry (non-printable ASCII, bad base64 in a ``-bin`` header) is a 400 that
names the header: the client asked for it explicitly, so dropping it would hide the mistake.

Response metadata comes back as ``Grpc-Metadata-<key>`` (initial) and ``Grpc-Trailer-<key>``
(trailing), binary values in padded base64. ``Grpc-Timeout`` is read by
:func:`parse_grpc_timeout`; the success status a service may choose by :func:`success_status`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Iterable

from hms_gateway.errors import GatewayError

__all__ = [
    "METADATA_HEADER_PREFIX",
    "SUCCESS_STATUS_KEY",
    "TRAILER_HEADER_PREFIX",
    "MetadataValue",
    "from_metadata",
    "is_printable_ascii",
    "parse_grpc_timeout",
    "single_header",
    "success_status",
    "to_metadata",
]

MetadataValue = str | bytes

METADATA_HEADER_PREFIX = "Grpc-Metadata-"
TRAILER_HEADER_PREFIX = "Grpc-Trailer-"

SUCCESS_STATUS_KEY = "x-http-code"
"""Response metadata key by which a service chooses a 2xx status (grpc-gateway's convention).

A handler that creates something sends ``("x-http-code", "201")`` in its initial metadata; the
gateway answers 201 instead of 200 and does not echo the key as a header. A value that is not a
status in 200..299 is ignored. For 204 and 205 the gateway must send no body.
"""

_GRPC_TIMEOUT_HEADER = "grpc-timeout"
# gRPC over HTTP/2: TimeoutValue is at most 8 ASCII digits, TimeoutUnit one of H M S m u n.
# [0-9], not \d, which also matches other scripts' digits; fullmatch, as $ allows a final "\n".
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
# Unit -> (multiplier, divisor), so that "1m" is exactly 1 / 1000, not 1 * 0.001.
_TIMEOUT_UNITS = {
    "H": (3600, 1),
    "M": (60, 1),
    "S": (1, 1),
    "m": (1, 1_000),
    "u": (1, 1_000_000),
    "n": (1, 1_000_000_000),
}

_METADATA_PREFIX = METADATA_HEADER_PREFIX.lower()
_BINARY_SUFFIX = "-bin"
# gRPC metadata keys: lower-case letters, digits, "-", "_" and ".".
_KEY = re.compile(r"[0-9a-z_.-]+")
# gRPC ASCII values: printable ASCII, space included.
_ASCII_VALUE = re.compile(r"[\x20-\x7e]*")
# Keys gRPC, HTTP/2 or the gateway itself own; "grpc-*" is refused by prefix.
_NOT_FROM_CLIENT = frozenset(
    {
        "te",
        "content-type",
        "user-agent",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-host",
        # Passed through from their own headers, once: never a second value beside them.
        "authorization",
        "x-request-id",
        "x-hms-version",
    }
)
# Passed through under their own (lower-case) names.
_PASSED_THROUGH = frozenset({"authorization", "x-request-id", "x-hms-version"})


def parse_grpc_timeout(value: str) -> float:
    """Seconds from a ``Grpc-Timeout`` header in gRPC's wire format.

    >>> parse_grpc_timeout("250m")
    0.25
    >>> parse_grpc_timeout("1.5S")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    hms_gateway.errors.GatewayError: header 'grpc-timeout': invalid value '1.5S': ...
    """
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise GatewayError.bad_header(
            _GRPC_TIMEOUT_HEADER,
            value,
            "expected 1 to 8 digits and a unit (H, M, S, m, u or n), as 100m or 30S",
        )
    multiplier, divisor = _TIMEOUT_UNITS[match[2]]
    return int(match[1]) * multiplier / divisor


def single_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The value of the header `name` (lower-case), None if absent; sent twice is a 400.

    >>> single_header([("authorization", "Bearer a")], "authorization")
    'Bearer a'
    >>> single_header([("authorization", "Bearer a"), ("authorization", "Bearer b")],
    ...               "authorization")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    hms_gateway.errors.GatewayError: header 'authorization' is sent 2 times; ...
    """
    values = [value for key, value in headers if key == name]
    if len(values) > 1:
        raise GatewayError.repeated_header(name, len(values))
    return values[0] if values else None


def to_metadata(
    headers: Iterable[tuple[str, str]],
    *,
    client_ip: str | None,
    host: str | None,
    reserved: Collection[str] = (),
) -> list[tuple[str, MetadataValue]]:
    """The gRPC metadata that a request's headers send to the backend.

    ``client_ip`` is appended to ``x-forwarded-for``; ``host`` (the request's Host) is
    ``x-forwarded-host`` unless the client sent one. ``reserved`` are lower-case keys the
    gateway sets itself after this (the verified subject and claims), never taken from a client.
    Order is kept; a repeated header gives a repeated key, except ``Authorization``, which is
    forwarded once or refused (400) when sent twice.

    >>> to_metadata(
    ...     [("Authorization", "Bearer t"), ("Grpc-Metadata-Tenant", "a"), ("Cookie", "c")],
    ...     client_ip="10.0.0.7",
    ...     host="api.example",
    ... )  # doctest: +NORMALIZE_WHITESPACE
    [('authorization', 'Bearer t'), ('tenant', 'a'),
     ('x-forwarded-for', '10.0.0.7'), ('x-forwarded-host', 'api.example')]
    """
    metadata: list[tuple[str, MetadataValue]] = []
    forwarded_for: list[str] = []
    forwarded_host: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _PASSED_THROUGH:
            metadata.append((lower, _ascii_value(name, value)))
        elif lower.startswith(_METADATA_PREFIX):
            key = lower[len(_METADATA_PREFIX) :]
            if not _client_may_send(key, reserved):
                continue
            if key.endswith(_BINARY_SUFFIX):
                metadata.append((key, _decode_binary(name, value)))
            else:
                metadata.append((key, _ascii_value(name, value)))
        elif lower == "x-forwarded-for":
            forwarded_for.append(_ascii_value(name, value).strip())
        elif lower == "x-forwarded-host" and forwarded_host is None:
            forwarded_host = _ascii_value(name, value).strip()
    if client_ip:
        forwarded_for.append(client_ip)
    chain = ", ".join(hop for hop in forwarded_for if hop)
    if chain:
        metadata.append(("x-forwarded-for", _ascii_value("x-forwarded-for", chain)))
    if not forwarded_host and host:
        forwarded_host = _ascii_value("host", host)
    if forwarded_host:
        metadata.append(("x-forwarded-host", forwarded_host))
    _forward_once(metadata)
    return metadata


def from_metadata(
    initial: Iterable[tuple[str, MetadataValue]] | None,
    trailing: Iterable[tuple[str, MetadataValue]] | None,
) -> list[tuple[str, str]]:
    """The response headers for a call's initial and trailing metadata.

    ``grpc-*`` keys (``grpc-status-details-bin`` goes into the error body, not a header) and
    :data:`SUCCESS_STATUS_KEY` are left out, and so is a text value that is not printable ASCII,
    which could otherwise split the response's headers.

    >>> from_metadata([("etag", "7"), ("sig-bin", b"\\x01")], [("cost", "3")])
    [('Grpc-Metadata-etag', '7'), ('Grpc-Metadata-sig-bin', 'AQ=='), ('Grpc-Trailer-cost', '3')]
    """
    headers: list[tuple[str, str]] = []
    for prefix, metadata, skip in (
        (METADATA_HEADER_PREFIX, initial, SUCCESS_STATUS_KEY),
        (TRAILER_HEADER_PREFIX, trailing, None),
    ):
        for key, value in metadata or ():
            lower = key.lower()
            if lower == skip or lower.startswith("grpc-") or _KEY.fullmatch(lower) is None:
                continue
            if isinstance(value, bytes) or lower.endswith(_BINARY_SUFFIX):
                raw = value if isinstance(value, bytes) else value.encode("utf-8")
                headers.append((prefix + lower, base64.b64encode(raw).decode("ascii")))
            elif is_printable_ascii(value):
                headers.append((prefix + lower, value))
    return headers


def success_status(initial_metadata: Iterable[tuple[str, MetadataValue]] | None) -> int | None:
    """The 2xx status a service chose through :data:`SUCCESS_STATUS_KEY`, or ``None``.

    The first value of the key counts; one that is not three digits in 200..299 is ignored
    (a service cannot turn a success into an error this way: errors are gRPC statuses).

    >>> success_status([("x-http-code", "201")])
    201
    >>> success_status([("x-http-code", "404")]) is None
    True
    """
    for key, value in initial_metadata or ():
        if key.lower() != SUCCESS_STATUS_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if re.fullmatch(r"2[0-9][0-9]", text) is None:
            return None
        return int(text)
    return None


def is_printable_ascii(value: str) -> bool:
    """Whether `value` can be a gRPC text metadata value or an HTTP header value as the gateway
    writes them: printable ASCII and spaces, nothing that could split a header."""
    return _ASCII_VALUE.fullmatch(value) is not None


def _forward_once(metadata: list[tuple[str, MetadataValue]]) -> None:
    """Two values of one of these keys would leave the backend to guess which one the gate
    verified."""
    keys = [key for key, _ in metadata]
    for key in ("authorization", "x-hms-version"):
        if keys.count(key) > 1:
            raise GatewayError.repeated_header(key)


def _client_may_send(key: str, reserved: Collection[str]) -> bool:
    return (
        _KEY.fullmatch(key) is not None
        and not key.startswith("grpc-")
        and key not in _NOT_FROM_CLIENT
        and key not in reserved
    )


def _ascii_value(header: str, value: str) -> str:
    if not is_printable_ascii(value):
        raise GatewayError.bad_header(header, value, "gRPC metadata values must be printable ASCII")
    return value


def _decode_binary(header: str, value: str) -> bytes:
    # gRPC says senders pad and receivers accept both; browsers' btoa pads, JWT-style tools
    # don't, and some send the URL-safe alphabet: accept all four forms.
    text = value.strip()
    alphabet_fixed = text.replace("-", "+").replace("_", "/")
    padded = alphabet_fixed + "=" * (-len(alphabet_fixed) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError.bad_header(header, value, "a -bin header must be base64") from exc
