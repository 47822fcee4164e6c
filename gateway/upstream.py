"""What a REST caller is told when a call to a backend fails: the backend's words, never the
transport's.

A failed call's message comes from one of three places: the backend's handler (``rule
'MAX_AGE' not found``), the mesh channel (``no instance of hms.x.v1.S is registered``) or grpc's
core, on either side (``failed to connect to all addresses; last error: UNKNOWN:
ipv4:10.0.0.5:7001: Failed to connect to remote host: Connection refused``, ``Stream removed
(Socket closed)``, ``Exception calling application: ...``). The first two are meant for the
caller; the third names internal addresses and describes the gateway's plumbing. grpc (1.6x and
later) no longer says in ``debug_error_string()`` whether a status came from the peer, so the
message is judged by what it says:

* a message that holds an address (``ipv4:``, ``ipv6:``, ``unix:`` targets, an IPv4 address,
  a bracketed IPv6 address with its port) or one of grpc core's phrases (:data:`CORE_PHRASES`),
  or is one of its bare words for a call that ran out of time or was cancelled (``Deadline
  Exceeded``, ``Cancelled``: :data:`CORE_MESSAGES`), is withheld;
* anything else is the backend's (or the mesh's) message, passed on as it is.

A withheld message is replaced by :func:`replacement` (it names the service and the outcome);
the caller (gateway/app.py) logs the original with the request id, which every answer carries
as ``X-Request-Id``.
"""

from __future__ import annotations

import re

import grpc

__all__ = ["CORE_MESSAGES", "CORE_PHRASES", "public_message", "replacement"]

#: Whole messages grpc's core gives a call (either side) that ran out of time or was cancelled.
CORE_MESSAGES = frozenset(
    {
        "Deadline Exceeded",
        "Cancelled",
        "CANCELLED",
        "Cancelled on client",
        "Locally cancelled by application!",
    }
)

CORE_PHRASES = (
    # Connecting (client side).
    "failed to connect to all addresses",
    "Failed to connect to remote host",
    "connections to all backends failing",
    "DNS resolution failed",
    "empty address list",
    "Handshake failed",
    "handshake failed",
    "SSL_ERROR",
    "Trying to connect an http1.x server",
    "Connection refused",
    "Connection reset",
    "Connection timed out",
    "No route to host",
    "Network is unreachable",
    # A connection or a stream that broke.
    "Socket closed",
    "Stream removed",
    "Broken pipe",
    "Received RST_STREAM",
    "Received http2 header with status",
    "GOAWAY",
    "keepalive watchdog timeout",
    "Endpoint read failed",
    "Transport closed",
    "Channel closed",
    "Too many pings",
    # Sizes and (de)serialization.
    "Received message larger than max",
    "Sent message larger than max",
    "Exception deserializing",
    "Exception serializing",
    # The server's core answering for a handler that raised (Python grpc without the mesh's
    # error interceptor).
    "Exception calling application",
    "Exception iterating responses",
    "Unexpected error in RPC handling",
)

_ADDRESS = re.compile(
    r"(?:ipv4|ipv6|unix|unix-abstract|vsock|dns):"  # grpc's resolved targets
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b"  # an IPv4 address (with or without its port)
    r"|\[[0-9A-Fa-f:.%]*:[0-9A-Fa-f:.%]*\]:\d+"  # [IPv6]:port
)
_CORE = re.compile("|".join(re.escape(phrase) for phrase in CORE_PHRASES))


def public_message(details: str) -> bool:
    """Whether a failed call's message may reach the REST caller as it is.

    >>> public_message("rule 'MAX_AGE' not found")
    True
    >>> public_message(
    ...     "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:44161: "
    ...     "Failed to connect to remote host: Connection refused",
    ... )
    False
    >>> public_message("Deadline Exceeded")
    False
    """
    return (
        details.strip() not in CORE_MESSAGES
        and _ADDRESS.search(details) is None
        and _CORE.search(details) is None
    )


def replacement(code: grpc.StatusCode, service: str) -> str:
    """The gateway's words for a call whose message is withheld.

    >>> replacement(grpc.StatusCode.UNAVAILABLE, "hms.notify.v1.NotifyService")
    'hms.notify.v1.NotifyService is unavailable'
    >>> replacement(grpc.StatusCode.INTERNAL, "hms.notify.v1.NotifyService")
    'the call to hms.notify.v1.NotifyService failed (INTERNAL)'
    """
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"{service} is unavailable"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} did not answer within the deadline"
    if code is grpc.StatusCode.CANCELLED:
        return f"the call to {service} was cancelled"
    return f"the call to {service} failed ({code.name})"
