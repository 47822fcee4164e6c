"""Messages to JSON as grpc-gateway v2's default marshaler writes them.

grpc-gateway marshals every answer, error bodies included, with Go's protojson and
``EmitUnpopulated: true`` (``runtime/marshaler_registry.go``, ``defaultMarshaler``). That
writes every field of a message, populated or not: a scalar without presence as its zero,
a repeated field as ``[]``, a map as ``{}``, and a field with presence (a message field, a
proto2 ``optional`` scalar) as ``null``; it leaves out only the members of a oneof (a proto3
``optional`` is one, a synthetic oneof) and extensions (protojson's ``EmitUnpopulated`` and
its ``unpopulatedFieldRanger``, encoding/protojson/encode.go). ``json_format``'s
``always_print_fields_with_no_presence`` writes the first three but never a field with
presence, so :func:`to_json` adds those ``null`` s in a second pass over the result, guided
by a plan per message type made once (:func:`_plan`); a message type with no field that can
be ``null`` anywhere below it costs one cache lookup.

A ``google.protobuf.Any`` is expanded with the pool its message came from: for a service
learnt by reflection, the private pool of its files, which falls back on the well-known and
``google.rpc`` types (gateway/reflection.py). An Any the gateway cannot expand (a type nobody
described to it, or bytes that are not that type) is written ``{"@type": URL, "value":
<base64 of its bytes>}`` rather than failing the whole answer: grpc-gateway answers 500 there
(``ForwardResponseMessage``'s marshal error) and its error handler a bare ``failed to marshal
error message`` (``DefaultHTTPErrorHandler``), losing the rest; here nothing the backend sent
is lost. It is the rare path: the whole message is converted again with those Anys set aside.

>>> from google.protobuf import struct_pb2
>>> to_json(struct_pb2.Struct())
{}
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from hms_gateway.json_writer import (
    ANY,
    Unwritable,
    has_own_form,
    is_map,
    json_key,
    map_key,
    types_below,
    writer_for,
)

__all__ = ["DEFAULT_OPTIONS", "JsonOptions", "pool_of", "to_json", "to_json_by_json_format"]


@dataclass(frozen=True, slots=True)
class JsonOptions:
    """How JSON is read and written; the defaults are grpc-gateway v2's.

    ``use_proto_names``: output ``page_size`` rather than ``pageSize``.
    ``emit_unpopulated``: output every field, as grpc-gateway's default (protojson's
    ``EmitUnpopulated``): without presence as its zero, ``[]`` or ``{}``; with presence (a
    message field, a proto2 optional) as ``null``; oneof members only when set. False: only
    populated fields.
    ``enums_as_ints``: output enums as numbers rather than names.
    ``strict``: an unknown JSON field or query parameter answers 400 naming it, instead of
    being discarded.
    """

    use_proto_names: bool = False
    emit_unpopulated: bool = True
    enums_as_ints: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("use_proto_names", "emit_unpopulated", "enums_as_ints", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"JsonOptions.{name} must be a bool")


DEFAULT_OPTIONS = JsonOptions()


def _descriptor(message: Message) -> Descriptor:
    # types-protobuf types DESCRIPTOR as this class or upb's, which has the same interface.
    return cast(Descriptor, message.DESCRIPTOR)


def pool_of(message: Message | type[Message]) -> DescriptorPool:
    """The pool a message type was built in: where an Any inside it is looked up."""
    return cast(Descriptor, message.DESCRIPTOR).file.pool


# What json_format raises for an Any it cannot expand: TypeError (no descriptor for the type
# URL) and DecodeError (the bytes are not that type).
_UNEXPANDABLE = (TypeError, KeyError, DecodeError)


def to_json(
    message: Message,
    options: JsonOptions = DEFAULT_OPTIONS,
    *,
    pool: DescriptorPool | None = None,
    print_defaults: bool | None = None,
) -> Any:
    """The JSON value of `message` (dicts, lists, strings, numbers), by `options`.

    ``pool`` resolves Any type URLs (default: the pool of the message's own type).
    ``print_defaults`` writes fields without presence whatever ``options`` say (for a
    ``response_body`` field taken out of the whole message).

    Written by the type's compiled writer (gateway/json_writer.py) where it has one, else,
    or where that writer meets something it does not write, by :func:`to_json_by_json_format`.
    """
    always = options.emit_unpopulated if print_defaults is None else print_defaults
    writer = writer_for(
        _descriptor(message),
        proto_names=options.use_proto_names,
        enums_as_ints=options.enums_as_ints,
        print_defaults=always,
        nulls=options.emit_unpopulated,
    )
    if writer is not None:
        try:
            return writer(message)
        except (Unwritable, ValueError, TypeError, json_format.Error):
            pass  # json_format writes it, or refuses it in its own words
    return to_json_by_json_format(message, options, pool=pool, print_defaults=always)


def to_json_by_json_format(
    message: Message,
    options: JsonOptions = DEFAULT_OPTIONS,
    *,
    pool: DescriptorPool | None = None,
    print_defaults: bool | None = None,
) -> Any:
    """:func:`to_json` by json_format and the null pass, for every message type."""
    descriptor = _descriptor(message)
    if pool is None:
        pool = pool_of(message)
    proto_names = options.use_proto_names
    kwargs: dict[str, Any] = {
        "always_print_fields_with_no_presence": (
            options.emit_unpopulated if print_defaults is None else print_defaults
        ),
        "preserving_proto_field_name": proto_names,
        "use_integers_for_enums": options.enums_as_ints,
        "descriptor_pool": pool,
    }
    try:
        value = json_format.MessageToDict(message, **kwargs)
    except _UNEXPANDABLE:
        value = _with_opaque_anys(message, pool, proto_names, kwargs)
    if options.emit_unpopulated:
        _fill_nulls(descriptor, value, pool, proto_names)
    return value


# -- null for every unset field with presence -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    """One field of a message's plan: null where absent (``nullable``), and/or the message
    type to visit inside it (``nested``), a singular value, each item of a list
    (``each``) or each value of a map (``values``)."""

    key: str
    nullable: bool
    nested: Descriptor | None
    each: bool = False
    values: bool = False


def _has_null(descriptor: Descriptor) -> bool:
    """A field of this type is null when unset (has presence, in no oneof)."""
    return any(
        not field.is_repeated and field.has_presence and field.containing_oneof is None
        for field in descriptor.fields
    )


@functools.lru_cache(maxsize=4096)
def _may_hold_null(descriptor: Descriptor) -> bool:
    """Could a value of this type need the pass: an Any (whatever it holds), or a type with
    a nullable field anywhere below it? (A map entry's value field is not one: a map's
    values are never null.)"""
    for current in types_below(descriptor):
        if current.full_name == ANY:
            return True
        fields_as_object = not has_own_form(current) and not current.GetOptions().map_entry
        if fields_as_object and _has_null(current):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _plan(descriptor: Descriptor, proto_names: bool) -> tuple[_Step, ...]:
    """What the null pass does in a message of this type (bounded cache: routes relearnt by
    reflection bring new descriptors)."""
    if has_own_form(descriptor):
        return ()
    steps = []
    for field in descriptor.fields:
        key = json_key(field, proto_names)
        nested = field.message_type
        if is_map(field):
            assert nested is not None
            value_type = nested.fields_by_name["value"].message_type
            if value_type is not None and _may_hold_null(value_type):
                steps.append(_Step(key, False, value_type, values=True))
        elif field.is_repeated:
            if nested is not None and _may_hold_null(nested):
                steps.append(_Step(key, False, nested, each=True))
        else:
            nullable = field.has_presence and field.containing_oneof is None
            inside = nested if nested is not None and _may_hold_null(nested) else None
            if nullable or inside is not None:
                steps.append(_Step(key, nullable, inside))
    return tuple(steps)


def _fill_nulls(descriptor: Descriptor, value: Any, pool: DescriptorPool, names: bool) -> None:
    if not isinstance(value, dict):
        return
    if descriptor.full_name == ANY:
        _fill_any(value, pool, names)
        return
    for step in _plan(descriptor, names):
        if step.key not in value:
            if step.nullable:
                value[step.key] = None
            continue
        nested = step.nested
        if nested is None:
            continue
        item = value[step.key]
        if step.each:
            for one in item:
                _fill_nulls(nested, one, pool, names)
        elif step.values:
            for one in item.values():
                _fill_nulls(nested, one, pool, names)
        else:
            _fill_nulls(nested, item, pool, names)


def _fill_any(value: dict[str, Any], pool: DescriptorPool, names: bool) -> None:
    type_url = value.get("@type")
    if not isinstance(type_url, str):
        return  # an empty Any: {}
    packed = _find_type(pool, type_url)
    if packed is None:
        return  # written as its bytes: nothing to fill
    if packed.full_name == ANY:
        _fill_nulls(packed, value.get("value"), pool, names)
    elif has_own_form(packed):
        return
    elif "value" in value and "value" not in _keys(packed, names):
        return  # a known type whose bytes did not decode, written as its bytes
    else:
        _fill_nulls(packed, value, pool, names)


@functools.lru_cache(maxsize=4096)
def _keys(descriptor: Descriptor, proto_names: bool) -> frozenset[str]:
    return frozenset(json_key(field, proto_names) for field in descriptor.fields)


def _find_type(pool: DescriptorPool, type_url: str) -> Descriptor | None:
    """The message type a type URL names (its last segment), or None if the pool has none.
    TypeError: a fallback file that clashes with the pool's own (gateway/reflection.py)."""
    try:
        return pool.FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except (KeyError, TypeError):
        return None


# -- Anys the gateway cannot expand -----------------------------------------------------------

_Path = tuple[str | int, ...]


def _with_opaque_anys(
    message: Message, pool: DescriptorPool, proto_names: bool, kwargs: dict[str, Any]
) -> Any:
    """json_format's JSON of `message` with each Any it cannot expand as ``{"@type",
    "value"}``: such Anys are emptied in a copy, the copy converted, and their JSON put back
    at their places. Any other failure is json_format's to raise."""
    copy = type(message)()
    copy.CopyFrom(message)
    opaque: list[tuple[_Path, dict[str, str]]] = []
    _set_aside(copy, pool, proto_names, (), opaque)
    value = json_format.MessageToDict(copy, **kwargs)
    for path, replacement in opaque:
        if not path:
            return replacement
        node: Any = value
        for segment in path[:-1]:
            node = node[segment]
        node[path[-1]] = replacement
    return value


def _set_aside(
    message: Message,
    pool: DescriptorPool,
    proto_names: bool,
    path: _Path,
    opaque: list[tuple[_Path, dict[str, str]]],
) -> bool:
    """Empty every Any in `message` (at `path` in its JSON) that cannot be expanded, noting
    its JSON form in `opaque`; True if anything changed."""
    descriptor = _descriptor(message)
    if descriptor.full_name == ANY:
        return _set_aside_any(message, pool, proto_names, path, opaque)
    if has_own_form(descriptor):
        return False
    changed = False
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        key = f"[{field.full_name}]" if field.is_extension else json_key(field, proto_names)
        if is_map(field):
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            for entry_key, item in value.items():
                changed |= _set_aside(
                    item, pool, proto_names, (*path, key, map_key(entry_key)), opaque
                )
        elif field.is_repeated:
            for index, item in enumerate(value):
                changed |= _set_aside(item, pool, proto_names, (*path, key, index), opaque)
        else:
            changed |= _set_aside(value, pool, proto_names, (*path, key), opaque)
    return changed


def _set_aside_any(
    message: Any,  # a google.protobuf.Any, perhaps of a private pool (no typed attributes)
    pool: DescriptorPool,
    proto_names: bool,
    path: _Path,
    opaque: list[tuple[_Path, dict[str, str]]],
) -> bool:
    if not message.ListFields():
        return False  # an empty Any: {}
    packed = _find_type(pool, message.type_url)
    inner: Message | None = None
    if packed is not None:
        try:
            inner = message_factory.GetMessageClass(packed)()
            inner.ParseFromString(message.value)
        except DecodeError:
            inner = None
    if inner is None:
        shown = {"@type": message.type_url, "value": base64.b64encode(message.value).decode()}
        opaque.append((path, shown))
        message.Clear()
        return True
    inner_path = (*path, "value") if has_own_form(_descriptor(inner)) else path
    if not _set_aside(inner, pool, proto_names, inner_path, opaque):
        return False
    message.value = inner.SerializeToString()
    return True
