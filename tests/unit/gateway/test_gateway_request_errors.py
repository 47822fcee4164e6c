"""Request errors in the caller's terms: every 400 for a JSON body, a query parameter or a path
value names the field as the caller wrote it (with its path: ``book.authors[1]``) and says what
was expected, in JSON terms; none carries the text of a Python or protobuf exception.

The messages are asserted exactly, one table per place (body, query, path), over every kind of
field: the mirror backend's request (hms.testing.v1.MirrorRequest) for the common kinds and
nested paths, and ``AllKinds``, built here in its own descriptor pool (as routes learnt by
reflection are), for the kinds the mirror has not (float, uint32, the sint and fixed kinds,
Struct, Value, ListValue, Any, Empty, a oneof, maps with integer and bool keys, a closed enum).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from google.api import http_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st

from hms.testing.v1 import mirror_pb2
from hms_gateway import transcode
from hms_gateway.errors import GatewayError
from hms_gateway.transcode import JsonOptions, RequestMapping

_F = descriptor_pb2.FieldDescriptorProto
_REPEATED = _F.LABEL_REPEATED
_WKT = ".google.protobuf."

# What must never reach a client: the words of Python's and protobuf's exceptions.
LEAKS = (
    "int()",
    "literal",
    "bytes-like",
    "NoneType",
    "Traceback",
    "Failed to parse",
    "object has no",
    "not iterable",
    "codec",
    "has no len",
    "sys.",
    "Message type",
    " at AllKinds",
    " at MirrorRequest",
)
# A Python type name as a word: 'int', <class 'str'>, "got list", "has no len()" ...
PYTHON_TYPE_NAME = re.compile(r"\b(?:int|str|float|bool|list|dict|tuple|bytes|NoneType)\b")


def assert_clean(message: str) -> None:
    for leak in LEAKS:
        assert leak not in message, message
    assert not PYTHON_TYPE_NAME.search(message), message


# -- AllKinds: a message with a field of every kind, in a pool of its own --------------------


def _field(name: str, number: int, kind: int, type_name: str = "", label: int = 0) -> _F:
    field = _F(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=label or _F.LABEL_OPTIONAL,  # type: ignore[arg-type]
        json_name="".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_"))),
    )
    if type_name:
        field.type_name = type_name
    return field


def _map_entry(
    message: descriptor_pb2.DescriptorProto, name: str, key: int, value: int, value_type: str = ""
) -> str:
    entry = message.nested_type.add(name=name)
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, key), _field("value", 2, value, value_type)])
    return f".test.kinds.AllKinds.{name}"


def _all_kinds_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    modules = (
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )
    for module in modules:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="test/kinds.proto",
        package="test.kinds",
        syntax="proto3",
        dependency=[m.DESCRIPTOR.name for m in modules],
    )
    file.enum_type.add(name="Color").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=name, number=number)
        for number, name in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"))
    )
    file.message_type.add(name="Deep").field.append(_field("n", 1, _F.TYPE_INT32))
    file.message_type.add(name="Inner").field.extend(
        [_field("name", 1, _F.TYPE_STRING), _field("deep", 2, _F.TYPE_MESSAGE, ".test.kinds.Deep")]
    )
    kinds = file.message_type.add(name="AllKinds")
    kinds.oneof_decl.add(name="contact")
    counts = _map_entry(kinds, "CountsEntry", _F.TYPE_STRING, _F.TYPE_INT32)
    names = _map_entry(kinds, "NamesEntry", _F.TYPE_INT64, _F.TYPE_STRING)
    flags = _map_entry(kinds, "FlagsEntry", _F.TYPE_BOOL, _F.TYPE_STRING)
    inner_map = _map_entry(
        kinds, "InnerMapEntry", _F.TYPE_STRING, _F.TYPE_MESSAGE, ".test.kinds.Inner"
    )
    kinds.field.extend(
        [
            _field("i32", 1, _F.TYPE_INT32),
            _field("i64", 2, _F.TYPE_INT64),
            _field("u32", 3, _F.TYPE_UINT32),
            _field("u64", 4, _F.TYPE_UINT64),
            _field("s32", 5, _F.TYPE_SINT32),
            _field("s64", 6, _F.TYPE_SINT64),
            _field("fx32", 7, _F.TYPE_FIXED32),
            _field("fx64", 8, _F.TYPE_FIXED64),
            _field("sfx32", 9, _F.TYPE_SFIXED32),
            _field("sfx64", 10, _F.TYPE_SFIXED64),
            _field("fl", 11, _F.TYPE_FLOAT),
            _field("db", 12, _F.TYPE_DOUBLE),
            _field("flag", 13, _F.TYPE_BOOL),
            _field("text", 14, _F.TYPE_STRING),
            _field("data", 15, _F.TYPE_BYTES),
            _field("color", 16, _F.TYPE_ENUM, ".test.kinds.Color"),
            _field("inner", 17, _F.TYPE_MESSAGE, ".test.kinds.Inner"),
            _field("tags", 18, _F.TYPE_STRING, label=_REPEATED),
            _field("nums", 19, _F.TYPE_INT64, label=_REPEATED),
            _field("colors", 20, _F.TYPE_ENUM, ".test.kinds.Color", _REPEATED),
            _field("inners", 21, _F.TYPE_MESSAGE, ".test.kinds.Inner", _REPEATED),
            _field("counts", 22, _F.TYPE_MESSAGE, counts, _REPEATED),
            _field("names", 23, _F.TYPE_MESSAGE, names, _REPEATED),
            _field("flags", 24, _F.TYPE_MESSAGE, flags, _REPEATED),
            _field("inner_map", 25, _F.TYPE_MESSAGE, inner_map, _REPEATED),
            _field("start_time", 26, _F.TYPE_MESSAGE, _WKT + "Timestamp"),
            _field("ttl", 27, _F.TYPE_MESSAGE, _WKT + "Duration"),
            _field("update_mask", 28, _F.TYPE_MESSAGE, _WKT + "FieldMask"),
            _field("w_i32", 29, _F.TYPE_MESSAGE, _WKT + "Int32Value"),
            _field("w_u64", 30, _F.TYPE_MESSAGE, _WKT + "UInt64Value"),
            _field("w_str", 31, _F.TYPE_MESSAGE, _WKT + "StringValue"),
            _field("w_bool", 32, _F.TYPE_MESSAGE, _WKT + "BoolValue"),
            _field("w_bytes", 33, _F.TYPE_MESSAGE, _WKT + "BytesValue"),
            _field("w_double", 34, _F.TYPE_MESSAGE, _WKT + "DoubleValue"),
            _field("meta", 35, _F.TYPE_MESSAGE, _WKT + "Struct"),
            _field("anything", 36, _F.TYPE_MESSAGE, _WKT + "Value"),
            _field("values", 37, _F.TYPE_MESSAGE, _WKT + "ListValue"),
            _field("extra", 38, _F.TYPE_MESSAGE, _WKT + "Any"),
            _field("nothing", 39, _F.TYPE_MESSAGE, _WKT + "Empty"),
            _field("times", 40, _F.TYPE_MESSAGE, _WKT + "Timestamp", _REPEATED),
        ]
    )
    for number, name in ((41, "email"), (42, "phone")):
        member = _field(name, number, _F.TYPE_STRING)
        member.oneof_index = 0
        kinds.field.append(member)
    service = file.service.add(name="Kinds")
    service.method.add(
        name="Put", input_type=".test.kinds.AllKinds", output_type=".test.kinds.Deep"
    )
    pool.Add(file)

    # proto2: its enums are closed (a number it does not define is refused).
    legacy = descriptor_pb2.FileDescriptorProto(
        name="test/legacy.proto", package="test.legacy", syntax="proto2"
    )
    legacy.enum_type.add(name="Size").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="SMALL", number=1),
            descriptor_pb2.EnumValueDescriptorProto(name="LARGE", number=2),
        ]
    )
    legacy.message_type.add(name="Order").field.append(
        _field("size", 1, _F.TYPE_ENUM, ".test.legacy.Size")
    )
    legacy.service.add(name="Orders").method.add(
        name="Place", input_type=".test.legacy.Order", output_type=".test.legacy.Order"
    )
    pool.Add(legacy)
    return pool


_POOL = _all_kinds_pool()
_PUT = _POOL.FindServiceByName("test.kinds.Kinds").methods_by_name["Put"]
_PLACE = _POOL.FindServiceByName("test.legacy.Orders").methods_by_name["Place"]
AllKinds: type[Message] = message_factory.GetMessageClass(_PUT.input_type)
Order: type[Message] = message_factory.GetMessageClass(_PLACE.input_type)

_MIRROR = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]


def _mapping(method: Any, **rule: str) -> RequestMapping:
    return RequestMapping.from_rule(http_pb2.HttpRule(**rule), method)[0]


_KINDS_BODY = _mapping(_PUT, post="/v1/kinds", body="*")
_KINDS_QUERY = _mapping(_PUT, get="/v1/kinds")
_MIRROR_BODY = _mapping(_MIRROR.methods_by_name["Shape"], post="/v1/shape", body="*")
_MIRROR_BOOK = _mapping(
    _MIRROR.methods_by_name["CreateBook"], post="/v1/{parent=shelves/*}/books", body="book"
)
_ORDER_BODY = _mapping(_PLACE, post="/v1/orders", body="*")


def _body_error(
    mapping: RequestMapping, cls: type[Message], body: bytes, *, strict: bool = False
) -> str:
    with pytest.raises(GatewayError) as caught:
        mapping.build_request(cls, {}, [], body, options=JsonOptions(strict=strict))
    error = caught.value
    assert (error.http_status, error.code.value[0]) == (400, 3), error
    assert_clean(error.message)
    return error.message


# -- the body -----------------------------------------------------------------------------------

_INT = "expected an integer (a JSON number or a string of digits)"
_NUMBER = 'expected a number (or "NaN", "Infinity" or "-Infinity")'
_BASE64 = "expected a string of base64 (standard or URL-safe alphabet, padding optional)"
_COLOR = "expected one of COLOR_RED, COLOR_GREEN (a name or its number)"
_TIMESTAMP = 'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'
_DURATION = 'expected a duration in seconds with an "s" suffix (like "1.5s")'
_MASK = 'expected comma-separated field paths in lowerCamelCase (like "title,author.birthYear")'
_I32_RANGE = "expected an integer from -2147483648 to 2147483647"
_I64_RANGE = "expected an integer from -9223372036854775808 to 9223372036854775807"
_U32_RANGE = "expected an integer from 0 to 4294967295"
_U64_RANGE = "expected an integer from 0 to 18446744073709551615"
_FLOAT_RANGE = "expected a number from -3.4028235e+38 to 3.4028235e+38"
_DOUBLE_RANGE = "expected a number from -1.7976931e+308 to 1.7976931e+308"
_ANY = 'expected an object with "@type", the URL of the message type it holds'

BODY_CASES = [
    # integers, each kind: the wrong JSON type (true included), a fraction, past the range
    ('{"i32": "lots"}', f'i32: {_INT}, got "lots"'),
    ('{"i32": true}', f"i32: {_INT}, got true"),
    ('{"i32": false}', f"i32: {_INT}, got false"),
    ('{"i32": 1.5}', f"i32: {_INT}, got 1.5"),
    ('{"i32": "1.5"}', f'i32: {_INT}, got "1.5"'),
    ('{"i32": " 1"}', f'i32: {_INT}, got " 1"'),
    ('{"i32": "1_000"}', f'i32: {_INT}, got "1_000"'),
    ('{"i32": "+1"}', f'i32: {_INT}, got "+1"'),
    ('{"i32": "\\uff11"}', f'i32: {_INT}, got "\uff11"'),  # a fullwidth digit: int() takes it
    ('{"i32": [1]}', f"i32: {_INT}, got an array"),
    ('{"i32": {}}', f"i32: {_INT}, got an object"),
    ('{"i32": 2147483648}', f"i32: {_I32_RANGE}, got 2147483648"),
    ('{"i32": 1e20}', f"i32: {_I32_RANGE}, got 1e+20"),
    ('{"i32": 1e400}', f"i32: {_I32_RANGE}, got 1e400"),
    ('{"i64": true}', f"i64: {_INT}, got true"),
    ('{"i64": "9223372036854775808"}', f'i64: {_I64_RANGE}, got "9223372036854775808"'),
    ('{"i64": "12345678901234567890123e-3"}', f'i64: {_INT}, got "12345678901234567890123e-3"'),
    ('{"u32": true}', f"u32: {_INT}, got true"),
    ('{"u32": -1}', f"u32: {_U32_RANGE}, got -1"),
    ('{"u64": "-1"}', f'u64: {_U64_RANGE}, got "-1"'),
    ('{"u64": null, "s32": true}', f"s32: {_INT}, got true"),
    ('{"s64": "x"}', f's64: {_INT}, got "x"'),
    ('{"fx32": true}', f"fx32: {_INT}, got true"),
    ('{"fx64": -5}', f"fx64: {_U64_RANGE}, got -5"),
    ('{"sfx32": 3000000000}', f"sfx32: {_I32_RANGE}, got 3000000000"),
    ('{"sfx64": false}', f"sfx64: {_INT}, got false"),
    (
        '{"i64": ' + "9" * 500 + "}",
        f"i64: {_I64_RANGE}, got 99999999999999999999... (500 characters)",
    ),
    # float and double
    ('{"fl": true}', f"fl: {_NUMBER}, got true"),
    ('{"fl": 1e39}', f"fl: {_FLOAT_RANGE}, got 1e+39"),
    ('{"db": "abc"}', f'db: {_NUMBER}, got "abc"'),
    ('{"db": "nan"}', f'db: {_NUMBER}, got "nan"'),
    ('{"db": "inf"}', f'db: {_NUMBER}, got "inf"'),
    ('{"db": " 1.5"}', f'db: {_NUMBER}, got " 1.5"'),
    ('{"db": 1e400}', f"db: {_DOUBLE_RANGE}, got 1e400"),
    ('{"db": "-1e400"}', f'db: {_DOUBLE_RANGE}, got "-1e400"'),
    ('{"db": [1.5]}', f"db: {_NUMBER}, got an array"),
    # bool, string, bytes
    ('{"flag": 1}', "flag: expected true or false, got 1"),
    ('{"flag": "true"}', 'flag: expected true or false, got "true"'),
    ('{"text": 5}', "text: expected a string, got 5"),
    ('{"text": false}', "text: expected a string, got false"),
    ('{"text": ["a"]}', "text: expected a string, got an array"),
    (
        '{"text": "a\\ud800"}',
        'text: expected a string of valid Unicode, got "a\\ud800" (a lone surrogate)',
    ),
    ('{"data": 5}', f"data: {_BASE64}, got 5"),
    ('{"data": "!!"}', f'data: {_BASE64}, got "!!"'),
    ('{"data": "a+_b"}', f'data: {_BASE64}, got "a+_b"'),
    ('{"data": "a"}', f'data: {_BASE64}, got "a"'),
    # enums: true (json_format would take it as 1), a fraction, past int32, a wrong type
    ('{"color": true}', f"color: {_COLOR}, got true"),
    ('{"color": false}', f"color: {_COLOR}, got false"),
    ('{"color": 1.5}', f"color: {_COLOR}, got 1.5"),
    ('{"color": 2147483648}', f"color: {_COLOR}, got 2147483648"),
    ('{"color": {"name": "COLOR_RED"}}', f"color: {_COLOR}, got an object"),
    ('{"colors": ["COLOR_RED", true]}', f"colors[1]: {_COLOR}, got true"),
    ('{"colors": [null]}', f"colors[0]: {_COLOR}, got null"),
    # messages, repeated fields, maps
    ('{"inner": 5}', "inner: expected an object, got 5"),
    ('{"inner": "x"}', 'inner: expected an object, got "x"'),
    ('{"inner": []}', "inner: expected an object, got an array"),
    ('{"inner": {"deep": {"n": "x"}}}', f'inner.deep.n: {_INT}, got "x"'),
    ('{"inner": {"deep": {"n": true}}}', f"inner.deep.n: {_INT}, got true"),
    ('{"tags": "a"}', 'tags: expected an array, got "a"'),
    ('{"tags": ["a", 1]}', "tags[1]: expected a string, got 1"),
    ('{"tags": ["a", null]}', "tags[1]: expected a string, got null"),
    ('{"nums": [1, "x"]}', f'nums[1]: {_INT}, got "x"'),
    ('{"nums": [true]}', f"nums[0]: {_INT}, got true"),
    ('{"inners": [{}, 5]}', "inners[1]: expected an object, got 5"),
    ('{"inners": [null]}', "inners[0]: expected an object, got null"),
    ('{"inners": [{"deep": {"n": 1.5}}]}', f"inners[0].deep.n: {_INT}, got 1.5"),
    ('{"counts": [1]}', "counts: expected an object, got an array"),
    ('{"counts": {"a": "x"}}', f'counts["a"]: {_INT}, got "x"'),
    ('{"counts": {"a": null}}', f'counts["a"]: {_INT}, got null'),
    ('{"counts": {"a.b": true}}', f'counts["a.b"]: {_INT}, got true'),
    (
        '{"names": {"x": "a"}}',
        "names: expected keys that are integers from -9223372036854775808 to "
        '9223372036854775807, written as strings, got key "x"',
    ),
    ('{"names": {"1": 5}}', 'names["1"]: expected a string, got 5'),
    ('{"flags": {"yes": "a"}}', 'flags: expected keys "true" or "false", got key "yes"'),
    ('{"innerMap": {"k": 5}}', 'innerMap["k"]: expected an object, got 5'),
    ('{"innerMap": {"k": {"name": 5}}}', 'innerMap["k"].name: expected a string, got 5'),
    # well-known types
    ('{"startTime": "yesterday"}', f'startTime: {_TIMESTAMP}, got "yesterday"'),
    ('{"startTime": "2024-05-01T10:00:00"}', f'startTime: {_TIMESTAMP}, got "2024-05-01T10:00:00"'),
    ('{"startTime": 1714557600}', f"startTime: {_TIMESTAMP}, got 1714557600"),
    ('{"start_time": {}}', f"start_time: {_TIMESTAMP}, got an object"),
    ('{"times": ["2024-05-01T10:00:00Z", 5]}', f"times[1]: {_TIMESTAMP}, got 5"),
    ('{"ttl": "5m"}', f'ttl: {_DURATION}, got "5m"'),
    ('{"ttl": 5}', f"ttl: {_DURATION}, got 5"),
    ('{"ttl": "1e400s"}', f'ttl: {_DURATION}, got "1e400s"'),
    ('{"updateMask": 5}', f"updateMask: {_MASK}, got 5"),
    ('{"updateMask": "a__b"}', f'updateMask: {_MASK}, got "a__b"'),
    ('{"wI32": "x"}', f'wI32: {_INT}, got "x"'),
    ('{"wI32": true}', f"wI32: {_INT}, got true"),
    ('{"wI32": {"value": 1}}', f"wI32: {_INT}, got an object"),
    ('{"wU64": -1}', f"wU64: {_U64_RANGE}, got -1"),
    ('{"wStr": 5}', "wStr: expected a string, got 5"),
    ('{"wBool": "false"}', 'wBool: expected true or false, got "false"'),
    ('{"wBytes": "%%"}', f'wBytes: {_BASE64}, got "%%"'),
    ('{"wDouble": true}', f"wDouble: {_NUMBER}, got true"),
    ('{"meta": [1]}', "meta: expected an object, got an array"),
    ('{"meta": {"a": {"b": 1e400}}}', f'meta["a"]["b"]: {_DOUBLE_RANGE}, got 1e400'),
    ('{"anything": 1e400}', f"anything: {_DOUBLE_RANGE}, got 1e400"),
    (
        '{"anything": ["a\\udc00"]}',
        'anything[0]: expected a string of valid Unicode, got "a\\udc00" (a lone surrogate)',
    ),
    ('{"values": {"a": 1}}', "values: expected an array, got an object"),
    ('{"extra": 5}', f"extra: {_ANY}, got 5"),
    ('{"extra": {"name": "x"}}', f"extra: {_ANY}"),
    ('{"extra": {"@type": 5}}', f"extra: {_ANY}"),
    (
        '{"extra": {"@type": "type.googleapis.com/no.such.Type"}}',
        'extra["@type"]: unknown message type "type.googleapis.com/no.such.Type"',
    ),
    (
        '{"extra": {"@type": "type.googleapis.com/test.kinds.Inner", "deep": {"n": "x"}}}',
        f'extra.deep.n: {_INT}, got "x"',
    ),
    (
        '{"extra": {"@type": "type.googleapis.com/google.protobuf.Duration"}}',
        'extra: expected "value" with the Duration (a duration in seconds with an "s" suffix '
        '(like "1.5s"))',
    ),
    (
        '{"extra": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": 5}}',
        f"extra.value: {_DURATION}, got 5",
    ),
    (
        '{"extra": {"@type": "type.googleapis.com/google.protobuf.Int32Value", "value": true}}',
        f"extra.value: {_INT}, got true",
    ),
    ('{"nothing": 5}', "nothing: expected an object, got 5"),
    # a oneof, a field under both of its names
    (
        '{"email": "a@b.c", "phone": "1"}',
        "phone: cannot be given with email: only one can be set",
    ),
    (
        '{"startTime": "2024-05-01T10:00:00Z", "start_time": "2024-05-01T10:00:00Z"}',
        'start_time: given twice, as "startTime" and "start_time"',
    ),
    # the first problem is the one told, however deep
    (
        '{"inner": {"deep": {"n": 1}}, "inners": [{"deep": []}], "i32": "x"}',
        "inners[0].deep: expected an object, got an array",
    ),
]


@pytest.mark.parametrize(("body", "problem"), BODY_CASES)
def test_body_errors_name_the_field_and_say_what_was_expected(body: str, problem: str) -> None:
    for strict in (False, True):
        message = _body_error(_KINDS_BODY, AllKinds, body.encode(), strict=strict)
        assert message == f"request body is not valid: {problem}"


MIRROR_BODY_CASES = [
    # the brief's examples, on the mirror's fields
    ('{"int64Value": "lots"}', f'int64Value: {_INT}, got "lots"'),
    ('{"int32Value": true}', f"int32Value: {_INT}, got true"),
    ('{"doubleValue": true}', f"doubleValue: {_NUMBER}, got true"),
    ('{"name": 5}', "name: expected a string, got 5"),
    ('{"color": true}', f"color: {_COLOR}, got true"),
    ('{"book": {"authors": ["a", 1]}}', "book.authors[1]: expected a string, got 1"),
    ('{"book": {"pages": "many"}}', f'book.pages: {_INT}, got "many"'),
    (
        '{"nested": {"child": {"child": {"level": "x"}}}}',
        f'nested.child.child.level: {_INT}, got "x"',
    ),
    ('{"labels": {"a": null}}', 'labels["a"]: expected a string, got null'),
    ('{"time": "yesterday"}', f'time: {_TIMESTAMP}, got "yesterday"'),
    ('{"wrappedInt": "x"}', f'wrappedInt: {_INT}, got "x"'),
    (
        '{"int32_value": 1, "int32Value": 2}',
        'int32Value: given twice, as "int32_value" and "int32Value"',
    ),
]


@pytest.mark.parametrize(("body", "problem"), MIRROR_BODY_CASES)
def test_mirror_body_errors(body: str, problem: str) -> None:
    message = _body_error(_MIRROR_BODY, mirror_pb2.MirrorRequest, body.encode())
    assert message == f"request body is not valid: {problem}"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"pages": "many"}', f'pages: {_INT}, got "many"'),
        ('{"authors": [1]}', "authors[0]: expected a string, got 1"),
        ('{"title": 5}', "title: expected a string, got 5"),
        ("5", "expected an object, got 5"),
        ('"book"', 'expected an object, got "book"'),
    ],
)
def test_body_field_paths_start_inside_the_body(body: str, problem: str) -> None:
    """``body: "book"``: the caller sent the book, so paths are the book's own fields."""
    with pytest.raises(GatewayError) as caught:
        _MIRROR_BOOK.build_request(
            mirror_pb2.MirrorRequest, {"parent": "shelves/1"}, [], body.encode()
        )
    assert caught.value.message == f"request body is not valid: {problem}"
    assert_clean(caught.value.message)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[1]", "expected a JSON object, got an array"),
        (b'"x"', 'expected a JSON object, got "x"'),
        (b"5", "expected a JSON object, got 5"),
        (b"null", "expected a JSON object, got null"),
        (b'{"i32": 1, "i32": 2}', 'duplicate key "i32"'),
        (b'{"i32": NaN}', "NaN is not JSON"),
        (b'{"i32": ', "not JSON: expecting value at line 1, column 9"),
        # a Value holding arrays: each array is a ListValue in a Value, two levels
        (
            b'{"anything": ' + b"[" * 50 + b"]" * 50 + b"}",
            "nested too deeply (more than 100 levels)",
        ),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply (more than 100 levels)"),
    ],
)
def test_whole_body_errors(body: bytes, problem: str) -> None:
    assert _body_error(_KINDS_BODY, AllKinds, body) == f"request body is not valid: {problem}"


@pytest.mark.parametrize(
    ("body", "strict", "message"),
    [
        (
            '{"color": "FAX"}',
            True,
            'request body is not valid: color: unknown value "FAX" '
            "(expected one of COLOR_RED, COLOR_GREEN)",
        ),
        (
            '{"colors": ["COLOR_RED", "BLUE"]}',
            True,
            'request body is not valid: colors[1]: unknown value "BLUE" '
            "(expected one of COLOR_RED, COLOR_GREEN)",
        ),
        ('{"bogus": 1}', True, "request body: unknown field 'bogus'"),
        ('{"inner": {"deep": {"m": 1}}}', True, "request body: unknown field 'inner.deep.m'"),
        ('{"inners": [{}, {"nme": 1}]}', True, "request body: unknown field 'inners[1].nme'"),
        # a key that is not a name is quoted in the path
        ('{"inner": {"my name": 1}}', True, """request body: unknown field 'inner["my name"]'"""),
        (
            '{"extra": {"@type": "type.googleapis.com/test.kinds.Deep", "m": 1}}',
            True,
            "request body: unknown field 'extra.m'",
        ),
        (
            '{"size": 9}',
            False,
            "request body is not valid: size: unknown value 9 (expected one of SMALL, LARGE)",
        ),
        (
            '{"size": "3"}',
            False,
            "request body is not valid: size: unknown value 3 (expected one of SMALL, LARGE)",
        ),
    ],
)
def test_unknown_names_and_values(body: str, strict: bool, message: str) -> None:
    mapping, cls = (_ORDER_BODY, Order) if '"size"' in body else (_KINDS_BODY, AllKinds)
    assert _body_error(mapping, cls, body.encode(), strict=strict) == message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # What json_format takes and still must: integers as strings and integral numbers ...
        (
            '{"i32": "-7", "i64": "9223372036854775807", "u64": 1e3}',
            {"i32": -7, "i64": "9223372036854775807", "u64": "1000"},
        ),
        ('{"i32": 5.0, "sfx64": "1e2"}', {"i32": 5, "sfx64": "100"}),
        # ... floats as strings and the three words, enums by name or number (an open enum
        # keeps a number it does not define), null for the default, both field names
        ('{"fl": "1.5", "db": "-Infinity"}', {"fl": 1.5, "db": "-Infinity"}),
        (
            '{"color": 2, "colors": ["COLOR_RED", 1, "2", 7]}',
            {"color": "COLOR_GREEN", "colors": ["COLOR_RED", "COLOR_RED", "COLOR_GREEN", 7]},
        ),
        ('{"i32": null, "inner": null, "tags": null, "color": null}', {}),
        (
            '{"start_time": "2024-05-01T10:00:00Z", "updateMask": "a.bC"}',
            {"startTime": "2024-05-01T10:00:00Z", "updateMask": "a.bC"},
        ),
        # bytes in either alphabet, unpadded, wrapped over lines
        ('{"data": "-_8", "wBytes": "aGVs\\nbG8="}', {"data": "+/8=", "wBytes": "aGVsbG8="}),
        (
            '{"anything": null, "values": [1, "a", null, {"b": []}], "meta": {}}',
            {"anything": None, "values": [1, "a", None, {"b": []}], "meta": {}},
        ),
        (
            '{"extra": {"@type": "type.googleapis.com/test.kinds.Deep", "n": 3}}',
            {"extra": {"@type": "type.googleapis.com/test.kinds.Deep", "n": 3}},
        ),
        ('{"extra": {}}', {"extra": {}}),
        (
            '{"names": {"-3": "a"}, "flags": {"true": "t"}, "counts": {"": 1}}',
            {"names": {"-3": "a"}, "flags": {"true": "t"}, "counts": {"": 1}},
        ),
        ('{"email": "a@b.c", "phone": null}', {"email": "a@b.c"}),
        # unknown fields, unknown enum names and extension-like keys are dropped (not strict)
        (
            '{"bogus": {"x": true}, "[a.b]": 1, "color": "FAX", "colors": ["X", "COLOR_GREEN"]}',
            {"colors": ["COLOR_GREEN"]},
        ),
    ],
)
def test_what_json_format_accepts_still_passes(body: str, expected: dict[str, Any]) -> None:
    request = _KINDS_BODY.build_request(AllKinds, {}, [], body.encode())
    assert json_format.MessageToDict(request, descriptor_pool=_POOL) == expected


# -- query parameters ---------------------------------------------------------------------------

QUERY_CASES = [
    ("i32", "x", "expected an integer"),
    ("i32", "1.0", "expected an integer"),
    ("i32", "2147483648", "expected an integer from -2147483648 to 2147483647"),
    (
        "i64",
        "9223372036854775808",
        "expected an integer from -9223372036854775808 to 9223372036854775807",
    ),
    ("u32", "-1", "expected an integer from 0 to 4294967295"),
    ("u64", "true", "expected an integer"),
    ("s32", "1_0", "expected an integer"),
    ("s64", "", "expected an integer"),
    ("fx32", "4294967296", "expected an integer from 0 to 4294967295"),
    ("fx64", "x", "expected an integer"),
    ("sfx32", "1e3", "expected an integer"),
    (
        "sfx64",
        "-9223372036854775809",
        "expected an integer from -9223372036854775808 to 9223372036854775807",
    ),
    ("fl", "1e39", "expected a number from -3.4028235e+38 to 3.4028235e+38"),
    ("db", "abc", "expected a number (or NaN, Infinity or -Infinity)"),
    ("db", "1e999", "expected a number from -1.7976931e+308 to 1.7976931e+308"),
    ("flag", "yes", "expected true or false (or 1 or 0)"),
    ("data", "a!", "expected base64 (standard or URL-safe alphabet, padding optional)"),
    (
        "data",
        "a+_b",
        "expected base64 (standard or URL-safe alphabet, padding optional), "
        "not a mix of the two alphabets",
    ),
    ("color", "BLUE", "expected one of COLOR_RED, COLOR_GREEN (or its number)"),
    ("color", "9", "expected one of COLOR_RED, COLOR_GREEN (or its number)"),
    ("color", "true", "expected one of COLOR_RED, COLOR_GREEN (or its number)"),
    ("colors", "X", "expected one of COLOR_RED, COLOR_GREEN (or its number)"),
    ("nums", "x", "expected an integer"),
    ("inner", "x", "a message cannot take a single value: give each of its fields"),
    ("inner.deep.n", "x", "expected an integer"),
    ("inner.deep", "x", "a message cannot take a single value: give each of its fields"),
    ("counts", "x", "a map takes one parameter per entry, like counts[KEY]=VALUE"),
    ("counts[a]", "x", "expected an integer"),
    ("names[x]", "a", "key [x]: expected an integer"),
    ("flags[maybe]", "a", "key [maybe]: expected true or false (or 1 or 0)"),
    ("innerMap[k]", "x", "a map of messages cannot be set from the query"),
    ("i32[k]", "1", "only a map field takes [key]"),
    ("startTime", "yesterday", 'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'),
    ("times", "5", 'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'),
    ("ttl", "5", 'expected a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)'),
    (
        "update_mask",
        "a__b",
        'expected comma-separated field paths in proto names (like "title,author.birth_year")',
    ),
    (
        "update_mask",
        "A",
        'expected comma-separated field paths in proto names (like "title,author.birth_year")',
    ),
    ("wI32", "true", "expected an integer"),
    ("w_u64", "-1", "expected an integer from 0 to 18446744073709551615"),
    ("w_bool", "maybe", "expected true or false (or 1 or 0)"),
    ("w_bytes", "%%", "expected base64 (standard or URL-safe alphabet, padding optional)"),
    ("w_double", "x", "expected a number (or NaN, Infinity or -Infinity)"),
    ("meta", "x", 'expected a JSON object (like {"a":1})'),
    ("anything", "x", 'expected JSON (like 1, "text", true, null, [1,2] or {"a":1})'),
    ("values", "[1]", "a message cannot take a single value: give each of its fields"),
    ("extra", "x", "a message cannot take a single value: give each of its fields"),
    ("text", "a\ud800", "expected valid Unicode text"),
]


@pytest.mark.parametrize(("name", "value", "problem"), QUERY_CASES)
def test_query_errors_name_the_parameter_and_say_what_was_expected(
    name: str, value: str, problem: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        _KINDS_QUERY.build_request(AllKinds, {}, [(name, value)], None)
    error = caught.value
    assert error.http_status == 400
    assert error.message == f"query parameter {name!r}: invalid value {value!r}: {problem}"
    assert_clean(error.message.replace(repr(value), "''"))  # the value is the caller's own


# -- path values --------------------------------------------------------------------------------

PATH_CASES = [
    ("i32", "x", "expected an integer"),
    (
        "i64",
        "99999999999999999999",
        "expected an integer from -9223372036854775808 to 9223372036854775807",
    ),
    ("u32", "-1", "expected an integer from 0 to 4294967295"),
    ("u64", "1.5", "expected an integer"),
    ("s32", "true", "expected an integer"),
    ("s64", "x", "expected an integer"),
    ("fx32", "x", "expected an integer"),
    ("fx64", "-1", "expected an integer from 0 to 18446744073709551615"),
    ("sfx32", "x", "expected an integer"),
    ("sfx64", "x", "expected an integer"),
    ("fl", "1e39", "expected a number from -3.4028235e+38 to 3.4028235e+38"),
    ("db", "x", "expected a number (or NaN, Infinity or -Infinity)"),
    ("flag", "maybe", "expected true or false (or 1 or 0)"),
    ("data", "a!", "expected base64 (standard or URL-safe alphabet, padding optional)"),
    ("color", "BLUE", "expected one of COLOR_RED, COLOR_GREEN (or its number)"),
    ("tags", "a\ud800", "expected valid Unicode text"),
    ("inner.deep.n", "x", "expected an integer"),
    ("start_time", "yesterday", 'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'),
    ("ttl", "5", 'expected a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)'),
    (
        "update_mask",
        "A",
        'expected comma-separated field paths in proto names (like "title,author.birth_year")',
    ),
    ("w_i32", "x", "expected an integer"),
    ("w_bool", "x", "expected true or false (or 1 or 0)"),
    ("text", "a\udc00", "expected valid Unicode text"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), PATH_CASES)
def test_path_errors_name_the_variable_and_say_what_was_expected(
    variable: str, value: str, problem: str
) -> None:
    mapping = _mapping(_PUT, get=f"/v1/kinds/{{{variable}}}")
    with pytest.raises(GatewayError) as caught:
        mapping.build_request(AllKinds, {variable: value}, [], None)
    error = caught.value
    assert error.http_status == 400
    assert error.message == f"path variable {variable!r}: invalid value {value!r}: {problem}"
    assert_clean(error.message.replace(repr(value), "''"))


def test_nesting_is_limited_as_json_format_limits_it() -> None:
    """100 levels of messages are read; the 101st is refused in words, not a RecursionError."""
    mapping = _MIRROR_BODY

    def nested(levels: int) -> bytes:
        # MirrorRequest is the first level, each "nested"/"child" one more.
        return b'{"nested": ' + b'{"child": ' * (levels - 2) + b"{}" + b"}" * (levels - 1)

    mapping.build_request(mirror_pb2.MirrorRequest, {}, [], nested(100))
    message = _body_error(mapping, mirror_pb2.MirrorRequest, nested(101))
    assert message == "request body is not valid: nested too deeply (more than 100 levels)"


def test_mirror_path_and_query() -> None:
    item = _mapping(_MIRROR.methods_by_name["GetItem"], get="/v1/items/{int32_value}")
    with pytest.raises(GatewayError) as caught:
        item.build_request(mirror_pb2.MirrorRequest, {"int32_value": "seven"}, [], None)
    assert caught.value.message == (
        "path variable 'int32_value': invalid value 'seven': expected an integer"
    )
    books = _mapping(_MIRROR.methods_by_name["ListBooks"], get="/v1/shelves/{shelf}/books")
    with pytest.raises(GatewayError) as caught:
        books.build_request(
            mirror_pb2.MirrorRequest, {"shelf": "s"}, [("colors", "COLOR_BLUE")], None
        )
    assert caught.value.message == (
        "query parameter 'colors': invalid value 'COLOR_BLUE': "
        "expected one of COLOR_RED, COLOR_GREEN (or its number)"
    )


# -- whatever is sent, nothing leaks ------------------------------------------------------------


def _refusal(build: Callable[[], object]) -> GatewayError | None:
    try:
        build()
    except GatewayError as error:
        return error
    return None


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "NaN",
            "Infinity",
            "1e400",
            "-0",
            "1.0",
            "COLOR_RED",
            "a\ud800",
            "2024-05-01T10:00:00Z",
            "1.5s",
        ]
    )
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["n", "name", "deep", "@type", "value", "a"]) | st.text(max_size=4),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
_KEYS = [f.json_name for f in AllKinds.DESCRIPTOR.fields] + [
    f.name for f in AllKinds.DESCRIPTOR.fields
]


@given(document=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=4), strict=st.booleans())
# Found by hypothesis: a lone surrogate in an enum name crashed the enum lookup (upb encodes).
@example(document={"color": "a\ud800"}, strict=False)
@example(document={"color": "a\ud800"}, strict=True)
def test_any_body_is_taken_or_refused_in_json_terms(document: dict[str, Any], strict: bool) -> None:
    body = json.dumps(document).encode()
    options = JsonOptions(strict=strict)
    error = _refusal(lambda: _KINDS_BODY.build_request(AllKinds, {}, [], body, options=options))
    if error is not None:
        assert error.http_status == 400
        assert_clean(error.message)
        error.message.encode("utf-8")  # the answer is UTF-8: lone surrogates were escaped


@given(
    params=st.lists(
        st.tuples(
            st.sampled_from([f.name for f in AllKinds.DESCRIPTOR.fields]), st.text(max_size=10)
        ),
        max_size=3,
    )
)
def test_any_query_is_taken_or_refused_in_plain_terms(params: list[tuple[str, str]]) -> None:
    error = _refusal(lambda: _KINDS_QUERY.build_request(AllKinds, {}, params, None))
    if error is not None:
        assert error.http_status == 400
        shown = error.message.split(": ", 1)[1]  # after the parameter's name, which is ours
        problem = shown.split(": ", 1)[1] if shown.startswith("invalid value") else shown
        assert_clean(problem)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"i32": "lots"}', "i32: not a value this field accepts"),
        ('{"inner": {"deep": {"n": "x"}}}', "inner.deep.n: not a value this field accepts"),
        ('{"text": 5}', "text: not a value this field accepts"),
        ('{"counts": {"a": null}}', "counts: not a value this field accepts"),
        ('{"extra": 5}', "extra: not a value this field accepts"),
        ('{"db": 1e400}', "db: not a value this field accepts"),
    ],
)
def test_should_json_format_refuse_what_the_check_passed_it_is_still_said_plainly(
    monkeypatch: pytest.MonkeyPatch, body: str, message: str
) -> None:
    """Defence in depth: with the check switched off, json_format's refusals are mapped too."""
    monkeypatch.setattr(transcode._BodyCheck, "message", lambda *args: None)
    error = _body_error(_KINDS_BODY, AllKinds, body.encode())
    assert error == f"request body is not valid: {message}"
