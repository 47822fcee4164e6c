"""JSON writers made once per message type: json_format's output without its per-field questions.

``json_format.MessageToDict`` asks, for every field of every message it writes, what kind the
field is and which option applies; the answers are the same for every message of a type. A
writer holds them, worked out once per type and options: a converter per field number for what
``ListFields`` returns (so presence is protobuf's own, not re-derived here), then the fields
written when unpopulated (their zero, ``[]`` or ``{}``) and the fields written ``null``, in the
order json_format and the null pass of gateway/jsonpb.py put them. The output is the same dict,
key order included: ``tests/unit/gateway/test_gateway_json_writer.py`` compares the two on
random messages of every field kind, under every option.

Well-known types with a JSON form of their own (Timestamp, Duration, wrappers, Struct, ...)
are handed to json_format where they occur. A type with an Any anywhere below it has no writer
(:func:`writer_for` returns None): an Any needs the pool and the fallback of gateway/jsonpb.py.
Neither has a type with an enum when a ``pb.enumvalue.json`` name option is loaded (json_format
would write those names). A message a writer meets something unexpected in (an extension, a
closed enum holding a number it does not name, a value json_format refuses) raises
:class:`Unwritable`, and the caller writes it the slow way, which answers or fails in
json_format's words.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import Message

__all__ = [
    "ANY",
    "Unwritable",
    "Writer",
    "has_own_form",
    "is_map",
    "json_key",
    "map_key",
    "writer_for",
]

ANY = "google.protobuf.Any"
_WRAPPERS_FILE = "google/protobuf/wrappers.proto"
# Types whose JSON is not an object of their fields (json_format's _WKTJSONMETHODS, with the
# wrappers).
_OWN_FORM = frozenset(
    {
        ANY,
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.ListValue",
        "google.protobuf.Struct",
        "google.protobuf.Timestamp",
        "google.protobuf.Value",
    }
)


def has_own_form(descriptor: Descriptor) -> bool:
    """The type's JSON is not an object of its fields (a well-known type's own form)."""
    return descriptor.full_name in _OWN_FORM or descriptor.file.name == _WRAPPERS_FILE


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def json_key(field: FieldDescriptor, proto_names: bool) -> str:
    return field.name if proto_names else field.json_name


class Unwritable(Exception):
    """This message holds something its type's writer does not write as json_format would."""


Convert = Callable[[Any], Any]
#: (descriptor, proto_names, enums_as_ints, print_defaults, nulls)
_Key = tuple[Descriptor, bool, bool, bool, bool]


class Writer:
    """Writes messages of one type as json_format (and the null pass) would, for one set of
    options; made by :func:`writer_for`."""

    __slots__ = ("by_number", "defaults", "nulls")

    def __init__(self) -> None:
        #: field number -> (JSON key, converter of the value ListFields gives)
        self.by_number: dict[int, tuple[str, Convert]] = {}
        #: written when unpopulated, in declaration order: (key, zero, fresh container)
        self.defaults: tuple[tuple[str, Any, type | None], ...] = ()
        #: written null when unset, in declaration order
        self.nulls: tuple[str, ...] = ()

    def __call__(self, message: Message) -> dict[str, Any]:
        by_number = self.by_number
        js: dict[str, Any] = {}
        for field, value in message.ListFields():
            entry = by_number.get(field.number)
            if entry is None or field.is_extension:
                raise Unwritable(f"{field.full_name} is an extension")
            js[entry[0]] = entry[1](value)
        for key, zero, container in self.defaults:
            if key not in js:
                js[key] = zero if container is None else container()
        for key in self.nulls:
            if key not in js:
                js[key] = None
        return js


_writers: dict[_Key, Writer | None] = {}
# Routes relearnt by reflection bring new descriptors: the cache is emptied past this size
# rather than grown without bound.
_MAX_WRITERS = 4096


def writer_for(
    descriptor: Descriptor,
    *,
    proto_names: bool,
    enums_as_ints: bool,
    print_defaults: bool,
    nulls: bool,
) -> Writer | None:
    """The writer of `descriptor`'s messages for these options, or None if it has none.

    ``print_defaults`` is json_format's ``always_print_fields_with_no_presence``; ``nulls``
    writes ``null`` for every unset field with presence outside a oneof, as the null pass of
    gateway/jsonpb.py does.
    """
    key = (descriptor, proto_names, enums_as_ints, print_defaults, nulls)
    try:
        return _writers[key]
    except KeyError:
        pass
    if len(_writers) >= _MAX_WRITERS:
        _writers.clear()
    if has_own_form(descriptor) or not _writable(descriptor, enums_as_ints):
        _writers[key] = None
        return None
    try:
        return _build(key)
    except BaseException:
        # Never keep a half-made writer, nor one made meanwhile that refers to it.
        _writers.clear()
        raise


def types_below(descriptor: Descriptor) -> Iterator[Descriptor]:
    """`descriptor` and every message type its fields reach, map entries included, each once
    (so recursive types end); a type with a JSON form of its own is given but not looked into."""
    seen = {descriptor}
    stack = [descriptor]
    while stack:
        current = stack.pop()
        yield current
        if has_own_form(current):
            continue
        for field in current.fields:
            nested = field.message_type
            if nested is not None and nested not in seen:
                seen.add(nested)
                stack.append(nested)


def _writable(descriptor: Descriptor, enums_as_ints: bool) -> bool:
    """No Any anywhere below the type, and no enum whose names json_format would change."""
    renamed = not enums_as_ints and _enum_names_option_loaded()
    for current in types_below(descriptor):
        if current.full_name == ANY:
            return False
        if (
            renamed
            and not has_own_form(current)
            and any(field.enum_type is not None for field in current.fields)
        ):
            return False
    return True


def _enum_names_option_loaded() -> bool:
    """json_format writes an enum value's ``pb.enumvalue.json`` option, when that extension
    is in the default pool, instead of its name."""
    try:
        descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
    except KeyError:
        return False
    return True


def _build(key: _Key) -> Writer:
    """The writer for `key`, cached before its fields are made, so that a recursive type's
    converters find it."""
    descriptor, proto_names, _, print_defaults, nulls = key
    writer = Writer()
    _writers[key] = writer
    defaults: list[tuple[str, Any, type | None]] = []
    null_keys: list[str] = []
    for field in descriptor.fields:
        name = json_key(field, proto_names)
        convert = _converter(field, key)
        writer.by_number[field.number] = (name, convert)
        if field.has_presence:
            if nulls and not field.is_repeated and field.containing_oneof is None:
                null_keys.append(name)
        elif print_defaults:
            if is_map(field):
                defaults.append((name, None, dict))
            elif field.is_repeated:
                defaults.append((name, None, list))
            else:
                defaults.append((name, convert(field.default_value), None))
    writer.defaults = tuple(defaults)
    writer.nulls = tuple(null_keys)
    return writer


def _converter(field: FieldDescriptor, key: _Key) -> Convert:
    """What json_format makes of this field's value as ListFields gives it."""
    if is_map(field):
        assert field.message_type is not None
        value = _single(field.message_type.fields_by_name["value"], key)

        def convert_map(entries: Any) -> dict[str, Any]:
            return {map_key(k): value(entries[k]) for k in entries}

        return convert_map
    single = _single(field, key)
    if not field.is_repeated:
        return single
    if single is _same:
        return list
    return lambda items: [single(item) for item in items]


def _single(field: FieldDescriptor, key: _Key) -> Convert:
    """One value of this field, as json_format's ``_FieldToJsonObject``."""
    _, proto_names, enums_as_ints, print_defaults, _ = key
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        nested = field.message_type
        assert nested is not None
        if has_own_form(nested):
            return lambda message: json_format.MessageToDict(
                message,
                always_print_fields_with_no_presence=print_defaults,
                preserving_proto_field_name=proto_names,
                use_integers_for_enums=enums_as_ints,
            )
        writer = writer_for(nested, **_options(key))
        assert writer is not None  # _writable walked every type below
        return writer
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return _enum(field, enums_as_ints)
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return _base64 if field.type == FieldDescriptor.TYPE_BYTES else _same
    if kind in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return str
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    return _same  # int32, uint32, bool


def _options(key: _Key) -> dict[str, bool]:
    _, proto_names, enums_as_ints, print_defaults, nulls = key
    return {
        "proto_names": proto_names,
        "enums_as_ints": enums_as_ints,
        "print_defaults": print_defaults,
        "nulls": nulls,
    }


def _enum(field: FieldDescriptor, enums_as_ints: bool) -> Convert:
    enum_type = field.enum_type
    assert enum_type is not None
    if enums_as_ints:
        return _same
    if enum_type.full_name == "google.protobuf.NullValue":
        return lambda _: None
    names = {number: value.name for number, value in enum_type.values_by_number.items()}
    closed = enum_type.is_closed

    def convert_enum(number: int) -> Any:
        name = names.get(number)
        if name is not None:
            return name
        if closed:  # json_format refuses it: let it say so
            raise Unwritable(f"{enum_type.full_name} has no value {number}")
        return number

    return convert_enum


def _same(value: Any) -> Any:
    return value


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _double(value: float) -> Any:
    if math.isfinite(value):
        return value
    return _non_finite(value)


def _float(value: float) -> Any:
    if math.isfinite(value):
        return ToShortestFloat(value)
    return _non_finite(value)


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "-Infinity" if value < 0 else "Infinity"


def map_key(key: Any) -> str:
    """A map key as json_format writes it: ``true``/``false`` for a bool, else its text."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
