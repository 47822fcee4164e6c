"""Turn an HTTP request into a gRPC request message and a response message into HTTP bytes.

Pure: no I/O. A :class:`RequestMapping` is one ``google.api.HttpRule`` (or one of its
``additional_bindings``) checked against its method's descriptors. ``build_request`` fills the
request in this order, so that the path always wins:

1. the body: ``body: "*"`` parses the whole JSON body into the request, ``body: "field"`` into
   that field; a ``google.api.HttpBody`` target takes the raw bytes and the content type;
2. the query, for every field not bound by the path or the body (none when ``body: "*"``);
3. the path variables, overwriting whatever the body or the query set;
4. PATCH with a body field and a still empty ``update_mask`` FieldMask: the mask is filled
   from the JSON keys sent, in proto field names (grpc-gateway's ``FieldMaskFromRequestBody``).

JSON is protobuf's canonical mapping (``json_format``) with grpc-gateway v2's defaults, each
changeable in :class:`JsonOptions`. Before ``json_format`` reads a body, the decoded JSON is
checked against the message (:class:`_BodyCheck`), so that a 400 names the field as the caller
wrote it, with its path (``book.authors[2]``), and says what was expected in JSON terms:

    request body is not valid: pages: expected an integer (a JSON number or a string of
    digits), got "many"

never the text of a Python exception (``invalid literal for int() with base 10``). The check
also refuses what ``json_format`` would quietly take: ``true`` for an enum or a number, ``1.5``
for an enum, base64 with stray characters, a field given under both of its names.

>>> from google.api import http_pb2
>>> from hms.testing.v1 import echo_pb2
>>> method = echo_pb2.DESCRIPTOR.services_by_name["EchoService"].methods_by_name["Echo"]
>>> (mapping,) = RequestMapping.from_rule(http_pb2.HttpRule(post="/v1/echo", body="*"), method)
>>> mapping.build_request(echo_pb2.EchoRequest, {}, [], b'{"message": "hi"}').message
'hi'
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from google.api import http_pb2
from google.protobuf import duration_pb2, field_mask_pb2, json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from hms_gateway.errors import GatewayError
from hms_gateway.json_reader import Unreadable, reader_for
from hms_gateway.json_writer import is_map
from hms_gateway.jsonpb import DEFAULT_OPTIONS, JsonOptions, to_json
from hms_gateway.query import (
    EXPECTED_BASE64,
    EXPECTED_DURATION,
    EXPECTED_TIMESTAMP,
    UnknownField,
    ValueProblem,
    apply_query,
    decode_base64,
    descriptor_of,
    enum_choices,
    enum_type_of,
    expected_integer_in_range,
    expected_number_in_range,
    float_limit,
    int_range,
    is_integer_field,
    is_text_settable,
    message_type_of,
    resolve_field_path,
    set_text_value,
)
from hms_gateway.template.parse import parse_template

__all__ = ["DEFAULT_OPTIONS", "JsonOptions", "RequestMapping", "render_response"]

HTTP_BODY = "google.api.HttpBody"
_FIELD_MASK = "google.protobuf.FieldMask"
_JSON = "application/json"
_OCTET_STREAM = "application/octet-stream"
_RULE_METHODS = ("get", "put", "post", "delete", "patch")

M = TypeVar("M", bound=Message)


def _rule_pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError("HttpRule has no pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


@dataclass(frozen=True, slots=True)
class RequestMapping:
    """One HTTP binding of a gRPC method. Build with :meth:`from_rule`."""

    http_method: str
    template: str
    body: str
    response_body: str
    input_type: Descriptor
    output_type: Descriptor

    @classmethod
    def from_rule(
        cls, rule: http_pb2.HttpRule, method: MethodDescriptor
    ) -> tuple[RequestMapping, ...]:
        """The rule and its ``additional_bindings``, checked against the method's messages.

        Raises ``ValueError`` for a rule that cannot work (an unknown body or response field, a
        path variable naming no field, a bad template).
        """
        mappings = [cls._one(rule, method)]
        for extra in rule.additional_bindings:
            if extra.additional_bindings:
                raise ValueError(f"{method.full_name}: additional_bindings cannot nest")
            mappings.append(cls._one(extra, method))
        return tuple(mappings)

    @classmethod
    def _one(cls, rule: http_pb2.HttpRule, method: MethodDescriptor) -> RequestMapping:
        try:
            http_method, template = _rule_pattern(rule)
            parsed = parse_template(template)
        except ValueError as exc:  # TemplateError included
            raise ValueError(f"{method.full_name}: {exc}") from None
        for variable in parsed.variables:
            try:
                fields = resolve_field_path(method.input_type, variable.name)
            except UnknownField:
                raise ValueError(
                    f"{method.full_name}: path variable {variable.name!r} names no field"
                ) from None
            if not is_text_settable(fields[-1]):
                raise ValueError(
                    f"{method.full_name}: path variable {variable.name!r} cannot take text"
                )
        for which, name, message in (
            ("body", rule.body, method.input_type),
            ("response_body", rule.response_body, method.output_type),
        ):
            if name not in ("", "*") and name not in message.fields_by_name:
                raise ValueError(f"{method.full_name}: {which} {name!r} is not a top-level field")
        if rule.response_body == "*":
            raise ValueError(f"{method.full_name}: response_body cannot be '*'")
        return cls(
            http_method,
            template,
            rule.body,
            rule.response_body,
            method.input_type,
            method.output_type,
        )

    def build_request(
        self,
        message_class: type[M],
        bindings: Mapping[str, str],
        query: list[tuple[str, str]],
        body: bytes | None,
        *,
        options: JsonOptions = DEFAULT_OPTIONS,
        content_type: str = "",
    ) -> M:
        """The request message for one HTTP request; ``GatewayError`` (400) if it is wrong.

        ``bindings`` are the router's decoded path variables (dotted proto field paths);
        ``content_type`` is only used when the body goes into a ``google.api.HttpBody``.
        """
        request = message_class()
        sent: Any = None  # the decoded JSON body, kept for the PATCH update mask
        bound: set[str] = set(bindings)
        if self.body == "*":
            sent = self._read_body(request, None, body or b"", options, content_type)
        elif self.body:
            field = descriptor_of(request).fields_by_name[self.body]
            sent = self._read_body(request, field, body or b"", options, content_type)
            bound.add(self.body)
        if self.body != "*":
            apply_query(request, query, bound=bound, strict=options.strict)
        for path, value in bindings.items():
            _set_path_value(request, path, value)
        if self.http_method == "PATCH" and self.body not in ("", "*"):
            _fill_update_mask(request, self.body, sent)
        return request

    @staticmethod
    def _read_body(
        request: Message,
        field: FieldDescriptor | None,
        body: bytes,
        options: JsonOptions,
        content_type: str,
    ) -> Any:
        descriptor = descriptor_of(request)
        target_type = field.message_type if field is not None else descriptor
        if target_type is not None and target_type.full_name == HTTP_BODY:
            # An HttpBody of the request's own pool (a class protobuf builds at run time): its
            # fields are not attributes of Message's stub.
            target: Message = request if field is None else getattr(request, field.name)
            target.data = body  # type: ignore[attr-defined]
            target.content_type = content_type  # type: ignore[attr-defined]
            return None
        if not body.strip():
            return None  # an empty body is an empty message, as grpc-gateway (io.EOF)
        sent = _decode_json(body)
        if field is None and not isinstance(sent, dict):
            raise GatewayError.bad_json(f"expected a JSON object, got {_got(sent)}")
        document = sent if field is None else {field.name: sent}
        reader = reader_for(descriptor)
        if reader is not None:
            try:
                reader.read(request, document)
            except Unreadable:
                request.Clear()  # read the checked way, from the start (module docstring)
            else:
                return sent
        # Any's "@type" is looked up where the request's own types are (a private pool for
        # routes learnt by reflection), not in the process's default pool.
        pool = descriptor.file.pool
        check = _BodyCheck(pool, strict=options.strict)
        try:
            if field is None:
                check.message(descriptor, sent, "", 0)
            elif sent is not None:
                check.field(field, sent, "", 1)  # the request itself is the first level
        except _Refusal as refusal:
            raise GatewayError.bad_json(str(refusal)) from None
        except RecursionError:
            raise GatewayError.bad_json(_TOO_DEEP) from None
        try:
            json_format.ParseDict(
                document,
                request,
                ignore_unknown_fields=not options.strict,
                descriptor_pool=pool,
            )
        except (json_format.ParseError, ValueError, TypeError, ArithmeticError, LookupError) as exc:
            raise _unexpected_refusal(exc) from exc
        except RecursionError:
            raise GatewayError.bad_json(_TOO_DEEP) from None
        return sent


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_quoted(key)}")
        result[key] = value
    return result


def _reject_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")


class _BigNumber(float):
    """A JSON number past what a double holds (``1e400``, or an integer of hundreds of digits):
    infinite as a float, so that it fits no field, and kept with its text for the message."""

    text: str

    def __new__(cls, text: str) -> _BigNumber:
        number = super().__new__(cls, -math.inf if text.startswith("-") else math.inf)
        number.text = text
        return number


# Longer integers are not converted: int() refuses past 4300 digits (with a message about
# sys.set_int_max_str_digits), and no field holds even 400.
_LONG_INT_DIGITS = 400


def _decode_float(text: str) -> float:
    value = float(text)
    return _BigNumber(text) if math.isinf(value) else value


def _decode_int(text: str) -> int | float:
    return _BigNumber(text) if len(text) > _LONG_INT_DIGITS else int(text)


# One decoder for every request: json.loads with hooks builds a new one per call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_decode_float,
    parse_int=_decode_int,
)


def _decode_json(body: bytes) -> Any:
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise GatewayError.bad_json(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise GatewayError.bad_json(_TOO_DEEP) from exc
    except json.JSONDecodeError as exc:
        raise GatewayError.bad_json(
            f"not JSON: {exc.msg.lower()} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except ValueError as exc:  # our hooks' refusals (a duplicate key, NaN), worded for JSON
        raise GatewayError.bad_json(str(exc)) from exc


# -- the body checked against the message, in JSON terms ----------------------------------------
#
# json_format's own errors are Python's ("invalid literal for int() with base 10: 'lots'",
# "expected string or bytes-like object, got 'int'"), they name only the innermost field, and it
# takes what a JSON client must be told is wrong: true for an enum (1) or a double (1.0), 1.5
# for an enum, "1_000" for an integer, base64 with stray characters dropped. So the decoded body
# is walked against the descriptors first, by the proto3 JSON mapping's rules, and the first
# problem is the answer. json_format then converts a document that fits; should it still refuse
# one, the answer names the field it was parsing and nothing of its wording.

_MAX_DEPTH = 100  # json_format's max_recursion_depth, counted the same way (each message)
_TOO_DEEP = f"nested too deeply (more than {_MAX_DEPTH} levels)"
_SHOWN = 60  # characters of a sent value quoted in a message
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXTENSION_KEY = re.compile(r"\[[a-zA-Z0-9._]*\]")  # json_format's extension field names
_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile(r"-?[0-9]+")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_INT32 = (-(2**31), 2**31 - 1)
_DOUBLE_MAX = 1.7976931348623157e308

_WRAPPERS_FILE = "google/protobuf/wrappers.proto"
_ANY = "google.protobuf.Any"
_VALUE = "google.protobuf.Value"
_STRUCT = "google.protobuf.Struct"
_LIST_VALUE = "google.protobuf.ListValue"
# The types json_format reads from a JSON string, with a scratch message to try it on.
_STRING_FORMS: dict[
    str,
    tuple[type[timestamp_pb2.Timestamp | duration_pb2.Duration | field_mask_pb2.FieldMask], str],
] = {
    "google.protobuf.Timestamp": (timestamp_pb2.Timestamp, EXPECTED_TIMESTAMP),
    "google.protobuf.Duration": (duration_pb2.Duration, EXPECTED_DURATION),
    "google.protobuf.FieldMask": (
        field_mask_pb2.FieldMask,
        'comma-separated field paths in lowerCamelCase (like "title,author.birthYear")',
    ),
}
# What an Any holds under "value" rather than field by field (json_format's _WKTJSONMETHODS).
_ANY_VALUE_TYPES = frozenset({_ANY, _VALUE, _STRUCT, _LIST_VALUE, *_STRING_FORMS})

_T = FieldDescriptor
_EXPECTED_SCALAR = {
    _T.TYPE_DOUBLE: 'a number (or "NaN", "Infinity" or "-Infinity")',
    _T.TYPE_FLOAT: 'a number (or "NaN", "Infinity" or "-Infinity")',
    _T.TYPE_BOOL: "true or false",
    _T.TYPE_STRING: "a string",
    _T.TYPE_BYTES: f"a string of {EXPECTED_BASE64}",
}
_EXPECTED_INTEGER = "an integer (a JSON number or a string of digits)"


class _Refusal(Exception):
    """The body does not fit the message: ``path: problem``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.problem = problem


def _quoted(text: str) -> str:
    """A sent string as JSON, cut short; lone surrogates escaped (the answer is UTF-8)."""
    cut = text[:_SHOWN]
    quoted = _SURROGATE.sub(
        lambda m: f"\\u{ord(m.group()):04x}", json.dumps(cut, ensure_ascii=False)
    )
    return quoted if len(cut) == len(text) else f"{quoted}... ({len(text)} characters)"


def _got(value: Any) -> str:
    """A sent JSON value for a message: scalars as written, arrays and objects by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, _BigNumber):
        text = value.text
    elif isinstance(value, int | float):
        text = json.dumps(value)
    elif isinstance(value, list):
        return "an array"
    else:
        return "an object"
    return text if len(text) <= _SHOWN else f"{text[:20]}... ({len(text)} characters)"


def _member(path: str, key: str) -> str:
    """The path of a field, by the key the caller wrote: ``book.title``."""
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_quoted(key)}]"


def _entry(path: str, key: str) -> str:
    """The path of a map entry or a Struct member: ``labels["env"]``."""
    return f"{path}[{_quoted(key)}]"


@functools.lru_cache(maxsize=1024)
def _json_names(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by JSON name (a bounded cache: routes relearnt by reflection bring
    new descriptors)."""
    return {field.json_name: field for field in descriptor.fields}


def _expected(field: FieldDescriptor) -> str:
    """What one value of ``field`` must be, in JSON terms."""
    nested = field.message_type
    if nested is not None:
        return _expected_message(nested)
    if field.type == _T.TYPE_ENUM:
        return f"one of {enum_choices(enum_type_of(field))} (a name or its number)"
    if is_integer_field(field):
        return _EXPECTED_INTEGER
    return _EXPECTED_SCALAR[field.type]


def _expected_message(descriptor: Descriptor) -> str:
    name = descriptor.full_name
    if descriptor.file.name == _WRAPPERS_FILE:
        return _expected(descriptor.fields_by_name["value"])
    if name in _STRING_FORMS:
        return _STRING_FORMS[name][1]
    if name == _LIST_VALUE:
        return "an array"
    if name == _VALUE:
        return "a JSON value"
    if name == _ANY:
        return 'an object with "@type"'
    return "an object"


class _BodyCheck:
    """Walks a decoded JSON body against a message; raises :class:`_Refusal` (or, in strict
    mode, ``GatewayError.unknown_field``) at the first thing json_format must not be given."""

    def __init__(self, pool: DescriptorPool, *, strict: bool) -> None:
        self.pool = pool
        self.strict = strict

    def message(self, descriptor: Descriptor, value: Any, path: str, depth: int) -> None:
        depth += 1
        if depth > _MAX_DEPTH:
            raise _Refusal("", _TOO_DEEP)
        name = descriptor.full_name
        if descriptor.file.name == _WRAPPERS_FILE:
            self.scalar(descriptor.fields_by_name["value"], value, path)
        elif name in _STRING_FORMS:
            self.string_form(descriptor, value, path)
        elif name == _VALUE:
            self.value(descriptor, value, path, depth)
        elif name == _STRUCT:
            self.struct(descriptor, value, path, depth)
        elif name == _LIST_VALUE:
            self.list_value(descriptor, value, path, depth)
        elif name == _ANY:
            self.any(value, path, depth)
        elif isinstance(value, dict):
            self.fields(descriptor, value, path, depth)
        else:
            raise _Refusal(path, f"expected an object, got {_got(value)}")

    def fields(
        self, descriptor: Descriptor, value: dict[str, Any], path: str, depth: int, skip: str = ""
    ) -> None:
        by_json_name = _json_names(descriptor)
        given: dict[int, str] = {}  # field number -> the key it was given under
        chosen: dict[str, str] = {}  # oneof name -> the key of the member given
        dropped: list[str] = []
        for key, item in value.items():
            if key == skip:
                continue
            # By JSON name first, then by proto name, as json_format looks them up.
            field = by_json_name.get(key) or descriptor.fields_by_name.get(key)
            if field is None:
                if self.unknown(descriptor, key, path):
                    dropped.append(key)
                continue
            earlier = given.get(field.number)
            if earlier is not None:
                problem = f"given twice, as {_quoted(earlier)} and {_quoted(key)}"
                raise _Refusal(_member(path, key), problem)
            given[field.number] = key
            if item is None:
                continue  # null: the field's default (a Value's null_value)
            oneof = field.containing_oneof
            if oneof is not None:
                other = chosen.get(oneof.name)
                if other is not None:
                    problem = f"cannot be given with {_member(path, other)}: only one can be set"
                    raise _Refusal(_member(path, key), problem)
                chosen[oneof.name] = key
            if field.message_type is None and not field.is_repeated:
                try:  # a scalar's path is only written out when it is wrong
                    self.scalar(field, item, "")
                except _Refusal as refusal:
                    raise _Refusal(_member(path, key), refusal.problem) from None
            else:
                self.field(field, item, _member(path, key), depth)
        for key in dropped:
            del value[key]

    def unknown(self, descriptor: Descriptor, key: str, path: str) -> bool:
        """A key that names no field: refused in strict mode, else ignored. True when it must
        also be taken out of the body for json_format."""
        extension = _EXTENSION_KEY.fullmatch(key) is not None
        if extension and descriptor.is_extendable:
            return False  # json_format reads extensions itself
        if self.strict:
            raise GatewayError.unknown_field(_member(path, key))
        # json_format refuses "[x.y]" on a message without extensions even when told to ignore
        # unknown fields; ignored here like any other unknown key.
        return extension

    def field(self, field: FieldDescriptor, value: Any, path: str, depth: int) -> None:
        if is_map(field):
            self.map(field, value, path, depth)
        elif field.is_repeated:
            self.repeated(field, value, path, depth)
        elif field.message_type is not None:
            self.message(field.message_type, value, path, depth)
        else:
            self.scalar(field, value, path)

    def map(self, field: FieldDescriptor, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            raise _Refusal(path, f"expected an object, got {_got(value)}")
        entry = message_type_of(field)
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        for key, item in value.items():
            self.map_key(key_field, key, path)
            if value_field.message_type is not None:
                self.element(value_field, item, _entry(path, key), depth)
                continue
            try:  # a scalar's path is only written out when it is wrong
                self.scalar(value_field, item, "")
            except _Refusal as refusal:
                raise _Refusal(_entry(path, key), refusal.problem) from None

    def repeated(self, field: FieldDescriptor, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, list):
            raise _Refusal(path, f"expected an array, got {_got(value)}")
        if field.message_type is not None:
            for index, item in enumerate(value):
                self.element(field, item, f"{path}[{index}]", depth)
            return
        for index, item in enumerate(value):
            try:
                self.scalar(field, item, "")
            except _Refusal as refusal:
                raise _Refusal(f"{path}[{index}]", refusal.problem) from None

    def element(self, field: FieldDescriptor, value: Any, path: str, depth: int) -> None:
        """A message in an array or a map: null only for a Value (a scalar's null is refused
        by :meth:`scalar`)."""
        nested = message_type_of(field)
        if value is None and nested.full_name != _VALUE:
            raise _Refusal(path, f"expected {_expected(field)}, got null")
        self.message(nested, value, path, depth)

    def map_key(self, field: FieldDescriptor, key: str, path: str) -> None:
        if field.type == _T.TYPE_STRING:
            if _SURROGATE.search(key):
                raise _Refusal(path, f"expected keys of valid Unicode, got key {_quoted(key)}")
        elif field.type == _T.TYPE_BOOL:
            if key not in ("true", "false"):
                raise _Refusal(path, f'expected keys "true" or "false", got key {_quoted(key)}')
        else:
            low, high = int_range(field)
            if not (_DIGITS.fullmatch(key) and len(key) <= 21 and low <= int(key) <= high):
                raise _Refusal(
                    path,
                    f"expected keys that are integers from {low} to {high}, written as strings, "
                    f"got key {_quoted(key)}",
                )

    def scalar(self, field: FieldDescriptor, value: Any, path: str) -> None:
        kind = field.type
        if kind == _T.TYPE_STRING:
            if isinstance(value, str):
                if _SURROGATE.search(value) is None:
                    return
                raise _Refusal(
                    path,
                    f"expected a string of valid Unicode, got {_got(value)} (a lone surrogate)",
                )
        elif kind == _T.TYPE_ENUM:
            self.enum(field, value, path)
            return
        elif kind == _T.TYPE_BOOL:
            if isinstance(value, bool):
                return
        elif kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            _check_number(field, value, path)
            return
        elif kind == _T.TYPE_BYTES:
            if isinstance(value, str):
                try:
                    # Line breaks are skipped, as Go's decoder does (MIME-style wrapped base64).
                    decode_base64(value.replace("\r", "").replace("\n", ""))
                except ValueProblem:
                    pass
                else:
                    return
        else:
            _check_integer(field, value, path)
            return
        raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")

    def enum(self, field: FieldDescriptor, value: Any, path: str) -> None:
        enum = enum_type_of(field)
        if isinstance(value, str):
            if _SURROGATE.search(value):
                # No enum value has one, and json_format cannot even look it up: refused in
                # both modes rather than discarded.
                raise _Refusal(
                    path,
                    f"unknown value {_quoted(value)} (expected one of {enum_choices(enum)})",
                )
            if value in enum.values_by_name:
                return
            if not _DIGITS.fullmatch(value):
                if self.strict:
                    raise _Refusal(
                        path,
                        f"unknown value {_quoted(value)} (expected one of {enum_choices(enum)})",
                    )
                return  # discarded with the unknown fields, as json_format and grpc-gateway do
            number = int(value) if len(value) <= 20 else 2**63
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")
        elif isinstance(value, float) and not value.is_integer():
            # 1.5, and numbers past any range (_BigNumber is infinite)
            raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")
        else:
            number = int(value)
        if enum.is_closed and number not in enum.values_by_number:
            raise _Refusal(path, f"unknown value {number} (expected one of {enum_choices(enum)})")
        if not _INT32[0] <= number <= _INT32[1]:
            raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")

    def string_form(self, descriptor: Descriptor, value: Any, path: str) -> None:
        scratch_class, expected = _STRING_FORMS[descriptor.full_name]
        if isinstance(value, str):
            try:
                scratch_class().FromJsonString(value)
            except (ValueError, TypeError, ArithmeticError):
                pass
            else:
                return
        raise _Refusal(path, f"expected {expected}, got {_got(value)}")

    def value(self, descriptor: Descriptor, value: Any, path: str, depth: int) -> None:
        if isinstance(value, dict):
            struct = message_type_of(descriptor.fields_by_name["struct_value"])
            self.message(struct, value, path, depth)
        elif isinstance(value, list):
            values = message_type_of(descriptor.fields_by_name["list_value"])
            self.message(values, value, path, depth)
        elif isinstance(value, str):
            if _SURROGATE.search(value):
                raise _Refusal(
                    path,
                    f"expected a string of valid Unicode, got {_got(value)} (a lone surrogate)",
                )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            try:
                finite = math.isfinite(float(value))
            except OverflowError:
                finite = False
            if not finite:
                raise _Refusal(
                    path,
                    f"expected a number from {-_DOUBLE_MAX:.8g} to {_DOUBLE_MAX:.8g}, "
                    f"got {_got(value)}",
                )

    def struct(self, descriptor: Descriptor, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            raise _Refusal(path, f"expected an object, got {_got(value)}")
        entry = message_type_of(descriptor.fields_by_name["fields"])
        item_type = message_type_of(entry.fields_by_name["value"])
        for key, item in value.items():
            if _SURROGATE.search(key):
                raise _Refusal(path, f"expected keys of valid Unicode, got key {_quoted(key)}")
            self.message(item_type, item, _entry(path, key), depth)

    def list_value(self, descriptor: Descriptor, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, list):
            raise _Refusal(path, f"expected an array, got {_got(value)}")
        item_type = message_type_of(descriptor.fields_by_name["values"])
        for index, item in enumerate(value):
            self.message(item_type, item, f"{path}[{index}]", depth)

    def any(self, value: Any, path: str, depth: int) -> None:
        expected = 'expected an object with "@type", the URL of the message type it holds'
        if not isinstance(value, dict):
            raise _Refusal(path, f"{expected}, got {_got(value)}")
        if not value:
            return  # an empty Any
        type_url = value.get("@type")
        if not isinstance(type_url, str):
            raise _Refusal(path, expected)
        try:
            packed = self.pool.FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
        except (KeyError, TypeError):  # TypeError: a fallback file clashing with the service's
            raise _Refusal(
                _member(path, "@type"), f"unknown message type {_quoted(type_url)}"
            ) from None
        if packed.full_name in _ANY_VALUE_TYPES or packed.file.name == _WRAPPERS_FILE:
            if "value" not in value:
                raise _Refusal(
                    path, f'expected "value" with the {packed.name} ({_expected_message(packed)})'
                )
            inner = _member(path, "value")
            if packed.file.name == _WRAPPERS_FILE:
                self.scalar(packed.fields_by_name["value"], value["value"], inner)
            else:
                self.message(packed, value["value"], inner, depth)
        else:
            self.fields(packed, value, path, depth, skip="@type")


def _check_integer(field: FieldDescriptor, value: Any, path: str) -> None:
    low, high = int_range(field)
    if type(value) is int and low <= value <= high:
        return  # the common case, first
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Refusal(path, f"expected {_EXPECTED_INTEGER}, got {_got(value)}")
    number: int | float
    if isinstance(value, str):
        found = _integer_text(value)
        if found is None:
            raise _Refusal(path, f"expected {_EXPECTED_INTEGER}, got {_got(value)}")
        number = found
    elif isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise _Refusal(path, f"expected {_EXPECTED_INTEGER}, got {_got(value)}")
    else:
        number = value  # an int, an integral float, or a _BigNumber (infinite)
    if not low <= number <= high:
        raise _Refusal(path, f"{expected_integer_in_range(field)}, got {_got(value)}")


def _integer_text(text: str) -> int | float | None:
    """The integer a JSON string holds (json_format's forms: digits, or a JSON number with an
    integral value, read exactly); ``inf`` for digits past any range; None if it holds none."""
    if _DIGITS.fullmatch(text):
        return int(text) if len(text) <= _LONG_INT_DIGITS else math.inf
    if len(text) > 100 or not _JSON_NUMBER.fullmatch(text):
        return None
    number = float(text)
    if not math.isfinite(number):
        return number
    if not number.is_integer() or Decimal(text) != int(number):
        return None  # a fraction, or more digits than json_format's float reading keeps
    return int(number)


def _check_number(field: FieldDescriptor, value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")
    if isinstance(value, str):
        if value in _FLOAT_WORDS:
            return
        if not _JSON_NUMBER.fullmatch(value):
            raise _Refusal(path, f"expected {_expected(field)}, got {_got(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past a double's range
        number = math.inf
    if not math.isfinite(number) or abs(number) > float_limit(field):
        raise _Refusal(path, f"{expected_number_in_range(field)}, got {_got(value)}")


_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field: ")


def _unexpected_refusal(exc: BaseException) -> GatewayError:
    """json_format refused a body that :class:`_BodyCheck` let through: the answer names the
    field it was parsing (from its message) and says nothing of its wording."""
    text = str(exc)
    if "too deep" in text:
        return GatewayError.bad_json(_TOO_DEEP)
    names = []
    while (found := _FAILED_FIELD.match(text)) is not None:
        names.append(found.group(1))
        text = text[found.end() :]
    if not names:
        return GatewayError.bad_json("a value does not fit its field")
    path = _SURROGATE.sub("?", ".".join(names))
    return GatewayError.bad_json(f"{path}: not a value this field accepts")


def _set_path_value(request: Message, path: str, value: str) -> None:
    try:
        fields = resolve_field_path(descriptor_of(request), path)
    except UnknownField:
        raise GatewayError.bad_path_value(path, value, "no such field") from None
    leaf = fields[-1]
    if leaf.is_repeated:
        parent = request
        for field in fields[:-1]:
            parent = getattr(parent, field.name)
        del getattr(parent, leaf.name)[:]  # the path wins over whatever the body sent
    try:
        set_text_value(request, fields, value)
    except ValueProblem as exc:
        raise GatewayError.bad_path_value(path, value, str(exc)) from exc


def _fill_update_mask(request: Message, body_field: str, sent: Any) -> None:
    descriptor = descriptor_of(request)
    mask_field = descriptor.fields_by_name.get("update_mask")
    if mask_field is None or mask_field.message_type is None:
        return
    if mask_field.message_type.full_name != _FIELD_MASK or mask_field.is_repeated:
        return
    # The request's class is built at run time: update_mask (checked above to be a FieldMask)
    # is not an attribute of Message's stub.
    mask = request.update_mask  # type: ignore[attr-defined]
    if mask.paths or not isinstance(sent, dict):
        return
    target = descriptor.fields_by_name[body_field].message_type
    if target is None:
        return
    mask.paths.extend(_mask_paths(target, sent, ""))


def _mask_paths(descriptor: Descriptor, sent: dict[str, Any], prefix: str) -> list[str]:
    paths: list[str] = []
    for key, value in sent.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            field = next((f for f in descriptor.fields if f.json_name == key), None)
        if field is None:
            continue  # discarded (or refused in strict mode) when the body was parsed
        path = prefix + field.name
        nested = field.message_type
        if (
            isinstance(value, dict)
            and value
            and nested is not None
            and not field.is_repeated
            and not nested.full_name.startswith("google.protobuf.")
        ):
            paths.extend(_mask_paths(nested, value, path + "."))
        else:
            paths.append(path)
    return paths


def render_response(
    message: Message,
    *,
    response_body: str | None = None,
    options: JsonOptions = DEFAULT_OPTIONS,
) -> tuple[bytes, str]:
    """The HTTP body and content type for a response message.

    ``response_body`` names the top-level field to send instead of the whole message; a
    ``google.api.HttpBody`` (the whole response or that field) is sent as its raw bytes with
    its own content type.

    >>> from hms.testing.v1 import echo_pb2
    >>> body, kind = render_response(echo_pb2.EchoResponse(deadline_left_ms=5))
    >>> json.loads(body)["deadlineLeftMs"], kind
    ('5', 'application/json')
    """
    value: Any
    descriptor = descriptor_of(message)
    if response_body:
        field = descriptor.fields_by_name.get(response_body)
        if field is None:
            raise ValueError(f"{descriptor.full_name} has no field {response_body!r}")
        if field.message_type is not None and not field.is_repeated:
            sub = getattr(message, field.name)
            if field.message_type.full_name == HTTP_BODY:
                return bytes(sub.data), sub.content_type or _OCTET_STREAM
            value = to_json(sub, options, pool=descriptor.file.pool)
        else:
            whole = to_json(message, options, print_defaults=True)
            value = whole.get(field.name if options.use_proto_names else field.json_name)
    elif descriptor.full_name == HTTP_BODY:
        # An HttpBody, perhaps of a pool learnt by reflection: its class is built at run time
        # and its fields are not attributes of Message's stub.
        return bytes(message.data), message.content_type or _OCTET_STREAM  # type: ignore[attr-defined]
    else:
        value = to_json(message, options)
    return _ENCODER.encode(value).encode("utf-8"), _JSON


# One encoder for every answer: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
