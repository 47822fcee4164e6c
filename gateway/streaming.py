"""Framing of server-streaming responses: newline-delimited JSON or Server-Sent Events.

Pure: each function returns the bytes of one frame. A message is ``{"result": <message>}`` and
a mid-stream error ``{"error": <google.rpc.Status>}``, as grpc-gateway frames them, one per
line; with ``Accept: text/event-stream`` the same objects travel as SSE ``data:`` lines, the
error under ``event: error`` so that a browser's EventSource can listen for it by name.

>>> ndjson_frame(b'{"a":1}')
b'{"result":{"a":1}}\\n'
>>> sse_frame(b'{"a":1}')
b'data: {"result":{"a":1}}\\n\\n'
"""

from __future__ import annotations

__all__ = [
    "NDJSON",
    "SSE",
    "ndjson_error",
    "ndjson_frame",
    "sse_error",
    "sse_frame",
    "wants_sse",
]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def wants_sse(accept: str | None) -> bool:
    """Whether the ``Accept`` header asks for Server-Sent Events (and not with q=0)."""
    for item in (accept or "").split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if kind.lower() == SSE:
            return not any(_is_zero_weight(param) for param in params)
    return False


def _is_zero_weight(param: str) -> bool:
    """``q=0`` in any of RFC 9110's spellings (``Q=0``, ``q=0.``, ``q=0.000``)."""
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    value = value.strip()
    return value[:1] == "0" and value[1:2] in ("", ".") and not value[2:].strip("0")


def ndjson_frame(message_json: bytes) -> bytes:
    return b'{"result":' + message_json + b"}\n"


def ndjson_error(status_json: bytes) -> bytes:
    return b'{"error":' + status_json + b"}\n"


def sse_frame(message_json: bytes) -> bytes:
    # JSON from json.dumps has no raw newline, so one data: line always holds the frame.
    return b'data: {"result":' + message_json + b"}\n\n"


def sse_error(status_json: bytes) -> bytes:
    return b'event: error\ndata: {"error":' + status_json + b"}\n\n"
