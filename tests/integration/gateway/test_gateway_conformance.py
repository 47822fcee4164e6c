"""REST gateway conformance: one HTTP request per case against a real `mesh gateway` process.

The backend is hms.testing.v1.MirrorService, which answers with the request message it received
and the metadata it came with, so each case checks exactly what the gateway made of an HTTP
request (templates, bodies, query parameters, headers) and how it answers (statuses, error
bodies, response metadata, raw bodies, server streams). Expected behaviour is grpc-gateway v2's
with its default JSON options (lowerCamelCase, unpopulated fields emitted, enums as names,
64-bit integers as strings).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

SVC = "/hms.testing.v1.MirrorService/"
UPLOAD = b"%PDF-1.7\n\x00\x01\x02\xff binary payload\n"
_HEX32 = re.compile(r"[0-9a-f]{32}")

Check = Callable[[httpx.Response], None]


@dataclass(frozen=True)
class Case:
    """One HTTP request and what its answer must be.

    ``query`` is a raw query string (sent byte for byte) or a list of pairs (encoded by httpx).
    ``expect`` is a callable on the response or a mapping of dotted paths (list indices as
    numbers) to the exact value at that place in the response JSON. ``expect_headers`` maps
    header names to their exact value, or to ``None`` for a header that must be absent.
    """

    method: str
    path: str
    query: str | list[tuple[str, str]] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None
    status: int = 200
    expect: Check | Mapping[str, Any] | None = None
    expect_headers: Mapping[str, str | None] | None = None


# -- helpers for expectations -------------------------------------------------------------------


def _at(document: Any, dotted: str) -> Any:
    node = document
    for segment in dotted.split("."):
        if isinstance(node, list):
            node = node[int(segment)]
        else:
            assert isinstance(node, dict), f"{dotted}: {segment!r} inside a {type(node).__name__}"
            assert segment in node, f"{dotted}: no {segment!r} in {sorted(node)}"
            node = node[segment]
    return node


def _check_paths(response: httpx.Response, expected: Mapping[str, Any]) -> None:
    document = response.json()
    for dotted, value in expected.items():
        actual = _at(document, dotted)
        assert actual == value, f"{dotted}: expected {value!r}, got {actual!r}"


def mirrored(method: str, **received: Any) -> dict[str, Any]:
    """The answering method and the exact values of some fields of `received` (JSON names)."""
    expected: dict[str, Any] = {"method": SVC + method}
    expected.update({f"received.{name}": value for name, value in received.items()})
    return expected


def error(code: int, message: str) -> dict[str, Any]:
    """A google.rpc.Status body, exactly."""
    return {"code": code, "message": message, "details": []}


def error_where(code: int, *fragments: str) -> Check:
    """A google.rpc.Status body whose message contains each fragment (library-worded text)."""

    def check(response: httpx.Response) -> None:
        body = response.json()
        assert body["code"] == code
        assert body["details"] == []
        for fragment in fragments:
            assert fragment in body["message"], body["message"]

    return check


def metadata_of(response: httpx.Response) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for entry in response.json()["metadata"]:
        seen.setdefault(entry["key"], []).append(entry["value"])
    return seen


def all_of(*checks: Check | Mapping[str, Any]) -> Check:
    def check(response: httpx.Response) -> None:
        for one in checks:
            if callable(one):
                one(response)
            else:
                _check_paths(response, one)

    return check


def backend_saw(**metadata: list[str] | None) -> Check:
    """The backend's metadata has exactly these values for these keys (None: key absent)."""

    def check(response: httpx.Response) -> None:
        seen = metadata_of(response)
        for name, values in metadata.items():
            key = name.replace("_", "-")
            assert seen.get(key) == values, f"metadata {key}: {seen.get(key)!r} != {values!r}"

    return check


def request_id_created(response: httpx.Response) -> None:
    created = response.headers["x-request-id"]
    assert _HEX32.fullmatch(created), created
    assert metadata_of(response)["x-request-id"] == [created]


def uploaded(name: str, content_type: str, data: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "contentType": content_type,
        "size": str(len(data)),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def exact_body(data: bytes) -> Check:
    def check(response: httpx.Response) -> None:
        assert response.content == data

    return check


def received_only(response: httpx.Response) -> None:
    body = response.json()
    assert sorted(set(body) & {"received", "method", "metadata", "index"}) == []
    assert body["id"] == "r7"
    assert body["tags"] == ["x", "y"]
    assert body["int64Value"] == "0"  # unpopulated emitted, int64 as a string
    assert body["color"] == "COLOR_UNSPECIFIED"  # enums as names


def ndjson(count: int, *, error_status: dict[str, Any] | None = None) -> Check:
    def check(response: httpx.Response) -> None:
        lines = response.text.splitlines()
        assert response.text.endswith("\n")
        frames = [json.loads(line) for line in lines]
        results = frames[:count]
        assert [sorted(f) for f in results] == [["result"]] * count
        assert [f["result"]["index"] for f in results] == list(range(count))
        assert {f["result"]["method"] for f in results} <= {SVC + "Stream"}
        if error_status is None:
            assert len(frames) == count
        else:
            assert len(frames) == count + 1
            assert frames[-1] == {"error": error_status}

    return check


def sse(count: int, *, error_status: dict[str, Any] | None = None) -> Check:
    def check(response: httpx.Response) -> None:
        events = response.text.split("\n\n")
        assert events[-1] == ""  # every event ends with a blank line
        events = events[:-1]
        data = [event for event in events if event.startswith("data: ")]
        assert len(data) == count
        for index, event in enumerate(data):
            frame = json.loads(event.removeprefix("data: "))
            assert frame["result"]["index"] == index
            assert frame["result"]["method"] == SVC + "Stream"
        if error_status is None:
            assert len(events) == count
        else:
            assert len(events) == count + 1
            name, payload = events[-1].split("\n")
            assert name == "event: error"
            assert json.loads(payload.removeprefix("data: ")) == {"error": error_status}

    return check


def empty_body(response: httpx.Response) -> None:
    assert response.content == b""


# -- the cases ----------------------------------------------------------------------------------

BOOKS = "/v1/shelves/s1/books"

TEMPLATES = [
    pytest.param(
        Case("GET", "/v1/items/special", expect=mirrored("GetSpecialItem", id="")),
        id="template-literal-beats-variable",
    ),
    pytest.param(
        Case("GET", "/v1/items/a%2Fb", expect=mirrored("GetItem", id="a/b")),
        id="template-single-segment-decodes-2F",
    ),
    pytest.param(
        Case("GET", "/v1/items/%E2%82%AC%20x", expect=mirrored("GetItem", id="\u20ac x")),
        id="template-single-segment-utf8-escapes",
    ),
    pytest.param(
        Case(
            "GET", "/v1/shelves/s1/books/b1", expect=mirrored("GetBook", name="shelves/s1/books/b1")
        ),
        id="template-multi-segment-variable",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/shelves/s%2F1/books/b1",
            expect=mirrored("GetBook", name="shelves/s%2F1/books/b1"),
        ),
        id="template-multi-segment-keeps-2F-encoded",
    ),
    pytest.param(
        Case(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            json={"title": "T"},
            expect=mirrored(
                "UpdateBook", **{"book.name": "shelves/s1/books/b1", "book.title": "T"}
            ),
        ),
        id="template-nested-field-path",
    ),
    pytest.param(
        Case("GET", "/v1/files/a/b%2Fc/d.txt", expect=mirrored("GetFile", path="a/b%2Fc/d.txt")),
        id="template-double-star-keeps-slashes",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shelves/s1/books/b1:publish",
            json={},
            expect=mirrored("PublishBook", name="shelves/s1/books/b1"),
        ),
        id="template-custom-verb-split-off",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/shelves/s1/books/b1:publish",
            expect=mirrored("GetBook", name="shelves/s1/books/b1:publish"),
        ),
        id="template-colon-is-data-without-verb-route",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/items/%zz",
            status=400,
            expect=error(3, "malformed percent escape at position 10 of the path '/v1/items/%zz'"),
        ),
        id="template-malformed-escape-400",
    ),
    pytest.param(
        Case("GET", "/v1/items/%ff", status=400, expect=error_where(3, "'%ff'", "UTF-8")),
        id="template-escape-not-utf8-400",
    ),
    pytest.param(
        Case("GET", "/v1/nothing", status=404, expect=error(5, "no route for GET /v1/nothing")),
        id="template-no-match-404",
    ),
    pytest.param(
        Case("GET", "/v1/items/a/b", status=404, expect=error(5, "no route for GET /v1/items/a/b")),
        id="template-star-is-one-segment-404",
    ),
    pytest.param(
        Case(
            "PUT",
            "/v1/shelves/s1/books/b1",
            status=405,
            expect=error(
                12,
                "method PUT not allowed for /v1/shelves/s1/books/b1; allowed: DELETE, GET, PATCH",
            ),
            expect_headers={"allow": "DELETE, GET, PATCH"},
        ),
        id="template-wrong-method-405-allow",
    ),
]

BODIES = [
    pytest.param(
        Case(
            "POST",
            "/v1/shelves/s1/books/b1:publish",
            json={"name": "shelves/x/books/y", "tags": ["t"], "int64Value": "7", "color": 1},
            query="tags=from-query",
            expect=mirrored(
                "PublishBook",
                name="shelves/s1/books/b1",
                tags=["t"],
                int64Value="7",
                color="COLOR_RED",
            ),
        ),
        id="body-star-path-wins-query-ignored",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            json={"name": "shelves/s1/books/b9", "title": "Dune", "pages": 412, "authors": ["FH"]},
            query="parent=shelves%2Fzz&book.title=from-query&tags=q",
            expect=mirrored(
                "CreateBook",
                parent="shelves/s1",
                book={
                    "name": "shelves/s1/books/b9",
                    "title": "Dune",
                    "pages": "412",
                    "authors": ["FH"],
                },
                tags=["q"],
            ),
        ),
        id="body-field-path-and-body-win-over-query",
    ),
    pytest.param(
        Case(
            "DELETE",
            "/v1/shelves/s1/books/b1",
            query="tags=a&tags=b&name=other",
            expect=mirrored("DeleteBook", name="shelves/s1/books/b1", tags=["a", "b"]),
        ),
        id="body-none-query-applies-path-wins",
    ),
    pytest.param(
        Case(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            json={"title": "New", "pages": 3, "name": "shelves/other/books/z"},
            expect=mirrored(
                "UpdateBook",
                book={"name": "shelves/s1/books/b1", "title": "New", "pages": "3", "authors": []},
                updateMask="title,pages,name",
            ),
        ),
        id="body-patch-update-mask-from-json-keys",
    ),
    pytest.param(
        Case(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            json={"title": "New", "authors": ["a"]},
            query="updateMask=pages",
            expect=mirrored(
                "UpdateBook",
                **{"book.title": "New", "book.authors": ["a"]},
                updateMask="pages",
            ),
        ),
        id="body-patch-explicit-update-mask-kept",
    ),
    pytest.param(
        Case(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            json={},
            expect=mirrored("UpdateBook", **{"book.name": "shelves/s1/books/b1"}, updateMask=""),
        ),
        id="body-patch-empty-object-no-mask",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            content=b'{"title": ',
            headers={"content-type": "application/json"},
            status=400,
            expect=error(
                3, "request body is not valid: not JSON: expecting value at line 1, column 11"
            ),
        ),
        id="body-malformed-json-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            content=b'{"id": "a", "id": "b"}',
            headers={"content-type": "application/json"},
            status=400,
            expect=error(3, 'request body is not valid: duplicate key "id"'),
        ),
        id="body-duplicate-key-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json=[1, 2],
            status=400,
            expect=error(3, "request body is not valid: expected a JSON object, got an array"),
        ),
        id="body-star-not-an-object-400",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            json={"pages": "many"},
            status=400,
            expect=error(
                3,
                "request body is not valid: pages: expected an integer "
                '(a JSON number or a string of digits), got "many"',
            ),
        ),
        id="body-wrong-json-type-int64-400",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            json={"title": 5},
            status=400,
            expect=error(3, "request body is not valid: title: expected a string, got 5"),
        ),
        id="body-wrong-json-type-string-400",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            json={"title": "t", "authors": ["a", None, "c"]},
            status=400,
            expect=error(3, "request body is not valid: authors[1]: expected a string, got null"),
        ),
        id="body-null-in-array-400-names-the-item",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"nested": {"child": {"level": "deep"}}},
            status=400,
            expect=error(
                3,
                "request body is not valid: nested.child.level: expected an integer "
                '(a JSON number or a string of digits), got "deep"',
            ),
        ),
        id="body-nested-field-400-names-its-path",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"color": True},
            status=400,
            expect=error(
                3,
                "request body is not valid: color: expected one of COLOR_RED, COLOR_GREEN "
                "(a name or its number), got true",
            ),
        ),
        id="body-enum-true-400",  # json_format alone would take true as 1
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"int32Value": False},
            status=400,
            expect=error(
                3,
                "request body is not valid: int32Value: expected an integer "
                "(a JSON number or a string of digits), got false",
            ),
        ),
        id="body-integer-bool-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"doubleValue": True},
            status=400,
            expect=error(
                3,
                "request body is not valid: doubleValue: expected a number "
                '(or "NaN", "Infinity" or "-Infinity"), got true',
            ),
        ),
        id="body-double-bool-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"id": "1", "color": "COLOR_BLUE", "colors": ["COLOR_RED", "COLOR_PINK"]},
            expect=mirrored("Lookup", id="1", color="COLOR_UNSPECIFIED", colors=["COLOR_RED"]),
        ),
        id="body-unknown-enum-name-dropped-as-grpc-gateway",
    ),
    pytest.param(
        Case(
            "POST",
            BOOKS,
            json={"title": "t", "bogus": 1},
            expect=mirrored(
                "CreateBook", book={"name": "", "title": "t", "pages": "0", "authors": []}
            ),
        ),
        id="body-unknown-json-field-ignored",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={
                "doubleValue": "NaN",
                "bytesValue": "-_8",
                "color": 2,
                "time": "2024-01-02T03:04:05Z",
                "updateMask": "book.title,nested.label",
                "labels": {"k": "v"},
                "wrappedInt": 5,
            },
            expect=mirrored(
                "Lookup",
                doubleValue="NaN",
                bytesValue="+/8=",
                color="COLOR_GREEN",
                time="2024-01-02T03:04:05Z",
                updateMask="book.title,nested.label",
                labels={"k": "v"},
                wrappedInt=5,
            ),
        ),
        id="body-json-well-known-types",
    ),
]

QUERY = [
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="tags=a&tags=b&numbers=1&numbers=2&colors=COLOR_RED&colors=2",
            expect=mirrored(
                "ListBooks",
                shelf="s1",
                tags=["a", "b"],
                numbers=[1, 2],
                colors=["COLOR_RED", "COLOR_GREEN"],
            ),
        ),
        id="query-repeated-by-repetition",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="nested.label=hello&nested.level=3&nested.child.label=deep",
            expect=mirrored(
                "ListBooks",
                nested={
                    "label": "hello",
                    "level": 3,
                    "child": {"label": "deep", "level": 0, "child": None},
                },
            ),
        ),
        id="query-nested-with-dots",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="color=COLOR_GREEN",
            expect=mirrored("ListBooks", color="COLOR_GREEN"),
        ),
        id="query-enum-by-name",
    ),
    pytest.param(
        Case("GET", BOOKS, query="color=1", expect=mirrored("ListBooks", color="COLOR_RED")),
        id="query-enum-by-number",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="color=7",
            status=400,
            expect=error(
                3,
                "query parameter 'color': invalid value '7': "
                "expected one of COLOR_RED, COLOR_GREEN (or its number)",
            ),
        ),
        id="query-enum-undefined-number-400",
    ),
    pytest.param(
        Case("GET", BOOKS, query="bool_value=true", expect=mirrored("ListBooks", boolValue=True)),
        id="query-bool-true",
    ),
    pytest.param(
        Case("GET", BOOKS, query="boolValue=1", expect=mirrored("ListBooks", boolValue=True)),
        id="query-bool-1",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="bool_value=yes",
            status=400,
            expect=error(
                3,
                "query parameter 'bool_value': invalid value 'yes': "
                "expected true or false (or 1 or 0)",
            ),
        ),
        id="query-bool-invalid-400",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="int64_value=-9223372036854775808&uint64_value=18446744073709551615",
            expect=mirrored(
                "ListBooks", int64Value="-9223372036854775808", uint64Value="18446744073709551615"
            ),
        ),
        id="query-int64-uint64-extremes-as-strings",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="int64_value=9223372036854775808",
            status=400,
            expect=error(
                3,
                "query parameter 'int64_value': invalid value '9223372036854775808': "
                "expected an integer from -9223372036854775808 to 9223372036854775807",
            ),
        ),
        id="query-int64-overflow-400",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="double_value=1.5e3",
            expect=mirrored("ListBooks", doubleValue=1500.0),
        ),
        id="query-double",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="bytes_value=%2B%2F8%3D",
            expect=mirrored("ListBooks", bytesValue="+/8="),
        ),
        id="query-bytes-standard-base64",
    ),
    pytest.param(
        Case(
            "GET", BOOKS, query="bytes_value=-_8", expect=mirrored("ListBooks", bytesValue="+/8=")
        ),
        id="query-bytes-url-safe-unpadded",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="time=2024-01-02T03:04:05.5%2B01:00&duration=1.5s",
            expect=mirrored("ListBooks", time="2024-01-02T02:04:05.500Z", duration="1.500s"),
        ),
        id="query-timestamp-rfc3339-and-duration",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="duration=1.5",
            status=400,
            expect=error(
                3,
                "query parameter 'duration': invalid value '1.5': "
                'expected a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)',
            ),
        ),
        id="query-duration-without-unit-400",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="update_mask=book.title,tags",
            expect=mirrored("ListBooks", updateMask="book.title,tags"),
        ),
        id="query-field-mask",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="wrappedInt=42&wrapped_string=hi",
            expect=mirrored("ListBooks", wrappedInt=42, wrappedString="hi"),
        ),
        id="query-wrappers",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="labels=a",
            status=400,
            expect=error(
                3,
                "query parameter 'labels': invalid value 'a': "
                "a map takes one parameter per entry, like labels[KEY]=VALUE",
            ),
        ),
        id="query-map-unsupported-400",
    ),
    pytest.param(
        Case(
            "GET", BOOKS, query="labels%5Ba%5D=b", expect=mirrored("ListBooks", labels={"a": "b"})
        ),
        id="query-map-bracket-key",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="int32_value=abc",
            status=400,
            expect=error(
                3, "query parameter 'int32_value': invalid value 'abc': expected an integer"
            ),
        ),
        id="query-bad-int-400-names-parameter",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="int32Value=12&unknown_param=5&shelf=zzz",
            expect=mirrored("ListBooks", shelf="s1", int32Value=12),
        ),
        id="query-unknown-ignored-path-wins",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="failMessage=camel&int64_value=5&book.authors=x",
            expect=mirrored(
                "ListBooks", failMessage="camel", int64Value="5", **{"book.authors": ["x"]}
            ),
        ),
        id="query-camel-and-proto-names",
    ),
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="fail_message=x&fail_message=y",
            status=400,
            expect=error_where(3, "fail_message"),
        ),
        id="query-singular-field-repeated-400",
    ),
    # -- query fidelity to grpc-gateway v2's runtime/query.go (issue #18, item 4) --
    # query.go parseMessage, Duration: time.ParseDuration's forms.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="duration=1h30m",
            expect=mirrored("ListBooks", duration="5400s"),
        ),
        id="query-duration-go-form",
    ),
    # Difference (docs/gateway.md): Go truncates below a nanosecond; the gateway refuses.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="duration=1.5ns",
            status=400,
            expect=error_where(3, "query parameter 'duration'", "in whole nanoseconds"),
        ),
        id="query-duration-sub-nanosecond-400",
    ),
    # query.go parseMessage, Timestamp: time.Parse(time.RFC3339Nano) takes "," before the fraction.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="time=2024-05-01T10:00:00,5Z",
            expect=mirrored("ListBooks", time="2024-05-01T10:00:00.500Z"),
        ),
        id="query-timestamp-comma-fraction",
    ),
    # query.go parseField, DoubleKind: strconv.ParseFloat's words, any case, with a sign.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="double_value=-inf",
            expect=mirrored("ListBooks", doubleValue="-Infinity"),
        ),
        id="query-double-go-infinity",
    ),
    # query.go parseField, Uint64Kind: strconv.ParseUint takes no sign ("%2B" is "+").
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="uint64_value=%2B1",
            status=400,
            expect=error(
                3,
                "query parameter 'uint64_value': invalid value '+1': "
                "expected an integer from 0 to 18446744073709551615, without a sign",
            ),
        ),
        id="query-uint-sign-400",
    ),
    # query_test.go TestPopulateParameters: Struct and Value as JSON text (protojson).
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query=[("attributes", '{"a":{"b":1},"c":[true,null]}'), ("setting", '"on"')],
            expect=mirrored(
                "ListBooks", attributes={"a": {"b": 1}, "c": [True, None]}, setting="on"
            ),
        ),
        id="query-struct-and-value-json",
    ),
    # query.go parseMessage, Value: protojson.Unmarshal refuses what is not JSON.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="setting=on",
            status=400,
            expect=error(
                3,
                "query parameter 'setting': invalid value 'on': "
                'expected JSON (like 1, "text", true, null, [1,2] or {"a":1})',
            ),
        ),
        id="query-value-not-json-400",
    ),
    # query.go populateMapField: a map value is parsed by its kind, a Timestamp too.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="deadlines%5Breview%5D=2024-05-01T10:00:00Z",
            expect=mirrored("ListBooks", deadlines={"review": "2024-05-01T10:00:00Z"}),
        ),
        id="query-map-of-timestamps",
    ),
    # query_test.go TestPopulateParameters: "field already set for oneof".
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="choice_text=a&choiceBook.title=b",
            status=400,
            expect=error(
                3,
                "query parameter 'choiceBook.title': invalid value 'b': "
                "oneof 'choice' already has 'choice_text': give only one of its fields",
            ),
        ),
        id="query-oneof-two-members-400",
    ),
    # query_test.go TestPopulateParameters: one message member of a oneof, entered twice.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="choiceBook.title=t&choice_book.pages=3",
            expect=mirrored("ListBooks", **{"choiceBook.title": "t", "choiceBook.pages": "3"}),
        ),
        id="query-oneof-message-member-twice",
    ),
    # query_test.go TestPopulateParameters: invalid path: "repeated_message" is not a message.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="books.title=x",
            status=400,
            expect=error(
                3,
                "query parameter 'books.title': invalid value 'x': 'books' is a repeated field, "
                "not a message: nothing can follow it after a dot",
            ),
        ),
        id="query-path-through-repeated-400",
    ),
    # query_test.go TestPopulateQueryParametersWithInvalidNestedParameters; a bound field
    # (the path's shelf) is filtered before its path is walked (query.go Parse).
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="shelf.x=1&id.x=1",
            status=400,
            expect=error(
                3,
                "query parameter 'id.x': invalid value '1': 'id' is a field of type string, "
                "not a message: nothing can follow it after a dot",
            ),
        ),
        id="query-path-through-scalar-400",
    ),
    # Difference (docs/gateway.md): grpc-gateway keeps whichever comes last in map order.
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="time=2024-05-01T10:00:00Z&time.seconds=5",
            status=400,
            expect=error_where(3, "query parameter 'time.seconds'", "whole or by its fields"),
        ),
        id="query-message-whole-and-by-field-400",
    ),
    # Go net/url parseQuery: "invalid semicolon separator in query" (ParseForm: 400).
    pytest.param(
        Case(
            "GET",
            BOOKS,
            query="tags=a;b",
            status=400,
            expect=error_where(3, "query parameter 'tags'", "a raw ';' is not allowed"),
        ),
        id="query-raw-semicolon-400",
    ),
]

BINDINGS = [
    pytest.param(
        Case("GET", "/v1/lookup/7", expect=mirrored("Lookup", id="7", name="")),
        id="bindings-primary-get",
    ),
    pytest.param(
        Case("GET", "/v1/lookup-by-name/n1", expect=mirrored("Lookup", id="", name="n1")),
        id="bindings-additional-get",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"id": "9", "bogus": {"x": 1}, "nested": {"label": "L"}},
            query="name=ignored-with-body-star",
            expect=mirrored(
                "Lookup", id="9", name="", nested={"label": "L", "level": 0, "child": None}
            ),
        ),
        id="bindings-additional-post-body-star",
    ),
    pytest.param(
        Case("GET", "/v1/received/r7", query="tags=x&tags=y", expect=received_only),
        id="response-body-field-only",
    ),
]

HTTP_BODY = [
    pytest.param(
        Case(
            "PUT",
            "/v1/uploads/doc1",
            content=UPLOAD,
            headers={"content-type": "application/pdf"},
            expect=uploaded("doc1", "application/pdf", UPLOAD),
        ),
        id="httpbody-upload-raw-bytes",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/downloads/report.csv",
            query="content_type=text%2Fcsv",
            expect=exact_body(b"contents of report.csv\n"),
            expect_headers={"content-type": "text/csv"},
        ),
        id="httpbody-download-own-content-type",
    ),
]

# gRPC code number -> grpc-gateway v2's HTTP status, all 16 error codes.
GRPC_TO_HTTP = {
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}


def _shaped_message(code: int) -> str:
    # UNAVAILABLE (14) is prefixed with the service, so that a REST caller knows what is down.
    if code == 14:
        return f"hms.testing.v1.MirrorService is unavailable: shaped failure {code}"
    return f"shaped failure {code}"


STATUS = [
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"failCode": code, "failMessage": f"shaped failure {code}"},
            status=http_code,
            expect=error(code, _shaped_message(code)),
            expect_headers={"content-type": "application/json"},
        ),
        id=f"status-grpc-{code}-http-{http_code}",
    )
    for code, http_code in GRPC_TO_HTTP.items()
] + [
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"delayMs": 500},
            headers={"grpc-timeout": "1m"},
            status=504,
            expect={"code": 4, "details": []},
        ),
        id="status-grpc-timeout-tiny-504",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"delayMs": 500},
            headers={"grpc-timeout": "50m"},
            status=504,
            # grpc core's words are not the caller's business: the gateway's own.
            expect=error(4, "hms.testing.v1.MirrorService did not answer within the deadline"),
        ),
        id="status-grpc-timeout-expires-in-flight-504",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={},
            headers={"grpc-timeout": "1.5S"},
            status=400,
            expect=error(
                3,
                "header 'grpc-timeout': invalid value '1.5S': expected 1 to 8 digits and a unit "
                "(H, M, S, m, u or n), as 100m or 30S",
            ),
        ),
        id="status-grpc-timeout-invalid-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/gather",
            json={},
            status=501,
            expect=error(
                12,
                "/hms.testing.v1.MirrorService/Gather is a client-streaming method; the REST "
                "gateway serves only unary and server-streaming methods",
            ),
        ),
        id="status-client-streaming-501",
    ),
]

HEADERS = [
    pytest.param(
        Case(
            "GET",
            "/v1/items/x",
            headers={
                "Grpc-Metadata-Foo": "bar",
                "Grpc-Metadata-Sig-Bin": "AQI",
                "Authorization": "Bearer tok",
                "Cookie": "c=1",
                "Grpc-Metadata-Grpc-Foo": "dropped",
                "Grpc-Metadata-X-Forwarded-Host": "forged",
            },
            expect=all_of(
                mirrored("GetItem", id="x"),
                backend_saw(
                    foo=["bar"],
                    sig_bin=["AQI="],
                    authorization=["Bearer tok"],
                    cookie=None,
                    grpc_foo=None,
                    x_forwarded_for=["127.0.0.1"],
                ),
            ),
        ),
        id="headers-metadata-authorization-forwarded-for",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/items/x",
            headers={"X-Forwarded-For": "10.1.2.3"},
            expect=backend_saw(x_forwarded_for=["10.1.2.3, 127.0.0.1"]),
        ),
        id="headers-forwarded-for-chain-appends-peer",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/items/x",
            headers={"X-Request-Id": "req-123"},
            expect=backend_saw(x_request_id=["req-123"]),
            expect_headers={"x-request-id": "req-123"},
        ),
        id="headers-request-id-passed-and-echoed",
    ),
    pytest.param(
        Case("GET", "/v1/items/x", expect=request_id_created),
        id="headers-request-id-created",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/items/x",
            headers={"Grpc-Metadata-Bad-Bin": "!!"},
            status=400,
            expect=error(
                3,
                "header 'grpc-metadata-bad-bin': invalid value '!!': a -bin header must be base64",
            ),
        ),
        id="headers-bad-binary-metadata-400",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"responseHeaders": {"etag": "7"}, "responseTrailers": {"cost": "3"}},
            expect=mirrored("Shape", responseHeaders={"etag": "7"}),
            expect_headers={"grpc-metadata-etag": "7", "grpc-trailer-cost": "3"},
        ),
        id="headers-response-metadata-and-trailers",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={
                "failCode": 9,
                "responseHeaders": {"etag": "7"},
                "responseTrailers": {"cost": "3"},
            },
            status=400,
            expect=error(9, "shaped"),
            expect_headers={"grpc-metadata-etag": "7", "grpc-trailer-cost": "3"},
        ),
        id="headers-response-metadata-on-error",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"httpStatus": 201},
            status=201,
            expect=mirrored("Shape", httpStatus=201),
            expect_headers={"grpc-metadata-x-http-code": None},
        ),
        id="headers-x-http-code-201",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"httpStatus": 204},
            status=204,
            expect=empty_body,
            expect_headers={"content-type": None},
        ),
        id="headers-x-http-code-204-no-body",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"httpStatus": 404},
            expect=mirrored("Shape", httpStatus=404),
        ),
        id="headers-x-http-code-non-2xx-ignored",
    ),
]

STREAMING = [
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=3",
            expect=ndjson(3),
            expect_headers={"content-type": "application/x-ndjson"},
        ),
        id="stream-ndjson",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=3",
            headers={"accept": "text/event-stream"},
            expect=sse(3),
            expect_headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        ),
        id="stream-sse",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=3",
            headers={"accept": "text/event-stream;q=0"},
            expect=ndjson(3),
            expect_headers={"content-type": "application/x-ndjson"},
        ),
        id="stream-sse-refused-q0-is-ndjson",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=3&fail_code=5&fail_after=2&fail_message=gone",
            expect=ndjson(2, error_status=error(5, "gone")),
        ),
        id="stream-ndjson-mid-stream-error",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=2&fail_code=9&fail_after=1&fail_message=late",
            headers={"accept": "text/event-stream"},
            expect=sse(1, error_status=error(9, "late")),
        ),
        id="stream-sse-mid-stream-error-event",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=3&fail_code=5&fail_after=0&fail_message=gone",
            status=404,
            expect=error(5, "gone"),
            expect_headers={"content-type": "application/json"},
        ),
        id="stream-error-before-first-message-404",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=5000",
            status=400,
            expect=error(3, "count must be within 0..1000, not 5000"),
        ),
        id="stream-invalid-argument-before-first-message-400",
    ),
    pytest.param(
        Case(
            "GET",
            "/v1/stream",
            query="count=0",
            expect=empty_body,
            expect_headers={"content-type": "application/x-ndjson"},
        ),
        id="stream-empty-200",
    ),
]

# -- JSON fidelity to grpc-gateway v2 (issue 18): Any, error details, unpopulated fields,
# bodies, UNAUTHENTICATED. Each case names the grpc-gateway (or protojson, which its default
# marshaler calls) source it follows; a deliberate difference says so and is listed in
# docs/gateway.md, "Differences from grpc-gateway".

TYPE = "type.googleapis.com/"
BOOK_JSON = {"name": "", "title": "Dune", "pages": "412", "authors": []}
# MirrorRequest's fields with presence, unset: null under grpc-gateway's default marshaler.
UNSET_MESSAGES = (
    "book",
    "updateMask",
    "nested",
    "time",
    "duration",
    "wrappedInt",
    "wrappedString",
    "anyValue",
)


def received_json(response: httpx.Response) -> dict[str, Any]:
    received: dict[str, Any] = response.json()["received"]
    return received


def unpopulated_as_grpc_gateway(response: httpx.Response) -> None:
    """Every unset field written: message fields null, repeated [], maps {}, scalars their
    zero; members of a oneof (a proto3 optional's synthetic one too) left out."""
    received = received_json(response)
    shown = {name: received.get(name, "absent") for name in UNSET_MESSAGES}
    assert shown == dict.fromkeys(UNSET_MESSAGES), shown
    empty = ("books", "anyValues", "tags", "booksById", "labels")
    assert [received[name] for name in empty] == [[], [], [], {}, {}]
    zeros = ("int32Value", "int64Value", "color", "boolValue")
    assert [received[name] for name in zeros] == [0, "0", "COLOR_UNSPECIFIED", False]
    absent_from_received("note", "choiceText", "choiceBook")(response)


def absent_from_received(*names: str) -> Check:
    def check(response: httpx.Response) -> None:
        received = received_json(response)
        assert [name for name in names if name in received] == []

    return check


def details_are(*expected: dict[str, Any]) -> Check:
    def check(response: httpx.Response) -> None:
        assert response.json()["details"] == list(expected)

    return check


ANY = [
    # protojson's Any mapping, both ways, resolved where the gateway learnt the service's
    # types (protobuf-go encoding/protojson/well_known_types.go, marshalAny/unmarshalAny,
    # called by grpc-gateway's defaultMarshaler, runtime/marshaler_registry.go); a message
    # type is written field by field beside "@type", with its unpopulated fields.
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={
                "anyValue": {"@type": TYPE + "hms.testing.v1.Book", "title": "Dune", "pages": 412}
            },
            expect=mirrored(
                "Lookup", anyValue={"@type": TYPE + "hms.testing.v1.Book", **BOOK_JSON}
            ),
        ),
        id="any-type-learnt-by-reflection-both-ways",
    ),
    # A well-known type holds its JSON form under "value" (protojson marshalAny: the WKT's
    # own marshaler, then "value").
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={
                "anyValues": [
                    {"@type": TYPE + "google.protobuf.Timestamp", "value": "2024-01-02T03:04:05Z"},
                    {"@type": TYPE + "google.protobuf.Duration", "value": "1.5s"},
                    {"@type": TYPE + "google.protobuf.Int32Value", "value": 7},
                    {"@type": TYPE + "google.protobuf.Struct", "value": {"a": [1, "x"]}},
                ]
            },
            expect=mirrored(
                "Lookup",
                anyValues=[
                    {"@type": TYPE + "google.protobuf.Timestamp", "value": "2024-01-02T03:04:05Z"},
                    {"@type": TYPE + "google.protobuf.Duration", "value": "1.500s"},
                    {"@type": TYPE + "google.protobuf.Int32Value", "value": 7},
                    {"@type": TYPE + "google.protobuf.Struct", "value": {"a": [1.0, "x"]}},
                ],
            ),
        ),
        id="any-well-known-types-both-ways",
    ),
    # google.rpc types resolve though mirror.proto does not import error_details.proto: Go
    # resolves every linked type (protojson's Resolver defaults to protoregistry.GlobalTypes).
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={
                "anyValue": {
                    "@type": TYPE + "google.rpc.ErrorInfo",
                    "reason": "QUOTA",
                    "metadata": {"k": "v"},
                }
            },
            expect=mirrored(
                "Lookup",
                anyValue={
                    "@type": TYPE + "google.rpc.ErrorInfo",
                    "reason": "QUOTA",
                    "domain": "",
                    "metadata": {"k": "v"},
                },
            ),
        ),
        id="any-google-rpc-type-both-ways",
    ),
    # An Any holding an Any (protojson unmarshalAny: a WKT in "value"); inside it, a message
    # with an unset message field: null (EmitUnpopulated).
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={
                "anyValue": {
                    "@type": TYPE + "google.protobuf.Any",
                    "value": {"@type": TYPE + "hms.testing.v1.Nested", "label": "in"},
                }
            },
            expect=mirrored(
                "Lookup",
                anyValue={
                    "@type": TYPE + "google.protobuf.Any",
                    "value": {
                        "@type": TYPE + "hms.testing.v1.Nested",
                        "label": "in",
                        "level": 0,
                        "child": None,
                    },
                },
            ),
        ),
        id="any-in-any-with-null-inside",
    ),
    # protojson unmarshalAny: `unable to resolve "...": not found`, a 400 in grpc-gateway.
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"anyValue": {"@type": "type.example.com/acme.Secret", "x": 1}},
            status=400,
            expect=error(
                3,
                'request body is not valid: anyValue["@type"]: unknown message type '
                '"type.example.com/acme.Secret"',
            ),
        ),
        id="any-unknown-type-in-request-400",
    ),
    # Deliberate difference: grpc-gateway cannot marshal an Any of a type it does not know
    # (protobuf-go encoding/protojson/well_known_types.go, marshalAny: "unable to resolve")
    # and answers 500 (runtime/handler.go, ForwardResponseMessage: "Marshal error" ->
    # HTTPError); the gateway answers 200 with that Any as its type URL and its bytes,
    # losing nothing else.
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"opaqueDetails": [{"typeUrl": "type.example.com/acme.Secret", "value": "AQI="}]},
            expect={"attached": [{"@type": "type.example.com/acme.Secret", "value": "AQI="}]},
        ),
        id="any-unknown-type-in-response-kept-as-bytes",
    ),
]

_BAD_REQUEST = {
    "@type": TYPE + "google.rpc.BadRequest",
    "fieldViolations": [{"field": "book.title", "description": "must not be empty"}],
}

DETAILS = [
    # The Status a backend attaches, marshaled whole by grpc-gateway's default marshaler
    # (runtime/errors.go, DefaultHTTPErrorHandler: marshaler.Marshal(s.Proto())): each detail
    # with its fields, unpopulated ones included (a message field null), in the order sent.
    # runtime/errors_test.go, TestDefaultHTTPError: PreconditionFailure detail's "@type".
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"failCode": 3, "failMessage": "bad book", "failDetails": [_BAD_REQUEST]},
            status=400,
            expect=all_of(
                {"code": 3, "message": "bad book"},
                details_are(
                    {
                        "@type": TYPE + "google.rpc.BadRequest",
                        "fieldViolations": [
                            {
                                "field": "book.title",
                                "description": "must not be empty",
                                "reason": "",
                                "localizedMessage": None,
                            }
                        ],
                    }
                ),
            ),
        ),
        id="details-bad-request-field-violations",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={
                "failCode": 9,
                "failDetails": [
                    {
                        "@type": TYPE + "google.rpc.ErrorInfo",
                        "reason": "SHELF_CLOSED",
                        "domain": "library.example",
                        "metadata": {"shelf": "s1"},
                    },
                    {
                        "@type": TYPE + "google.rpc.PreconditionFailure",
                        "violations": [{"type": "STATE", "subject": "shelves/s1"}],
                    },
                    {"@type": TYPE + "google.rpc.RetryInfo", "retryDelay": "2s"},
                    {"@type": TYPE + "hms.testing.v1.Book", "title": "Dune", "pages": 412},
                ],
                "opaqueDetails": [{"typeUrl": "type.example.com/acme.Secret", "value": "AQI="}],
            },
            status=400,
            expect=details_are(
                {
                    "@type": TYPE + "google.rpc.ErrorInfo",
                    "reason": "SHELF_CLOSED",
                    "domain": "library.example",
                    "metadata": {"shelf": "s1"},
                },
                {
                    "@type": TYPE + "google.rpc.PreconditionFailure",
                    "violations": [{"type": "STATE", "subject": "shelves/s1", "description": ""}],
                },
                {"@type": TYPE + "google.rpc.RetryInfo", "retryDelay": "2s"},
                # A detail of the service's own type, resolved by the types learnt with it.
                {"@type": TYPE + "hms.testing.v1.Book", **BOOK_JSON},
                # Deliberate difference: a detail nobody can resolve makes grpc-gateway's
                # marshaler fail and answer 500 "failed to marshal error message"
                # (DefaultHTTPErrorHandler's fallback); here it keeps its bytes and the
                # error keeps its status.
                {"@type": "type.example.com/acme.Secret", "value": "AQI="},
            ),
        ),
        id="details-in-order-error-info-precondition-retry-own-type-unknown",
    ),
]

UNPOPULATED = [
    # grpc-gateway v2's default marshaler has EmitUnpopulated: true
    # (runtime/marshaler_registry.go, defaultMarshaler; docs/docs/development/
    # grpc-gateway_v2_migration_guide.md); protojson then writes message fields as null,
    # repeated as [], maps as {}, scalars as their zero, and leaves out unset oneof members
    # (protobuf-go encoding/protojson/encode.go, EmitUnpopulated and unpopulatedFieldRanger).
    pytest.param(
        Case("GET", "/v1/items/x", expect=unpopulated_as_grpc_gateway),
        id="unpopulated-message-fields-null",
    ),
    # A set message field is an object whose own unset message fields are null, all the way
    # down (marshalMessage applies the same ranger at every level).
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"nested": {"label": "a", "child": {"label": "b"}}},
            expect=mirrored(
                "Lookup",
                nested={
                    "label": "a",
                    "level": 0,
                    "child": {"label": "b", "level": 0, "child": None},
                },
            ),
        ),
        id="unpopulated-null-at-every-depth",
    ),
    # Set members of a oneof and a set proto3 optional are written, even at their zero
    # (presence: m.Has is true), the other members still left out.
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"choiceBook": {}, "note": "", "books": [{"title": "Dune", "pages": 412}]},
            expect=all_of(
                mirrored(
                    "Lookup",
                    choiceBook={"name": "", "title": "", "pages": "0", "authors": []},
                    note="",
                    books=[BOOK_JSON],
                ),
                absent_from_received("choiceText"),
            ),
        ),
        id="unpopulated-oneof-and-optional-written-when-set",
    ),
]

JSON_BODIES = [
    # protojson refuses one field given twice, under its JSON and its proto name alike
    # (protobuf-go encoding/protojson/decode.go, unmarshalMessage: "duplicate field"), so
    # grpc-gateway does.
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            json={"int32Value": 1, "int32_value": 2},
            status=400,
            expect=error(
                3,
                'request body is not valid: int32_value: given twice, as "int32Value" and '
                '"int32_value"',
            ),
        ),
        id="body-json-and-proto-name-for-one-field-400",
    ),
    # Deliberate difference: grpc-gateway decodes one JSON value (runtime/marshal_jsonpb.go,
    # DecoderWrapper.Decode -> decodeJSONPb: json.Decoder.Decode once, the generated handler
    # calls it once) and never reads what follows; protojson itself refuses data after the
    # value (decode.go, unmarshal: "unexpected token"), and so does the gateway: what follows
    # would be silently dropped.
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            content=b'{"id": "a"} {"id": "b"}',
            headers={"content-type": "application/json"},
            status=400,
            expect=error(3, "request body is not valid: not JSON: extra data at line 1, column 13"),
        ),
        id="body-data-after-the-value-400",
    ),
    # White space after the value is not data (json.Decoder and protojson skip it).
    pytest.param(
        Case(
            "POST",
            "/v1/lookup",
            content=b'{"id": "a"}\r\n\t \n',
            headers={"content-type": "application/json"},
            expect=mirrored("Lookup", id="a"),
        ),
        id="body-white-space-after-the-value-ok",
    ),
]

AUTH = [
    # runtime/errors.go, DefaultHTTPErrorHandler: UNAUTHENTICATED sets WWW-Authenticate
    # (examples/internal/integration/integration_test.go, TestEchoUnauthorized: 401 and a
    # WWW-Authenticate that is not empty). Deliberate difference: grpc-gateway puts the bare
    # status message there, which is not a challenge (RFC 9110 §11.6.1); the gateway sends
    # the gate's RFC 6750 challenge, with the message as error_description when the request
    # carried credentials, bare when it carried none (RFC 6750 §3.1).
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"failCode": 16, "failMessage": 'token "t1" revoked'},
            headers={"Authorization": "Bearer t1"},
            status=401,
            expect=error(16, 'token "t1" revoked'),
            expect_headers={
                "www-authenticate": (
                    'Bearer realm="hms", error="invalid_token", '
                    'error_description="token ?t1? revoked"'
                )
            },
        ),
        id="unauthenticated-401-www-authenticate-with-credentials",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/shape",
            json={"failCode": 16, "failMessage": "sign in first"},
            status=401,
            expect=error(16, "sign in first"),
            expect_headers={"www-authenticate": 'Bearer realm="hms"'},
        ),
        id="unauthenticated-401-www-authenticate-without-credentials",
    ),
]

FIDELITY = ANY + DETAILS + UNPOPULATED + JSON_BODIES + AUTH

CASES = TEMPLATES + BODIES + QUERY + BINDINGS + HTTP_BODY + STATUS + HEADERS + STREAMING + FIDELITY


@pytest.mark.parametrize("case", CASES)
def test_gateway_conformance(http: httpx.Client, case: Case) -> None:
    url = case.path
    params: list[tuple[str, str]] | None = None
    if isinstance(case.query, str):
        url = f"{case.path}?{case.query}"
    elif case.query is not None:
        params = case.query
    response = http.request(
        case.method,
        url,
        params=params,
        json=case.json,
        content=case.content,
        headers=dict(case.headers or {}),
    )
    assert response.status_code == case.status, response.text
    if callable(case.expect):
        case.expect(response)
    elif case.expect is not None:
        _check_paths(response, case.expect)
    for name, value in (case.expect_headers or {}).items():
        assert response.headers.get(name) == value, f"header {name}: {response.headers.get(name)!r}"


def test_conformance_table_is_large_enough() -> None:
    ids = [param.id for param in CASES]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids)
