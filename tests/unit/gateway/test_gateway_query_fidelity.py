"""Query parameters against grpc-gateway v2's own parser, field kind by field kind.

Each case names the grpc-gateway source it derives from: ``runtime/query.go`` (``Parse``,
``populateFieldValueFromPath``, ``parseField``, ``parseMessage``, ``valuesKeyRegexp``),
``runtime/query_test.go`` (``TestPopulateParameters``, ``TestPopulateParametersWithFilters``,
``TestPopulateQueryParametersWithInvalidNestedParameters``), ``runtime/convert.go`` (``Bytes``),
or the Go library function query.go hands the text to (``strconv.ParseFloat``,
``time.ParseDuration``, ``time.Parse(time.RFC3339Nano)``, ``url.ParseQuery``). A case marked
"difference" is one of the gateway's deliberate refusals where grpc-gateway keeps one value of two
or truncates (docs/gateway.md, "Differences from grpc-gateway").

The message is grpc-gateway's ``runtime/internal/examplepb/proto3.proto`` ``Proto3Message``,
field for field, with a few fields added for kinds it lacks (ListValue, Any, Empty, maps of
Timestamps and of messages), so a case reads as the Go test it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
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

from hms.testing.v1 import mirror_pb2
from hms_gateway.errors import GatewayError
from hms_gateway.query import apply_query, parse_query
from hms_gateway.transcode import RequestMapping

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "grpc.gateway.runtime.internal.examplepb"
_SELF = f".{_PACKAGE}.Proto3Message"
_WKT = ".google.protobuf."
_WKT_MODULES = (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)


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


def _proto3_message_class() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    for module in _WKT_MODULES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="examplepb/proto3.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[m.DESCRIPTOR.name for m in _WKT_MODULES],
    )
    file.enum_type.add(name="EnumValue").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=name, number=number)
        for number, name in enumerate("XYZ")
    )
    message = file.message_type.add(name="Proto3Message")

    def map_field(name: str, number: int, key: int, value: int, value_type: str = "") -> _F:
        entry_name = "".join(p.title() for p in name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.extend([_field("key", 1, key), _field("value", 2, value, value_type)])
        return _field(name, number, _F.TYPE_MESSAGE, f"{_SELF}.{entry_name}", repeated=True)

    message.oneof_decl.add(name="oneof_value")
    message.oneof_decl.add(name="nested_oneof_value")
    message.oneof_decl.add(name="_optional_value")  # proto3 optional: a synthetic oneof, last
    s, m = _F.TYPE_STRING, _F.TYPE_MESSAGE
    message.field.extend(
        [
            _field("nested", 41, m, _SELF),
            _field("float_value", 42, _F.TYPE_FLOAT),
            _field("double_value", 43, _F.TYPE_DOUBLE),
            _field("int64_value", 3, _F.TYPE_INT64),
            _field("int32_value", 4, _F.TYPE_INT32),
            _field("uint64_value", 5, _F.TYPE_UINT64),
            _field("uint32_value", 6, _F.TYPE_UINT32),
            _field("bool_value", 7, _F.TYPE_BOOL),
            _field("string_value", 8, s),
            _field("bytes_value", 9, _F.TYPE_BYTES),
            _field("repeated_value", 10, s, repeated=True),
            _field("repeated_message", 44, m, _WKT + "UInt64Value", repeated=True),
            _field("enum_value", 11, _F.TYPE_ENUM, f".{_PACKAGE}.EnumValue"),
            _field("repeated_enum", 12, _F.TYPE_ENUM, f".{_PACKAGE}.EnumValue", repeated=True),
            _field("timestamp_value", 13, m, _WKT + "Timestamp"),
            _field("duration_value", 14, m, _WKT + "Duration"),
            _field("fieldmask_value", 15, m, _WKT + "FieldMask"),
            _field("wrapper_double_value", 17, m, _WKT + "DoubleValue"),
            _field("wrapper_float_value", 18, m, _WKT + "FloatValue"),
            _field("wrapper_int64_value", 19, m, _WKT + "Int64Value"),
            _field("wrapper_int32_value", 20, m, _WKT + "Int32Value"),
            _field("wrapper_u_int64_value", 21, m, _WKT + "UInt64Value"),
            _field("wrapper_u_int32_value", 22, m, _WKT + "UInt32Value"),
            _field("wrapper_bool_value", 23, m, _WKT + "BoolValue"),
            _field("wrapper_string_value", 24, m, _WKT + "StringValue"),
            _field("wrapper_bytes_value", 25, m, _WKT + "BytesValue"),
            map_field("map_value", 26, s, s),
            map_field("map_value2", 27, s, _F.TYPE_INT32),
            map_field("map_value3", 28, _F.TYPE_INT32, s),
            map_field("map_value7", 32, _F.TYPE_UINT32, s),
            map_field("map_value10", 35, s, _F.TYPE_FLOAT),
            map_field("map_value14", 39, s, _F.TYPE_BOOL),
            map_field("map_value15", 40, _F.TYPE_BOOL, s),
            map_field("map_value16", 45, s, m, _WKT + "UInt64Value"),
            _field("struct_value_value", 47, m, _WKT + "Value"),
            _field("struct_value", 48, m, _WKT + "Struct"),
            # Not in examplepb: the kinds its parser refuses, and message-valued maps.
            _field("list_value", 60, m, _WKT + "ListValue"),
            _field("any_value", 61, m, _WKT + "Any"),
            _field("empty_value", 62, m, _WKT + "Empty"),
            map_field("map_times", 63, s, m, _WKT + "Timestamp"),
            map_field("map_messages", 64, s, m, _SELF),
            map_field("map_enums", 65, s, _F.TYPE_ENUM, f".{_PACKAGE}.EnumValue"),
        ]
    )
    for name, number, kind, type_name, oneof in (
        ("oneof_bool_value", 1, _F.TYPE_BOOL, "", 0),
        ("oneof_string_value", 2, s, "", 0),
        ("nested_oneof_int32_value", 50, _F.TYPE_INT32, "", 1),
        ("nested_oneof_value_one", 46, m, _SELF, 1),
        ("optional_value", 49, s, "", 2),
    ):
        member = _field(name, number, kind, type_name)
        member.oneof_index = oneof
        member.proto3_optional = oneof == 2
        message.field.append(member)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Proto3Message"))


Proto3Message = _proto3_message_class()

_QUERY_GO = "runtime/query.go"
_QUERY_TEST = "runtime/query_test.go"


@dataclass(frozen=True)
class Takes:
    """The parameters fill the message so (as protobuf JSON with proto field names)."""

    params: list[tuple[str, str]]
    expected: dict[str, Any]
    source: str
    bound: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Refuses:
    """The parameters are a 400 naming ``parameter`` and its value, saying ``problem``."""

    params: list[tuple[str, str]]
    parameter: str
    problem: str
    source: str
    bound: frozenset[str] = frozenset()


def _apply(params: list[tuple[str, str]], bound: frozenset[str]) -> Message:
    message = Proto3Message()
    apply_query(message, params, bound=set(bound), strict=False)
    return message


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# -- what grpc-gateway takes, the gateway takes the same way -------------------------------------

_T0 = "TestPopulateParameters (case 0)"
TAKES = [
    pytest.param(
        Takes(
            [
                ("float_value", "1.5"),
                ("double_value", "2.5"),
                ("int64_value", "-1"),
                ("int32_value", "-2"),
                ("uint64_value", "3"),
                ("uint32_value", "4"),
                ("bool_value", "true"),
                ("string_value", "str"),
                ("bytes_value", "YWJjMTIzIT8kKiYoKSctPUB-"),
            ],
            {
                "float_value": 1.5,
                "double_value": 2.5,
                "int64_value": "-1",
                "int32_value": -2,
                "uint64_value": "3",
                "uint32_value": 4,
                "bool_value": True,
                "string_value": "str",
                "bytes_value": "YWJjMTIzIT8kKiYoKSctPUB+",
            },
            f"{_QUERY_TEST} {_T0}",
        ),
        id="scalars-proto-names",
    ),
    pytest.param(
        Takes(
            [("floatValue", "1.5"), ("uint64Value", "3"), ("bytesValue", "Ynl0ZXM=")],
            {"float_value": 1.5, "uint64_value": "3", "bytes_value": "Ynl0ZXM="},
            f"{_QUERY_TEST} TestPopulateParameters (case 1, JSON names)",
        ),
        id="scalars-json-names",
    ),
    pytest.param(
        Takes(
            [
                ("repeated_value", "a"),
                ("repeated_value", "b"),
                ("repeated_value", "c"),
                ("repeated_message", "1"),
                ("repeated_message", "2"),
                ("repeated_enum", "1"),
                ("repeated_enum", "2"),
                ("repeated_enum", "0"),
            ],
            {
                "repeated_value": ["a", "b", "c"],
                "repeated_message": ["1", "2"],
                "repeated_enum": ["Y", "Z", "X"],
            },
            f"{_QUERY_TEST} {_T0}: repeated by repetition, repeated UInt64Value",
        ),
        id="repeated-scalars-messages-enums",
    ),
    pytest.param(
        Takes(
            [("enum_value", "Z"), ("repeated_enum", "X"), ("repeated_enum", "2")],
            {"enum_value": "Z", "repeated_enum": ["X", "Z"]},
            f"{_QUERY_TEST} TestPopulateParameters (case 2): enums by name or number",
        ),
        id="enums-by-name",
    ),
    pytest.param(
        Takes(
            [("enum_value", "+1")],
            {"enum_value": "Y"},
            f"{_QUERY_GO} parseField EnumKind: strconv.Atoi takes a sign",
        ),
        id="enum-number-with-sign",
    ),
    pytest.param(
        Takes(
            [("optional_value", "")],
            {"optional_value": ""},
            f"{_QUERY_TEST} {_T0}: proto3 optional (a synthetic oneof) is set, even empty",
        ),
        id="proto3-optional-empty-is-set",
    ),
    pytest.param(
        Takes(
            [
                ("timestamp_value", "2016-12-15T12:23:32.000000049Z"),
                ("duration_value", "13h0m0s"),
                ("fieldmask_value", "float_value,double_value"),
            ],
            {
                "timestamp_value": "2016-12-15T12:23:32.000000049Z",
                "duration_value": "46800s",
                "fieldmask_value": "floatValue,doubleValue",
            },
            f"{_QUERY_TEST} {_T0}: time.RFC3339Nano, Duration.String(), comma-separated mask",
        ),
        id="timestamp-duration-fieldmask",
    ),
    pytest.param(
        Takes(
            [
                ("wrapper_float_value", "1.5"),
                ("wrapper_double_value", "2.5"),
                ("wrapper_int64_value", "-1"),
                ("wrapper_int32_value", "-2"),
                ("wrapper_u_int64_value", "3"),
                ("wrapper_u_int32_value", "4"),
                ("wrapper_bool_value", "true"),
                ("wrapper_string_value", "str"),
                ("wrapper_bytes_value", "YWJjMTIzIT8kKiYoKSctPUB-"),
            ],
            {
                "wrapper_float_value": 1.5,
                "wrapper_double_value": 2.5,
                "wrapper_int64_value": "-1",
                "wrapper_int32_value": -2,
                "wrapper_u_int64_value": "3",
                "wrapper_u_int32_value": 4,
                "wrapper_bool_value": True,
                "wrapper_string_value": "str",
                "wrapper_bytes_value": "YWJjMTIzIT8kKiYoKSctPUB+",
            },
            f"{_QUERY_TEST} {_T0}: wrappers",
        ),
        id="wrappers",
    ),
    pytest.param(
        Takes(
            [
                ("map_value[key]", "value"),
                ("map_value[fourth]", ""),
                ("map_value[~!@#$%^&*()]", "value"),
                ("map_value2[key]", "-2"),
                ("map_value3[-2]", "value"),
                ("map_value7[3]", "value"),
                ("map_value10[key]", "1.5"),
                ("map_value14[key]", "true"),
                ("map_value15[true]", "value"),
                ("map_value16[key]", "2"),
                ("map_value11[1.5]", "value"),  # no such field: ignored
            ],
            {
                "map_value": {"key": "value", "fourth": "", "~!@#$%^&*()": "value"},
                "map_value2": {"key": -2},
                "map_value3": {"-2": "value"},
                "map_value7": {"3": "value"},
                "map_value10": {"key": 1.5},
                "map_value14": {"key": True},
                "map_value15": {"true": "value"},
                "map_value16": {"key": "2"},
            },
            f"{_QUERY_TEST} {_T0}: maps of every key and value kind",
        ),
        id="maps",
    ),
    pytest.param(
        Takes(
            [
                ("map_times[due]", "2024-05-01T10:00:00Z"),
                ("map_enums[a]", "Z"),
                ("map_value[a]b]", "x"),
            ],
            {
                "map_times": {"due": "2024-05-01T10:00:00Z"},
                "map_enums": {"a": "Z"},
                "map_value": {"a]b": "x"},
            },
            f"{_QUERY_GO} populateMapField (parseField on MapValue) and valuesKeyRegexp "
            "^(.*)\\[(.*)\\]$",
        ),
        id="map-message-and-enum-values-and-greedy-key",
    ),
    pytest.param(
        Takes(
            [("struct_value_value", '{"a":{"b":1}}'), ("struct_value", '{"a":{"b":1}}')],
            {"struct_value_value": {"a": {"b": 1}}, "struct_value": {"a": {"b": 1}}},
            f"{_QUERY_TEST} {_T0}: Value and Struct as JSON (protojson.Unmarshal)",
        ),
        id="struct-and-value-json",
    ),
    *(
        pytest.param(
            Takes(
                [("struct_value_value", text)],
                {"struct_value_value": value},
                f"{_QUERY_TEST} TestPopulateParameters (cases 1-5): Value {text}",
            ),
            id=f"value-{name}",
        )
        for name, text, value in (
            ("string", '""', ""),
            ("object", "{}", {}),
            ("list", "[]", []),
            ("bool", "true", True),
            ("number", "0", 0),
            ("null", "null", None),
        )
    ),
    pytest.param(
        Takes(
            [("struct_value", '{"c":[1,2],"d":[{"e":1,"f":{}}]}')],
            {"struct_value": {"c": [1, 2], "d": [{"e": 1, "f": {}}]}},
            f"{_QUERY_TEST} TestPopulateParameters (case 2): Struct",
        ),
        id="struct-nested",
    ),
    pytest.param(
        Takes(
            [
                ("nested.nested.nested.repeated_value", "a"),
                ("nested.nested.nested.repeated_value", "b"),
                ("nested.nested.nested.string_value", "s"),
                ("nested.nested.string_value", "t"),
                ("nested.string_value", "u"),
                ("nested.nested.map_value[first]", "foo"),
            ],
            {
                "nested": {
                    "nested": {
                        "nested": {"repeated_value": ["a", "b"], "string_value": "s"},
                        "string_value": "t",
                        "map_value": {"first": "foo"},
                    },
                    "string_value": "u",
                }
            },
            f"{_QUERY_TEST} TestPopulateParameters (nested case)",
        ),
        id="nested-paths",
    ),
    pytest.param(
        Takes(
            [("oneofStringValue", "foobar")],
            {"oneof_string_value": "foobar"},
            f"{_QUERY_TEST} TestPopulateParameters (oneof cases)",
        ),
        id="oneof-member",
    ),
    pytest.param(
        Takes(
            [
                ("nested_oneof_value_one.int64Value", "-1"),
                ("nested_oneof_value_one.string_value", "foo"),
            ],
            {"nested_oneof_value_one": {"int64_value": "-1", "string_value": "foo"}},
            f"{_QUERY_TEST} TestPopulateParameters: one message member of a oneof, entered twice",
        ),
        id="oneof-message-member-entered-twice",
    ),
    pytest.param(
        Takes(
            [
                ("nested.nested.bool_value", "true"),
                ("nested.nested.string_value", "str"),
                ("nested.string_value", "str"),
                ("string_value", "str"),
            ],
            {
                "nested": {"string_value": "str", "nested": {"bool_value": True}},
                "string_value": "str",
            },
            f"{_QUERY_TEST} TestPopulateParametersWithFilters (last case)",
            bound=frozenset({"nested.nested.string_value"}),
        ),
        id="bound-field-ignored",
    ),
    pytest.param(
        Takes(
            [("nested.string_value", "x"), ("string_value", "str")],
            {"string_value": "str"},
            f"{_QUERY_TEST} TestPopulateParametersWithFilters (filter nested)",
            bound=frozenset({"nested"}),
        ),
        id="inside-bound-field-ignored",
    ),
    pytest.param(
        Takes(
            [("string_value.nested", "x"), ("string_value", "str")],
            {},
            f"{_QUERY_GO} Parse: the filter (HasCommonPrefix) comes before the path is walked",
            bound=frozenset({"string_value"}),
        ),
        id="bound-scalar-walked-into-ignored",
    ),
    pytest.param(
        Takes(
            [("unknown", "1"), ("nested.unknown", "2"), ("unknown.deeper", "3")],
            {},
            f"{_QUERY_GO} populateFieldValueFromPath: 'field not found' is not an error",
        ),
        id="unknown-ignored",
    ),
    # Go's strconv and time forms, which query.go's parseField hands the text to.
    *(
        pytest.param(
            Takes(
                [("duration_value", text)],
                {"duration_value": rendered},
                f"{_QUERY_GO} parseMessage Duration: time.ParseDuration({text!r})",
            ),
            id=f"duration-{text}",
        )
        for text, rendered in (
            ("1.5s", "1.500s"),
            ("1h30m", "5400s"),
            ("1.5h", "5400s"),
            ("300ms", "0.300s"),
            ("-1.5s", "-1.500s"),
            ("+5s", "5s"),
            ("0", "0s"),
            ("-0", "0s"),
            (".5s", "0.500s"),
            ("1.s", "1s"),
            ("1us", "0.000001s"),
            ("1\u00b5s", "0.000001s"),
            ("1\u03bcs", "0.000001s"),
            ("2ns", "0.000000002s"),
            ("1h1m1s1ms1us1ns", "3661.001001001s"),
            ("1.0000000000s", "1s"),
        )
    ),
    *(
        pytest.param(
            Takes(
                [("double_value", text)],
                {"double_value": rendered},
                f"{_QUERY_GO} parseField DoubleKind: strconv.ParseFloat({text!r}, 64)",
            ),
            id=f"double-{text}",
        )
        for text, rendered in (
            ("inf", "Infinity"),
            ("+Inf", "Infinity"),
            ("-infinity", "-Infinity"),
            ("NaN", "NaN"),
            ("nan", "NaN"),
            ("0x1.8p1", 3.0),
            ("-0X.8P-1", -0.25),
            (".5", 0.5),
            ("5.", 5.0),
            ("-1e-400", -0.0),
        )
    ),
    pytest.param(
        Takes(
            [("float_value", "3.4028235e38")],
            {"float_value": 3.4028235e38},
            f"{_QUERY_GO} parseField FloatKind: strconv.ParseFloat(s, 32) rounds to float32's max",
        ),
        id="float32-max-as-printed",
    ),
    *(
        pytest.param(
            Takes(
                [("bool_value", text)],
                {"bool_value": True} if value else {},
                f"{_QUERY_GO} parseField BoolKind: strconv.ParseBool({text!r})",
            ),
            id=f"bool-{text}",
        )
        for text, value in (("t", True), ("TRUE", True), ("1", True), ("F", False), ("0", False))
    ),
    *(
        pytest.param(
            Takes(
                [("timestamp_value", text)],
                {"timestamp_value": rendered},
                f"{_QUERY_GO} parseMessage Timestamp: time.Parse(time.RFC3339Nano, {text!r})",
            ),
            id=f"timestamp-{text}",
        )
        for text, rendered in (
            ("2024-05-01T10:00:00+05:30", "2024-05-01T04:30:00Z"),
            ("2024-05-01T10:00:00,5Z", "2024-05-01T10:00:00.500Z"),
            ("2024-05-01T1:02:03Z", "2024-05-01T01:02:03Z"),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999999Z"),
            ("2024-05-01T10:00:00.1234567890Z", "2024-05-01T10:00:00.123456789Z"),
        )
    ),
    *(
        pytest.param(
            Takes(
                [("bytes_value", text)],
                {"bytes_value": "Ynl0ZXM="},
                f"runtime/convert.go Bytes: StdEncoding, then URLEncoding ({text!r})",
            ),
            id=f"bytes-{name}",
        )
        for name, text in (
            ("std-padded", "Ynl0ZXM="),
            ("line-break-skipped", "Ynl0\r\nZXM="),
            ("unpadded", "Ynl0ZXM"),  # a difference: Go's padded decoders refuse it
        )
    ),
    pytest.param(
        Takes(
            [("int32_value", "+7"), ("int64_value", "-0"), ("uint32_value", "007")],
            {"int32_value": 7, "uint32_value": 7},
            f"{_QUERY_GO} parseField: strconv.ParseInt and ParseUint, base 10",
        ),
        id="integers-sign-and-zeros",
    ),
    pytest.param(
        Takes(
            [("fieldmask_value", "")],
            {"fieldmask_value": ""},
            f"{_QUERY_GO} parseMessage FieldMask (a difference: an empty mask, not one empty path)",
        ),
        id="fieldmask-empty-is-set",
    ),
]


@pytest.mark.parametrize("case", TAKES)
def test_takes_what_grpc_gateway_takes(case: Takes) -> None:
    assert case.source
    assert _as_dict(_apply(case.params, case.bound)) == case.expected


# -- what grpc-gateway refuses is a 400; so is what it would keep at random or truncate ----------

_DURATION_FORMS = 'expected a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)'
_TIMESTAMP_FORM = 'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'
_NUMBER = "expected a number (or NaN, Infinity or -Infinity)"
_WHOLE_OR_FIELDS = "give a message whole or by its fields, not both"
_JSON_VALUE = 'JSON (like 1, "text", true, null, [1,2] or {"a":1})'
_JSON_OBJECT = 'a JSON object (like {"a":1})'
_UNSUPPORTED = "a message cannot take a single value: give each of its fields"


def _not_a_message(field: str, kind: str) -> str:
    return f"{field!r} is a field of type {kind}, not a message: nothing can follow it after a dot"


REFUSES = [
    pytest.param(
        Refuses(
            [("oneof_bool_value", "true"), ("oneof_string_value", "foobar")],
            "oneof_string_value",
            "oneof 'oneof_value' already has 'oneof_bool_value': give only one of its fields",
            f"{_QUERY_TEST} TestPopulateParameters: field already set for oneof",
        ),
        id="oneof-two-scalar-members",
    ),
    pytest.param(
        Refuses(
            [("nested_oneof_int32_value", "10"), ("nested_oneof_value_one.int32Value", "-1")],
            "nested_oneof_value_one.int32Value",
            "oneof 'nested_oneof_value' already has 'nested_oneof_int32_value': "
            "give only one of its fields",
            f"{_QUERY_TEST} TestPopulateParameters: field already set for oneof (scalar first)",
        ),
        id="oneof-scalar-then-message-member",
    ),
    pytest.param(
        Refuses(
            [("nested_oneof_value_one.int32Value", "-1"), ("nested_oneof_int32_value", "10")],
            "nested_oneof_int32_value",
            "oneof 'nested_oneof_value' already has 'nested_oneof_value_one': "
            "give only one of its fields",
            f"{_QUERY_TEST} TestPopulateParameters: field already set for oneof (message first)",
        ),
        id="oneof-message-then-scalar-member",
    ),
    pytest.param(
        Refuses(
            [("oneof_bool_value", "true")],
            "oneof_bool_value",
            "oneof 'oneof_value' has 'oneof_string_value' from the path or the body: "
            "give only one of its fields",
            f"{_QUERY_GO} populateFieldValueFromPath: the path is set first, then the query "
            "meets the oneof already set (here the path is applied after, so it is checked)",
            bound=frozenset({"oneof_string_value"}),
        ),
        id="oneof-other-member-bound-by-path",
    ),
    pytest.param(
        Refuses(
            [("nested_oneof_int32_value", "1")],
            "nested_oneof_int32_value",
            "oneof 'nested_oneof_value' has 'nested_oneof_value_one' from the path or the body: "
            "give only one of its fields",
            f"{_QUERY_GO} populateFieldValueFromPath: oneof check against a bound nested path",
            bound=frozenset({"nested_oneof_value_one.string_value"}),
        ),
        id="oneof-other-member-bound-inside",
    ),
    pytest.param(
        Refuses(
            [("uint64_value", "1"), ("uint64_value", "2")],
            "uint64_value",
            "given more than once",
            f"{_QUERY_TEST} TestPopulateParameters: too many values for field",
        ),
        id="singular-twice",
    ),
    pytest.param(
        Refuses(
            [("uint64_value", "1"), ("uint64Value", "2")],
            "uint64Value",
            "given more than once",
            f"{_QUERY_GO} Parse: two keys for one field, one kept at random (a difference)",
        ),
        id="singular-under-both-names",
    ),
    pytest.param(
        Refuses(
            [("repeated_message.value", "1")],
            "repeated_message.value",
            "'repeated_message' is a repeated field, not a message: "
            "nothing can follow it after a dot",
            f'{_QUERY_TEST} TestPopulateParameters: invalid path: "repeated_message" is not a '
            "message",
        ),
        id="path-through-repeated-message",
    ),
    *(
        pytest.param(
            Refuses(
                [(f"{field}.nested", "test")],
                f"{field}.nested",
                _not_a_message(field, kind)
                if kind
                else f"{field!r} is a repeated field, not a message: "
                "nothing can follow it after a dot",
                f"{_QUERY_TEST} TestPopulateQueryParametersWithInvalidNestedParameters",
            ),
            id=f"path-through-{field}",
        )
        for field, kind in (
            ("float_value", "float"),
            ("double_value", "double"),
            ("int64_value", "int64"),
            ("int32_value", "int32"),
            ("uint64_value", "uint64"),
            ("uint32_value", "uint32"),
            ("bool_value", "bool"),
            ("string_value", "string"),
            ("repeated_value", ""),
            ("enum_value", "enum"),
            ("repeated_enum", ""),
        )
    ),
    pytest.param(
        Refuses(
            [("map_value.key", "x")],
            "map_value.key",
            "'map_value' is a map, not a message: set an entry as map_value[KEY]=VALUE",
            f'{_QUERY_GO} populateFieldValueFromPath: invalid path: "map_value" is not a message',
        ),
        id="path-through-map",
    ),
    pytest.param(
        Refuses(
            [("timestampValue", "null")],
            "timestampValue",
            _TIMESTAMP_FORM,
            f'{_QUERY_TEST} TestPopulateParameters: Error on "null" (timestamp)',
        ),
        id="timestamp-null",
    ),
    pytest.param(
        Refuses(
            [("durationValue", "null")],
            "durationValue",
            _DURATION_FORMS,
            f'{_QUERY_TEST} TestPopulateParameters: Error on "null" (duration)',
        ),
        id="duration-null",
    ),
    pytest.param(
        Refuses(
            [("timestampValue", "0000-01-01T00:00:00.00Z")],
            "timestampValue",
            f"{_TIMESTAMP_FORM} from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
            f"{_QUERY_TEST} TestPopulateParameters: before 0001-01-01",
        ),
        id="timestamp-year-zero",
    ),
    *(
        pytest.param(
            Refuses(
                [("timestamp_value", text)],
                "timestamp_value",
                problem,
                f"{_QUERY_GO} parseMessage Timestamp: time.Parse(time.RFC3339Nano, {text!r})",
            ),
            id=f"timestamp-{text}",
        )
        for text, problem in (
            ("2024-5-1T10:00:00Z", _TIMESTAMP_FORM),
            ("2024-05-01t10:00:00Z", _TIMESTAMP_FORM),
            ("2024-05-01T10:00:00z", _TIMESTAMP_FORM),
            ("2024-05-01 10:00:00Z", _TIMESTAMP_FORM),
            ("2024-05-01T10:00:00", _TIMESTAMP_FORM),
            ("2024-05-01T10:00:00+0100", _TIMESTAMP_FORM),
            ("2023-02-29T00:00:00Z", _TIMESTAMP_FORM),
            ("2024-05-01T24:00:00Z", _TIMESTAMP_FORM),
            ("2024-05-01T10:00:60Z", _TIMESTAMP_FORM),
            # A difference: Go drops the digits after the ninth.
            ("2024-05-01T10:00:00.1234567891Z", f"{_TIMESTAMP_FORM}, in whole nanoseconds"),
        )
    ),
    *(
        pytest.param(
            Refuses(
                [("duration_value", text)],
                "duration_value",
                problem,
                f"{_QUERY_GO} parseMessage Duration: time.ParseDuration({text!r})",
            ),
            id=f"duration-{text or 'empty'}",
        )
        for text, problem in (
            ("", _DURATION_FORMS),
            ("1", _DURATION_FORMS),
            ("00", _DURATION_FORMS),
            ("1 s", _DURATION_FORMS),
            ("1d", _DURATION_FORMS),
            (".s", _DURATION_FORMS),
            ("-", _DURATION_FORMS),
            ("1h-30m", _DURATION_FORMS),
            ("1e3s", _DURATION_FORMS),
            # Differences: Go truncates below a nanosecond; the range is Duration's, not Go's.
            ("1.5ns", f"{_DURATION_FORMS}, in whole nanoseconds"),
            ("315576000001s", f"{_DURATION_FORMS}, at most 315576000000s either way"),
        )
    ),
    *(
        pytest.param(
            Refuses(
                [(field, text)],
                field,
                problem,
                f"{_QUERY_GO} parseField: strconv.ParseInt / ParseUint({text!r}, 10, ...)",
            ),
            id=f"integer-{field}-{text[:12]}",
        )
        for field, text, problem in (
            ("uint32_value", "+1", "expected an integer from 0 to 4294967295, without a sign"),
            ("uint64_value", "-1", "expected an integer from 0 to 18446744073709551615"),
            ("int32_value", "2147483648", "expected an integer from -2147483648 to 2147483647"),
            ("int64_value", "1_000", "expected an integer"),
            ("int64_value", "0x10", "expected an integer"),
            (
                "int64_value",
                "9" * 5000,
                "expected an integer from -9223372036854775808 to 9223372036854775807",
            ),
        )
    ),
    *(
        pytest.param(
            Refuses(
                [(field, text)],
                field,
                problem,
                f"{_QUERY_GO} parseField: strconv.ParseFloat({text!r})",
            ),
            id=f"float-{field}-{text}",
        )
        for field, text, problem in (
            ("float_value", "3.5e38", "expected a number from -3.4028235e+38 to 3.4028235e+38"),
            ("double_value", "1e309", "expected a number from -1.7976931e+308 to 1.7976931e+308"),
            ("double_value", "+NaN", _NUMBER),
            ("double_value", "0x10", _NUMBER),
            ("double_value", "1_0", _NUMBER),
            ("double_value", "infinit", _NUMBER),
        )
    ),
    pytest.param(
        Refuses(
            [("enum_value", "4294967297")],
            "enum_value",
            "expected one of X, Y, Z (or its number)",
            f"{_QUERY_GO} parseField EnumKind: EnumNumber(i) wraps 2**32+1 to 1 (a difference)",
        ),
        id="enum-number-beyond-int32",
    ),
    pytest.param(
        Refuses(
            [("bool_value", "yes")],
            "bool_value",
            "expected true or false (or 1 or 0)",
            f"{_QUERY_GO} parseField BoolKind: strconv.ParseBool",
        ),
        id="bool-yes",
    ),
    pytest.param(
        Refuses(
            [("bytes_value", "Ynl0ZXM=!")],
            "bytes_value",
            "expected base64 (standard or URL-safe alphabet, padding optional)",
            "runtime/convert.go Bytes",
        ),
        id="bytes-stray-character",
    ),
    *(
        pytest.param(
            Refuses(
                [(field, text)],
                field,
                problem,
                f"{_QUERY_GO} parseMessage Value/Struct: protojson.Unmarshal({text!r})",
            ),
            id=f"json-{field}-{text[:12]}",
        )
        for field, text, problem in (
            ("struct_value_value", "abc", f"expected {_JSON_VALUE}"),
            ("struct_value_value", "NaN", f"expected {_JSON_VALUE} (NaN is not JSON)"),
            (
                "struct_value_value",
                "1e400",
                f"expected {_JSON_VALUE}, with numbers a double can hold",
            ),
            ("struct_value_value", "1 2", f"expected {_JSON_VALUE}"),
            ("struct_value", "[]", f"expected {_JSON_OBJECT}"),
            (
                "struct_value",
                '{"a":1,"a":2}',
                f"expected {_JSON_OBJECT}, each key once ('a' is repeated)",
            ),
            ("struct_value", '{"a":"\\ud800"}', f"expected {_JSON_OBJECT}, in valid Unicode"),
            ("struct_value", "[" * 101 + "]" * 101, f"expected {_JSON_OBJECT}"),
            (
                "struct_value_value",
                "[" * 60 + "]" * 60,
                f"expected {_JSON_VALUE}, nested at most 100 deep",
            ),
            (
                "struct_value_value",
                "[" * 5000 + "]" * 5000,
                f"expected {_JSON_VALUE}, nested at most 100 deep",
            ),
        )
    ),
    *(
        pytest.param(
            Refuses(
                [(field, "[1]")],
                field,
                _UNSUPPORTED,
                f"{_QUERY_GO} parseMessage: unsupported message type",
            ),
            id=f"unsupported-{field}",
        )
        for field in ("list_value", "any_value", "empty_value", "nested")
    ),
    pytest.param(
        Refuses(
            [("map_value", "x")],
            "map_value",
            "a map takes one parameter per entry, like map_value[KEY]=VALUE",
            f"{_QUERY_GO} populateMapField: a map needs a key and a value",
        ),
        id="map-without-key",
    ),
    pytest.param(
        Refuses(
            [("map_value[k]", "1"), ("map_value[k]", "2")],
            "map_value[k]",
            "given more than once",
            f"{_QUERY_GO} populateMapField: more than one value provided for key",
        ),
        id="map-key-twice",
    ),
    pytest.param(
        Refuses(
            [("map_value3[1]", "a"), ("map_value3[01]", "b")],
            "map_value3[01]",
            "given more than once",
            f"{_QUERY_GO} Parse: two keys for one entry, one kept at random (a difference)",
        ),
        id="map-key-twice-spelt-differently",
    ),
    pytest.param(
        Refuses(
            [("map_value3[x]", "a")],
            "map_value3[x]",
            "key [x]: expected an integer",
            f"{_QUERY_GO} populateMapField: parsing map key",
        ),
        id="map-key-bad",
    ),
    pytest.param(
        Refuses(
            [("map_messages[k]", "x")],
            "map_messages[k]",
            "a map of messages cannot be set from the query",
            f"{_QUERY_GO} parseMessage: unsupported message type (a map value)",
        ),
        id="map-of-plain-messages",
    ),
    pytest.param(
        Refuses(
            [("repeated_value[x]", "v")],
            "repeated_value[x]",
            "only a map field takes [key]",
            f"{_QUERY_GO} Parse: the key joins the values, so Go appends 'x' and 'v' "
            "(a difference)",
        ),
        id="key-on-repeated-field",
    ),
    pytest.param(
        Refuses(
            [("timestamp_value", "2024-05-01T10:00:00Z"), ("timestamp_value.seconds", "5")],
            "timestamp_value.seconds",
            f"'timestamp_value' already gives that message whole: {_WHOLE_OR_FIELDS}",
            f"{_QUERY_GO} Parse: map order decides which one wins (a difference)",
        ),
        id="whole-then-field",
    ),
    pytest.param(
        Refuses(
            [("timestamp_value.nanos", "5"), ("timestampValue", "2024-05-01T10:00:00Z")],
            "timestampValue",
            f"'timestamp_value.nanos' already sets one of its fields: {_WHOLE_OR_FIELDS}",
            f"{_QUERY_GO} Parse: map order decides which one wins (a difference)",
        ),
        id="field-then-whole",
    ),
    pytest.param(
        Refuses(
            [("fieldmask_value", "a,,b")],
            "fieldmask_value",
            "expected comma-separated field paths in proto names "
            '(like "title,author.birth_year"), none empty',
            f"{_QUERY_GO} parseMessage FieldMask: strings.Split keeps an empty path (a difference)",
        ),
        id="fieldmask-empty-path",
    ),
]


@pytest.mark.parametrize("case", REFUSES)
def test_refuses_in_the_callers_terms(case: Refuses) -> None:
    assert case.source
    with pytest.raises(GatewayError) as caught:
        _apply(case.params, case.bound)
    error = caught.value
    assert error.http_status == 400
    value = [v for name, v in case.params if name == case.parameter][-1]
    shown = repr(value) if len(value) <= 60 else repr(value[:60])[:-1]  # a long one is cut
    assert error.message.startswith(f"query parameter {case.parameter!r}: invalid value {shown}")
    assert error.message.endswith(f": {case.problem}")


def test_unknown_nested_parameter_is_refused_when_strict() -> None:
    with pytest.raises(GatewayError) as caught:
        apply_query(Proto3Message(), [("nested.unknown", "1")], bound=set(), strict=True)
    assert caught.value.message == "query: unknown field 'nested.unknown'"


def test_failed_map_value_leaves_no_entry() -> None:
    message = Proto3Message()
    with pytest.raises(GatewayError):
        apply_query(message, [("map_times[due]", "soon")], bound=set(), strict=False)
    assert _as_dict(message) == {}


# -- through transcode: the path is applied after the query, and still wins nothing by stealth --

_LIST_BOOKS = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"].methods_by_name["ListBooks"]


def _mapping(**rule: str) -> RequestMapping:
    (mapping,) = RequestMapping.from_rule(http_pb2.HttpRule(**rule), _LIST_BOOKS)
    return mapping


def test_oneof_member_in_path_and_another_in_query_is_refused() -> None:
    # runtime/query.go populateFieldValueFromPath: "field already set for oneof" (the generated
    # handler sets path parameters before PopulateQueryParameters).
    mapping = _mapping(get="/v1/choices/{choice_text}")
    with pytest.raises(GatewayError) as caught:
        mapping.build_request(
            mirror_pb2.MirrorRequest, {"choice_text": "t"}, [("choiceBook.title", "x")], None
        )
    assert caught.value.message == (
        "query parameter 'choiceBook.title': invalid value 'x': oneof 'choice' has "
        "'choice_text' from the path or the body: give only one of its fields"
    )
    request = mapping.build_request(
        mirror_pb2.MirrorRequest, {"choice_text": "t"}, [("choice_text", "q")], None
    )
    assert request.choice_text == "t"  # the same member in the query: the path wins, as before


def test_oneof_member_in_body_field_and_another_in_query_is_refused() -> None:
    mapping = _mapping(post="/v1/choices", body="choice_book")
    with pytest.raises(GatewayError) as caught:
        mapping.build_request(
            mirror_pb2.MirrorRequest, {}, [("choice_text", "q")], b'{"title": "b"}'
        )
    assert "oneof 'choice' has 'choice_book' from the path or the body" in caught.value.message


# -- the query string itself: Go's url.ParseQuery, through Request.ParseForm ---------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            b"a=1;b=2",
            "query parameter 'a': a raw ';' is not allowed (separate parameters with '&', and "
            "write a ';' in a name or value as %3B)",
            id="semicolon-separator",
        ),
        pytest.param(
            b"x=1&q%5B%5D=a;b",
            "query parameter 'q[]': a raw ';' is not allowed (separate parameters with '&', and "
            "write a ';' in a name or value as %3B)",
            id="semicolon-in-value",
        ),
    ],
)
def test_raw_semicolon_is_refused_as_go_refuses_it(raw: bytes, message: str) -> None:
    # Go net/url parseQuery: "invalid semicolon separator in query"; grpc-gateway answers the
    # ParseForm error InvalidArgument (protoc-gen-grpc-gateway's handler template).
    with pytest.raises(GatewayError) as caught:
        parse_query(raw)
    assert caught.value.http_status == 400
    assert caught.value.message == message


def test_escaped_semicolon_is_data() -> None:
    assert parse_query(b"q=a%3Bb") == [("q", "a;b")]
