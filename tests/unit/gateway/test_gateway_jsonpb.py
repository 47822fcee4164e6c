"""Messages to JSON as grpc-gateway v2's default marshaler writes them (gateway/jsonpb.py).

grpc-gateway's defaultMarshaler is protojson with ``EmitUnpopulated: true``
(runtime/marshaler_registry.go); what that writes for each kind of field is protojson's table
(protobuf-go encoding/protojson/encode.go, ``EmitUnpopulated`` and ``unpopulatedFieldRanger``):
scalars without presence their zero, repeated ``[]``, maps ``{}``, fields with presence
(messages, proto2 ``optional``) ``null``, oneof members (a proto3 ``optional``'s synthetic oneof
included) left out. Anys are expanded with the pool the message came from.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, message_factory, struct_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from hms.testing.v1 import mirror_pb2
from hms_gateway.jsonpb import JsonOptions, _plan, to_json
from hms_gateway.reflection import build_pool

_F = descriptor_pb2.FieldDescriptorProto
_TYPE = "type.googleapis.com/"
_OPTIONAL = _F.LABEL_OPTIONAL
_REPEATED = _F.LABEL_REPEATED


def _field(name: str, number: int, kind: int, type_name: str = "", label: int = _OPTIONAL) -> _F:
    field = _F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    field.json_name = "".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_")))
    if type_name:
        field.type_name = type_name
    return field


def _shapes_pool() -> DescriptorPool:
    """A proto3 file and a proto2 one, built as a service learnt by reflection would be; they
    import any.proto without sending it (the pool falls back on the process's copy)."""
    shapes = descriptor_pb2.FileDescriptorProto(
        name="test/shapes.proto",
        package="test.shapes",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    node = shapes.message_type.add(name="Node")
    node.field.extend(
        [_field("name", 1, _F.TYPE_STRING), _field("next", 2, _F.TYPE_MESSAGE, ".test.shapes.Node")]
    )
    tree = shapes.message_type.add(name="Tree")
    tree.field.extend(
        [
            _field("name", 1, _F.TYPE_STRING),
            _field("children", 2, _F.TYPE_MESSAGE, ".test.shapes.Tree", _REPEATED),
        ]
    )
    holder = shapes.message_type.add(name="Holder")
    entry = holder.nested_type.add(name="NodesEntry")
    entry.options.map_entry = True
    entry.field.extend(
        [_field("key", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_MESSAGE, ".test.shapes.Node")]
    )
    any_entry = holder.nested_type.add(name="AnyMapEntry")
    any_entry.options.map_entry = True
    any_entry.field.extend(
        [
            _field("key", 1, _F.TYPE_BOOL),
            _field("value", 2, _F.TYPE_MESSAGE, ".google.protobuf.Any"),
        ]
    )
    holder.field.extend(
        [
            _field("nodes", 1, _F.TYPE_MESSAGE, ".test.shapes.Holder.NodesEntry", _REPEATED),
            _field("list", 2, _F.TYPE_MESSAGE, ".test.shapes.Node", _REPEATED),
            _field("any", 3, _F.TYPE_MESSAGE, ".google.protobuf.Any"),
            _field("anys", 4, _F.TYPE_MESSAGE, ".google.protobuf.Any", _REPEATED),
            _field("any_map", 5, _F.TYPE_MESSAGE, ".test.shapes.Holder.AnyMapEntry", _REPEATED),
        ]
    )
    legacy_file = descriptor_pb2.FileDescriptorProto(
        name="test/legacy.proto", package="test.legacy", syntax="proto2"
    )
    legacy = legacy_file.message_type.add(name="Legacy")
    legacy.oneof_decl.add(name="pick")
    picked = _field("picked", 4, _F.TYPE_INT32)
    picked.oneof_index = 0
    legacy.field.extend(
        [
            _field("count", 1, _F.TYPE_INT32),
            _field("next", 2, _F.TYPE_MESSAGE, ".test.legacy.Legacy"),
            _field("xs", 3, _F.TYPE_INT32, label=_REPEATED),
            picked,
        ]
    )
    return build_pool([shapes, legacy_file])


_POOL = _shapes_pool()


def _new(type_name: str, /, **fields: Any) -> Any:
    """A message of the pool's type `type_name` (its class is built at run time)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(type_name))(**fields)


def _any(type_url: str, value: bytes) -> Any:
    """An Any of the pool's own (its class differs from any_pb2.Any)."""
    return _new("google.protobuf.Any", type_url=type_url, value=value)


def _packed(message: Message) -> Any:
    return _any(_TYPE + message.DESCRIPTOR.full_name, message.SerializeToString())


def _unknown(value: bytes = b"\x01\x02") -> Any:
    return _any("type.example.com/acme.Secret", value)


def test_every_field_written_message_fields_null() -> None:
    value = to_json(mirror_pb2.MirrorRequest())
    for name in ("book", "nested", "time", "duration", "wrappedInt", "updateMask", "anyValue"):
        assert value[name] is None, name
    assert [value[n] for n in ("tags", "books", "labels", "booksById")] == [[], [], {}, {}]
    assert [value[n] for n in ("int32Value", "int64Value", "boolValue")] == [0, "0", False]
    # Oneof members and a proto3 optional (a synthetic oneof) are left out when unset.
    assert [n for n in ("note", "choiceText", "choiceBook") if n in value] == []


def test_set_oneof_member_and_optional_are_written_at_their_zero() -> None:
    value = to_json(mirror_pb2.MirrorRequest(note="", choice_text=""))
    assert (value["note"], value["choiceText"]) == ("", "")
    assert "choiceBook" not in value


def test_proto2_optional_scalar_is_null_and_oneof_left_out() -> None:
    value = to_json(_new("test.legacy.Legacy"))
    assert value == {"count": None, "next": None, "xs": []}
    assert to_json(_new("test.legacy.Legacy", count=0, picked=0)) == {
        "count": 0,
        "next": None,
        "xs": [],
        "picked": 0,
    }


def test_nulls_at_every_depth_in_lists_and_map_values() -> None:
    node = _new("test.shapes.Node", name="a", next=_new("test.shapes.Node", name="b"))
    holder = _new("test.shapes.Holder", list=[node])
    holder.nodes["k"].name = "c"
    chain = {"name": "a", "next": {"name": "b", "next": None}}
    assert to_json(holder) == {
        "nodes": {"k": {"name": "c", "next": None}},
        "list": [chain],
        "any": None,
        "anys": [],
        "anyMap": {},
    }


def test_omit_unpopulated_writes_only_what_is_set() -> None:
    options = JsonOptions(emit_unpopulated=False, use_proto_names=True)
    holder = _new("test.shapes.Holder", list=[_new("test.shapes.Node", name="a")])
    assert to_json(holder, options) == {"list": [{"name": "a"}]}
    assert to_json(mirror_pb2.MirrorRequest(nested=mirror_pb2.Nested()), options) == {"nested": {}}


def test_a_type_with_nothing_nullable_below_it_is_not_walked() -> None:
    tree_type = _POOL.FindMessageTypeByName("test.shapes.Tree")
    assert _plan(tree_type, False) == ()  # the cost of the pass: one cache lookup
    tree = _new("test.shapes.Tree", children=[_new("test.shapes.Tree", name="leaf")])
    assert to_json(tree) == {"name": "", "children": [{"name": "leaf", "children": []}]}


def test_any_expanded_with_the_messages_pool_and_nulls_inside() -> None:
    node = _new("test.shapes.Node", name="a")
    holder = _new("test.shapes.Holder", any=_packed(node), anys=[_any("", b"")])
    value = to_json(holder)
    assert value["any"] == {"@type": _TYPE + "test.shapes.Node", "name": "a", "next": None}
    assert value["anys"] == [{}]  # an empty Any, as protojson writes it


def test_google_rpc_type_in_an_any_resolves_without_the_service_importing_it() -> None:
    info = error_details_pb2.ErrorInfo(reason="R")
    value = to_json(_new("test.shapes.Holder", any=_packed(info)))
    assert value["any"] == {
        "@type": _TYPE + "google.rpc.ErrorInfo",
        "reason": "R",
        "domain": "",
        "metadata": {},
    }


def test_anys_nobody_can_expand_keep_their_bytes_in_place() -> None:
    node = _new("test.shapes.Node", name="a")
    inner = _new("test.shapes.Holder", any=_unknown())
    holder = _new(
        "test.shapes.Holder",
        any=_packed(_unknown()),  # the field's Any holds an Any holding an unknown type
        anys=[_packed(node), _unknown(), _packed(inner)],
    )
    holder.any_map[True].value = b"\x03"
    holder.any_map[True].type_url = "type.example.com/acme.Secret"
    opaque = {"@type": "type.example.com/acme.Secret", "value": "AQI="}
    value = to_json(holder)
    assert value["any"] == {"@type": _TYPE + "google.protobuf.Any", "value": opaque}
    assert value["anys"][0] == {"@type": _TYPE + "test.shapes.Node", "name": "a", "next": None}
    assert value["anys"][1] == opaque
    assert value["anys"][2]["any"] == opaque
    assert value["anys"][2]["list"] == []  # the known message around it, unpopulated and all
    assert value["anyMap"] == {"true": {"@type": "type.example.com/acme.Secret", "value": "Aw=="}}
    assert holder.anys[1] == _unknown()  # the caller's message is left as it was


def test_an_any_whose_bytes_are_not_its_type_keeps_its_bytes() -> None:
    broken = _any(_TYPE + "test.shapes.Node", b"\xff\xff")
    value = to_json(_new("test.shapes.Holder", any=broken))
    assert value["any"] == {"@type": _TYPE + "test.shapes.Node", "value": "//8="}


def test_an_unknown_any_alone_is_its_type_and_bytes() -> None:
    unknown = any_pb2.Any(type_url="type.example.com/acme.Secret", value=b"\x01\x02")
    assert to_json(unknown) == {"@type": "type.example.com/acme.Secret", "value": "AQI="}


def test_other_failures_are_not_hidden() -> None:
    with pytest.raises(ValueError, match="NaN"):
        to_json(struct_pb2.Value(number_value=math.nan))
