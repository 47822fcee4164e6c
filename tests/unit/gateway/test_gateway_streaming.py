"""Streaming frames (exact bytes) and the Accept header check for Server-Sent Events."""

from __future__ import annotations

import pytest

from hms_gateway.streaming import (
    NDJSON,
    SSE,
    ndjson_error,
    ndjson_frame,
    sse_error,
    sse_frame,
    wants_sse,
)


def test_content_types() -> None:
    assert NDJSON == "application/x-ndjson"
    assert SSE == "text/event-stream"


@pytest.mark.parametrize(
    ("frame", "data", "expected"),
    [
        pytest.param(ndjson_frame, b'{"a":1}', b'{"result":{"a":1}}\n', id="ndjson-message"),
        pytest.param(ndjson_frame, b"{}", b'{"result":{}}\n', id="ndjson-empty-message"),
        pytest.param(
            ndjson_error,
            b'{"code":5,"message":"x","details":[]}',
            b'{"error":{"code":5,"message":"x","details":[]}}\n',
            id="ndjson-error",
        ),
        pytest.param(sse_frame, b'{"a":1}', b'data: {"result":{"a":1}}\n\n', id="sse-message"),
        pytest.param(sse_frame, b"{}", b'data: {"result":{}}\n\n', id="sse-empty-message"),
        pytest.param(
            sse_error,
            b'{"code":14,"message":"down","details":[]}',
            b'event: error\ndata: {"error":{"code":14,"message":"down","details":[]}}\n\n',
            id="sse-error",
        ),
        pytest.param(
            ndjson_frame,
            '{"s":"é"}'.encode(),
            b'{"result":' + '{"s":"é"}'.encode() + b"}\n",
            id="ndjson-utf8-kept",
        ),
    ],
)
def test_frames(frame, data: bytes, expected: bytes) -> None:  # type: ignore[no-untyped-def]
    assert frame(data) == expected


def test_ndjson_frames_are_one_line_each() -> None:
    stream = ndjson_frame(b'{"i":0}') + ndjson_frame(b'{"i":1}') + ndjson_error(b'{"code":2}')
    assert stream.split(b"\n") == [
        b'{"result":{"i":0}}',
        b'{"result":{"i":1}}',
        b'{"error":{"code":2}}',
        b"",
    ]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        pytest.param(None, False, id="no-header"),
        pytest.param("", False, id="empty"),
        pytest.param("text/event-stream", True, id="exact"),
        pytest.param("TEXT/Event-Stream", True, id="type-case-insensitive"),
        pytest.param("  text/event-stream  ", True, id="surrounding-space"),
        pytest.param("text/event-stream; charset=utf-8", True, id="with-param"),
        pytest.param("text/event-stream;q=0.5", True, id="q-nonzero"),
        pytest.param("text/event-stream;q=1", True, id="q-one"),
        pytest.param("text/event-stream;q=0", False, id="q-zero"),
        pytest.param("text/event-stream; q = 0", False, id="q-zero-spaced"),
        pytest.param("text/event-stream;q=0.0", False, id="q-zero-point-zero"),
        pytest.param("text/event-stream;q=0.000", False, id="q-zero-three-digits"),
        pytest.param("text/event-stream;charset=utf-8;q=0", False, id="q-zero-after-param"),
        pytest.param("text/event-stream;q=0.001", True, id="q-tiny-but-positive"),
        pytest.param("application/json, text/event-stream", True, id="list-second"),
        pytest.param("text/event-stream, application/json", True, id="list-first"),
        pytest.param("application/json,text/event-stream;q=0.9", True, id="list-no-space"),
        pytest.param("application/json, text/html", False, id="list-without-sse"),
        pytest.param("application/x-ndjson", False, id="ndjson"),
        pytest.param("*/*", False, id="any"),
        pytest.param("text/*", False, id="text-any"),
        pytest.param("text/event-streams", False, id="prefix-is-not-enough"),
        pytest.param("application/text/event-stream", False, id="suffix-is-not-enough"),
        pytest.param(
            "text/event-stream;Q=0",
            False,
            id="q-name-upper-case",
        ),
        pytest.param(
            "text/event-stream;q=0.",
            False,
            id="q-zero-trailing-dot",
        ),
    ],
)
def test_wants_sse(accept: str | None, expected: bool) -> None:
    assert wants_sse(accept) is expected
