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
changeable in :class:`JsonOptions`.

>>> from google.api import http_pb2
>>> from hms.testing.v1 import echo_pb2
>>> method = echo_pb2.DESCRIPTOR.services_by_name["EchoService"].methods_by_name["Echo"]
>>> (mapping,) = RequestMapping.from_rule(http_pb2.HttpRule(post="/v1/echo", body="*"), method)
>>> mapping.build_request(echo_pb2.EchoRequest, {}, [], b'{"message": "hi"}').message
'hi'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api import http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from hms_gateway.errors import GatewayError
from hms_gateway.query import (
    UnknownField,
    ValueProblem,
    apply_query,
    is_text_settable,
    resolve_field_path,
    set_text_value,
)
from hms_gateway.template.parse import parse_template

__all__ = ["JsonOptions", "RequestMapping", "render_response"]

HTTP_BODY = "google.api.HttpBody"
_FIELD_MASK = "google.protobuf.FieldMask"
_JSON = "application/json"
_OCTET_STREAM = "application/octet-stream"
_RULE_METHODS = ("get", "put", "post", "delete", "patch")

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class JsonOptions:
    """How JSON is read and written; the defaults are grpc-gateway v2's.

    ``use_proto_names``: output ``page_size`` rather than ``pageSize``.
    ``emit_unpopulated``: output fields without presence even when they hold their default.
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
            field = request.DESCRIPTOR.fields_by_name[self.body]
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
        target_type = field.message_type if field is not None else request.DESCRIPTOR
        if target_type is not None and target_type.full_name == HTTP_BODY:
            target = request if field is None else getattr(request, field.name)
            target.data = body  # type: ignore[attr-defined]
            target.content_type = content_type  # type: ignore[attr-defined]
            return None
        if not body.strip():
            return None  # an empty body is an empty message, as grpc-gateway (io.EOF)
        sent = _decode_json(body)
        document = sent if field is None else {field.name: sent}
        if field is None and not isinstance(sent, dict):
            raise GatewayError.bad_json(f"expected a JSON object, got {type(sent).__name__}")
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=not options.strict)
        except json_format.ParseError as exc:
            raise _parse_error(exc) from exc
        except (ValueError, TypeError, OverflowError, RecursionError, KeyError) as exc:
            raise GatewayError.bad_json(str(exc) or type(exc).__name__) from exc
        return sent


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")


# One decoder for every request: json.loads with hooks builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def _decode_json(body: bytes) -> Any:
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise GatewayError.bad_json(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise GatewayError.bad_json("nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError included
        raise GatewayError.bad_json(str(exc)) from exc


def _parse_error(exc: json_format.ParseError) -> GatewayError:
    # json_format says: Message type "X" has no field named "f" at "X.y".
    text = str(exc)
    marker = 'has no field named "'
    if marker in text:
        name = text.split(marker, 1)[1].split('"', 1)[0]
        return GatewayError.unknown_field(name)
    return GatewayError.bad_json(text.split("\n", 1)[0])


def _set_path_value(request: Message, path: str, value: str) -> None:
    try:
        fields = resolve_field_path(request.DESCRIPTOR, path)
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
    mask_field = request.DESCRIPTOR.fields_by_name.get("update_mask")
    if mask_field is None or mask_field.message_type is None:
        return
    if mask_field.message_type.full_name != _FIELD_MASK or mask_field.is_repeated:
        return
    mask = request.update_mask  # type: ignore[attr-defined]
    if mask.paths or not isinstance(sent, dict):
        return
    target = request.DESCRIPTOR.fields_by_name[body_field].message_type
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
        recurse = (
            isinstance(value, dict)
            and value
            and nested is not None
            and not field.is_repeated
            and not nested.full_name.startswith("google.protobuf.")
        )
        if recurse:
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
    kwargs: dict[str, Any] = {
        "always_print_fields_with_no_presence": options.emit_unpopulated,
        "preserving_proto_field_name": options.use_proto_names,
        "use_integers_for_enums": options.enums_as_ints,
    }
    value: Any
    if response_body:
        field = message.DESCRIPTOR.fields_by_name.get(response_body)
        if field is None:
            raise ValueError(f"{message.DESCRIPTOR.full_name} has no field {response_body!r}")
        if field.message_type is not None and not field.is_repeated:
            sub = getattr(message, field.name)
            if field.message_type.full_name == HTTP_BODY:
                return bytes(sub.data), sub.content_type or _OCTET_STREAM
            value = json_format.MessageToDict(sub, **kwargs)
        else:
            whole = json_format.MessageToDict(
                message, **{**kwargs, "always_print_fields_with_no_presence": True}
            )
            value = whole.get(field.name if options.use_proto_names else field.json_name)
    elif message.DESCRIPTOR.full_name == HTTP_BODY:
        return bytes(message.data), message.content_type or _OCTET_STREAM  # type: ignore[attr-defined]
    else:
        value = json_format.MessageToDict(message, **kwargs)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8"), _JSON
