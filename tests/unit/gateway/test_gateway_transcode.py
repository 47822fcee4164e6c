"""Transcoding: body forms, path wins, HttpBody, PATCH update masks, response rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import http_pb2, httpbody_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    field_mask_pb2,
    json_format,
    message_factory,
)
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from hms.notify.v1 import notify_pb2
from hms.testing.v1 import echo_pb2
from hms_gateway.errors import GatewayError
from hms_gateway.transcode import JsonOptions, RequestMapping, render_response

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, type_name: str = "", *, repeated: bool = False) -> _F:
    field = _F(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,  # type: ignore[arg-type]
        json_name="".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_"))),
    )
    if type_name:
        field.type_name = type_name
    return field


def _books_pool() -> descriptor_pool.DescriptorPool:
    """A small library API in its own pool: FieldMask and HttpBody fields, nested messages."""
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, field_mask_pb2, httpbody_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="test/books.proto",
        package="test.books",
        syntax="proto3",
        dependency=["google/protobuf/field_mask.proto", "google/api/httpbody.proto"],
    )
    author = file.message_type.add(name="Author")
    author.field.extend([_field("name", 1, _F.TYPE_STRING), _field("birth_year", 2, _F.TYPE_INT32)])
    book = file.message_type.add(name="Book")
    book.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("title", 2, _F.TYPE_STRING),
            _field("author", 3, _F.TYPE_MESSAGE, ".test.books.Author"),
            _field("tags", 4, _F.TYPE_STRING, repeated=True),
            _field("page_count", 5, _F.TYPE_INT64),
        ]
    )
    update = file.message_type.add(name="UpdateBookRequest")
    update.field.extend(
        [
            _field("book", 1, _F.TYPE_MESSAGE, ".test.books.Book"),
            _field("update_mask", 2, _F.TYPE_MESSAGE, ".google.protobuf.FieldMask"),
        ]
    )
    upload = file.message_type.add(name="UploadRequest")
    upload.field.extend(
        [
            _field("parent", 1, _F.TYPE_STRING),
            _field("file", 2, _F.TYPE_MESSAGE, ".google.api.HttpBody"),
        ]
    )
    service = file.service.add(name="Books")
    for name, input_type, output_type in (
        ("UpdateBook", "UpdateBookRequest", "Book"),
        ("Upload", "UploadRequest", "Book"),
    ):
        service.method.add(
            name=name,
            input_type=".test.books." + input_type,
            output_type=".test.books." + output_type,
        )
    service.method.add(
        name="Raw", input_type=".google.api.HttpBody", output_type=".google.api.HttpBody"
    )
    pool.Add(file)
    return pool


_POOL = _books_pool()
_BOOKS = _POOL.FindServiceByName("test.books.Books")
_CLASSES = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName("test.books." + name))
    for name in ("UpdateBookRequest", "UploadRequest", "Book")
}
_CLASSES["HttpBody"] = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("google.api.HttpBody")
)
_ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"].methods_by_name["Echo"]
_LIST = notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].methods_by_name["ListNotifications"]
_SEND = notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].methods_by_name["Send"]


def _mapping(method: MethodDescriptor, **rule: Any) -> RequestMapping:
    return RequestMapping.from_rule(http_pb2.HttpRule(**rule), method)[0]


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


_PATCH_BOOK = {"patch": "/v1/{book.name=books/*}", "body": "book"}


@pytest.mark.parametrize(
    ("method", "rule", "cls", "bindings", "query", "body", "expected"),
    [
        pytest.param(
            _ECHO,
            {"post": "/v1/echo", "body": "*"},
            echo_pb2.EchoRequest,
            {},
            [],
            b'{"message": "hi", "delayMs": 5}',
            {"message": "hi", "delay_ms": 5},
            id="body-star",
        ),
        pytest.param(
            _ECHO,
            {"post": "/v1/echo", "body": "*"},
            echo_pb2.EchoRequest,
            {},
            [("fail_code", "3")],
            b'{"message": "hi"}',
            {"message": "hi"},
            id="body-star-ignores-query",
        ),
        pytest.param(
            _ECHO,
            {"post": "/v1/echo/{message}", "body": "*"},
            echo_pb2.EchoRequest,
            {"message": "from-path"},
            [],
            b'{"message": "from-body", "count": 2}',
            {"message": "from-path", "count": 2},
            id="body-star-path-wins",
        ),
        pytest.param(
            _ECHO,
            {"post": "/v1/echo", "body": "*"},
            echo_pb2.EchoRequest,
            {},
            [],
            b"",
            {},
            id="body-star-empty-body",
        ),
        pytest.param(
            _ECHO,
            {"post": "/v1/echo", "body": "*"},
            echo_pb2.EchoRequest,
            {},
            [],
            b'{"message": "m", "unknown": 1}',
            {"message": "m"},
            id="unknown-json-discarded",
        ),
        pytest.param(
            _LIST,
            {"get": "/v1/notifications"},
            notify_pb2.ListNotificationsRequest,
            {},
            [("pageSize", "20"), ("applicant_id", "a")],
            None,
            {"page_size": 20, "applicant_id": "a"},
            id="no-body-query",
        ),
        pytest.param(
            _LIST,
            {"get": "/v1/applicants/{applicant_id}/notifications"},
            notify_pb2.ListNotificationsRequest,
            {"applicant_id": "a/b"},
            [("applicant_id", "q"), ("page_size", "2")],
            None,
            {"applicant_id": "a/b", "page_size": 2},
            id="path-wins-over-query",
        ),
        pytest.param(
            _BOOKS.methods_by_name["UpdateBook"],
            {"post": "/v1/{book.name=books/*}", "body": "book"},
            _CLASSES["UpdateBookRequest"],
            {"book.name": "books/1"},
            [("book.title", "q"), ("update_mask", "title")],
            b'{"name": "other", "title": "T"}',
            {"book": {"name": "books/1", "title": "T"}, "update_mask": "title"},
            id="body-field-nested-path-query-outside-body",
        ),
        pytest.param(
            _BOOKS.methods_by_name["UpdateBook"],
            _PATCH_BOOK,
            _CLASSES["UpdateBookRequest"],
            {"book.name": "books/1"},
            [],
            b'{"title": "T", "author": {"birthYear": 1900}, "pageCount": "3", "x": 1}',
            {
                "book": {
                    "name": "books/1",
                    "title": "T",
                    "author": {"birth_year": 1900},
                    "page_count": "3",
                },
                "update_mask": "title,author.birthYear,pageCount",  # JSON form of proto paths,
            },
            id="patch-fills-update-mask",
        ),
        pytest.param(
            _BOOKS.methods_by_name["UpdateBook"],
            _PATCH_BOOK,
            _CLASSES["UpdateBookRequest"],
            {"book.name": "books/1"},
            [],
            b'{"author": {}, "tags": ["a"], "title": null}',
            {
                "book": {"name": "books/1", "author": {}, "tags": ["a"]},
                "update_mask": "author,tags,title",
            },
            id="patch-mask-empty-object-repeated-null-are-leaves",
        ),
        pytest.param(
            _BOOKS.methods_by_name["UpdateBook"],
            _PATCH_BOOK,
            _CLASSES["UpdateBookRequest"],
            {"book.name": "books/1"},
            [("update_mask", "title")],
            b'{"title": "T", "tags": []}',
            {"book": {"name": "books/1", "title": "T"}, "update_mask": "title"},
            id="patch-explicit-mask-kept",
        ),
        pytest.param(
            _BOOKS.methods_by_name["Upload"],
            {"post": "/v1/{parent=shelves/*}:upload", "body": "file"},
            _CLASSES["UploadRequest"],
            {"parent": "shelves/1"},
            [],
            b"\x89PNG\x00",
            {"parent": "shelves/1", "file": {"content_type": "image/png", "data": "iVBORwA="}},
            id="http-body-field",
        ),
        pytest.param(
            _BOOKS.methods_by_name["Raw"],
            {"post": "/v1/raw", "body": "*"},
            _CLASSES["HttpBody"],
            {},
            [],
            b"%PDF",
            {"content_type": "image/png", "data": "JVBERg=="},
            id="http-body-whole-request",
        ),
    ],
)
def test_build_request(  # noqa: PLR0917 (one parameter per table column)
    method: MethodDescriptor,
    rule: dict[str, str],
    cls: type[Message],
    bindings: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes | None,
    expected: dict[str, Any],
) -> None:
    request = _mapping(method, **rule).build_request(
        cls, bindings, query, body, content_type="image/png"
    )
    assert _dict(request) == expected


@pytest.mark.parametrize(
    ("body", "strict", "fragment"),
    [
        pytest.param(b'{"message": ', False, "request body is not valid", id="truncated"),
        pytest.param(b"[1]", False, "expected a JSON object", id="not-an-object"),
        pytest.param(b'{"a": 1, "a": 2}', False, "duplicate key", id="duplicate-key"),
        pytest.param(b'{"delayMs": NaN}', False, "NaN is not JSON", id="nan-constant"),
        pytest.param(b"\xff", False, "not UTF-8", id="not-utf8"),
        pytest.param(b'{"delayMs": "x"}', False, "delayMs", id="wrong-type"),
        pytest.param(b'{"delayMs": 1e20}', False, "request body is not valid", id="int-overflow"),
        pytest.param(b'{"bogus": 1}', True, "unknown field 'bogus'", id="strict-unknown"),
        pytest.param(b"[" * 5000, False, "request body is not valid", id="deep-nesting"),
    ],
)
def test_bad_body(body: bytes, strict: bool, fragment: str) -> None:
    mapping = _mapping(_ECHO, post="/v1/echo", body="*")
    with pytest.raises(GatewayError) as caught:
        mapping.build_request(
            echo_pb2.EchoRequest, {}, [], body, options=JsonOptions(strict=strict)
        )
    assert caught.value.http_status == 400
    assert fragment in caught.value.message


def test_strict_query_names_unknown_parameter() -> None:
    mapping = _mapping(_LIST, get="/v1/notifications")
    with pytest.raises(GatewayError, match="unknown field 'nope'"):
        mapping.build_request(
            notify_pb2.ListNotificationsRequest,
            {},
            [("nope", "1")],
            None,
            options=JsonOptions(strict=True),
        )


def test_bad_path_value_names_variable() -> None:
    mapping = _mapping(_ECHO, post="/v1/echo/{delay_ms}", body="*")
    with pytest.raises(GatewayError, match="path variable 'delay_ms'"):
        mapping.build_request(echo_pb2.EchoRequest, {"delay_ms": "soon"}, [], None)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        pytest.param({"post": "/v1/{nope}"}, "names no field", id="unknown-variable"),
        pytest.param({"post": "/v1/x", "body": "nope"}, "not a top-level field", id="bad-body"),
        pytest.param({"post": "/v1/x", "response_body": "nope"}, "not a top-level", id="bad-rb"),
        pytest.param({}, "no pattern", id="no-pattern"),
    ],
)
def test_invalid_rules(rule: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        _mapping(_ECHO, **rule)


def test_additional_bindings_and_custom_verb() -> None:
    rule = http_pb2.HttpRule(post="/v1/echo", body="*")
    rule.additional_bindings.add(get="/v1/echo/{message}")
    rule.additional_bindings.add(custom=http_pb2.CustomHttpPattern(kind="search", path="/v1/e"))
    mappings = RequestMapping.from_rule(rule, _ECHO)
    assert [(m.http_method, m.template, m.body) for m in mappings] == [
        ("POST", "/v1/echo", "*"),
        ("GET", "/v1/echo/{message}", ""),
        ("SEARCH", "/v1/e", ""),
    ]


_RESPONSE = echo_pb2.EchoResponse(
    message="hi", deadline_left_ms=2**40, hops=[echo_pb2.Hop(served_by="a")]
)


@pytest.mark.parametrize(
    ("message", "response_body", "options", "expected"),
    [
        pytest.param(
            _RESPONSE,
            None,
            JsonOptions(),
            {
                "message": "hi",
                "servedBy": "",
                "deadlineLeftMs": "1099511627776",
                "previousAttempts": 0,
                "hops": [{"servedBy": "a", "deadlineLeftMs": "0", "traceId": ""}],
                "pid": 0,
            },
            id="defaults-camel-unpopulated-int64-string",
        ),
        pytest.param(
            _RESPONSE,
            None,
            JsonOptions(use_proto_names=True, emit_unpopulated=False),
            {"message": "hi", "deadline_left_ms": "1099511627776", "hops": [{"served_by": "a"}]},
            id="proto-names-omit-unpopulated",
        ),
        pytest.param(
            _RESPONSE,
            "hops",
            JsonOptions(),
            [{"servedBy": "a", "deadlineLeftMs": "0", "traceId": ""}],
            id="response-body-repeated",
        ),
        pytest.param(_RESPONSE, "message", JsonOptions(), "hi", id="response-body-scalar"),
        pytest.param(
            notify_pb2.Notification(channel=notify_pb2.CHANNEL_SMS),
            None,
            JsonOptions(emit_unpopulated=False),
            {"channel": "CHANNEL_SMS"},
            id="enum-as-name",
        ),
        pytest.param(
            notify_pb2.Notification(channel=notify_pb2.CHANNEL_SMS),
            None,
            JsonOptions(emit_unpopulated=False, enums_as_ints=True),
            {"channel": 2},
            id="enum-as-int",
        ),
        pytest.param(
            notify_pb2.SendResponse(),
            "notification",
            JsonOptions(emit_unpopulated=False),
            {},
            id="response-body-unset-message",
        ),
    ],
)
def test_render_json(
    message: Message, response_body: str | None, options: JsonOptions, expected: Any
) -> None:
    body, content_type = render_response(message, response_body=response_body, options=options)
    assert content_type == "application/json"
    assert json.loads(body) == expected


@pytest.mark.parametrize(
    ("message", "response_body", "expected"),
    [
        pytest.param(
            httpbody_pb2.HttpBody(content_type="image/png", data=b"\x89P"),
            None,
            (b"\x89P", "image/png"),
            id="http-body-whole",
        ),
        pytest.param(
            httpbody_pb2.HttpBody(data=b"x"),
            None,
            (b"x", "application/octet-stream"),
            id="http-body-no-content-type",
        ),
        pytest.param(
            _CLASSES["UploadRequest"](file={"content_type": "text/csv", "data": b"a,b"}),
            "file",
            (b"a,b", "text/csv"),
            id="http-body-response-body-field",
        ),
    ],
)
def test_render_http_body(
    message: Message, response_body: str | None, expected: tuple[bytes, str]
) -> None:
    assert render_response(message, response_body=response_body) == expected


def test_json_options_validate() -> None:
    with pytest.raises(ValueError, match="strict"):
        JsonOptions(strict="yes")  # type: ignore[arg-type]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["message", "delayMs", "count", "hops", "x"]) | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@given(document=_JSON, strict=st.booleans())
def test_arbitrary_json_bodies_only_gateway_errors(document: Any, strict: bool) -> None:
    body = json.dumps(document).encode()
    for mapping, cls in (
        (_mapping(_ECHO, post="/v1/echo", body="*"), echo_pb2.EchoRequest),
        (
            _mapping(_BOOKS.methods_by_name["UpdateBook"], **_PATCH_BOOK),
            _CLASSES["UpdateBookRequest"],
        ),
    ):
        status = 200
        try:
            mapping.build_request(cls, {}, [], body, options=JsonOptions(strict=strict))
        except GatewayError as err:
            status = err.http_status
        assert status in (200, 400)


@given(raw=st.binary(max_size=40))
def test_arbitrary_bytes_only_gateway_errors(raw: bytes) -> None:
    status = 200
    try:
        _mapping(_ECHO, post="/v1/echo", body="*").build_request(echo_pb2.EchoRequest, {}, [], raw)
    except GatewayError as err:
        status = err.http_status
    assert status in (200, 400)
