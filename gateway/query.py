"""Fill a request message from query parameters, as grpc-gateway's ``PopulateQueryParameters``.

Pure: no I/O. A parameter names a field path, each segment by its proto name or its JSON name
(``page_size`` or ``pageSize``), dots walking into nested singular messages
(``book.author.name``). Values are the text forms grpc-gateway v2's ``runtime/query.go``
(``parseField``, ``parseMessage``) accepts, kind by kind:

- repeated fields by repetition (``?tag=a&tag=b``);
- enums by name or number (``CHANNEL_SMS`` or ``2``), numbers only if the enum defines them;
- bools as Go's ``strconv.ParseBool`` reads them: ``true``/``false``/``1``/``0``,
  ``True``/``FALSE``/``t``/``f`` too;
- integers in decimal as ``strconv.ParseInt``/``ParseUint`` (int64 too: the text is exact),
  range-checked for the field's type; a sign only on signed types;
- floats as ``strconv.ParseFloat``: decimal or exponent form, hex (``0x1.8p1``), ``NaN``,
  ``Inf``/``Infinity`` with a sign, in any case; a float field refuses what overflows 32 bits;
- bytes in standard or URL-safe base64, padded or not, line breaks skipped;
- Timestamp as Go's ``time.Parse(time.RFC3339Nano, ...)``; Duration as ``time.ParseDuration``
  (``1.5s``, ``300ms``, ``1h30m``, units ``h m s ms us µs ns``); FieldMask as comma-separated
  paths, kept as given; the wrappers in the wrapped scalar's form; ``google.protobuf.Value``
  and ``Struct`` as JSON text (``?filter={"a":1}``), like ``protojson``;
- map entries as ``labels[key]=value`` (any value kind above; the key in its field's form).

Nothing a client sends is dropped without a 400 that names the parameter and says what was
expected (``GatewayError.bad_query_value``); where grpc-gateway would keep one value of two at
random, or truncate, the gateway refuses instead (docs/gateway.md, "Differences from
grpc-gateway"):

- a field that holds one value given twice (``?name=a&name=b``, or under both its names);
- two members of one oneof (``field already set for oneof`` in grpc-gateway), also when the
  other member comes from the path or the body;
- a message field given whole and through its fields (``?time=...&time.seconds=5``);
- a dotted path through a field that is not a singular message (``?tags.x=1``: ``invalid path:
  "tags" is not a message``);
- a Duration or Timestamp finer than a nanosecond (Go truncates).

Every problem is told in the caller's terms, as what was expected (``expected an integer from
-2147483648 to 2147483647``, ``expected one of COLOR_RED, COLOR_GREEN (or its number)``), never
as the text of a Python or protobuf exception; ``transcode`` words its JSON body errors the same
way and shares :func:`enum_choices` and the phrases here.

A parameter on a field bound by the path or the body (or inside one) is ignored: the path wins.
An unknown parameter is ignored unless ``strict``, as in grpc-gateway.

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
from fractions import Fraction
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from hms_gateway.errors import GatewayError
from hms_gateway.json_writer import is_map

__all__ = [
    "EXPECTED_BASE64",
    "EXPECTED_DURATION",
    "EXPECTED_QUERY_DURATION",
    "EXPECTED_TIMESTAMP",
    "NotAMessage",
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
    "set_map_entry",
    "set_text_value",
]


class ValueProblem(ValueError):
    """A text value does not fit its field; the message says why."""


class UnknownField(LookupError):
    """A dotted path names no field (``args[0]`` is the path)."""


class NotAMessage(UnknownField):
    """A dotted path goes on after a field that has no fields of its own: a scalar, a repeated
    field or a map (grpc-gateway: ``invalid path: "tags" is not a message``).

    ``walked`` holds the fields up to and including that one; ``problem`` says it in words.
    """

    def __init__(self, path: str, walked: tuple[FieldDescriptor, ...]) -> None:
        super().__init__(path)
        self.walked = walked

    @property
    def problem(self) -> str:
        field = self.walked[-1]
        if is_map(field):
            return (
                f"{field.name!r} is a map, not a message: set an entry as {field.name}[KEY]=VALUE"
            )
        what = "a repeated field" if field.is_repeated else f"a field of type {_kind_name(field)}"
        return f"{field.name!r} is {what}, not a message: nothing can follow it after a dot"


_T = FieldDescriptor
_INT_RE = re.compile(r"[+-]?[0-9]+")
_UINT_RE = re.compile(r"[0-9]+")
# A "%" not followed by two hex digits: Go's url.ParseQuery (so grpc-gateway) refuses it, and
# taking it literally would store "%zz" where the client meant something else.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# grpc-gateway's valuesKeyRegexp: the last "[...]" at the end of a name is a map key.
_MAP_KEY_RE = re.compile(r"(.*)\[(.*)\]")
_DOUBLE_MAX = 1.7976931348623157e308
_FLOAT32_MAX = 3.4028234663852886e38
# Go's ParseFloat(s, 32) rounds to the nearest float32 and fails only from half a unit in the
# last place above the largest one (2**128 - 2**103, which rounds to infinity).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
# strconv.ParseFloat's forms: decimal, hex with a "p" exponent, and the special words.
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT_RE = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+"
)
_INFINITY_RE = re.compile(r"([+-]?)(?:inf|infinity)", re.IGNORECASE)
# More digits than any protobuf integer has (and than int() reads without complaint).
_MAX_DIGITS = 20
_TRUE = frozenset({"true", "True", "TRUE", "t", "T", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "f", "F", "0"})

_INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), (0, 2**64 - 1)),
}
_KIND_NAMES = {
    _T.TYPE_DOUBLE: "double",
    _T.TYPE_FLOAT: "float",
    _T.TYPE_INT64: "int64",
    _T.TYPE_UINT64: "uint64",
    _T.TYPE_INT32: "int32",
    _T.TYPE_FIXED64: "fixed64",
    _T.TYPE_FIXED32: "fixed32",
    _T.TYPE_BOOL: "bool",
    _T.TYPE_STRING: "string",
    _T.TYPE_BYTES: "bytes",
    _T.TYPE_UINT32: "uint32",
    _T.TYPE_ENUM: "enum",
    _T.TYPE_SFIXED32: "sfixed32",
    _T.TYPE_SFIXED64: "sfixed64",
    _T.TYPE_SINT32: "sint32",
    _T.TYPE_SINT64: "sint64",
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
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_FIELD_MASK = "google.protobuf.FieldMask"
# Taken as JSON text, as grpc-gateway's parseMessage does with protojson.Unmarshal. Not
# ListValue, Any or Empty: grpc-gateway refuses them ("unsupported message type").
_JSON_VALUED = {
    "google.protobuf.Value": 'JSON (like 1, "text", true, null, [1,2] or {"a":1})',
    "google.protobuf.Struct": 'a JSON object (like {"a":1})',
}
_JSON_DEPTH = 100  # json_format's limit on nesting, as for request bodies


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


def _kind_name(field: FieldDescriptor) -> str:
    nested = field.message_type
    return nested.full_name if nested is not None else _KIND_NAMES.get(field.type, "scalar")


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

    Raises ``UnknownField`` when a segment names no field, and its subclass ``NotAMessage``
    when the path goes on after a field that is not a singular message.
    """
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for segment in path.split("."):
        if current is None:
            raise NotAMessage(path, tuple(fields))
        field = _field_named(current, segment)
        if field is None:
            raise UnknownField(path)
        fields.append(field)
        nested = field.message_type
        walkable = nested is not None and not field.is_repeated and not is_map(field)
        current = nested if walkable else None
    return tuple(fields)


# -- what a field expects, in the caller's terms (shared with transcode's JSON body errors) ----

_CHOICES_SHOWN = 12
EXPECTED_TIMESTAMP = 'an RFC 3339 timestamp (like "2024-05-01T10:00:00Z")'
# The JSON body's form (protojson); a query or path value takes Go's forms as well.
EXPECTED_DURATION = 'a duration in seconds with an "s" suffix (like "1.5s")'
EXPECTED_QUERY_DURATION = 'a duration like "1.5s", "300ms" or "1h30m" (units h, m, s, ms, us, ns)'
EXPECTED_BASE64 = "base64 (standard or URL-safe alphabet, padding optional)"
_EXPECTED_NUMBER = "expected a number (or NaN, Infinity or -Infinity)"
_EXPECTED_FIELD_PATHS = (
    'expected comma-separated field paths in proto names (like "title,author.birth_year")'
)


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


# -- scalars, as Go's strconv reads them --------------------------------------------------------


def _parse_int(field: FieldDescriptor, text: str) -> int:
    low, high = _INT_RANGES[field.type]
    if not _INT_RE.fullmatch(text):
        raise ValueProblem("expected an integer")
    if len(text.lstrip("+-0")) > _MAX_DIGITS:
        raise ValueProblem(expected_integer_in_range(field))
    value = int(text)
    if not low <= value <= high:
        raise ValueProblem(expected_integer_in_range(field))
    if low == 0 and not _UINT_RE.fullmatch(text):  # strconv.ParseUint takes no sign, not "+"
        raise ValueProblem(expected_integer_in_range(field) + ", without a sign")
    return value


def _parse_float(field: FieldDescriptor, text: str) -> float:
    infinity = _INFINITY_RE.fullmatch(text)
    if infinity is not None:
        return -math.inf if infinity.group(1) == "-" else math.inf
    if text.lower() == "nan":  # Go takes no sign before NaN
        return math.nan
    if _DECIMAL_RE.fullmatch(text):
        value = float(text)
    elif _HEX_FLOAT_RE.fullmatch(text):
        try:
            value = float.fromhex(text)
        except OverflowError:
            value = math.inf
    else:
        raise ValueProblem(_EXPECTED_NUMBER)
    limit = _FLOAT32_OVERFLOW if field.type == _T.TYPE_FLOAT else math.inf
    if math.isinf(value) or abs(value) >= limit:
        raise ValueProblem(expected_number_in_range(field))
    return value


def _parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueProblem("expected true or false (or 1 or 0)")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not, line breaks skipped (Go's decoders skip them);
    ``ValueProblem`` otherwise. A mix of the two alphabets is refused, as Go's decoders do."""
    text = text.replace("\r", "").replace("\n", "")
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
    # An enum number is an int32 (Go's EnumNumber(i) would wrap 2**32 + 1 round to 1).
    if _INT_RE.fullmatch(text) and len(text.lstrip("+-0")) <= _MAX_DIGITS:
        number = int(text)
        if -(2**31) <= number < 2**31 and number in enum.values_by_number:
            return number
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


# -- well-known types, as grpc-gateway's parseMessage reads them -------------------------------

_NANOS = 10**9
# Go's time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+, the unit being whatever runs up
# to the next digit or point ("1 s" has the unit " s", which is unknown).
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,  # micro sign
    "\u03bcs": 10**3,  # Greek mu
    "ms": 10**6,
    "s": _NANOS,
    "m": 60 * _NANOS,
    "h": 3600 * _NANOS,
}
_DURATION_MAX_SECONDS = 315_576_000_000  # google.protobuf.Duration's range: +-10000 years


def _parse_duration(text: str) -> tuple[int, int]:
    """(seconds, nanos) of a Go duration; ``ValueProblem`` if it is not one, is finer than a
    nanosecond, or is beyond the Duration's range."""
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    total = Fraction(0)
    if rest != "0":  # Go's special case: a bare zero needs no unit
        if not rest:
            raise ValueProblem(f"expected {EXPECTED_QUERY_DURATION}")
        position = 0
        while position < len(rest):
            part = _DURATION_PART.match(rest, position)
            assert part is not None  # every group may be empty
            whole, fraction, unit = part.groups()
            if not whole and not fraction:
                raise ValueProblem(f"expected {EXPECTED_QUERY_DURATION}")
            scale = _DURATION_UNITS.get(unit)
            if scale is None:
                raise ValueProblem(f"expected {EXPECTED_QUERY_DURATION}")
            digits = (fraction or "").rstrip("0")
            if len(whole.lstrip("0")) > _MAX_DIGITS or len(digits) > _MAX_DIGITS:
                # Beyond the range, or finer than a nanosecond whatever the unit.
                raise ValueProblem(f"expected {EXPECTED_QUERY_DURATION}")
            total += (int(whole or "0") + Fraction(int(digits or "0"), 10 ** len(digits))) * scale
            position = part.end()
    if total.denominator != 1:
        raise ValueProblem(f"expected {EXPECTED_QUERY_DURATION}, in whole nanoseconds")
    seconds, nanos = divmod(int(total), _NANOS)
    if seconds > _DURATION_MAX_SECONDS:
        raise ValueProblem(
            f"expected {EXPECTED_QUERY_DURATION}, at most {_DURATION_MAX_SECONDS}s either way"
        )
    return (-seconds, -nanos) if negative else (seconds, nanos)


# Go's time.Parse(time.RFC3339Nano, ...): a four-digit year, two-digit month, day, minute and
# second, a one- or two-digit hour, an optional fraction after "." or ",", "Z" or +hh:mm.
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,]([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_TIMESTAMP_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
_TIMESTAMP_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _parse_timestamp(text: str) -> tuple[int, int]:
    """(seconds, nanos) since the epoch; ``ValueProblem`` if not RFC 3339 as Go reads it, finer
    than a nanosecond, or outside 0001-01-01 to 9999-12-31 (UTC)."""
    found = _TIMESTAMP_RE.fullmatch(text)
    if found is None:
        raise ValueProblem(f"expected {EXPECTED_TIMESTAMP}")
    year, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    fraction, sign, offset_hours, offset_minutes = found.group(7, 8, 9, 10)
    days_in_month = 29 if month == 2 and _is_leap(year) else _MONTH_DAYS[(month - 1) % 12]
    # Go allows an offset up to 24:60 ("time zone offset hour" beyond).
    offset = 0
    if sign is not None:
        if int(offset_hours) > 24 or int(offset_minutes) > 60:
            raise ValueProblem(f"expected {EXPECTED_TIMESTAMP}")
        offset = (int(offset_hours) * 3600 + int(offset_minutes) * 60) * (-1 if sign == "-" else 1)
    if not (1 <= month <= 12 and 1 <= day <= days_in_month and hour < 24):
        raise ValueProblem(f"expected {EXPECTED_TIMESTAMP}")
    if minute >= 60 or second >= 60:
        raise ValueProblem(f"expected {EXPECTED_TIMESTAMP}")
    digits = fraction or ""
    if digits[9:].strip("0"):
        raise ValueProblem(f"expected {EXPECTED_TIMESTAMP}, in whole nanoseconds")
    nanos = int(digits[:9].ljust(9, "0"))
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    seconds -= offset
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX:
        raise ValueProblem(
            f"expected {EXPECTED_TIMESTAMP} from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
        )
    return seconds, nanos


def _parse_json_value(text: str, what: str) -> Any:
    """JSON text as protojson reads it: finite numbers (all doubles), no key twice."""

    def finite(number: str) -> float:
        value = float(number)
        if math.isinf(value):
            raise ValueProblem(f"expected {what}, with numbers a double can hold")
        return value

    def no_constants(word: str) -> float:
        raise ValueProblem(f"expected {what} ({word} is not JSON)")

    def one_key_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        members: dict[str, Any] = {}
        for key, value in pairs:
            if key in members:
                raise ValueProblem(f"expected {what}, each key once ({key!r} is repeated)")
            members[key] = value
        return members

    try:
        return json.loads(
            text,
            parse_float=finite,
            parse_int=finite,
            parse_constant=no_constants,
            object_pairs_hook=one_key_each,
        )
    except json.JSONDecodeError as exc:
        raise ValueProblem(f"expected {what}") from exc
    except RecursionError:
        raise ValueProblem(f"expected {what}, nested at most {_JSON_DEPTH} deep") from None


def is_text_settable(field: FieldDescriptor) -> bool:
    """True when a text value can set ``field``: a scalar, an enum or a well-known type with a
    text form (JSON-valued ones, ``Struct`` and ``Value``, are left out: a path segment or an
    OpenAPI query parameter of type string cannot stand for them)."""
    if is_map(field):
        return False
    nested = field.message_type
    if nested is None:
        return True
    name = nested.full_name
    return name in _WRAPPERS or name in (_TIMESTAMP, _DURATION, _FIELD_MASK)


def _fill_message(target: Message, text: str) -> None:
    # `target` is a well-known type of the request's own pool (a class protobuf builds at run
    # time, perhaps from reflection): its fields are not attributes of Message's stub.
    descriptor = descriptor_of(target)
    name = descriptor.full_name
    filled: Any = target
    if name in _WRAPPERS:
        filled.value = _scalar(descriptor.fields_by_name["value"], text)
    elif name == _TIMESTAMP:
        filled.seconds, filled.nanos = _parse_timestamp(text)
    elif name == _DURATION:
        filled.seconds, filled.nanos = _parse_duration(text)
    elif name == _FIELD_MASK:
        # grpc-gateway splits the text on commas and keeps the paths as given. An empty value
        # is an empty mask; an empty path among others, or one the JSON mapping cannot write
        # back (upper case, "__"), is refused here rather than failing the response.
        paths = text.split(",") if text else []
        if "" in paths:
            raise ValueProblem(f"{_EXPECTED_FIELD_PATHS}, none empty")
        filled.paths.extend(paths)
        try:
            filled.ToJsonString()
        except ValueError as exc:
            raise ValueProblem(_EXPECTED_FIELD_PATHS) from exc
    elif name in _JSON_VALUED:
        what = _JSON_VALUED[name]
        parsed = _parse_json_value(text, what)
        try:
            json_format.ParseDict(parsed, target, max_recursion_depth=_JSON_DEPTH)
        except UnicodeError:
            raise ValueProblem(f"expected {what}, in valid Unicode") from None
        except (json_format.Error, ValueError, TypeError) as exc:
            detail = ", nested at most 100 deep" if "too deep" in str(exc) else ""
            raise ValueProblem(f"expected {what}{detail}") from exc
    else:
        raise ValueProblem("a message cannot take a single value: give each of its fields")


def _fill_scratch(message_class: type[Message], text: str) -> Message:
    """A new ``message_class`` filled from ``text``, so that a value that does not fit leaves
    the request untouched."""
    scratch = message_class()
    _fill_message(scratch, text)
    return scratch


def set_text_value(message: Message, fields: Iterable[FieldDescriptor], text: str) -> None:
    """Set (or, for a repeated field, append) the field at the end of ``fields`` from text.

    Intermediate messages are created on the way. Raises ``ValueProblem`` if the text does not
    fit the field.
    """
    *parents, leaf = fields
    target = message
    for parent in parents:
        target = getattr(target, parent.name)
    if is_map(leaf):
        raise ValueProblem("a map takes one parameter per entry, like name[KEY]=VALUE")
    try:
        if leaf.message_type is not None:
            if leaf.is_repeated:
                items = getattr(target, leaf.name)
                item = items.add()
                try:
                    _fill_message(item, text)
                except ValueProblem:
                    del items[-1]
                    raise
            else:
                sub = getattr(target, leaf.name)
                sub.CopyFrom(_fill_scratch(type(sub), text))  # sets it, even if empty
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


# -- the query string -------------------------------------------------------------------------


def parse_query(raw: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a raw query string, percent-decoded as UTF-8 with "+" as a
    space; a malformed escape, a raw ";" or bytes that are not UTF-8 are a 400 naming the
    parameter.

    Go's ``url.ParseQuery`` (so grpc-gateway, through ``Request.ParseForm``) refuses a ";" as
    much as a bad escape: some servers split on it, so "a=1;b=2" means two things at once.

    >>> parse_query(b"owner=C12345&kind=PHOTO&q=a+b%21")
    [('owner', 'C12345'), ('kind', 'PHOTO'), ('q', 'a b!')]
    >>> try:
    ...     parse_query(b"owner=%zz")
    ... except GatewayError as exc:
    ...     print(exc.http_status, exc.message[:46])
    400 query parameter 'owner': '%zz' has a malformed
    """
    if not raw:
        return []  # most requests: nothing to check or decode
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        shown = unquote(name.decode("latin-1"), errors="replace")
        if _BAD_ESCAPE.search(pair):
            raise GatewayError.bad_query_string(
                f"query parameter {shown!r}: {value.decode('latin-1')!r} has a malformed "
                "percent escape (expected % and two hex digits)"
            )
        if b";" in pair:
            raise GatewayError.bad_query_string(
                f"query parameter {shown!r}: a raw ';' is not allowed (separate parameters "
                "with '&', and write a ';' in a name or value as %3B)"
            )
    try:
        return parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise GatewayError.bad_query_string(f"query string is not UTF-8: {exc.reason}") from None


# -- query parameters into the message --------------------------------------------------------


def _is_bound(names: tuple[str, ...], bound: Set[str]) -> bool:
    return any(".".join(names[:i]) in bound for i in range(1, len(names) + 1))


class _Given:
    """What the parameters applied so far have set, to refuse a value that would silently
    replace or be replaced by another."""

    def __init__(self) -> None:
        self.once: set[tuple[object, ...]] = set()  # singular fields, map entries (by key)
        self.whole: dict[tuple[str, ...], str] = {}  # message fields set from one text value
        self.entered: dict[tuple[str, ...], str] = {}  # messages a parameter went inside

    def claim(
        self, name: str, names: tuple[str, ...], leaf: FieldDescriptor, key: object = None
    ) -> None:
        for depth in range(1, len(names)):
            whole = self.whole.get(names[:depth])
            if whole is not None:
                raise ValueProblem(
                    f"{whole!r} already gives that message whole: "
                    "give a message whole or by its fields, not both"
                )
        sets_whole = key is None and leaf.message_type is not None and not leaf.is_repeated
        entered = self.entered.get(names)
        if sets_whole and entered is not None:
            raise ValueProblem(
                f"{entered!r} already sets one of its fields: "
                "give a message whole or by its fields, not both"
            )
        once = names if key is None else (*names, key)
        if (key is not None or not leaf.is_repeated) and once in self.once:
            raise ValueProblem("given more than once")
        self.once.add(once)
        for depth in range(1, len(names)):
            self.entered.setdefault(names[:depth], name)
        if sets_whole:
            self.whole[names] = name


def _check_oneofs(
    message: Message, fields: tuple[FieldDescriptor, ...], bound: Set[tuple[str, ...]]
) -> None:
    """Refuse a field whose oneof already holds another member, set by an earlier parameter,
    the body or the path (grpc-gateway: ``field already set for oneof``). The same message
    member may be entered more than once (``?pick.a=1&pick.b=2``)."""
    target: Any = message
    for depth, field in enumerate(fields):
        oneof = field.containing_oneof
        if oneof is not None:
            prefix = tuple(f.name for f in fields[:depth])
            for member in oneof.fields:
                if member.name != field.name and any(
                    path[: depth + 1] == (*prefix, member.name) for path in bound
                ):
                    raise ValueProblem(
                        f"oneof {oneof.name!r} has {member.name!r} from the path or the body: "
                        "give only one of its fields"
                    )
            current = target.WhichOneof(oneof.name)
            if current is not None and current != field.name:
                raise ValueProblem(
                    f"oneof {oneof.name!r} already has {current!r}: give only one of its fields"
                )
        if depth < len(fields) - 1:
            target = getattr(target, field.name)


def apply_query(
    message: Message,
    params: list[tuple[str, str]],
    *,
    bound: set[str],
    strict: bool,
) -> None:
    """Fill ``message`` from query parameters, in order; see the module docstring.

    ``bound`` holds the dotted proto field paths set by the path or the body; a parameter on
    one of them, or inside one, is ignored. The body must already be in ``message``.

    >>> from hms.testing.v1 import echo_pb2
    >>> req = echo_pb2.EchoRequest()
    >>> apply_query(req, [("message", "hi"), ("nope", "1")], bound=set(), strict=False)
    >>> req.message
    'hi'
    """
    descriptor = descriptor_of(message)
    bound_paths = {tuple(path.split(".")) for path in bound}
    given = _Given()
    for name, value in params:
        path, key = _map_key(name)
        try:
            fields = resolve_field_path(descriptor, path)
        except NotAMessage as exc:
            if _is_bound(tuple(f.name for f in exc.walked), bound):
                continue
            raise GatewayError.bad_query_value(name, value, exc.problem) from None
        except UnknownField:
            if strict:
                raise GatewayError.unknown_field(name, "query") from None
            continue
        names = tuple(f.name for f in fields)
        if _is_bound(names, bound):
            continue
        leaf = fields[-1]
        try:
            if key is None:
                if is_map(leaf):
                    raise ValueProblem(
                        f"a map takes one parameter per entry, like {name}[KEY]=VALUE"
                    )
                given.claim(name, names, leaf)
                _check_oneofs(message, fields, bound_paths)
                set_text_value(message, fields, value)
            else:
                entry_key = _entry_key(leaf, key)
                given.claim(name, names, leaf, entry_key)
                _check_oneofs(message, fields, bound_paths)
                set_map_entry(message, fields, key, value)
        except ValueProblem as exc:
            raise GatewayError.bad_query_value(name, value, str(exc)) from exc


def _map_key(name: str) -> tuple[str, str | None]:
    """``labels[a]`` -> (``labels``, ``a``); any other name -> (name, None).

    As grpc-gateway's ``valuesKeyRegexp`` (``^(.*)\\[(.*)\\]$``): the key runs from the last
    "[" that leaves a "]" at the end, so ``labels[a]b]`` is the key ``a]b``.
    """
    found = _MAP_KEY_RE.fullmatch(name)
    if found is None:
        return name, None
    return found.group(1), found.group(2)


def _entry_key(leaf: FieldDescriptor, key: str) -> object:
    """The parsed key of a map entry (``ValueProblem`` if ``leaf`` is no map, or the key does
    not fit it)."""
    if not is_map(leaf):
        raise ValueProblem("only a map field takes [key]")
    key_field = message_type_of(leaf).fields_by_name["key"]
    try:
        parsed: object = _scalar(key_field, key)
    except ValueProblem as exc:
        raise ValueProblem(f"key [{key}]: {exc}") from exc
    return parsed


def set_map_entry(message: Message, fields: Iterable[FieldDescriptor], key: str, text: str) -> None:
    """Set one entry of the map field at the end of ``fields`` (``ValueProblem`` if it is not a
    map, the key or the value does not fit, or its values are messages without a text form)."""
    *parents, leaf = fields
    parsed_key = _entry_key(leaf, key)
    value_field = message_type_of(leaf).fields_by_name["value"]
    nested = value_field.message_type
    if nested is not None and not (
        nested.full_name in _JSON_VALUED or is_text_settable(value_field)
    ):
        raise ValueProblem("a map of messages cannot be set from the query")
    target = message
    for parent in parents:
        target = getattr(target, parent.name)
    entries = getattr(target, leaf.name)
    try:
        if nested is not None:
            filled = _fill_scratch(message_factory.GetMessageClass(nested), text)
            entries[parsed_key].CopyFrom(filled)
        else:
            entries[parsed_key] = _scalar(value_field, text)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueProblem):
            raise
        raise _stored_problem(value_field) from exc
