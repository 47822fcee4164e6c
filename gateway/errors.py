"""How the gateway answers errors: one gRPC -> HTTP status table and one error body.

Every error leaves the gateway as a google.rpc.Status in JSON, whatever its source:

    {"code": 5, "message": "book shelves/1/books/9 not found", "details": [...]}

``code`` is the gRPC code's number, ``details`` a list of ``google.protobuf.Any`` in their JSON
form, in the order the backend sent them: ``"@type"`` and the detail's own fields, as
grpc-gateway writes them (``DefaultHTTPErrorHandler`` marshals the whole Status), so a REST
client reads a ``google.rpc.BadRequest``'s ``fieldViolations`` or an ``ErrorInfo``'s ``reason``
rather than base64. The HTTP status comes from :func:`http_status`, grpc-gateway
v2's table (``runtime/errors.go``, ``HTTPStatusFromCode``), so clients written against
grpc-gateway see the same statuses here.

Errors the gateway finds itself, before or instead of calling a backend (malformed JSON, a bad
query value, a body over the limit, no ready instance, a method not allowed, a client over its
rate) are :class:`GatewayError`. They carry their HTTP status apart from their gRPC code, because
for some of them the table's answer is not the right one: a body over the limit is 413 although
its code is RESOURCE_EXHAUSTED (429), and a path served only under other methods is 405 with an
``Allow`` header although its code is UNIMPLEMENTED (501; grpc-gateway answers 501 there, a
common complaint).

A backend says the same with a ``google.rpc.ErrorInfo`` detail whose ``reason`` sharpens its
code (any ``domain``): ``PAYLOAD_TOO_LARGE`` on RESOURCE_EXHAUSTED is 413 (a body that will never
fit, not "slow down"), ``UNSUPPORTED_MEDIA_TYPE`` on INVALID_ARGUMENT is 415. The reason alone,
with another code, changes nothing.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2

from hms_gateway.jsonpb import DEFAULT_OPTIONS, JsonOptions, to_json

__all__ = [
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "GatewayError",
    "http_status",
    "status_body",
]

# grpc-gateway v2's HTTPStatusFromCode, all 17 codes. A test checks that none is missing.
_HTTP_STATUS: Mapping[grpc.StatusCode, int] = types.MappingProxyType(
    {
        # Not an error; kept so that the table is total.
        grpc.StatusCode.OK: 200,
        # The client went away; nginx's non-standard 499 "Client Closed Request".
        grpc.StatusCode.CANCELLED: 499,
        # Nothing more is known about the failure: a server-side error.
        grpc.StatusCode.UNKNOWN: 500,
        # The request itself is wrong, whatever the state of the system.
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        # The backend did not answer in time: the gateway timed out waiting for its upstream.
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        # The addressed resource does not exist.
        grpc.StatusCode.NOT_FOUND: 404,
        # Creating what exists already conflicts with the resource's current state.
        grpc.StatusCode.ALREADY_EXISTS: 409,
        # Authenticated, but not allowed.
        grpc.StatusCode.PERMISSION_DENIED: 403,
        # No valid credentials: the client should (re)authenticate.
        grpc.StatusCode.UNAUTHENTICATED: 401,
        # A quota or rate ran out: the client should slow down.
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        # Deliberately not 412 Precondition Failed, which is about HTTP conditional headers
        # (If-Match, If-Unmodified-Since); the system is not in the state the request needs,
        # so the client must change something before retrying: a 400.
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        # A concurrency conflict (a transaction aborted, a sequencer check failed): retry later.
        grpc.StatusCode.ABORTED: 409,
        # A value past a valid range (reading past the end): the request is wrong, 400.
        grpc.StatusCode.OUT_OF_RANGE: 400,
        # The method is not implemented or not enabled by this server.
        grpc.StatusCode.UNIMPLEMENTED: 501,
        # An invariant broke inside the server.
        grpc.StatusCode.INTERNAL: 500,
        # Transient: no instance ready, or it went away; the client may retry.
        grpc.StatusCode.UNAVAILABLE: 503,
        # Unrecoverable loss or corruption of data: a server-side error.
        grpc.StatusCode.DATA_LOSS: 500,
    }
)


#: google.rpc.ErrorInfo reasons a backend attaches to have its code answered more exactly.
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"

_BY_REASON: Mapping[tuple[grpc.StatusCode, str], int] = types.MappingProxyType(
    {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, PAYLOAD_TOO_LARGE): 413,
        (grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED_MEDIA_TYPE): 415,
    }
)


def http_status(code: grpc.StatusCode, details: Iterable[Message] = ()) -> int:
    """The HTTP status that answers a call ended with ``code`` (grpc-gateway v2's table),
    unless one of its ``details`` is an ErrorInfo whose reason sharpens it (module docstring).

    >>> http_status(grpc.StatusCode.FAILED_PRECONDITION)
    400
    >>> info = error_details_pb2.ErrorInfo(reason=PAYLOAD_TOO_LARGE, domain="documents")
    >>> http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, [info])
    413
    """
    for detail in details:
        info = _error_info(detail)
        if info is not None and (code, info.reason) in _BY_REASON:
            return _BY_REASON[code, info.reason]
    return _HTTP_STATUS[code]


def _error_info(detail: Message) -> error_details_pb2.ErrorInfo | None:
    """``detail`` as an ErrorInfo (unpacked from its Any), or None if it is none."""
    if isinstance(detail, error_details_pb2.ErrorInfo):
        return detail
    # types-protobuf types DESCRIPTOR as descriptor.Descriptor or upb's; Any.Is takes the former.
    descriptor = cast(Descriptor, error_details_pb2.ErrorInfo.DESCRIPTOR)
    if isinstance(detail, any_pb2.Any) and detail.Is(descriptor):
        info = error_details_pb2.ErrorInfo()
        try:
            detail.Unpack(info)
        except DecodeError:  # a backend's broken detail: the table's answer stands
            return None
        return info
    return None


def status_body(
    code: grpc.StatusCode,
    message: str,
    details: Iterable[Message | Mapping[str, Any]] = (),
    *,
    options: JsonOptions = DEFAULT_OPTIONS,
    pool: DescriptorPool | None = None,
) -> dict[str, Any]:
    """The google.rpc.Status JSON body for an error.

    ``details`` are protobuf messages (an ``Any`` is used as it is, any other message is packed
    into one) or mappings already in Any's JSON form, which must then carry an ``"@type"``.
    Each message detail is written by ``options`` as a response is (gateway/jsonpb.py), its
    type looked up in ``pool`` (the route's: the types learnt with the service, then the
    well-known and google.rpc ones); one whose type is unknown there is kept as
    ``{"@type": ..., "value": <base64 of its bytes>}`` rather than dropped.

    >>> status_body(grpc.StatusCode.NOT_FOUND, "shelf 3 not found")
    {'code': 5, 'message': 'shelf 3 not found', 'details': []}
    """
    return {
        "code": code.value[0],
        "message": message,
        "details": [_detail_json(detail, options, pool) for detail in details],
    }


def _detail_json(
    detail: Message | Mapping[str, Any], options: JsonOptions, pool: DescriptorPool | None
) -> dict[str, Any]:
    if isinstance(detail, Message):
        if isinstance(detail, any_pb2.Any):
            packed = detail
        else:
            packed = any_pb2.Any()
            packed.Pack(detail)
        value: dict[str, Any] = to_json(packed, options, pool=pool)
        return value
    if "@type" not in detail:
        raise ValueError(f'an error detail in JSON form needs an "@type": {dict(detail)!r}')
    return dict(detail)


_SHOWN_LIMIT = 80


def _shown(value: str) -> str:
    """A client's value quoted for a message, cut short so that an error cannot grow huge."""
    if len(value) <= _SHOWN_LIMIT:
        return repr(value)
    return repr(value[:_SHOWN_LIMIT]) + f"... ({len(value)} characters)"


class GatewayError(Exception):
    """An error the gateway answers itself, with its HTTP status, gRPC code and headers.

    Build one with the named constructors, whose messages say what was wrong:

    >>> err = GatewayError.method_not_allowed("DELETE", "/v1/shelves/1", ["GET", "PATCH"])
    >>> err.http_status, err.code.name, err.headers
    (405, 'UNIMPLEMENTED', (('allow', 'GET, PATCH'),))
    """

    def __init__(
        self,
        http_status: int,
        code: grpc.StatusCode,
        message: str,
        headers: Iterable[tuple[str, str]] = (),
        details: Iterable[Message] = (),
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.details: tuple[Message, ...] = tuple(details)

    def __repr__(self) -> str:
        return f"GatewayError({self.http_status}, {self.code.name}, {self.message!r})"

    def body(self, options: JsonOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
        """The google.rpc.Status JSON body of this error, its details written by `options`."""
        return status_body(self.code, self.message, self.details, options=options)

    # -- 400: the request is wrong ----------------------------------------------------------

    @classmethod
    def bad_json(cls, problem: str) -> GatewayError:
        """The request body is not valid JSON for the method's input message."""
        return cls(400, grpc.StatusCode.INVALID_ARGUMENT, f"request body is not valid: {problem}")

    @classmethod
    def bad_query_string(cls, problem: str) -> GatewayError:
        """The query string itself cannot be read (a malformed escape, bytes not UTF-8)."""
        return cls(400, grpc.StatusCode.INVALID_ARGUMENT, problem)

    @classmethod
    def bad_query_value(cls, field: str, value: str, problem: str) -> GatewayError:
        """A query parameter's value does not fit its field; names the field and the value."""
        return cls(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"query parameter {field!r}: invalid value {_shown(value)}: {problem}",
        )

    @classmethod
    def bad_path_value(cls, field: str, value: str, problem: str) -> GatewayError:
        """A path variable's value does not fit its field (or is malformed percent-encoding)."""
        return cls(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"path variable {field!r}: invalid value {_shown(value)}: {problem}",
        )

    @classmethod
    def unknown_field(cls, field: str, where: str = "request body") -> GatewayError:
        """Strict mode: the body or the query names a field the input message does not have."""
        return cls(400, grpc.StatusCode.INVALID_ARGUMENT, f"{where}: unknown field {field!r}")

    @classmethod
    def bad_header(cls, name: str, value: str, problem: str) -> GatewayError:
        """A request header the gateway reads (``Grpc-Timeout``, a ``-bin`` one) is malformed."""
        return cls(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header {name!r}: invalid value {_shown(value)}: {problem}",
        )

    @classmethod
    def repeated_header(cls, name: str, times: int | None = None) -> GatewayError:
        """A header that must be sent once (``Authorization``) came several times."""
        how_often = "more than once" if times is None else f"{times} times"
        return cls(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header {name!r} is sent {how_often}; send it once",
        )

    # -- routing ----------------------------------------------------------------------------

    @classmethod
    def no_route(cls, method: str, path: str) -> GatewayError:
        """No route matches the path under any method: 404."""
        return cls(404, grpc.StatusCode.NOT_FOUND, f"no route for {method} {path}")

    @classmethod
    def method_not_allowed(cls, method: str, path: str, allowed: Iterable[str]) -> GatewayError:
        """The path is served, but only under other methods: 405 with ``Allow``."""
        allow = ", ".join(sorted(set(allowed)))
        return cls(
            405,
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {method} not allowed for {path}; allowed: {allow}",
            headers=[("allow", allow)],
        )

    # -- limits -----------------------------------------------------------------------------

    @classmethod
    def body_too_large(cls, limit: int) -> GatewayError:
        """The request body is over the configured limit: 413."""
        return cls(
            413,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body is larger than the limit of {limit} bytes",
        )

    @classmethod
    def rate_limited(cls, retry_after: float) -> GatewayError:
        """The client is over its rate: 429 with ``Retry-After`` in whole seconds, at least 1."""
        if not math.isfinite(retry_after):
            raise ValueError(f"retry_after must be a finite number of seconds, not {retry_after}")
        seconds = max(1, math.ceil(retry_after))  # never 0: "retry now" would make clients spin
        return cls(
            429,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit exceeded; retry after {seconds} s",
            headers=[("retry-after", str(seconds))],
        )

    # -- the gateway itself -------------------------------------------------------------------

    @classmethod
    def internal(cls, request_id: str) -> GatewayError:
        """A failure nobody expected: 500 without internals, and the request id (also as a
        google.rpc.RequestInfo detail) to find the logged traceback by."""
        return cls(
            500,
            grpc.StatusCode.INTERNAL,
            f"internal error in the gateway (request id {request_id})",
            details=[error_details_pb2.RequestInfo(request_id=request_id)],
        )

    # -- backends ---------------------------------------------------------------------------

    @classmethod
    def no_backend(cls, service: str) -> GatewayError:
        """No instance of the route's service is ready: 503 (other routes keep working)."""
        return cls(
            503,
            grpc.StatusCode.UNAVAILABLE,
            f"service {service} has no ready instance",
        )
