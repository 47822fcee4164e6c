"""Query parameters into request messages: every value form grpc-gateway accepts, and errors."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from hms.notify.v1 import notify_pb2
from hms.testing.v1 import echo_pb2
from hms_gateway.errors import GatewayError
from hms_gateway.query import apply_query

_F = descriptor_pb2.FieldDescriptorProto
_REPEATED = _F.LABEL_REPEATED


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


def _all_types_class() -> type[Message]:
    """A message with every kind of field, built in its own pool (no project proto has WKTs)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (timestamp_pb2, duration_pb2, field_mask_pb2, wrappers_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    wkt = ".google.protobuf."
    file = descriptor_pb2.FileDescriptorProto(
        name="test/all_types.proto",
        package="test.query",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/wrappers.proto",
        ],
    )
    file.enum_type.add(name="Color").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="COLOR_UNSPECIFIED", number=0),
            descriptor_pb2.EnumValueDescriptorProto(name="RED", number=1),
            descriptor_pb2.EnumValueDescriptorProto(name="GREEN", number=2),
        ]
    )
    deep = file.message_type.add(name="Deep")
    deep.field.append(_field("n", 1, _F.TYPE_INT32))
    inner = file.message_type.add(name="Inner")
    inner.field.extend(
        [_field("name", 1, _F.TYPE_STRING), _field("deep", 2, _F.TYPE_MESSAGE, ".test.query.Deep")]
    )
    msg = file.message_type.add(name="AllTypes")
    msg.field.extend(
        [
            _field("i32", 1, _F.TYPE_INT32),
            _field("i64", 2, _F.TYPE_INT64),
            _field("u32", 3, _F.TYPE_UINT32),
            _field("u64", 4, _F.TYPE_UINT64),
            _field("s32", 5, _F.TYPE_SINT32),
            _field("f64", 6, _F.TYPE_FIXED64),
            _field("fl", 7, _F.TYPE_FLOAT),
            _field("db", 8, _F.TYPE_DOUBLE),
            _field("flag", 9, _F.TYPE_BOOL),
            _field("text", 10, _F.TYPE_STRING),
            _field("data", 11, _F.TYPE_BYTES),
            _field("color", 12, _F.TYPE_ENUM, ".test.query.Color"),
            _field("tags", 13, _F.TYPE_STRING, label=_REPEATED),
            _field("nums", 14, _F.TYPE_INT64, label=_REPEATED),
            _field("colors", 15, _F.TYPE_ENUM, ".test.query.Color", _REPEATED),
            _field("inner", 16, _F.TYPE_MESSAGE, ".test.query.Inner"),
            _field("start_time", 17, _F.TYPE_MESSAGE, wkt + "Timestamp"),
            _field("ttl", 18, _F.TYPE_MESSAGE, wkt + "Duration"),
            _field("update_mask", 19, _F.TYPE_MESSAGE, wkt + "FieldMask"),
            _field("w_i32", 20, _F.TYPE_MESSAGE, wkt + "Int32Value"),
            _field("w_i64", 21, _F.TYPE_MESSAGE, wkt + "Int64Value"),
            _field("w_bool", 22, _F.TYPE_MESSAGE, wkt + "BoolValue"),
            _field("w_str", 23, _F.TYPE_MESSAGE, wkt + "StringValue"),
            _field("w_bytes", 24, _F.TYPE_MESSAGE, wkt + "BytesValue"),
            _field("w_double", 25, _F.TYPE_MESSAGE, wkt + "DoubleValue"),
            _field("times", 26, _F.TYPE_MESSAGE, wkt + "Timestamp", _REPEATED),
        ]
    )
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("test.query.AllTypes"))


AllTypes = _all_types_class()


def _apply(params: list[tuple[str, str]], *, bound: set[str] | None = None) -> dict[str, Any]:
    msg = AllTypes()
    apply_query(msg, params, bound=bound or set(), strict=True)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param([("i32", "-7")], {"i32": -7}, id="int32"),
        pytest.param([("i32", "+7")], {"i32": 7}, id="int32-plus-sign"),
        pytest.param([("i64", "9223372036854775807")], {"i64": "9223372036854775807"}, id="int64"),
        pytest.param([("u32", "4294967295")], {"u32": 4294967295}, id="uint32-max"),
        pytest.param([("u64", "18446744073709551615")], {"u64": "18446744073709551615"}, id="u64"),
        pytest.param([("s32", "-1")], {"s32": -1}, id="sint32"),
        pytest.param([("f64", "5")], {"f64": "5"}, id="fixed64"),
        pytest.param([("fl", "1.5")], {"fl": 1.5}, id="float"),
        pytest.param([("db", "-2.5e3")], {"db": -2500.0}, id="double-exponent"),
        pytest.param([("db", "NaN")], {"db": "NaN"}, id="double-nan"),
        pytest.param([("db", "-Infinity")], {"db": "-Infinity"}, id="double-neg-infinity"),
        pytest.param([("flag", "true")], {"flag": True}, id="bool-true"),
        pytest.param([("flag", "1")], {"flag": True}, id="bool-one"),
        pytest.param([("flag", "0")], {}, id="bool-zero"),
        pytest.param([("flag", "false")], {}, id="bool-false"),
        pytest.param([("text", "a b/ü")], {"text": "a b/ü"}, id="string"),
        pytest.param([("data", "+/8="), ("i32", "1")], {"data": "+/8=", "i32": 1}, id="bytes-std"),
        pytest.param([("data", "-_8")], {"data": "+/8="}, id="bytes-url-safe-unpadded"),
        pytest.param([("data", "aGk")], {"data": "aGk="}, id="bytes-std-unpadded"),
        pytest.param([("data", "-_8=")], {"data": "+/8="}, id="bytes-url-safe-padded"),
        pytest.param([("color", "GREEN")], {"color": "GREEN"}, id="enum-by-name"),
        pytest.param([("color", "1")], {"color": "RED"}, id="enum-by-number"),
        pytest.param([("tags", "a"), ("tags", "b")], {"tags": ["a", "b"]}, id="repeated-string"),
        pytest.param([("nums", "1"), ("nums", "-2")], {"nums": ["1", "-2"]}, id="repeated-int64"),
        pytest.param(
            [("colors", "RED"), ("colors", "2")], {"colors": ["RED", "GREEN"]}, id="repeated-enum"
        ),
        pytest.param([("inner.name", "x")], {"inner": {"name": "x"}}, id="nested"),
        pytest.param([("inner.deep.n", "3")], {"inner": {"deep": {"n": 3}}}, id="nested-twice"),
        pytest.param([("startTime", "2024-05-01T10:00:00Z")], {}, id="json-name-accepted"),
        pytest.param(
            [("start_time", "2024-05-01T10:00:00.5+02:00")],
            {"start_time": "2024-05-01T08:00:00.500Z"},
            id="timestamp-rfc3339",
        ),
        pytest.param([("ttl", "1.5s")], {"ttl": "1.500s"}, id="duration"),
        pytest.param(
            [("update_mask", "a,b.c")], {"update_mask": "a,b.c"}, id="field-mask-comma-list"
        ),
        pytest.param([("w_i32", "-3")], {"w_i32": -3}, id="wrapper-int32"),
        pytest.param([("w_i64", "12")], {"w_i64": "12"}, id="wrapper-int64"),
        pytest.param([("w_bool", "false")], {"w_bool": False}, id="wrapper-bool-false-is-set"),
        pytest.param([("w_str", "")], {"w_str": ""}, id="wrapper-string-empty-is-set"),
        pytest.param([("w_bytes", "aGk")], {"w_bytes": "aGk="}, id="wrapper-bytes"),
        pytest.param([("w_double", "0.25")], {"w_double": 0.25}, id="wrapper-double"),
        pytest.param(
            [("times", "1970-01-01T00:00:01Z"), ("times", "1970-01-01T00:00:02Z")],
            {"times": ["1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z"]},
            id="repeated-timestamp",
        ),
    ],
)
def test_value_forms(params: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    got = _apply(params)
    if params[0][0] == "startTime":
        assert got == {"start_time": "2024-05-01T10:00:00Z"}
    else:
        assert got == expected


_INT32_RANGE = "expected an integer from -2147483648 to 2147483647"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param("i32", "2147483648", _INT32_RANGE, id="int32-overflow"),
        pytest.param("i32", "1.0", "expected an integer", id="int-with-point"),
        pytest.param("i32", " 1", "expected an integer", id="int-with-space"),
        pytest.param("u32", "-1", "expected an integer from 0 to 4294967295", id="uint-negative"),
        pytest.param("i64", "1_000", "expected an integer", id="int-underscore"),
        pytest.param(
            "fl",
            "1e39",
            "expected a number from -3.4028235e+38 to 3.4028235e+38",
            id="float32-overflow",
        ),
        pytest.param(
            "db",
            "1e999",
            "expected a number from -1.7976931e+308 to 1.7976931e+308",
            id="double-overflow",
        ),
        pytest.param(
            "db", "abc", "expected a number (or NaN, Infinity or -Infinity)", id="double-word"
        ),
        pytest.param("flag", "yes", "expected true or false (or 1 or 0)", id="bool-yes"),
        pytest.param(
            "data",
            "a+_b",
            "expected base64 (standard or URL-safe alphabet, padding optional), "
            "not a mix of the two alphabets",
            id="bytes-mixed-alphabets",
        ),
        pytest.param(
            "data",
            "a!",
            "expected base64 (standard or URL-safe alphabet, padding optional)",
            id="bytes-bad-char",
        ),
        pytest.param(
            "color", "BLUE", "expected one of RED, GREEN (or its number)", id="enum-unknown-name"
        ),
        pytest.param(
            "color", "9", "expected one of RED, GREEN (or its number)", id="enum-unknown-number"
        ),
        pytest.param(
            "start_time",
            "yesterday",
            'expected an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")',
            id="timestamp-bad",
        ),
        pytest.param(
            "ttl",
            "5",
            'expected a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)',
            id="duration-without-unit",
        ),
        pytest.param("w_i32", "x", "expected an integer", id="wrapper-bad"),
        pytest.param(
            "inner",
            "x",
            "a message cannot take a single value: give each of its fields",
            id="plain-message",
        ),
        pytest.param("text", "\ud800", "expected valid Unicode text", id="lone-surrogate"),
    ],
)
def test_bad_values_name_field_and_value(name: str, value: str, problem: str) -> None:
    with pytest.raises(GatewayError) as caught:
        _apply([(name, value)])
    err = caught.value
    assert err.http_status == 400
    assert err.message == f"query parameter {name!r}: invalid value {value!r}: {problem}"


@pytest.mark.parametrize(
    ("strict", "params", "raises"),
    [
        pytest.param(False, [("nope", "1"), ("message", "m")], False, id="unknown-ignored"),
        pytest.param(True, [("nope", "1")], True, id="unknown-strict"),
        pytest.param(False, [("nope.x", "1")], False, id="unknown-dotted-ignored"),
        pytest.param(True, [("nope.x", "1")], True, id="unknown-dotted-strict"),
    ],
)
def test_unknown_parameters(strict: bool, params: list[tuple[str, str]], raises: bool) -> None:
    msg = echo_pb2.EchoRequest()
    if raises:
        with pytest.raises(GatewayError) as caught:
            apply_query(msg, params, bound=set(), strict=strict)
        assert repr(params[0][0]) in caught.value.message
        assert "unknown field" in caught.value.message
    else:
        apply_query(msg, params, bound=set(), strict=strict)
        assert msg.message == dict(params).get("message", "")


@pytest.mark.parametrize(
    ("bound", "params", "expected"),
    [
        pytest.param({"text"}, [("text", "q")], {}, id="bound-field-ignored"),
        pytest.param({"inner"}, [("inner.name", "q")], {}, id="inside-bound-field-ignored"),
        pytest.param(
            {"inner.name"},
            [("inner.deep.n", "2")],
            {"inner": {"deep": {"n": 2}}},
            id="sibling-kept",
        ),
        pytest.param({"start_time"}, [("startTime", "bad")], {}, id="bound-by-json-name-no-parse"),
    ],
)
def test_bound_fields(
    bound: set[str], params: list[tuple[str, str]], expected: dict[str, Any]
) -> None:
    assert _apply(params, bound=bound) == expected


@pytest.mark.parametrize("strict", [False, True])
def test_walk_into_scalar_is_refused_strict_or_not(strict: bool) -> None:
    # grpc-gateway: runtime/query_test.go, TestPopulateQueryParametersWithInvalidNestedParameters.
    with pytest.raises(GatewayError) as caught:
        apply_query(echo_pb2.EchoRequest(), [("message.x", "1")], bound=set(), strict=strict)
    assert caught.value.message == (
        "query parameter 'message.x': invalid value '1': 'message' is a field of type string, "
        "not a message: nothing can follow it after a dot"
    )


def test_project_message_page_size() -> None:
    req = notify_pb2.ListNotificationsRequest()
    apply_query(
        req,
        [("applicant_id", "a1"), ("pageSize", "20"), ("page_token", "t")],
        bound=set(),
        strict=True,
    )
    assert (req.applicant_id, req.page_size, req.page_token) == ("a1", 20, "t")


def test_failed_repeated_message_value_leaves_no_element() -> None:
    msg = AllTypes()
    with pytest.raises(GatewayError):
        apply_query(msg, [("times", "bad")], bound=set(), strict=False)
    assert len(msg.times) == 0  # type: ignore[attr-defined]


_NAMES = st.sampled_from(
    [f.name for f in AllTypes.DESCRIPTOR.fields] + ["inner.name", "inner.deep.n", "x", "a.b", ""]
)


@given(
    params=st.lists(st.tuples(st.one_of(_NAMES, st.text(max_size=12)), st.text(max_size=30))),
    strict=st.booleans(),
)
def test_arbitrary_query_only_gateway_errors(params: list[tuple[str, str]], strict: bool) -> None:
    msg = AllTypes()
    status = 200
    try:
        apply_query(msg, params, bound=set(), strict=strict)
    except GatewayError as err:
        status = err.http_status
    assert status in (200, 400)
