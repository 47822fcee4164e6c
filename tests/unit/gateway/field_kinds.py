"""Message types with every field kind, and random messages of them, for the JSON tests.

A proto3 type (every scalar type once and repeated, enums open and closed, nested and recursive
messages, maps of every key type, a oneof, a proto3 optional, the well-known types with a JSON
form of their own) and a proto2 one (presence, defaults, a closed enum, an extension), built in
a private pool as a service learnt by reflection would be.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from hypothesis import strategies as st

from hms_gateway.reflection import build_pool

_F = descriptor_pb2.FieldDescriptorProto
_REPEATED = _F.LABEL_REPEATED
_OPTIONAL = _F.LABEL_OPTIONAL

_SCALARS = {
    "i32": _F.TYPE_INT32,
    "i64": _F.TYPE_INT64,
    "u32": _F.TYPE_UINT32,
    "u64": _F.TYPE_UINT64,
    "s32": _F.TYPE_SINT32,
    "s64": _F.TYPE_SINT64,
    "fx32": _F.TYPE_FIXED32,
    "fx64": _F.TYPE_FIXED64,
    "sfx32": _F.TYPE_SFIXED32,
    "sfx64": _F.TYPE_SFIXED64,
    "fl": _F.TYPE_FLOAT,
    "db": _F.TYPE_DOUBLE,
    "flag": _F.TYPE_BOOL,
    "text": _F.TYPE_STRING,
    "data": _F.TYPE_BYTES,
}
_KNOWN = {
    "when": ".google.protobuf.Timestamp",
    "took": ".google.protobuf.Duration",
    "wrapped_int": ".google.protobuf.Int64Value",
    "wrapped_text": ".google.protobuf.StringValue",
    "attrs": ".google.protobuf.Struct",
    "setting": ".google.protobuf.Value",
    "items": ".google.protobuf.ListValue",
    "mask": ".google.protobuf.FieldMask",
}


def _camel(name: str) -> str:
    return "".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_")))


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    kind: int,
    type_name: str = "",
    label: int = _OPTIONAL,
) -> _F:
    field = message.field.add(name=name, number=len(message.field) + 1, type=kind, label=label)  # type: ignore[arg-type]
    field.json_name = _camel(name)
    if type_name:
        field.type_name = type_name
    return field


def _map(message: descriptor_pb2.DescriptorProto, name: str, key: int, value: _F) -> None:
    entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
    entry.options.map_entry = True
    key_field = entry.field.add(name="key", number=1, type=key, label=_OPTIONAL)  # type: ignore[arg-type]
    key_field.json_name = "key"
    value.name, value.number, value.json_name = "value", 2, "value"
    entry.field.append(value)
    _field(message, name, _F.TYPE_MESSAGE, f".test.kinds.Kinds.{entry.name}", _REPEATED)


def _kinds_file() -> descriptor_pb2.FileDescriptorProto:
    """proto3: every field kind once, repeated, as map values and keys; oneofs; optional."""
    file = descriptor_pb2.FileDescriptorProto(
        name="test/kinds.proto",
        package="test.kinds",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/wrappers.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/field_mask.proto",
        ],
    )
    kinds = file.message_type.add(name="Kinds")
    mood = kinds.enum_type.add(name="Mood")
    for number, name in enumerate(["MOOD_UNSPECIFIED", "HAPPY", "SAD"]):
        mood.value.add(name=name, number=number)
    enum_name, self_name = ".test.kinds.Kinds.Mood", ".test.kinds.Kinds"
    for name, kind in _SCALARS.items():
        _field(kinds, name, kind)
        _field(kinds, f"many_{name}", kind, label=_REPEATED)
    _field(kinds, "mood", _F.TYPE_ENUM, enum_name)
    _field(kinds, "moods", _F.TYPE_ENUM, enum_name, _REPEATED)
    _field(kinds, "child", _F.TYPE_MESSAGE, self_name)
    _field(kinds, "children", _F.TYPE_MESSAGE, self_name, _REPEATED)
    _field(kinds, "nothing", _F.TYPE_ENUM, ".google.protobuf.NullValue")
    for name, type_name in _KNOWN.items():
        _field(kinds, name, _F.TYPE_MESSAGE, type_name)
    _field(kinds, "many_when", _F.TYPE_MESSAGE, ".google.protobuf.Timestamp", _REPEATED)
    for key_name in ("i32", "i64", "u32", "u64", "s64", "fx32", "sfx64", "flag", "text"):
        _map(kinds, f"by_{key_name}", _SCALARS[key_name], _F(type=_F.TYPE_STRING))
    _map(kinds, "moods_by_name", _F.TYPE_STRING, _F(type=_F.TYPE_ENUM, type_name=enum_name))
    _map(kinds, "kinds_by_id", _F.TYPE_INT32, _F(type=_F.TYPE_MESSAGE, type_name=self_name))
    _map(kinds, "data_by_name", _F.TYPE_STRING, _F(type=_F.TYPE_BYTES))
    _map(kinds, "ratio_by_name", _F.TYPE_STRING, _F(type=_F.TYPE_FLOAT))
    _map(kinds, "big_by_name", _F.TYPE_STRING, _F(type=_F.TYPE_UINT64))
    _map(
        kinds,
        "when_by_name",
        _F.TYPE_STRING,
        _F(type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
    )
    kinds.oneof_decl.add(name="choice")
    for name, kind, type_name in (
        ("pick_text", _F.TYPE_STRING, ""),
        ("pick_child", _F.TYPE_MESSAGE, self_name),
        ("pick_number", _F.TYPE_INT64, ""),
    ):
        _field(kinds, name, kind, type_name).oneof_index = 0
    kinds.oneof_decl.add(name="_maybe")  # a proto3 optional's synthetic oneof, after the rest
    maybe = _field(kinds, "maybe", _F.TYPE_INT32)
    maybe.oneof_index, maybe.proto3_optional = 1, True
    return file


def _old_file() -> descriptor_pb2.FileDescriptorProto:
    """proto2: presence for every singular field, defaults, a closed enum, an extension."""
    file = descriptor_pb2.FileDescriptorProto(
        name="test/old.proto", package="test.old", syntax="proto2"
    )
    old = file.message_type.add(name="Old")
    level = old.enum_type.add(name="Level")
    level.value.add(name="LOW", number=1)
    level.value.add(name="HIGH", number=5)
    _field(old, "count", _F.TYPE_INT32).default_value = "7"
    _field(old, "name", _F.TYPE_STRING).default_value = "anon"
    _field(old, "level", _F.TYPE_ENUM, ".test.old.Old.Level")
    _field(old, "xs", _F.TYPE_INT64, label=_REPEATED)
    _field(old, "next", _F.TYPE_MESSAGE, ".test.old.Old")
    _field(old, "ratio", _F.TYPE_FLOAT)
    _field(old, "levels", _F.TYPE_ENUM, ".test.old.Old.Level", _REPEATED)
    old.oneof_decl.add(name="pick")
    _field(old, "picked", _F.TYPE_INT32).oneof_index = 0
    old.extension_range.add(start=100, end=200)
    extra = file.extension.add(name="extra", number=100, type=_F.TYPE_INT32, label=_OPTIONAL)
    extra.extendee = ".test.old.Old"
    return file


POOL: DescriptorPool = build_pool([_kinds_file(), _old_file()])
KINDS = POOL.FindMessageTypeByName("test.kinds.Kinds")
OLD = POOL.FindMessageTypeByName("test.old.Old")


def new(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)()


# -- random messages --------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        edges = st.sampled_from(
            [low, high, 0, 1, -1 if low < 0 else 2, 2**53 + 1 if high > 2**53 else 7]
        )
        return st.integers(low, high) | edges
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32) | st.sampled_from([0.0, -0.0, 0.1, 1e38])
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats() | st.sampled_from([0.0, -0.0, 1e300, 5e-324])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=6)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=6)
    assert kind == FieldDescriptor.TYPE_ENUM
    assert field.enum_type is not None
    known = sorted(field.enum_type.values_by_number)
    if field.enum_type.is_closed:  # protobuf refuses a number the enum does not name
        return st.sampled_from(known)
    return st.sampled_from(known) | st.integers(-3, 9)


def fill(message: Message, data: st.DataObject, depth: int = 0, *, plain: bool = False) -> None:
    """Set a random subset of `message`'s fields to random values; ``plain``: only fields
    whose JSON is an object, an array, a number, a string or a bool of their own (no map,
    bytes, null value or well-known type)."""
    descriptor = message.DESCRIPTOR
    if _fill_known(message, descriptor.full_name, data):
        return
    for field in descriptor.fields:
        if (plain and not is_plain(field)) or not data.draw(st.booleans()):
            continue
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            _fill_map(getattr(message, field.name), nested, data, depth)
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(data.draw(st.integers(0, 2))):
                if nested is None:
                    target.append(data.draw(scalar(field)))
                elif depth < 1 or nested.full_name.startswith("google.protobuf."):
                    fill(target.add(), data, depth + 1, plain=plain)
        elif nested is not None:
            child = getattr(message, field.name)
            if depth < 1 or nested.full_name.startswith("google.protobuf."):
                fill(child, data, depth + 1, plain=plain)
            child.SetInParent()  # present, even if empty
        else:
            setattr(message, field.name, data.draw(scalar(field)))


def is_plain(field: FieldDescriptor) -> bool:
    nested = field.message_type
    if nested is not None:
        return not nested.GetOptions().map_entry and not nested.full_name.startswith(
            "google.protobuf."
        )
    if field.enum_type is not None:
        return field.enum_type.full_name != "google.protobuf.NullValue"
    return field.type != FieldDescriptor.TYPE_BYTES


def _fill_map(target: Any, entry: Descriptor, data: st.DataObject, depth: int) -> None:
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for _ in range(data.draw(st.integers(0, 2))):
        key = data.draw(scalar(key_field))
        if value_field.message_type is None:
            target[key] = data.draw(scalar(value_field))
        elif depth < 1 or value_field.message_type.full_name.startswith("google.protobuf."):
            fill(target[key], data, depth + 1)


def _fill_known(message: Any, full_name: str, data: st.DataObject) -> bool:
    """Well-known types, with values json_format writes and some it refuses."""
    if full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        # Past their ranges, or nanos against the seconds' sign: json_format refuses them.
        message.seconds = data.draw(st.integers(-(2**38), 2**38) | st.integers(-1000, 1000))
        message.nanos = data.draw(st.integers(-(10**9), 10**9) | st.integers(0, 999))
    elif full_name == "google.protobuf.Int64Value":
        message.value = data.draw(st.integers(-(2**63), 2**63 - 1))
    elif full_name == "google.protobuf.StringValue":
        message.value = data.draw(st.text(max_size=4))
    elif full_name == "google.protobuf.Struct":
        message.update(data.draw(st.dictionaries(st.text(max_size=3), JSONISH, max_size=2)))
    elif full_name == "google.protobuf.ListValue":
        message.extend(data.draw(st.lists(JSONISH, max_size=2)))
    elif full_name == "google.protobuf.Value":
        value = data.draw(JSONISH)
        if value is not None or data.draw(st.booleans()):
            holder = new(POOL.FindMessageTypeByName("google.protobuf.Struct"))
            holder.update({"d": value})  # a Struct sets a Value from any JSON value
            message.CopyFrom(holder.fields["d"])
    elif full_name == "google.protobuf.FieldMask":
        paths = st.sampled_from(["a", "a_b", "a.b_c", "aB", "a__b"])  # the last two refused
        message.paths.extend(data.draw(st.lists(paths, max_size=2)))
    else:
        return False
    return True
