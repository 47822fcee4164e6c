"""Fill a request message from query parameters, as grpc-gateway's ``PopulateQueryParameters``.

Pure: no I/O. A parameter names a field path, each segment by its proto name or its JSON name
(``page_size`` or ``pageSize``), dots walking into nested messages (``book.author.name``).
Values are the text forms grpc-gateway accepts:

- repeated fields by repetition (``?tag=a&tag=b``);
- enums by name or number (``CHANNEL_SMS`` or ``2``), numbers only if the enum defines them;
- bools as ``true``/``false``/``1``/``0`` (``True``/``FALSE``/``t``/``f`` too, as Go's
  ``strconv.ParseBool``);
- integers in decimal (int64 too: the text is exact), range-checked for the field's type;
- floats in decimal or exponent form, ``NaN``/``Infinity``/``-Infinity`` (the JSON words);
- bytes in standard or URL-safe base64, padded or not;
- well-known types in their JSON string forms: Timestamp (RFC 3339), Duration (``"1.5s"``),
  FieldMask (``"a,b.c"``, the paths as given) and the wrappers (the wrapped scalar's form);
- map entries as ``labels[key]=value`` (scalar and enum values; the key in its field's form).

A field that holds one value given twice (``?name=a&name=b``) is a 400, as in grpc-gateway:
keeping either value would hide the client's mistake.

Every problem is told in the caller's terms, as what was expected (``expected an integer from
-2147483648 to 2147483647``, ``expected one of COLOR_RED, COLOR_GREEN (or its number)``), never
as the text of a Python or protobuf exception; ``transcode`` words its JSON body errors the same
way and shares :func:`enum_choices` and the phrases here.

A parameter on a field bound by the path or the body (or inside one) is ignored: the path wins.
An unknown parameter is ignored unless ``strict``; a value that does not fit its field is a
``GatewayError.bad_query_value`` naming both.

>>> from hms.notify.v1 import notify_pb2
>>> req = notify_pb2.ListNotificationsRequest()
>>> apply_query(req, [("pageSize", "20")], bound=set(), strict=False)
>>> req.page_size
20

The helpers ``resolve_field_path`` and ``set_text_value`` are shared with ``transcode`` (path
variables use the same conversions); they raise ``ValueProblem``, which each caller maps to its
own ``GatewayError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Set
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from hms_gateway.errors import GatewayError

__all__ = [
    "EXPECTED_BASE64",
    "EXPECTED_DURATION",
    "EXPECTED_TIMESTAMP",
    "UnknownField",
    "ValueProblem",
    "apply_query",
    "decode_base64",
    "descriptor_of",
    "enum_choices",
    "enum_type_of",
    "expected_integer_in_range",
    "expected_number_in_range",
    "float_limit",
    "int_range",
    "is_integer_field",
    "is_text_settable",
    "message_type_of",
    "parse_query",
    "resolve_field_path",
    "set_text_value",
]


class ValueProblem(ValueError):
    """A text value does not fit its field; the message says why."""


class UnknownField(LookupError):
    """A dotted path names no field (``args[0]`` is the segment that was not found)."""


_INT_RE = re.compile(r"[+-]?[0-9]+")
# A "%" not followed by two hex digits: Go's url.ParseQuery (so grpc-gateway) refuses it, and
# taking it literally would store "%zz" where the client meant something else.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DOUBLE_MAX = 1.7976931348623157e308
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38
_TRUE = frozenset({"true", "True", "TRUE", "t", "T", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "f", "F", "0"})

_T = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), (0, 2**64 - 1)),
}

_WRAPPERS = frozenset(
    "google.protobuf." + name
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
# Parsed from their JSON string form by json_format.
_JSON_STRING_TYPES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
_FIELD_MASK = "google.protobuf.FieldMask"


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    """``message.DESCRIPTOR``, as the ``descriptor.Descriptor`` it is used as.

    types-protobuf types it as that class or upb's own Descriptor; upb's has the same interface
    (protobuf makes ``isinstance(d, Descriptor)`` hold for it), and the rest of the stubs take
    and give ``descriptor.Descriptor`` and its fields.
    """
    return cast(Descriptor, message.DESCRIPTOR)


def message_type_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message (or map) field; TypeError for any other field."""
    nested = field.message_type
    if nested is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return nested


def enum_type_of(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field; TypeError for any other field."""
    enum = field.enum_type
    if enum is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return enum


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _field_named(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return None


def resolve_field_path(descriptor: Descriptor, path: str) -> tuple[FieldDescriptor, ...]:
    """The fields a dotted path walks through, each segment by proto or JSON name.

    Raises ``UnknownField`` when a segment names no field, or walks on from a field that is not
    a singular message.
    """
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for segment in path.split("."):
        if current is None:
            raise UnknownField(path)
        field = _field_named(current, segment)
        if field is None:
            raise UnknownField(path)
        fields.append(field)
        nested = field.message_type
        walkable = nested is not None and not field.is_repeated and not _is_map(field)
        current = nested if walkable else None
    return tuple(fields)


# -- what a field expects, in the caller's terms (shared with transcode's JSON body errors) ----

_CHOICES_SHOWN = 12
EXPECTED_TIMESTAMP = 'an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'
EXPECTED_DURATION = 'a duration in seconds with an "s" suffix (like "1.5s")'
EXPECTED_BASE64 = "base64 (standard or URL-safe alphabet, padding optional)"


def int_range(field: FieldDescriptor) -> tuple[int, int]:
    """The lowest and highest value of an integer field (of its ``value`` for a wrapper)."""
    return _INT_RANGES[field.type]


def is_integer_field(field: FieldDescriptor) -> bool:
    return field.type in _INT_RANGES


def float_limit(field: FieldDescriptor) -> float:
    """The largest magnitude a float (32-bit) or double field holds."""
    return _FLOAT32_MAX if field.type == _T.TYPE_FLOAT else _DOUBLE_MAX


def expected_integer_in_range(field: FieldDescriptor) -> str:
    low, high = int_range(field)
    return f"expected an integer from {low} to {high}"


def expected_number_in_range(field: FieldDescriptor) -> str:
    limit = float_limit(field)
    return f"expected a number from {-limit:.8g} to {limit:.8g}"


def enum_choices(enum: EnumDescriptor) -> str:
    """The value names a caller may send, for a message: ``COLOR_RED, COLOR_GREEN``.

    A zero value named ``*_UNSPECIFIED`` is left out (it means "not set": nobody means to send
    it), and a long list is cut short with its length.
    """
    names = [
        v.name for v in enum.values if not (v.number == 0 and v.name.endswith("_UNSPECIFIED"))
    ] or [v.name for v in enum.values]
    if len(names) > _CHOICES_SHOWN:
        return ", ".join(names[:_CHOICES_SHOWN]) + f", ... ({len(names)} values)"
    return ", ".join(names)


def _parse_int(field: FieldDescriptor, text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueProblem("expected an integer")
    value = int(text)
    low, high = _INT_RANGES[field.type]
    if not low <= value <= high:
        raise ValueProblem(expected_integer_in_range(field))
    return value


def _parse_float(field: FieldDescriptor, text: str) -> float:
    if text in _FLOAT_WORDS:
        return _FLOAT_WORDS[text]
    if not _FLOAT_RE.fullmatch(text):
        raise ValueProblem("expected a number (or NaN, Infinity or -Infinity)")
    value = float(text)
    if math.isinf(value) or abs(value) > float_limit(field):
        raise ValueProblem(expected_number_in_range(field))
    return value


def _parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueProblem("expected true or false (or 1 or 0)")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (``ValueProblem`` otherwise); a mix of the
    two alphabets is refused, as Go's decoders do."""
    url_safe = "-" in text or "_" in text
    if url_safe and ("+" in text or "/" in text):
        raise ValueProblem(f"expected {EXPECTED_BASE64}, not a mix of the two alphabets")
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueProblem(f"expected {EXPECTED_BASE64}") from exc


def _parse_enum(field: FieldDescriptor, text: str) -> int:
    enum = enum_type_of(field)
    by_name = enum.values_by_name.get(text)
    if by_name is not None:
        return by_name.number
    if _INT_RE.fullmatch(text) and int(text) in enum.values_by_number:
        return int(text)
    raise ValueProblem(f"expected one of {enum_choices(enum)} (or its number)")


def _scalar(field: FieldDescriptor, text: str) -> Any:
    kind = field.type
    if kind == _T.TYPE_STRING:
        return text
    if kind == _T.TYPE_BOOL:
        return _parse_bool(text)
    if kind == _T.TYPE_ENUM:
        return _parse_enum(field, text)
    if kind == _T.TYPE_BYTES:
        return decode_base64(text)
    if kind in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
        return _parse_float(field, text)
    if kind in _INT_RANGES:
        return _parse_int(field, text)
    raise ValueProblem("this field cannot take a single value")


def is_text_settable(field: FieldDescriptor) -> bool:
    """True when a text value can set ``field``: a scalar, an enum or a well-known type."""
    if _is_map(field):
        return False
    nested = field.message_type
    if nested is None:
        return True
    name = nested.full_name
    return name in _WRAPPERS or name in _JSON_STRING_TYPES or name == _FIELD_MASK


def _fill_message(target: Message, text: str) -> None:
    # `target` is a wrapper or a FieldMask of the request's own pool (a class protobuf builds at
    # run time, perhaps from reflection): its fields are not attributes of Message's stub.
    descriptor = descriptor_of(target)
    name = descriptor.full_name
    if name in _WRAPPERS:
        value_field = descriptor.fields_by_name["value"]
        target.value = _scalar(value_field, text)  # type: ignore[attr-defined]
    elif name == _FIELD_MASK:
        # grpc-gateway splits the text on commas and keeps the paths as given; a path the JSON
        # mapping cannot write back (upper case, "__") is refused here, not at the response.
        target.paths.extend(p for p in text.split(",") if p)  # type: ignore[attr-defined]
        try:
            target.ToJsonString()  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ValueProblem(
                "expected comma-separated field paths in proto names "
                '(like "title,author.birth_year")'
            ) from exc
    elif name in _JSON_STRING_TYPES:
        try:
            json_format.Parse(json.dumps(text), target)
        except (json_format.Error, ValueError, TypeError, OverflowError) as exc:
            what = EXPECTED_TIMESTAMP if name.endswith("Timestamp") else EXPECTED_DURATION
            raise ValueProblem(f"expected {what}") from exc
    else:
        raise ValueProblem("a message cannot take a single value: give each of its fields")


def set_text_value(message: Message, fields: Iterable[FieldDescriptor], text: str) -> None:
    """Set (or, for a repeated field, append) the field at the end of ``fields`` from text.

    Intermediate messages are created on the way. Raises ``ValueProblem`` if the text does not
    fit the field.
    """
    *parents, leaf = fields
    target = message
    for parent in parents:
        target = getattr(target, parent.name)
    if _is_map(leaf):
        raise ValueProblem("a map takes one parameter per entry, like name[KEY]=VALUE")
    try:
        if leaf.message_type is not None:
            if leaf.is_repeated:
                item = getattr(target, leaf.name).add()
                try:
                    _fill_message(item, text)
                except ValueProblem:
                    del getattr(target, leaf.name)[-1]
                    raise
            else:
                sub = getattr(target, leaf.name)
                scratch = type(sub)()
                _fill_message(scratch, text)
                sub.CopyFrom(scratch)
        elif leaf.is_repeated:
            getattr(target, leaf.name).append(_scalar(leaf, text))
        else:
            setattr(target, leaf.name, _scalar(leaf, text))
    except (TypeError, ValueError) as exc:
        # A str protobuf will not store (lone surrogates), or a value upb refuses.
        if isinstance(exc, ValueProblem):
            raise
        raise _stored_problem(leaf) from exc


def _stored_problem(field: FieldDescriptor) -> ValueProblem:
    """The value passed the checks above but protobuf would not store it: said without the
    library's own exception text."""
    if field.type == _T.TYPE_STRING:
        return ValueProblem("expected valid Unicode text")
    return ValueProblem("not a value this field can hold")


def _is_bound(names: tuple[str, ...], bound: Set[str]) -> bool:
    return any(".".join(names[:i]) in bound for i in range(1, len(names) + 1))


def parse_query(raw: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a raw query string, percent-decoded as UTF-8 with "+" as a
    space; a malformed escape or bytes that are not UTF-8 are a 400 naming the parameter.

    >>> parse_query(b"owner=C12345&kind=PHOTO&q=a+b%21")
    [('owner', 'C12345'), ('kind', 'PHOTO'), ('q', 'a b!')]
    >>> try:
    ...     parse_query(b"owner=%zz")
    ... except GatewayError as exc:
    ...     print(exc.http_status, exc.message[:46])
    400 query parameter 'owner': '%zz' has a malformed
    """
    for pair in raw.split(b"&"):
        if _BAD_ESCAPE.search(pair):
            name, _, value = pair.partition(b"=")
            shown = unquote(name.decode("latin-1"), errors="replace")
            raise GatewayError.bad_query_string(
                f"query parameter {shown!r}: {value.decode('latin-1')!r} has a malformed "
                "percent escape (expected % and two hex digits)"
            )
    try:
        return parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise GatewayError.bad_query_string(f"query string is not UTF-8: {exc.reason}") from None


def apply_query(
    message: Message,
    params: list[tuple[str, str]],
    *,
    bound: set[str],
    strict: bool,
) -> None:
    """Fill ``message`` from query parameters, in order; see the module docstring.

    ``bound`` holds the dotted proto field paths set by the path or the body; a parameter on
    one of them, or inside one, is ignored.

    >>> from hms.testing.v1 import echo_pb2
    >>> req = echo_pb2.EchoRequest()
    >>> apply_query(req, [("message", "hi"), ("nope", "1")], bound=set(), strict=False)
    >>> req.message
    'hi'
    """
    descriptor = descriptor_of(message)
    seen: set[tuple[str, ...]] = set()  # singular fields set so far (map entries by key)
    for name, value in params:
        path, key = _map_key(name)
        try:
            fields = resolve_field_path(descriptor, path)
        except UnknownField:
            if strict:
                raise GatewayError.unknown_field(name, "query") from None
            continue
        names = tuple(f.name for f in fields)
        if _is_bound(names, bound):
            continue
        leaf = fields[-1]
        if key is None and _is_map(leaf):
            raise GatewayError.bad_query_value(
                name, value, f"a map takes one parameter per entry, like {name}[KEY]=VALUE"
            )
        once = (*names, key) if key is not None else names
        if (key is not None or not leaf.is_repeated) and once in seen:
            raise GatewayError.bad_query_value(name, value, "given more than once")
        seen.add(once)
        try:
            if key is not None:
                set_map_entry(message, fields, key, value)
            else:
                set_text_value(message, fields, value)
        except ValueProblem as exc:
            raise GatewayError.bad_query_value(name, value, str(exc)) from exc


def _map_key(name: str) -> tuple[str, str | None]:
    """``labels[a]`` -> (``labels``, ``a``); any other name -> (name, None)."""
    if name.endswith("]"):
        base, bracket, key = name[:-1].partition("[")
        if bracket and base and "[" not in key and "]" not in key:
            return base, key
    return name, None


def set_map_entry(message: Message, fields: Iterable[FieldDescriptor], key: str, text: str) -> None:
    """Set one entry of the map field at the end of ``fields`` (``ValueProblem`` if it is not a
    map of scalars, or the key or the value does not fit)."""
    *parents, leaf = fields
    if not _is_map(leaf):
        raise ValueProblem("only a map field takes [key]")
    entry = message_type_of(leaf)
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    if value_field.message_type is not None:
        raise ValueProblem("a map of messages cannot be set from the query")
    target = message
    for parent in parents:
        target = getattr(target, parent.name)
    try:
        parsed_key = _scalar(key_field, key)
    except ValueProblem as exc:
        raise ValueProblem(f"key [{key}]: {exc}") from exc
    try:
        getattr(target, leaf.name)[parsed_key] = _scalar(value_field, text)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueProblem):
            raise
        raise _stored_problem(value_field) from exc
