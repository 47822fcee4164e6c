"""What one client may hold of the gateway: ``ServerLimits``, enforced per connection by
gateway/protocol.py and set by the flags of ``mesh gateway``.

Apart from gateway/config.py so that the command line can show the defaults without importing
the gateway (PyJWT, protobuf).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of the gateway; each is a flag of ``mesh gateway``.

    The defaults hold a hostile client on the same network (docs/security.md): a request head
    is refused once it is over ``max_request_line`` (414) or ``max_header_bytes`` /
    ``max_header_count`` (431) while it arrives, not after; a connection is closed with 408 when
    its request head has not arrived ``header_timeout`` seconds after the connection opened (or
    after the head's first byte, on a kept-alive connection), or its body ``body_timeout``
    seconds after the head; an idle kept-alive connection is closed after
    ``keepalive_timeout``. Over ``max_connections`` open connections or ``max_in_flight``
    requests being served (each per listener), a client is answered 503 with ``Retry-After``.
    A connection that ends while its client may still be sending (a refusal, an answer before
    the body was read) lingers, reading and dropping, for at most ``linger_timeout`` seconds
    (the client reads the answer rather than a reset; gateway/protocol.py).
    """

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    max_in_flight: int = 256
    #: Long enough for a client to finish sending a body of some MiB and read the answer on a
    #: slow link; short beside ``header_timeout``, so a lingering client holds no more.
    linger_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "max_request_line",
            "max_header_bytes",
            "max_header_count",
            "max_connections",
            "max_in_flight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("header_timeout", "body_timeout", "keepalive_timeout", "linger_timeout"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
