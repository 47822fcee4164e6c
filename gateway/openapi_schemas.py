"""JSON Schemas of protobuf messages, as protobuf's canonical proto3 JSON mapping writes them.

The half of the OpenAPI document (gateway/openapi.py) that knows protobuf: one component per
message reached, keyed by its full name; enums, maps and well-known types inlined;
``google.rpc.Status``, the gateway's error body, defined here. Field names follow the
gateway's :class:`~hms_gateway.transcode.JsonOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from hms_gateway.query import enum_type_of, message_type_of
from hms_gateway.transcode import JsonOptions

__all__ = [
    "STATUS_SCHEMA",
    "Schemas",
    "is_map",
    "json_name",
    "text_schema",
    "well_known_schema",
]

STATUS_SCHEMA = "google.rpc.Status"
_REF_PREFIX = "#/components/schemas/"

_T = FieldDescriptor
_UINT32_MAX = 2**32 - 1


def _scalar_schema(kind: int) -> dict[str, Any]:
    """The proto3 JSON schema of a non-message, non-enum field type."""
    if kind in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32):
        return {"type": "integer", "format": "int32"}
    if kind in (_T.TYPE_UINT32, _T.TYPE_FIXED32):
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": _UINT32_MAX}
    if kind in (_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64):
        return {"type": "string", "format": "int64"}
    if kind in (_T.TYPE_UINT64, _T.TYPE_FIXED64):
        return {"type": "string", "format": "uint64"}
    if kind == _T.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if kind == _T.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if kind == _T.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == _T.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


_WRAPPED: dict[str, int] = {
    "google.protobuf.DoubleValue": _T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _T.TYPE_FLOAT,
    "google.protobuf.Int64Value": _T.TYPE_INT64,
    "google.protobuf.UInt64Value": _T.TYPE_UINT64,
    "google.protobuf.Int32Value": _T.TYPE_INT32,
    "google.protobuf.UInt32Value": _T.TYPE_UINT32,
    "google.protobuf.BoolValue": _T.TYPE_BOOL,
    "google.protobuf.StringValue": _T.TYPE_STRING,
    "google.protobuf.BytesValue": _T.TYPE_BYTES,
}

_DURATION_PATTERN = r"^-?[0-9]+(\.[0-9]{1,9})?s$"


def well_known_schema(name: str) -> dict[str, Any] | None:
    """The inline schema of a well-known type's JSON form, or None for any other message."""
    if name in _WRAPPED:
        return {**_scalar_schema(_WRAPPED[name]), "nullable": True}
    fixed: dict[str, dict[str, Any]] = {
        "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
        "google.protobuf.Duration": {
            "type": "string",
            "pattern": _DURATION_PATTERN,
            "description": 'Seconds with up to nine fractional digits and an "s", e.g. "1.5s".',
        },
        "google.protobuf.FieldMask": {
            "type": "string",
            "description": 'Field paths separated by commas, e.g. "title,author.name".',
        },
        "google.protobuf.Struct": {"type": "object", "additionalProperties": {}},
        "google.protobuf.Value": {"description": "Any JSON value."},
        "google.protobuf.ListValue": {"type": "array", "items": {}},
        "google.protobuf.Any": {
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": {},
            "description": 'A message of any type, named by its "@type" URL.',
        },
        "google.protobuf.Empty": {"type": "object"},
    }
    return fixed.get(name)


def _status_schema() -> dict[str, Any]:
    """google.rpc.Status as the gateway writes it (``hms_gateway.errors.status_body``)."""
    return {
        "type": "object",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "A gRPC code."},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "additionalProperties": {},
                },
            },
        },
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF_PREFIX + name}


def is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _enum_schema(fd: FieldDescriptor, options: JsonOptions) -> dict[str, Any]:
    values = enum_type_of(fd).values
    if options.enums_as_ints:
        numbers = list(dict.fromkeys(v.number for v in values))
        return {"type": "integer", "format": "int32", "enum": numbers}
    return {"type": "string", "enum": [v.name for v in values]}


def json_name(fd: FieldDescriptor, options: JsonOptions) -> str:
    return fd.name if options.use_proto_names else fd.json_name


@dataclass(slots=True)
class Schemas:
    """The components one document has reached so far; one instance per :func:`build_openapi`."""

    options: JsonOptions
    found: dict[str, dict[str, Any]] = field(default_factory=dict)

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        """An inline schema for a WKT, else a ``$ref``; the component is added on first use."""
        name = descriptor.full_name
        known = well_known_schema(name)
        if known is not None:
            return known
        if name == STATUS_SCHEMA:
            return self.status()
        if name not in self.found:
            self.found[name] = {}  # placed first, so that a recursive message finds itself
            self.found[name] = self._object(descriptor)
        return _ref(name)

    def status(self) -> dict[str, Any]:
        """A ``$ref`` to the gateway's error body, adding it on first use."""
        self.found.setdefault(STATUS_SCHEMA, _status_schema())
        return _ref(STATUS_SCHEMA)

    def _object(self, descriptor: Descriptor) -> dict[str, Any]:
        properties = {json_name(fd, self.options): self._property(fd) for fd in descriptor.fields}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        real_oneofs = [
            o for o in descriptor.oneofs if not (len(o.fields) == 1 and _is_synthetic(o.fields[0]))
        ]
        if real_oneofs:
            schema["description"] = " ".join(
                f"At most one of {', '.join(json_name(f, self.options) for f in o.fields)}"
                f" (oneof {o.name})."
                for o in real_oneofs
            )
        return schema

    def _property(self, fd: FieldDescriptor) -> dict[str, Any]:
        """A field inside an object: a singular message field that is unset is written as null
        (gateway/jsonpb.py, as protojson's EmitUnpopulated), so it is nullable; a oneof member
        is left out instead. OpenAPI 3.0 puts nothing beside a $ref: it goes in an allOf."""
        schema = self.field(fd)
        nullable = (
            fd.message_type is not None
            and not fd.is_repeated
            and fd.containing_oneof is None
            and self.options.emit_unpopulated
        )
        if not nullable or schema.get("nullable"):
            return schema
        if "$ref" in schema:
            return {"allOf": [schema], "nullable": True}
        return {**schema, "nullable": True}

    def field(self, fd: FieldDescriptor) -> dict[str, Any]:
        """The JSON schema of one field's value, repeated and map fields included."""
        if is_map(fd):
            value = message_type_of(fd).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if fd.is_repeated:
            return {"type": "array", "items": self.single(fd)}
        return self.single(fd)

    def single(self, fd: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of ``fd`` (an element, for a repeated field)."""
        if fd.message_type is not None:
            return self.message(fd.message_type)
        if fd.enum_type is not None:
            if fd.enum_type.full_name == "google.protobuf.NullValue":
                return {"description": "JSON null."}
            return _enum_schema(fd, self.options)
        return _scalar_schema(fd.type)


def _is_synthetic(fd: FieldDescriptor) -> bool:
    """True for the one-field oneof proto3 ``optional`` makes (``_name``): not a real choice."""
    return fd.containing_oneof is not None and fd.containing_oneof.name == "_" + fd.name


def text_schema(fd: FieldDescriptor) -> dict[str, Any]:
    """The schema of one text value setting ``fd`` from a path or the query."""
    if fd.message_type is not None:
        known = well_known_schema(fd.message_type.full_name) or {"type": "string"}
        return {k: v for k, v in known.items() if k != "nullable"}
    if fd.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
    return _scalar_schema(fd.type)
