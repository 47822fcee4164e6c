"""Describe the gateway's HTTP/JSON surface as an OpenAPI 3.0.3 document, from descriptors alone.

Why: REST clients (and their code generators) need a contract, and the only truth about what the
gateway accepts is the set of :class:`~hms_gateway.endpoint.Endpoint` it routes, built from the same
``google.api.http`` rules and descriptors. Generating the document from those (rather than
from a second set of annotations) keeps it from drifting. The model is grpc-gateway's
``protoc-gen-openapiv2``, in OpenAPI 3 and simplified; the JSON it describes is protobuf's
canonical proto3 mapping, with the same :class:`~hms_gateway.transcode.JsonOptions` the gateway
renders with.

Decisions, each one a place where OpenAPI cannot say exactly what ``google.api.http`` says:

- **Paths.** A variable becomes ``{name}`` with its dotted field path as the parameter name
  (``/v1/{book.name=shelves/*/books/*}`` is ``/v1/{book.name}``); a variable matching more than
  one segment says its pattern in the parameter's description (``shelves/*/books/*``).
  A ``*`` or ``**`` outside any variable becomes a synthetic path parameter ``_wildcard1``,
  ``_wildcard2``... numbered left to right: the gateway matches but binds nothing for it. OpenAPI
  path parameters are single, non-empty segments, so ``**`` (zero or more segments) and
  multi-segment variables are described, not enforced. Custom verbs stay in the path
  (``/v1/echo:stream``).
- **Operations.** ``operationId`` is ``Service_Method`` with the service's short name, as
  grpc-gateway; when two services in the input share a short name, both use the full name with
  dots as underscores. Additional bindings of a method get ``_1``, ``_2``... in input order.
  ``tags`` is the full service name, ``summary`` the full method name.
- **Query parameters** (only when the body is not ``"*"``): every field the query can set (see
  ``hms_gateway.query``) that the path or the body does not bind: scalars, enums (by value name),
  repeated ones (``style: form, explode: true``) and the text-settable well-known types, with
  dotted names through nested messages. Maps, repeated messages and other message-typed WKTs
  cannot be set from the query and are left out. Recursion stops at a message already on the
  current path, so self-referential messages terminate.
- **Bodies.** ``body: "*"`` is the whole input message (path-bound fields included: the path
  wins over them); ``body: "field"`` is that field's schema; a ``google.api.HttpBody`` target is
  ``*/*`` binary. Responses likewise, with ``response_body``.
- **Server streaming** answers ``application/x-ndjson`` (one ``{"result": ...}`` or
  ``{"error": Status}`` object a line) or ``text/event-stream``; an ``HttpBody`` stream is raw
  ``*/*`` bytes. **Client- and bidi-streaming** methods are left out: the gateway answers 501.
  So are custom HTTP methods outside OpenAPI's eight (``custom: {kind: "LIST"}``).
- **Security.** With the gate on, each operation says what the gate asks (its contract's
  ``(hms.api.v1.access)``, gateway/access.py): ``security: []`` for a public method,
  ``[{"bearer": [scopes...]}]`` otherwise (no scopes: any valid token), plus its 401 and, with
  scopes, 403 answers; ``components.securitySchemes.bearer`` is the bearer JWT. OpenAPI 3.0
  reserves the requirement's list for OAuth2 and OpenID Connect schemes; the gateway has no
  token endpoint to name, so the scopes are listed on the bearer scheme (as OpenAPI 3.1 allows)
  and repeated in the operation's ``description``. With the gate off, nothing is said.
- **Schemas.** One component per message reached, keyed by its full proto name; enums, maps and
  well-known types are inlined. ``google.rpc.Status`` is defined here, as the gateway's error
  body (``hms_gateway.errors``). Oneof members are plain optional properties.

The output is a plain JSON-serialisable dict; paths and schemas are sorted, so the same input
gives the same document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor

from hms_gateway.access import Access
from hms_gateway.endpoint import Endpoint
from hms_gateway.openapi_schemas import (
    STATUS_SCHEMA,
    Schemas,
    is_map,
    json_name,
    text_schema,
    well_known_schema,
)
from hms_gateway.query import is_text_settable, resolve_field_path
from hms_gateway.template.parse import DeepWildcard, Literal, Template, Variable, parse_template
from hms_gateway.transcode import DEFAULT_OPTIONS, HTTP_BODY, JsonOptions

__all__ = ["BEARER_SCHEME", "OPENAPI_VERSION", "STATUS_SCHEMA", "build_openapi", "openapi_path"]

OPENAPI_VERSION = "3.0.3"
_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_SSE = "text/event-stream"
_ANY_TYPE = "*/*"
# The methods an OpenAPI path item can hold; a custom HttpRule kind outside them is left out.
# In OpenAPI's order, which each path item follows.
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
#: The name of the bearer JWT security scheme in ``components.securitySchemes``.
BEARER_SCHEME = "bearer"
_BEARER: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": (
        "A signed JWT in 'Authorization: Bearer <token>'. Its scopes are the 'scope' claim "
        "(space-separated) and the 'scp' claim (a list); an operation listing scopes needs "
        "every one (403 PERMISSION_DENIED names those missing)."
    ),
}


def openapi_path(template: Template) -> str:
    """The OpenAPI path of a parsed template: ``{name}`` per variable, ``{_wildcardN}`` per
    bare wildcard, the verb kept.

    >>> openapi_path(parse_template("/v1/{book.name=shelves/*/books/*}:read"))
    '/v1/{book.name}:read'
    >>> openapi_path(parse_template("/static/*/**"))
    '/static/{_wildcard1}/{_wildcard2}'
    """
    parts: list[str] = []
    wildcards = 0
    for segment in template.segments:
        if isinstance(segment, Variable):
            parts.append("{" + segment.name + "}")
        elif isinstance(segment, Literal):
            parts.append(segment.value)
        else:
            wildcards += 1
            parts.append(f"{{_wildcard{wildcards}}}")
    verb = "" if template.verb is None else ":" + template.verb
    return "/" + "/".join(parts) + verb


def _path_parameters(template: Template, input_type: Descriptor) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    wildcards = 0
    for segment in template.segments:
        if isinstance(segment, Literal):
            continue
        if isinstance(segment, Variable):
            leaf = resolve_field_path(input_type, segment.name)[-1]
            param: dict[str, Any] = {
                "name": segment.name,
                "in": "path",
                "required": True,
                "schema": text_schema(leaf),
            }
            pattern = "/".join(map(str, segment.segments))
            if pattern != "*":
                param["description"] = f"Matches the pattern {pattern}."
            params.append(param)
            continue
        wildcards += 1
        deep = isinstance(segment, DeepWildcard)
        params.append(
            {
                "name": f"_wildcard{wildcards}",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": (
                    "Any path, matched by '**' and bound to no field."
                    if deep
                    else "Any one segment, matched by '*' and bound to no field."
                ),
            }
        )
    return params


def _bound_paths(template: Template, input_type: Descriptor, body: str) -> set[str]:
    """Dotted proto field paths set by the path variables or the body field."""
    bound = {
        ".".join(fd.name for fd in resolve_field_path(input_type, v.name))
        for v in template.variables
    }
    if body:
        bound.add(body)
    return bound


def _query_parameters(
    descriptor: Descriptor,
    bound: set[str],
    options: JsonOptions,
    *,
    proto_prefix: str = "",
    name_prefix: str = "",
    seen: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Every query parameter that can set a field of ``descriptor`` outside ``bound``."""
    params: list[dict[str, Any]] = []
    seen = seen | {descriptor.full_name}
    for fd in descriptor.fields:
        proto_path = proto_prefix + fd.name
        if proto_path in bound or is_map(fd):
            continue
        name = name_prefix + json_name(fd, options)
        if is_text_settable(fd):
            schema = text_schema(fd)
            param: dict[str, Any] = {"name": name, "in": "query", "required": False}
            if fd.is_repeated:
                param.update(schema={"type": "array", "items": schema}, style="form", explode=True)
            else:
                param["schema"] = schema
            params.append(param)
        elif not fd.is_repeated and fd.message_type is not None:
            nested = fd.message_type
            if nested.full_name in seen or well_known_schema(nested.full_name) is not None:
                continue
            params.extend(
                _query_parameters(
                    nested,
                    bound,
                    options,
                    proto_prefix=proto_path + ".",
                    name_prefix=name + ".",
                    seen=seen,
                )
            )
    return params


def _sse_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "description": "Server-sent events; each event's data is one NDJSON line's object.",
    }


def _binary_content() -> dict[str, Any]:
    return {_ANY_TYPE: {"schema": dict(_BINARY)}}


def _request_body(endpoint: Endpoint, schemas: Schemas) -> dict[str, Any] | None:
    body = endpoint.mapping.body
    input_type = endpoint.mapping.input_type
    if not body:
        return None
    if body == "*":
        if input_type.full_name == HTTP_BODY:
            return {"content": _binary_content()}
        return {"content": {_JSON: {"schema": schemas.message(input_type)}}}
    fd = input_type.fields_by_name[body]
    if fd.message_type is not None and fd.message_type.full_name == HTTP_BODY:
        return {"content": _binary_content()}
    return {"content": {_JSON: {"schema": schemas.field(fd)}}}


def _success_response(endpoint: Endpoint, schemas: Schemas) -> dict[str, Any]:
    output = endpoint.mapping.output_type
    response_body = endpoint.mapping.response_body
    schema: dict[str, Any] | None
    if response_body:
        fd = output.fields_by_name[response_body]
        raw = fd.message_type is not None and fd.message_type.full_name == HTTP_BODY
        schema = None if raw and not fd.is_repeated else schemas.field(fd)
    else:
        schema = None if output.full_name == HTTP_BODY else schemas.message(output)
    if schema is None:
        return {"description": "The raw response bytes.", "content": _binary_content()}
    if not endpoint.kind.response_streaming:
        return {"description": "A successful response.", "content": {_JSON: {"schema": schema}}}
    line = {
        "type": "object",
        "properties": {"result": schema, "error": schemas.status()},
    }
    return {
        "description": "A stream of responses, one per line (NDJSON) or one per event (SSE).",
        "content": {_NDJSON: {"schema": line}, _SSE: {"schema": _sse_schema()}},
    }


def _operation_ids(endpoints: list[Endpoint]) -> list[str]:
    """``Service_Method`` (plus ``_N`` for the Nth additional binding), one per endpoint."""
    full_names: dict[str, set[str]] = {}
    for endpoint in endpoints:
        full_names.setdefault(endpoint.service.rsplit(".", 1)[-1], set()).add(endpoint.service)
    ids: list[str] = []
    bindings: dict[str, int] = {}
    for endpoint in endpoints:
        short = endpoint.service.rsplit(".", 1)[-1]
        service = short if len(full_names[short]) == 1 else endpoint.service.replace(".", "_")
        base = f"{service}_{endpoint.method.name}"
        index = bindings.get(endpoint.method.full_name, 0)
        bindings[endpoint.method.full_name] = index + 1
        ids.append(base if index == 0 else f"{base}_{index}")
    return ids


def _own_access(endpoint: Endpoint) -> Access:
    return endpoint.access


def _secure(operation: dict[str, Any], access: Access, schemas: Schemas) -> None:
    """The operation's security requirement and the gate's answers, from its access rule."""
    if access.public:
        operation["security"] = []
        return
    operation["security"] = [{BEARER_SCHEME: list(access.scopes)}]
    error = {"content": {_JSON: {"schema": schemas.status()}}}
    operation["responses"]["401"] = {"description": "No valid bearer token.", **error}
    if access.scopes:
        operation["description"] = (
            f"Needs a bearer token with the scope{'s' if len(access.scopes) > 1 else ''} "
            f"{', '.join(access.scopes)}."
        )
        operation["responses"]["403"] = {
            "description": "The token lacks a scope the operation needs.",
            **error,
        }


def _operation(endpoint: Endpoint, operation_id: str, schemas: Schemas) -> dict[str, Any]:
    mapping = endpoint.mapping
    template = parse_template(mapping.template)
    parameters = _path_parameters(template, mapping.input_type)
    if mapping.body != "*":
        bound = _bound_paths(template, mapping.input_type, mapping.body)
        parameters.extend(_query_parameters(mapping.input_type, bound, schemas.options))
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [endpoint.service],
        "summary": endpoint.method.full_name,
    }
    if parameters:
        operation["parameters"] = parameters
    request_body = _request_body(endpoint, schemas)
    if request_body is not None:
        operation["requestBody"] = request_body
    operation["responses"] = {
        "200": _success_response(endpoint, schemas),
        "default": {
            "description": "An error: a google.rpc.Status.",
            "content": {_JSON: {"schema": schemas.status()}},
        },
    }
    if endpoint.method.GetOptions().deprecated:
        operation["deprecated"] = True
    return operation


def build_openapi(
    endpoints: Iterable[Endpoint],
    *,
    title: str = "HMS Mesh gateway",
    version: str = "1",
    options: JsonOptions = DEFAULT_OPTIONS,
    access: Callable[[Endpoint], Access] | None = _own_access,
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of ``endpoints``, as a JSON-serialisable dict.

    ``access`` gives each endpoint's access rule as the gate applies it (by default the
    endpoint's own, from its contract); None describes a gateway without the gate: no security.

    Client- and bidi-streaming endpoints are skipped (the gateway answers them 501), and so are
    custom HTTP methods OpenAPI has no place for (``custom: {kind: "LIST"}``). Raises
    ``ValueError`` when two endpoints share an HTTP method and an OpenAPI path.

    >>> from hms.testing.v1 import echo_pb2
    >>> from hms_gateway.endpoint import endpoints_of
    >>> doc = build_openapi(endpoints_of(echo_pb2.DESCRIPTOR.services_by_name["EchoService"]))
    >>> sorted(doc["paths"])[:2]
    ['/v1/echo', '/v1/echo:once']
    """
    served = [
        e
        for e in endpoints
        if not e.kind.request_streaming and e.mapping.http_method.lower() in _HTTP_METHODS
    ]
    schemas = Schemas(options)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint, operation_id in zip(served, _operation_ids(served), strict=True):
        path = openapi_path(parse_template(endpoint.mapping.template))
        verb = endpoint.mapping.http_method.lower()
        item = paths.setdefault(path, {})
        if verb in item:
            raise ValueError(
                f"{endpoint.method.full_name}: {endpoint.mapping.http_method} {path} is bound"
                f" twice (also by {item[verb]['summary']})"
            )
        operation = item[verb] = _operation(endpoint, operation_id, schemas)
        if access is not None:
            _secure(operation, access(endpoint), schemas)
    services = sorted({e.service for e in served})
    components: dict[str, Any] = {
        "schemas": {name: schemas.found[name] for name in sorted(schemas.found)}
    }
    if access is not None:
        components["securitySchemes"] = {BEARER_SCHEME: dict(_BEARER)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "tags": [{"name": name} for name in services],
        "paths": {
            path: {verb: paths[path][verb] for verb in _HTTP_METHODS if verb in paths[path]}
            for path in sorted(paths)
        },
        "components": components,
    }
