"""Property tests of the session gateway: whatever the request, it answers, and never with 500.

Random paths (printable and non-ASCII characters, valid and malformed percent escapes, ``..``,
``//``, very long segments, ``:verbs``), random query strings and random bodies go to the real
gateway in front of the mirror backend. The properties: no 500, no 5xx other than 501, 502,
503 and 504; every non-2xx JSON answer is a google.rpc.Status (integer ``code``, string
``message``) whose message carries no Python or protobuf exception text; the connection is never
dropped without an answer; and the gateway still answers ``/healthz`` afterwards.

Request targets are sent byte for byte: httpx would drop ``.`` and ``..`` segments and escape
a malformed ``%``, so :class:`RawTargetTransport` sends the target given in the request's
``RAW_TARGET`` extension instead of the URL's.

Fields by which the mirror backend fails or stalls on purpose (``fail_code``, ``delay_ms``,
``response_headers``, ``response_trailers``, ``count``/``fail_after``) are left out of the
generated field names: a 500 the backend asked for is not the gateway's. The bugs these
properties found (a backend content type that is not a header value, a tiny ``Grpc-Timeout`` on
a server stream, a query FieldMask that JSON cannot print) have regression tests at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

RAW_TARGET = "hms_raw_target"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
STREAM = "/v1/stream"  # the mirror's server-streaming method
# 502: the backend answered with something the gateway cannot pass on (its fault, not ours).
ALLOWED_5XX = {501, 502, 503, 504}
# Words of Python's and protobuf's exceptions, which no error message may carry.
LEAKS = (
    "int()",
    "bytes-like",
    "NoneType",
    "Traceback",
    "Failed to parse",
    "object has no",
    "not iterable",
    "sys.set_int",
    "Message type",
    " at MirrorRequest",
)


class RawTargetTransport(httpx.BaseTransport):
    """Plain HTTP/1.1 that sends ``request.extensions[RAW_TARGET]`` as the request target.

    Without the extension the URL's own target is sent, as httpx's transport does.
    """

    def __init__(self) -> None:
        self._pool = httpcore.ConnectionPool()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        extensions = dict(request.extensions)
        target = extensions.pop(RAW_TARGET, None) or request.url.raw_path
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=target,
            ),
            headers=request.headers.raw,
            content=request.read(),
            extensions=extensions,
        )
        response = self._pool.handle_request(core)
        try:
            content = response.read()
        finally:
            response.close()
        return httpx.Response(
            status_code=response.status, headers=response.headers, content=content
        )

    def close(self) -> None:
        self._pool.close()


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, transport=RawTargetTransport(), timeout=30) as c:
        yield c


def send(
    client: httpx.Client,
    method: str,
    target: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None,
) -> httpx.Response:
    """``method`` on the raw ``target`` (path and query, visible ASCII), checked."""
    request = client.build_request(
        method, "/", content=content, headers=headers, extensions={RAW_TARGET: target.encode()}
    )
    what = (
        f"{method} {target[:300]!r} headers={headers!r} "
        f"body={content[:200] if content else content!r}"
    )
    try:
        response = client.send(request)
    except (httpcore.RemoteProtocolError, httpcore.NetworkError) as exc:  # the gateway's fault
        raise AssertionError(f"{what}: no answer ({exc!r})") from exc
    check_answer(response, what)
    return response


def check_answer(response: httpx.Response, what: str) -> None:
    status = response.status_code
    said = f"{what} -> {status} {response.text[:300]!r}"
    assert status != 500, said
    assert status < 500 or status in ALLOWED_5XX, said
    if 200 <= status < 300:
        return
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        return
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{said}: JSON content type, body not JSON") from exc
    assert isinstance(body, dict), said
    assert isinstance(body.get("code"), int), said
    assert not isinstance(body["code"], bool), said
    assert isinstance(body.get("message"), str), said
    for leak in LEAKS:  # what the gateway says is its own, never an exception's text
        assert leak not in body["message"], said


# -- strategies ---------------------------------------------------------------------------------

# The mirror's routes, so that generated paths reach templates, not only 404.
ROUTE_WORDS = [
    "v1",
    "shelves",
    "books",
    "items",
    "special",
    "files",
    "lookup",
    "lookup-by-name",
    "received",
    "downloads",
    "uploads",
    "stream",
    "shape",
    "gather",
    "s1",
    "b1",
]
VALID_ESCAPES = ["%2F", "%2f", "%41", "%20", "%25", "%3A", "%C3%A9", "%E2%82%AC", "%F0%9F%98%80"]
MALFORMED_ESCAPES = ["%", "%2", "%G1", "%zz", "%FF", "%C3", "%C0%AF", "%ED%A0%80", "%00", "%%"]
# Visible ASCII a client may put in a path raw ('?' starts the query, '#' a fragment).
RAW_PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#%")


def _escape(text: str) -> str:
    """Visible ASCII kept, anything else (spaces, controls, non-ASCII) as UTF-8 escapes."""
    return "".join(
        ch if ch in RAW_PATH_CHARS else quote(ch.encode("utf-8", "surrogatepass"), safe="")
        for ch in text
    )


any_text = st.text(st.characters(codec="utf-8"), max_size=12)
segment = st.one_of(
    st.sampled_from(ROUTE_WORDS),
    st.sampled_from(VALID_ESCAPES + MALFORMED_ESCAPES),
    st.sampled_from([".", "..", "", "*", "**", "{name}", ":", "::"]),
    st.text(st.sampled_from(RAW_PATH_CHARS), min_size=1, max_size=10),
    any_text.map(_escape),
    st.builds(lambda n, c: c * n, st.integers(256, 4000), st.sampled_from(["a", "%41", "-"])),
    st.lists(st.sampled_from(["a", "%2F", "%FF", "..", "é", ":", "~"]), min_size=1, max_size=6).map(
        lambda parts: _escape("".join(parts))
    ),
)
verb = st.one_of(
    st.just(""), st.sampled_from([":publish", ":", ":x", "::publish", ":%70ublish", ":PUBLISH"])
)


# The mirror's templates with "{}" where a generated segment goes (bound variables or not).
TEMPLATES = [
    "/v1/shelves/{}/books/{}",
    "/v1/shelves/{}/books",
    "/v1/{}/{}/books/{}",
    "/v1/items/{}",
    "/v1/files/{}/{}/{}",
    "/v1/lookup/{}",
    "/v1/lookup-by-name/{}",
    "/v1/received/{}",
    "/v1/downloads/{}",
    "/v1/uploads/{}",
    "/v1/{}",
    "/v1/{}/{}",
]


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        template = draw(st.sampled_from(TEMPLATES))
        parts = [draw(segment) for _ in range(template.count("{}"))]
        return template.format(*parts) + draw(verb)
    prefix = draw(st.sampled_from(["/v1/", "/", "//", "/v1//"]))
    parts = draw(st.lists(segment, max_size=7))
    return prefix + "/".join(parts) + draw(verb)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.capitalize() for word in rest)


SAFE_FIELDS = [
    "name",
    "id",
    "shelf",
    "parent",
    "path",
    "book",
    "book.name",
    "book.title",
    "book.pages",
    "book.authors",
    "update_mask",
    "int32_value",
    "int64_value",
    "uint64_value",
    "double_value",
    "bool_value",
    "bytes_value",
    "color",
    "tags",
    "numbers",
    "colors",
    "nested",
    "nested.label",
    "nested.level",
    "nested.child.child.level",
    "time",
    "duration",
    "wrapped_int",
    "wrapped_string",
    "labels",
    "labels.k",
    "fail_message",
    "http_status",
]
FIELD_KEYS = sorted({*SAFE_FIELDS, *map(_camel, SAFE_FIELDS)})
# The backend's own failure switches (see the module docstring).
BACKEND_SWITCHES = {
    "fail_code",
    "delay_ms",
    "response_headers",
    "response_trailers",
    "count",
    "fail_after",
}
BACKEND_SWITCHES |= {_camel(name) for name in BACKEND_SWITCHES}


def _not_a_switch(key: str) -> bool:
    return key.partition(".")[0].partition("[")[0] not in BACKEND_SWITCHES


WEIRD_VALUES = [
    "",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e309",
    "-1e400",
    "9" * 40,
    "-" + "9" * 40,
    "18446744073709551616",
    "9223372036854775808",
    "-2147483649",
    "0x10",
    "1.5",
    "true",
    "TRUE",
    "COLOR_RED",
    "7",
    "1.5s",
    "-315576000001s",
    "2024-02-30T25:61:61Z",
    "10000-01-01T00:00:00Z",
    "%FF",
    "%C3",
    "%ED%A0%80",
    "%00",
    "%",
    "%zz",
    "a%2Cb",
    "_-_",
    "AAAA",
    "A===",
]

MASKS = {"update_mask", "updateMask"}
mask_pair = st.tuples(
    st.sampled_from(sorted(MASKS)),
    st.from_regex(
        r"[a-zA-Z_][a-zA-Z0-9_]{0,6}(\.[a-zA-Z_][a-z0-9_]{0,6}){0,2}(,[a-z_][a-z0-9]{0,6}){0,2}",
        fullmatch=True,
    ),
    st.just(True),
)
query_key = st.one_of(
    st.sampled_from([key for key in FIELD_KEYS if key not in MASKS]),
    any_text.filter(_not_a_switch).map(lambda t: quote(t, safe="")),
    st.sampled_from(["", "[]", "tags[]", "labels[k]", ".", "..name", "book..name", "%FF", "a%"]),
)
query_value = st.one_of(
    st.sampled_from(WEIRD_VALUES),
    st.integers().map(str),
    st.floats().map(repr),
    any_text.map(lambda t: quote(t, safe="")),
    st.text(st.sampled_from(RAW_PATH_CHARS), max_size=20).map(
        lambda t: t.replace("&", "%26").replace("=", "%3D")
    ),
)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    separator = draw(st.sampled_from(["&", "&", "&&", ";"]))
    pair = st.tuples(query_key, query_value, st.booleans())
    if separator != ";":  # ";" does not separate: what follows a mask would join its value
        pair |= mask_pair
    pairs = draw(st.lists(pair, max_size=8))
    return separator.join(f"{k}={v}" if with_eq else k for k, v, with_eq in pairs)


GET_ROUTES = [
    "/v1/shelves/s1/books",
    "/v1/shelves/s1/books/b1",
    "/v1/items/x",
    "/v1/items/special",
    "/v1/files/a/b",
    "/v1/lookup/x",
    "/v1/lookup-by-name/n",
    "/v1/received/x",
    "/v1/downloads/x",
    STREAM,
]

json_key = st.one_of(
    st.sampled_from(FIELD_KEYS).filter(lambda k: "." not in k),
    st.text(max_size=8).filter(_not_a_switch),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(WEIRD_VALUES),
)
json_values = st.recursive(
    json_scalar,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_key, children, max_size=5)
    ),
    max_leaves=25,
)


def _dumps(value: Any) -> bytes:
    # allow_nan: NaN and Infinity as bare words, which JSON does not have.
    return json.dumps(value, allow_nan=True).encode()


# Values of roughly the right JSON type per field, so that most bodies get past the parser and
# into the transcoder's per-field conversions (ranges, enums, well-known types, maps).
integer_like = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(),
    st.sampled_from(WEIRD_VALUES),
)
text_like = st.one_of(st.text(max_size=30), st.integers(), st.none())
typed_fields: dict[str, st.SearchStrategy[Any]] = {
    "name": text_like,
    "id": text_like,
    "parent": text_like,
    "int32Value": integer_like,
    "int64Value": integer_like,
    "uint64Value": integer_like,
    "doubleValue": integer_like,
    "boolValue": st.one_of(st.booleans(), st.sampled_from(["true", "false", "1", "yes", 0])),
    "bytesValue": st.one_of(st.sampled_from(WEIRD_VALUES), st.text(max_size=12)),
    "color": st.one_of(st.sampled_from(["COLOR_RED", "COLOR_GREEN", "RED", ""]), integer_like),
    "colors": st.lists(st.one_of(st.sampled_from(["COLOR_RED", "X"]), integer_like), max_size=3),
    "tags": st.one_of(st.lists(text_like, max_size=3), text_like),
    "numbers": st.lists(integer_like, max_size=3),
    "time": st.one_of(st.sampled_from(WEIRD_VALUES), st.text(max_size=25), integer_like),
    "duration": st.one_of(st.sampled_from(WEIRD_VALUES), integer_like.map(lambda v: f"{v}s")),
    "wrappedInt": st.one_of(integer_like, st.none(), st.dictionaries(json_key, json_scalar)),
    "wrappedString": st.one_of(text_like, st.dictionaries(json_key, json_scalar)),
    "labels": st.one_of(
        st.dictionaries(st.text(max_size=8), text_like, max_size=3), st.lists(text_like)
    ),
    "updateMask": st.one_of(
        st.sampled_from(["", "name", "book.title,pages", "a..b", ",", "nested.child.level"]),
        st.text(max_size=12),
        st.lists(st.text(max_size=6), max_size=3),
    ),
    "book": st.fixed_dictionaries(
        {},
        optional={
            "name": text_like,
            "title": text_like,
            "pages": integer_like,
            "authors": st.lists(text_like, max_size=3),
        },
    ),
    "nested": st.recursive(
        st.fixed_dictionaries({}, optional={"label": text_like, "level": integer_like}),
        lambda child: st.fixed_dictionaries(
            {}, optional={"label": text_like, "level": integer_like, "child": child}
        ),
        max_leaves=6,
    ),
    "httpStatus": st.one_of(st.integers(-1, 1000), st.sampled_from([200, 201, 204, 205, 299])),
}
typed_bodies = st.fixed_dictionaries({}, optional=typed_fields).map(_dumps)

json_bodies = st.one_of(
    typed_bodies,
    typed_bodies,
    st.dictionaries(json_key, json_values, max_size=8).map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{",
            b'{"name":',
            b"\xff\xfe{}",
            b'{"name":"\xff"}',
            b'{"name":"\\ud800"}',
            b'{"book":{"pages":"1e999"}}',
            b'{"int32Value":1e2}',
            b'{"numbers":[1,2,"x"]}',
            b"[" * 5000 + b"]" * 5000,
            b'{"nested":' * 400 + b"{}" + b"}" * 400,
            b'{"a":1,"a":2}',
            b"\x00",
        ]
    ),
)
BODY_ROUTES = [
    ("POST", "/v1/shape"),
    ("POST", "/v1/lookup"),
    ("POST", "/v1/shelves/s1/books"),
    ("PATCH", "/v1/shelves/s/books/b"),
]
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        None,
    ]
)


# -- properties ---------------------------------------------------------------------------------


@FUZZ
@given(method=st.sampled_from(METHODS), path=raw_paths(), body=st.none() | json_bodies)
@example(method="GET", path="/v1/shelves/../books/b1", body=None)
@example(method="GET", path="/v1/items/%FF", body=None)
@example(method="GET", path="/v1/items/%zz", body=None)
@example(method="GET", path="/v1/files/%C3", body=None)
@example(method="POST", path="/v1/shelves/s1/books/b1:%70ublish", body=b"{}")
@example(method="DELETE", path="//v1//shelves/s1/books/b1", body=None)
def test_random_paths_answer_properly(
    client: httpx.Client, method: str, path: str, body: bytes | None
) -> None:
    headers = {"content-type": "application/json"} if body is not None else None
    send(client, method, path, content=body, headers=headers)


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), query=query_strings())
@example(route="/v1/shelves/s1/books", query="int64Value=99999999999999999999999")
@example(route="/v1/shelves/s1/books", query="doubleValue=NaN&int32Value=1e309")
@example(route="/v1/shelves/s1/books", query="name=%FF&tags=%C3")
@example(route="/v1/shelves/s1/books", query="nested.child.child.level=1&labels[k]=v")
def test_random_query_strings_answer_properly(client: httpx.Client, route: str, query: str) -> None:
    send(client, "GET", f"{route}?{query}" if query else route)


@FUZZ
@given(
    route=st.sampled_from(BODY_ROUTES),
    method=st.none() | st.sampled_from(METHODS),
    body=json_bodies,
    content_type=content_types,
)
@example(route=("POST", "/v1/shape"), method=None, body=b'{"int32Value":NaN}', content_type=None)
@example(route=("POST", "/v1/lookup"), method=None, body=b"[" * 5000, content_type=None)
def test_random_bodies_answer_properly(
    client: httpx.Client,
    route: tuple[str, str],
    method: str | None,
    body: bytes,
    content_type: str | None,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    send(client, method or route[0], route[1], content=body, headers=headers)


# -- findings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [pytest.param("%E2%82%AC", id="not-latin-1"), pytest.param("a%0D%0AX-Evil:%20y", id="crlf")],
)
def test_backend_content_type_that_is_not_a_header_value_is_502(
    client: httpx.Client, content_type: str
) -> None:
    """Found by the properties: a 500 (not latin-1), then no answer at all (CR LF)."""
    response = send(client, "GET", f"/v1/downloads/x?contentType={content_type}")
    assert response.status_code == 502, response.text
    assert "content type" in response.json()["message"]
    assert "x-evil" not in response.headers


header_value = st.binary(max_size=40).map(
    # What HTTP/1.1 lets through: visible ASCII, space and obs-text (latin-1), no controls.
    lambda raw: bytes(b for b in raw if 0x20 <= b <= 0x7E or b >= 0x80).strip(b" ")
) | st.sampled_from([b"100m", b"0n", b"99999999H", b"1.5S", b"Bearer x.y.z", b"AQ==", b"AQ"])
header_name = st.sampled_from(
    [
        b"x-request-id",
        b"authorization",
        b"grpc-timeout",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"accept",
        b"content-type",
        b"origin",
        b"grpc-metadata-tenant",
        b"grpc-metadata-trace-bin",
        b"grpc-metadata-grpc-status",
        b"grpc-metadata-x-hms-subject",
        b"grpc-metadata-te",
        b"grpc-metadata-a.b_c",
    ]
)


@FUZZ
@given(
    route=st.sampled_from(GET_ROUTES),
    headers=st.lists(st.tuples(header_name, header_value), max_size=5),
)
@example(route="/v1/items/x", headers=[(b"x-request-id", b"caf\xe9")])
@example(route="/v1/stream", headers=[(b"accept", b"text/event-stream\xe9")])
def test_random_headers_answer_properly(
    client: httpx.Client, route: str, headers: list[tuple[bytes, bytes]]
) -> None:
    send(client, "GET", route, headers=headers)


@pytest.mark.parametrize("timeout", ["0n", "1m", "4m"])
def test_stream_with_a_tiny_grpc_timeout_is_504(client: httpx.Client, timeout: str) -> None:
    response = send(client, "GET", STREAM, headers={"grpc-timeout": timeout})
    assert response.status_code == 504, response.text
    assert response.json()["code"] == 4


@pytest.mark.parametrize(
    "target",
    [
        "/v1/shelves/s1/books?updateMask=A",
        "/v1/shelves/s1/books?update_mask=book.Title",
        "/v1/shelves/s1/books?updateMask=a__b",
        "/v1/shelves/s/books/b?updateMask=Title",
    ],
)
def test_query_field_mask_that_cannot_be_printed_is_400(client: httpx.Client, target: str) -> None:
    """Found by the properties: the mask reached the backend and its echo failed to print."""
    method = "PATCH" if "/books/b?" in target else "GET"
    response = send(client, method, target, content=b"{}" if method == "PATCH" else None)
    assert response.status_code == 400, response.text
    assert response.json()["message"].endswith(
        'expected comma-separated field paths in proto names (like "title,author.birth_year")'
    )


def test_unary_with_a_tiny_grpc_timeout_is_504(client: httpx.Client) -> None:
    # The unary counterpart of the finding above, which works.
    response = send(client, "GET", "/v1/items/x", headers={"grpc-timeout": "0n"})
    assert response.status_code == 504, response.text
    assert response.json()["code"] == 4


def test_gateway_still_healthy(client: httpx.Client) -> None:
    # Runs last (pytest keeps the module's order): the gateway did not crash.
    response = send(client, "GET", "/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    ready = send(client, "GET", "/readyz")
    assert ready.status_code == 200, ready.text
