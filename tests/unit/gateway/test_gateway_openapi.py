"""OpenAPI generation: paths, parameters, bodies, schemas, refs, options, streaming, validity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.api import annotations_pb2, http_pb2, httpbody_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import ServiceDescriptor

from hms.eligibility.v1 import eligibility_pb2
from hms.notify.v1 import notify_pb2
from hms.testing.v1 import echo_pb2
from hms_gateway.endpoint import Endpoint, endpoints_of
from hms_gateway.openapi import build_openapi, openapi_path
from hms_gateway.template.parse import parse_template
from hms_gateway.transcode import JsonOptions

_F = descriptor_pb2.FieldDescriptorProto
_REF = "#/components/schemas/"


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


def _msg(name: str) -> tuple[int, str]:
    return _F.TYPE_MESSAGE, name


def _add_method(
    service: descriptor_pb2.ServiceDescriptorProto,
    name: str,
    types: tuple[str, str],
    rule: http_pb2.HttpRule,
    *,
    client_streaming: bool = False,
    server_streaming: bool = False,
    deprecated: bool = False,
) -> None:
    method = service.method.add(
        name=name,
        input_type=types[0],
        output_type=types[1],
        client_streaming=client_streaming,
        server_streaming=server_streaming,
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    if deprecated:
        method.options.deprecated = True


def _library_pool() -> descriptor_pool.DescriptorPool:
    """A library API in its own pool: every field shape, recursion, bindings, HttpBody."""
    pool = descriptor_pool.DescriptorPool()
    for module in (
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
        httpbody_pb2,
    ):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="test/library.proto",
        package="test.library",
        syntax="proto3",
        dependency=[
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
            "google/api/httpbody.proto",
        ],
    )
    genre = file.enum_type.add(name="Genre")
    genre.value.add(name="GENRE_UNSPECIFIED", number=0)
    genre.value.add(name="GENRE_FICTION", number=1)
    genre.value.add(name="GENRE_POETRY", number=2)
    author = file.message_type.add(name="Author")
    author.field.extend(
        [
            _field("display_name", 1, _F.TYPE_STRING),
            _field("mentor", 2, *_msg(".test.library.Author")),
        ]
    )
    book = file.message_type.add(name="Book")
    entry = book.nested_type.add(name="RatingsEntry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_INT32)])
    book.oneof_decl.add(name="format")
    book.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("title", 2, _F.TYPE_STRING),
            _field("author", 3, *_msg(".test.library.Author")),
            _field("tags", 4, _F.TYPE_STRING, repeated=True),
            _field("genre", 5, _F.TYPE_ENUM, ".test.library.Genre"),
            _field("ratings", 6, *_msg(".test.library.Book.RatingsEntry"), repeated=True),
            _field("publish_time", 7, *_msg(".google.protobuf.Timestamp")),
            _field("read_time", 8, *_msg(".google.protobuf.Duration")),
            _field("copies", 9, *_msg(".google.protobuf.Int64Value")),
            _field("cover", 10, _F.TYPE_BYTES),
            _field("isbn", 11, _F.TYPE_UINT64),
            _field("genres", 12, _F.TYPE_ENUM, ".test.library.Genre", repeated=True),
            _field("extra", 13, *_msg(".google.protobuf.Struct")),
            _field("attachment", 14, *_msg(".google.protobuf.Any")),
            _field("price", 15, _F.TYPE_DOUBLE),
            _field("in_print", 16, _F.TYPE_BOOL),
            _field("coauthors", 17, *_msg(".test.library.Author"), repeated=True),
            _field("ebook_url", 18, _F.TYPE_STRING),
            _field("hardcover_pages", 19, _F.TYPE_INT32),
            _field("metadata", 20, *_msg(".google.protobuf.Value")),
            _field("shelf_list", 21, *_msg(".google.protobuf.ListValue")),
            _field("nothing", 22, *_msg(".google.protobuf.Empty")),
            _field("weight", 23, _F.TYPE_FLOAT),
            _field("edition", 24, _F.TYPE_UINT32),
            _field("page_count", 25, _F.TYPE_INT64),
            _field("in_stock", 26, *_msg(".google.protobuf.BoolValue")),
        ]
    )
    book.field[17].oneof_index = 0
    book.field[18].oneof_index = 0
    node = file.message_type.add(name="Node")
    node.field.extend(
        [
            _field("id", 1, _F.TYPE_STRING),
            _field("parent", 2, *_msg(".test.library.Node")),
            _field("children", 3, *_msg(".test.library.Node"), repeated=True),
        ]
    )
    get_book = file.message_type.add(name="GetBookRequest")
    get_book.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("read_mask", 2, *_msg(".google.protobuf.FieldMask")),
        ]
    )
    list_books = file.message_type.add(name="ListBooksRequest")
    list_books.field.extend(
        [
            _field("parent", 1, _F.TYPE_STRING),
            _field("page_size", 2, _F.TYPE_INT32),
            _field("filter", 3, *_msg(".test.library.Book")),
            _field("node", 4, *_msg(".test.library.Node")),
        ]
    )
    list_response = file.message_type.add(name="ListBooksResponse")
    list_response.field.extend(
        [
            _field("books", 1, *_msg(".test.library.Book"), repeated=True),
            _field("next_page_token", 2, _F.TYPE_STRING),
        ]
    )
    update = file.message_type.add(name="UpdateBookRequest")
    update.field.extend(
        [
            _field("book", 1, *_msg(".test.library.Book")),
            _field("update_mask", 2, *_msg(".google.protobuf.FieldMask")),
        ]
    )
    upload = file.message_type.add(name="UploadCoverRequest")
    upload.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("file", 2, *_msg(".google.api.HttpBody")),
        ]
    )
    _add_library_service(file.service.add(name="Library"))
    pool.Add(file)

    other = descriptor_pb2.FileDescriptorProto(
        name="test/other.proto",
        package="test.other",
        syntax="proto3",
        dependency=["test/library.proto"],
    )
    _add_method(
        other.service.add(name="Library"),
        "GetBook",
        (".test.library.GetBookRequest", ".test.library.Book"),
        http_pb2.HttpRule(get="/v2/{name=books/*}"),
    )
    pool.Add(other)
    return pool


def _add_library_service(service: descriptor_pb2.ServiceDescriptorProto) -> None:
    """Every binding shape: additional bindings, body field, HttpBody, streaming, wildcards."""
    lib = ".test.library."
    get = http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}")
    get.additional_bindings.add(get="/v1/books/{name}")
    get.additional_bindings.add(post="/v1/{name=shelves/*/books/*}:fetch", body="*")
    _add_method(service, "GetBook", (lib + "GetBookRequest", lib + "Book"), get)
    _add_method(
        service,
        "ListBooks",
        (lib + "ListBooksRequest", lib + "ListBooksResponse"),
        http_pb2.HttpRule(get="/v1/{parent=shelves/*}/books"),
    )
    _add_method(
        service,
        "UpdateBook",
        (lib + "UpdateBookRequest", lib + "Book"),
        http_pb2.HttpRule(patch="/v1/{book.name=shelves/*/books/*}", body="book"),
    )
    _add_method(
        service,
        "UploadCover",
        (lib + "UploadCoverRequest", ".google.protobuf.Empty"),
        http_pb2.HttpRule(post="/v1/{name=shelves/*/books/*}:uploadCover", body="file"),
    )
    _add_method(
        service,
        "Download",
        (lib + "GetBookRequest", ".google.api.HttpBody"),
        http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}:download"),
    )
    _add_method(
        service,
        "RawUpload",
        (".google.api.HttpBody", ".google.protobuf.Empty"),
        http_pb2.HttpRule(post="/v1/raw", body="*"),
    )
    _add_method(
        service,
        "StreamBooks",
        (lib + "ListBooksRequest", lib + "Book"),
        http_pb2.HttpRule(get="/v1/{parent=shelves/*}/books:stream"),
        server_streaming=True,
    )
    _add_method(
        service,
        "StreamBytes",
        (lib + "GetBookRequest", ".google.api.HttpBody"),
        http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}:chunks"),
        server_streaming=True,
    )
    _add_method(
        service,
        "Import",
        (lib + "Book", lib + "Book"),
        http_pb2.HttpRule(post="/v1/books:import", body="*"),
        client_streaming=True,
    )
    _add_method(
        service,
        "Chat",
        (lib + "Book", lib + "Book"),
        http_pb2.HttpRule(post="/v1/books:chat", body="*"),
        client_streaming=True,
        server_streaming=True,
    )
    _add_method(
        service,
        "GetTitle",
        (lib + "GetBookRequest", lib + "Book"),
        http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}/title", response_body="title"),
        deprecated=True,
    )
    _add_method(
        service,
        "Static",
        (lib + "GetBookRequest", lib + "Book"),
        http_pb2.HttpRule(get="/v1/static/*/{name}/**"),
    )
    _add_method(
        service,
        "Survey",
        (lib + "GetBookRequest", lib + "Book"),
        http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="LIST", path="/v1/survey")),
    )


_POOL = _library_pool()
_LIBRARY = _POOL.FindServiceByName("test.library.Library")
_OTHER = _POOL.FindServiceByName("test.other.Library")


def _service(module: Any, name: str) -> ServiceDescriptor:
    return module.DESCRIPTOR.services_by_name[name]


def _hms_endpoints() -> list[Endpoint]:
    return [
        *endpoints_of(_service(echo_pb2, "EchoService")),
        *endpoints_of(_service(notify_pb2, "NotifyService")),
        *endpoints_of(_service(eligibility_pb2, "EligibilityService")),
    ]


def _library(**kwargs: Any) -> dict[str, Any]:
    return build_openapi(endpoints_of(_LIBRARY), **kwargs)


def _params(operation: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["in"], p["name"]): p for p in operation.get("parameters", [])}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _json_of(operation: dict[str, Any], where: str = "200") -> dict[str, Any]:
    return operation["responses"][where]["content"]["application/json"]["schema"]


# --- the project's own services --------------------------------------------------------


def test_echo_paths_operations_and_skipped_client_streaming() -> None:
    doc = build_openapi(endpoints_of(_service(echo_pb2, "EchoService")))
    assert doc["openapi"] == "3.0.3"
    assert doc["info"] == {"title": "HMS Mesh gateway", "version": "1"}
    assert list(doc["paths"]) == [
        "/v1/echo",
        "/v1/echo:once",
        "/v1/echo:setFailure",
        "/v1/echo:setFault",
        "/v1/echo:stream",
    ]
    echo = doc["paths"]["/v1/echo"]["post"]
    assert list(doc["paths"]["/v1/echo"]) == ["post"]
    assert echo["operationId"] == "EchoService_Echo"
    assert echo["tags"] == ["hms.testing.v1.EchoService"]
    assert echo["summary"] == "hms.testing.v1.EchoService.Echo"
    assert "parameters" not in echo  # body "*": no query parameters
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": _REF + "hms.testing.v1.EchoRequest"
    }
    assert _json_of(echo) == {"$ref": _REF + "hms.testing.v1.EchoResponse"}
    assert _json_of(echo, "default") == {"$ref": _REF + "google.rpc.Status"}
    assert doc["tags"] == [{"name": "hms.testing.v1.EchoService"}]


def test_echo_schemas_use_proto3_json_types() -> None:
    schemas = build_openapi(endpoints_of(_service(echo_pb2, "EchoService")))["components"][
        "schemas"
    ]
    response = schemas["hms.testing.v1.EchoResponse"]
    assert response["type"] == "object"
    assert response["properties"] == {
        "message": {"type": "string"},
        "servedBy": {"type": "string"},
        "deadlineLeftMs": {"type": "string", "format": "int64"},
        "previousAttempts": {"type": "integer", "format": "int32"},
        "hops": {"type": "array", "items": {"$ref": _REF + "hms.testing.v1.Hop"}},
        "pid": {"type": "integer", "format": "int32"},
    }
    assert "hms.testing.v1.Hop" in schemas


def test_server_streaming_answers_ndjson_and_sse() -> None:
    doc = build_openapi(endpoints_of(_service(echo_pb2, "EchoService")))
    content = doc["paths"]["/v1/echo:stream"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    assert content["application/x-ndjson"]["schema"] == {
        "type": "object",
        "properties": {
            "result": {"$ref": _REF + "hms.testing.v1.EchoResponse"},
            "error": {"$ref": _REF + "google.rpc.Status"},
        },
    }
    assert content["text/event-stream"]["schema"]["type"] == "string"


def test_notify_get_has_query_parameters_in_json_names() -> None:
    doc = build_openapi(endpoints_of(_service(notify_pb2, "NotifyService")))
    item = doc["paths"]["/v1/notifications"]
    assert list(item) == ["get", "post"]
    listing = item["get"]
    assert "requestBody" not in listing
    assert listing["parameters"] == [
        {"name": "applicantId", "in": "query", "required": False, "schema": {"type": "string"}},
        {
            "name": "pageSize",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "format": "int32"},
        },
        {"name": "pageToken", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    notification = doc["components"]["schemas"]["hms.notify.v1.Notification"]["properties"]
    # Unset, a message field is written as null (protojson's EmitUnpopulated): nullable.
    assert notification["createTime"] == {
        "type": "string",
        "format": "date-time",
        "nullable": True,
    }
    assert notification["channel"] == {
        "type": "string",
        "enum": ["CHANNEL_UNSPECIFIED", "CHANNEL_EMAIL", "CHANNEL_SMS", "CHANNEL_LETTER"],
    }


def test_proto_names_and_enums_as_ints_options() -> None:
    options = JsonOptions(use_proto_names=True, enums_as_ints=True)
    doc = build_openapi(endpoints_of(_service(notify_pb2, "NotifyService")), options=options)
    names = [p["name"] for p in doc["paths"]["/v1/notifications"]["get"]["parameters"]]
    assert names == ["applicant_id", "page_size", "page_token"]
    notification = doc["components"]["schemas"]["hms.notify.v1.Notification"]["properties"]
    assert "create_time" in notification
    assert "createTime" not in notification
    assert notification["channel"] == {"type": "integer", "format": "int32", "enum": [0, 1, 2, 3]}


def test_eligibility_path_parameter_is_required_and_not_in_query() -> None:
    doc = build_openapi(endpoints_of(_service(eligibility_pb2, "EligibilityService")))
    operation = doc["paths"]["/v1/rules/{rule_id}"]["get"]
    params = _params(operation)
    assert params[("path", "rule_id")]["required"] is True
    assert params[("path", "rule_id")]["schema"] == {"type": "string"}
    assert "description" not in params[("path", "rule_id")]  # a plain {rule_id}
    assert ("query", "ruleId") not in params
    assert ("query", "rule_id") not in params


# --- hand-built descriptors ---------------------------------------------------------------


def test_additional_bindings_get_suffixed_operation_ids() -> None:
    paths = _library()["paths"]
    assert paths["/v1/{name}"]["get"]["operationId"] == "Library_GetBook"
    assert paths["/v1/books/{name}"]["get"]["operationId"] == "Library_GetBook_1"
    assert paths["/v1/{name}:fetch"]["post"]["operationId"] == "Library_GetBook_2"


def test_multi_segment_variable_describes_its_pattern() -> None:
    operation = _library()["paths"]["/v1/{name}"]["get"]
    name = _params(operation)[("path", "name")]
    assert name["required"] is True
    assert name["schema"] == {"type": "string"}
    assert "shelves/*/books/*" in name["description"]
    assert _params(operation)[("query", "readMask")]["schema"]["type"] == "string"
    assert _json_of(operation) == {"$ref": _REF + "test.library.Book"}


def test_query_parameters_cover_every_settable_leaf() -> None:
    operation = _library()["paths"]["/v1/{parent}/books"]["get"]
    params = _params(operation)
    assert list(params)[:2] == [("path", "parent"), ("query", "pageSize")]
    assert ("query", "parent") not in params
    schemas = {name: p["schema"] for (where, name), p in params.items() if where == "query"}
    assert schemas["filter.title"] == {"type": "string"}
    assert schemas["filter.author.displayName"] == {"type": "string"}
    assert schemas["filter.genre"] == {
        "type": "string",
        "enum": ["GENRE_UNSPECIFIED", "GENRE_FICTION", "GENRE_POETRY"],
    }
    assert schemas["filter.publishTime"] == {"type": "string", "format": "date-time"}
    assert schemas["filter.readTime"]["type"] == "string"
    assert "pattern" in schemas["filter.readTime"]
    assert schemas["filter.copies"] == {"type": "string", "format": "int64"}
    assert schemas["filter.inStock"] == {"type": "boolean"}
    assert schemas["filter.cover"] == {"type": "string", "format": "byte"}
    assert schemas["filter.isbn"] == {"type": "string", "format": "uint64"}
    assert schemas["filter.pageCount"] == {"type": "string", "format": "int64"}
    assert schemas["filter.price"] == {"type": "number", "format": "double"}
    tags = params[("query", "filter.tags")]
    assert tags["schema"] == {"type": "array", "items": {"type": "string"}}
    assert (tags["style"], tags["explode"]) == ("form", True)
    assert params[("query", "filter.genres")]["schema"]["items"]["enum"][1] == "GENRE_FICTION"
    # Not settable from the query: maps, repeated messages, JSON-only WKTs.
    for absent in (
        "filter.ratings",
        "filter.coauthors",
        "filter.extra",
        "filter.attachment",
        "filter.metadata",
        "filter.shelfList",
        "filter.nothing",
    ):
        assert absent not in schemas
    # Recursion stops at a message already on the path.
    assert "node.id" in schemas
    assert not any(name.startswith(("node.parent", "filter.author.mentor")) for name in schemas)
    assert all(p["required"] is False for (where, _), p in params.items() if where == "query")


def test_query_parameters_skip_path_bound_nested_fields_and_the_body() -> None:
    operation = _library()["paths"]["/v1/{book.name}"]["patch"]
    params = _params(operation)
    assert list(params) == [("path", "book.name"), ("query", "updateMask")]
    assert "shelves/*/books/*" in params[("path", "book.name")]["description"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": _REF + "test.library.Book"}


def test_query_parameter_names_follow_proto_names_option() -> None:
    doc = _library(options=JsonOptions(use_proto_names=True))
    names = [p["name"] for p in doc["paths"]["/v1/{parent}/books"]["get"]["parameters"]]
    assert "filter.author.display_name" in names
    assert "page_size" in names
    assert "pageSize" not in names


def test_http_body_request_and_response_are_binary() -> None:
    paths = _library()["paths"]
    binary = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    upload = paths["/v1/{name}:uploadCover"]["post"]
    assert upload["requestBody"]["content"] == binary
    assert _json_of(upload) == {"type": "object"}  # google.protobuf.Empty
    assert paths["/v1/raw"]["post"]["requestBody"]["content"] == binary
    assert paths["/v1/{name}:download"]["get"]["responses"]["200"]["content"] == binary
    assert paths["/v1/{name}:chunks"]["get"]["responses"]["200"]["content"] == binary


def test_streaming_kinds() -> None:
    paths = _library()["paths"]
    content = paths["/v1/{parent}/books:stream"]["get"]["responses"]["200"]["content"]
    assert content["application/x-ndjson"]["schema"]["properties"]["result"] == {
        "$ref": _REF + "test.library.Book"
    }
    # Client- and bidi-streaming: the gateway answers 501, so they are not described.
    assert "/v1/books:import" not in paths
    assert "/v1/books:chat" not in paths


def test_response_body_field_and_deprecation() -> None:
    operation = _library()["paths"]["/v1/{name}/title"]["get"]
    assert _json_of(operation) == {"type": "string"}
    assert operation["deprecated"] is True
    assert "deprecated" not in _library()["paths"]["/v1/{name}"]["get"]


def test_bare_wildcards_become_synthetic_path_parameters() -> None:
    path = "/v1/static/{_wildcard1}/{name}/{_wildcard2}"
    operation = _library()["paths"][path]["get"]
    assert [(p["in"], p["name"]) for p in operation["parameters"][:3]] == [
        ("path", "_wildcard1"),
        ("path", "name"),
        ("path", "_wildcard2"),
    ]
    assert all(p["required"] for p in operation["parameters"][:3])
    assert openapi_path(parse_template("/v1/echo:stream")) == "/v1/echo:stream"
    assert openapi_path(parse_template("/")) == "/"


def test_custom_http_methods_outside_openapi_are_left_out() -> None:
    assert "/v1/survey" not in _library()["paths"]


def test_component_schemas_for_every_field_shape() -> None:
    schemas = _library()["components"]["schemas"]
    book = schemas["test.library.Book"]
    props = book["properties"]
    # A singular message field is null when unset: nullable, its $ref in an allOf (OpenAPI
    # 3.0 ignores anything beside a $ref); list items are never null.
    assert props["author"] == {"allOf": [{"$ref": _REF + "test.library.Author"}], "nullable": True}
    assert props["ratings"] == {
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "int32"},
    }
    assert props["coauthors"] == {"type": "array", "items": {"$ref": _REF + "test.library.Author"}}
    assert props["copies"] == {"type": "string", "format": "int64", "nullable": True}
    assert props["inStock"] == {"type": "boolean", "nullable": True}
    assert props["extra"] == {"type": "object", "additionalProperties": {}, "nullable": True}
    assert props["attachment"]["properties"] == {"@type": {"type": "string"}}
    assert props["shelfList"] == {"type": "array", "items": {}, "nullable": True}
    assert "type" not in props["metadata"]
    assert props["nothing"] == {"type": "object", "nullable": True}
    assert props["weight"] == {"type": "number", "format": "float"}
    assert props["edition"]["type"] == "integer"
    assert props["inPrint"] == {"type": "boolean"}
    assert props["genres"]["type"] == "array"
    assert "ebookUrl" in book["description"]
    assert "hardcoverPages" in book["description"]
    # Map entries are inlined, never components.
    assert "test.library.Book.RatingsEntry" not in schemas
    # Recursive messages refer to themselves.
    assert schemas["test.library.Author"]["properties"]["mentor"] == {
        "allOf": [{"$ref": _REF + "test.library.Author"}],
        "nullable": True,
    }


def test_status_schema_is_the_gateway_error_body() -> None:
    status = _library()["components"]["schemas"]["google.rpc.Status"]
    assert status["properties"]["code"] == {
        "type": "integer",
        "format": "int32",
        "description": "A gRPC code.",
    }
    assert status["properties"]["message"] == {"type": "string"}
    assert status["properties"]["details"]["items"]["properties"] == {"@type": {"type": "string"}}


def test_services_sharing_a_short_name_get_full_operation_ids() -> None:
    doc = build_openapi([*endpoints_of(_LIBRARY), *endpoints_of(_OTHER)])
    assert doc["paths"]["/v1/{name}"]["get"]["operationId"] == "test_library_Library_GetBook"
    assert doc["paths"]["/v2/{name}"]["get"]["operationId"] == "test_other_Library_GetBook"
    assert doc["tags"] == [{"name": "test.library.Library"}, {"name": "test.other.Library"}]


def test_the_same_binding_twice_is_an_error() -> None:
    echo = list(endpoints_of(_service(echo_pb2, "EchoService")))
    with pytest.raises(ValueError, match="bound twice"):
        build_openapi([*echo, *echo])


@pytest.mark.parametrize("build", [_hms_endpoints, lambda: list(endpoints_of(_LIBRARY))])
def test_every_ref_resolves_and_operation_ids_are_unique(build: Any) -> None:
    doc = build_openapi(build())
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_deterministic_and_json_serialisable() -> None:
    first = json.dumps(build_openapi(_hms_endpoints()), allow_nan=False)
    second = json.dumps(build_openapi(_hms_endpoints()), allow_nan=False)
    assert first == second
    doc = _library()
    assert list(doc["paths"]) == sorted(doc["paths"])
    assert list(doc["components"]["schemas"]) == sorted(doc["components"]["schemas"])
    # Input order does not change which paths and schemas are produced, nor their order.
    reversed_doc = build_openapi(list(reversed(_hms_endpoints())))
    assert list(reversed_doc["paths"]) == list(json.loads(first)["paths"])
    assert reversed_doc["components"] == json.loads(first)["components"]


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(lambda: build_openapi(_hms_endpoints()), id="hms"),
        pytest.param(_library, id="library"),
        pytest.param(
            lambda: _library(options=JsonOptions(use_proto_names=True, enums_as_ints=True)),
            id="library-options",
        ),
    ],
)
def test_documents_pass_openapi_spec_validator(doc: Any) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc())
