"""JSON request bodies read by a reader made once per message type, when they are plainly right.

A body is read by walking it twice: gateway/transcode.py checks it against the message type
(naming what is wrong, as grpc-gateway's own errors cannot), then ``json_format.ParseDict``
converts it, asking again of every field what kind it is. Most bodies are plainly right: each
key a field's JSON or proto name, each value of exactly its field's JSON type and in range. A
reader, made once per message type, sets such a body's fields directly, with the value
json_format would set. At the first thing it does not take plainly (a null, bytes, a map, a
well-known type, a number in a string other than an integer's digits or NaN and the
infinities, an unknown key, two keys for one field or one oneof, a closed enum's unknown
number, a value out of range) it raises :class:`Unreadable`, and the caller clears the
message and reads the body the checked way, which accepts or refuses it in its own words. So
a reader changes no answer: it only reads a subset of the bodies the checked way accepts,
into the same message (``tests/unit/gateway/test_gateway_json_reader.py`` compares the two
ways on random bodies).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from hms_gateway.json_writer import has_own_form, is_map
from hms_gateway.query import float_limit, int_range

__all__ = ["Reader", "Unreadable", "reader_for"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile("-?[0-9]+")
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_INT32 = (-(2**31), 2**31 - 1)
# Deeper bodies go the checked way, which counts levels against json_format's limit.
_MAX_DEPTH = 32


class Unreadable(Exception):
    """The body holds something a reader does not take plainly: read it the checked way."""


#: Sets one field (by name) of a message from its JSON value, at a depth of nesting.
Setter = Callable[[Message, str, Any, int], None]
#: A reader's entry for a key: (field name, number, oneof name or "", setter)
_Entry = tuple[str, int, str, Setter]


class Reader:
    """Sets a decoded JSON object's fields on a message of one type (``read``)."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        #: key (JSON name, else proto name) -> (field name, number, oneof name, how to set)
        self.fields: dict[str, _Entry] = {}

    def read(self, message: Message, document: Any, depth: int = 0) -> None:
        if type(document) is not dict or depth > _MAX_DEPTH:
            raise Unreadable
        fields = self.fields
        given: set[int] = set()
        chosen: set[str] = set()
        for key, value in document.items():
            entry = fields.get(key)
            if entry is None or value is None:
                raise Unreadable
            name, number, oneof, setter = entry
            if number in given:
                raise Unreadable
            given.add(number)
            if oneof:
                if oneof in chosen:
                    raise Unreadable
                chosen.add(oneof)
            setter(message, name, value, depth)


_readers: dict[Descriptor, Reader | None] = {}
_MAX_READERS = 4096  # routes relearnt by reflection bring new descriptors


def reader_for(descriptor: Descriptor) -> Reader | None:
    """The reader of `descriptor`'s messages, or None for a type with a JSON form of its own."""
    try:
        return _readers[descriptor]
    except KeyError:
        pass
    if len(_readers) >= _MAX_READERS:
        _readers.clear()
    if has_own_form(descriptor):
        _readers[descriptor] = None
        return None
    reader = Reader()
    _readers[descriptor] = reader  # before its fields: a recursive type finds itself
    try:
        reader.fields = _fields(descriptor)
    except BaseException:
        # Never keep a half-made reader, nor one made meanwhile that refers to it.
        _readers.clear()
        raise
    return reader


def _fields(descriptor: Descriptor) -> dict[str, _Entry]:
    """The reader's table: JSON and proto names to the fields it takes plainly."""
    by_key: dict[str, _Entry] = {}
    for field in descriptor.fields:
        setter = _setter(field)
        if setter is None:
            continue  # a key naming it is not taken plainly
        oneof = field.containing_oneof
        by_key[field.name] = (field.name, field.number, oneof.name if oneof else "", setter)
    for field in descriptor.fields:  # JSON names first, as json_format looks keys up
        entry = by_key.get(field.name)
        if entry is not None:
            by_key[field.json_name] = entry
        elif field.json_name in by_key:
            del by_key[field.json_name]  # the JSON name of a field not taken plainly
    return by_key


def _setter(field: FieldDescriptor) -> Setter | None:
    if is_map(field):
        return None
    nested = field.message_type
    if nested is not None:
        if has_own_form(nested):
            return None
        reader = reader_for(nested)
        assert reader is not None
        if field.is_repeated:

            def add_messages(message: Message, name: str, items: Any, depth: int) -> None:
                if type(items) is not list:
                    raise Unreadable
                target = getattr(message, name)
                for item in items:
                    reader.read(target.add(), item, depth + 1)

            return add_messages

        def set_message(message: Message, name: str, value: Any, depth: int) -> None:
            child = getattr(message, name)
            child.SetInParent()
            reader.read(child, value, depth + 1)

        return set_message
    convert = _scalar(field)
    if convert is None:
        return None
    if field.is_repeated:

        def extend(message: Message, name: str, items: Any, depth: int) -> None:
            if type(items) is not list:
                raise Unreadable
            getattr(message, name).extend([convert(item) for item in items])

        return extend

    def set_scalar(message: Message, name: str, value: Any, depth: int) -> None:
        setattr(message, name, convert(value))

    return set_scalar


def _scalar(field: FieldDescriptor) -> Callable[[Any], Any] | None:
    """The value json_format sets for a JSON value of exactly the field's type, in range."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string
    if kind == FieldDescriptor.TYPE_BOOL:
        return _bool
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _number(float_limit(field))
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field)
    if kind == FieldDescriptor.TYPE_BYTES:
        return None
    low, high = int_range(field)

    def integer(value: Any) -> int:
        if type(value) is int:
            if low <= value <= high:
                return value
        elif type(value) is str and len(value) <= 21 and _DIGITS.fullmatch(value):
            number = int(value)  # a 64-bit integer's JSON form; json_format reads any integer so
            if low <= number <= high:
                return number
        raise Unreadable

    return integer


def _string(value: Any) -> str:
    if type(value) is str and _SURROGATE.search(value) is None:
        return value
    raise Unreadable


def _bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise Unreadable


def _number(limit: float) -> Callable[[Any], float]:
    def number(value: Any) -> float:
        # Exactly float or int: the decoder's numbers past a double are a float subclass.
        if (type(value) is float or type(value) is int) and -limit <= value <= limit:
            return float(value)
        if type(value) is str and value in _FLOAT_WORDS:
            return float(value)  # Python reads the three as JSON writes them
        raise Unreadable

    return number


def _enum(field: FieldDescriptor) -> Callable[[Any], int]:
    enum_type = field.enum_type
    assert enum_type is not None
    by_name = {value.name: value.number for value in enum_type.values}
    numbers = frozenset(enum_type.values_by_number)
    closed = enum_type.is_closed
    low, high = _INT32

    def enum(value: Any) -> int:
        if type(value) is str:
            number = by_name.get(value)
            if number is not None:
                return number
        elif type(value) is int and (value in numbers or (not closed and low <= value <= high)):
            return value
        raise Unreadable

    return enum
