"""Endpoints from descriptors: http_rule_of, one endpoint per binding, kinds, idempotency."""

from __future__ import annotations

import re

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from hms.testing.v1 import echo_pb2, mirror_pb2
from hms_gateway.endpoint import Endpoint, endpoints_of, http_rule_of
from mesh.client.call import CallKind
from mesh.resilience.retry import Idempotency

_F = descriptor_pb2.FieldDescriptorProto
_M = descriptor_pb2.MethodOptions
_MIRROR = mirror_pb2.DESCRIPTOR.services_by_name["MirrorService"]
_ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]


def _file_proto(module: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def _shop_file(
    methods: list[tuple[str, http_pb2.HttpRule | None, bool, bool, int]],
) -> descriptor_pb2.FileDescriptorProto:
    """shop/v1/shop.proto: Item {name, inner, count}, Inner {id}; service ShopService."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="shop/v1/shop.proto",
        package="shop.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    item = proto.message_type.add(name="Item")
    item.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    item.field.add(
        name="inner",
        number=2,
        type=_F.TYPE_MESSAGE,
        type_name=".shop.v1.Inner",
        label=_F.LABEL_OPTIONAL,
    )
    item.field.add(name="count", number=3, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    inner = proto.message_type.add(name="Inner")
    inner.field.add(name="id", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    service = proto.service.add(name="ShopService")
    for name, rule, client_streaming, server_streaming, idempotency in methods:
        method = service.method.add(
            name=name,
            input_type=".shop.v1.Item",
            output_type=".shop.v1.Item",
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
        if idempotency:
            method.options.idempotency_level = idempotency  # type: ignore[assignment]
        if rule is not None:
            method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return proto


def _shop(
    methods: list[tuple[str, http_pb2.HttpRule | None, bool, bool, int]],
) -> ServiceDescriptor:
    """The service built in a private pool, as reflection would build it."""
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        pool.Add(_file_proto(module))
    pool.Add(_shop_file(methods))
    return pool.FindServiceByName("shop.v1.ShopService")


_SHOP = [
    ("Get", http_pb2.HttpRule(get="/v1/{name=items/*}"), False, False, _M.NO_SIDE_EFFECTS),
    ("Plain", None, False, False, 0),
    ("Watch", http_pb2.HttpRule(get="/v1/items:watch"), False, True, 0),
    ("Upload", http_pb2.HttpRule(post="/v1/items:upload", body="*"), True, False, 0),
    ("Chat", http_pb2.HttpRule(post="/v1/items:chat", body="*"), True, True, _M.IDEMPOTENT),
    (
        "Multi",
        http_pb2.HttpRule(
            post="/v1/items",
            body="*",
            additional_bindings=[
                http_pb2.HttpRule(put="/v1/items/{name}", body="inner"),
                http_pb2.HttpRule(
                    custom=http_pb2.CustomHttpPattern(kind="search", path="/v1/items:search")
                ),
            ],
        ),
        False,
        False,
        0,
    ),
]


# -- http_rule_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "method", "expected"),
    [
        pytest.param(
            _ECHO, "Echo", http_pb2.HttpRule(post="/v1/echo", body="*"), id="generated-echo"
        ),
        pytest.param(
            _MIRROR,
            "GetBook",
            http_pb2.HttpRule(get="/v1/{name=shelves/*/books/*}"),
            id="generated-mirror",
        ),
        pytest.param(
            _shop(_SHOP), "Get", http_pb2.HttpRule(get="/v1/{name=items/*}"), id="private-pool"
        ),
        pytest.param(_shop(_SHOP), "Plain", None, id="private-pool-unannotated"),
    ],
)
def test_http_rule_of(
    service: ServiceDescriptor, method: str, expected: http_pb2.HttpRule | None
) -> None:
    assert http_rule_of(service.methods_by_name[method]) == expected


def test_http_rule_of_keeps_additional_bindings() -> None:
    rule = http_rule_of(_MIRROR.methods_by_name["Lookup"])
    assert rule is not None
    assert rule.get == "/v1/lookup/{id}"
    assert [b.WhichOneof("pattern") for b in rule.additional_bindings] == ["get", "post"]


def test_http_rule_of_private_pool_without_annotations_file() -> None:
    """The option is found even when the private pool never saw google/api/annotations.proto."""
    proto = _shop_file([("Get", http_pb2.HttpRule(get="/v1/{name}"), False, False, 0)])
    del proto.dependency[:]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    method = pool.FindServiceByName("shop.v1.ShopService").methods_by_name["Get"]
    assert http_rule_of(method) == http_pb2.HttpRule(get="/v1/{name}")


# -- endpoints_of ---------------------------------------------------------------------------


def _summary(endpoints: list[Endpoint]) -> list[tuple[str, str, str, str]]:
    return [
        (e.method.name, e.mapping.http_method, e.mapping.template, e.mapping.body)
        for e in endpoints
    ]


def test_endpoints_of_private_pool() -> None:
    endpoints = list(endpoints_of(_shop(_SHOP)))
    assert _summary(endpoints) == [
        ("Get", "GET", "/v1/{name=items/*}", ""),
        ("Watch", "GET", "/v1/items:watch", ""),
        ("Upload", "POST", "/v1/items:upload", "*"),
        ("Chat", "POST", "/v1/items:chat", "*"),
        ("Multi", "POST", "/v1/items", "*"),
        ("Multi", "PUT", "/v1/items/{name}", "inner"),
        ("Multi", "SEARCH", "/v1/items:search", ""),
    ]
    assert {e.service for e in endpoints} == {"shop.v1.ShopService"}
    get = endpoints[0]
    assert get.request_class.DESCRIPTOR.full_name == "shop.v1.Item"
    assert get.response_class.DESCRIPTOR.full_name == "shop.v1.Item"
    message = get.request_class(name="items/1", count=3)
    assert get.request_class.FromString(message.SerializeToString()) == message


def test_additional_bindings_share_the_method() -> None:
    lookup = [e for e in endpoints_of(_MIRROR) if e.method.name == "Lookup"]
    assert _summary(lookup) == [
        ("Lookup", "GET", "/v1/lookup/{id}", ""),
        ("Lookup", "GET", "/v1/lookup-by-name/{name}", ""),
        ("Lookup", "POST", "/v1/lookup", "*"),
    ]
    assert len({id(e.method) for e in lookup}) == 1
    assert {e.request_class for e in lookup} == {mirror_pb2.MirrorRequest}
    assert {e.response_class for e in lookup} == {mirror_pb2.MirrorResponse}
    assert {e.idempotency for e in lookup} == {Idempotency.NO_SIDE_EFFECTS}


def test_endpoints_of_generated_counts() -> None:
    mirror = list(endpoints_of(_MIRROR))
    # 18 annotated methods, Lookup with two additional bindings.
    assert len(mirror) == len(_MIRROR.methods) + 2
    echo = list(endpoints_of(_ECHO))
    assert [e.path for e in echo] == [
        f"/hms.testing.v1.EchoService/{name}"
        for name in ("Echo", "EchoOnce", "EchoStream", "Collect", "SetFailure", "SetFault")
    ]


def test_unannotated_service_has_no_endpoints() -> None:
    assert list(endpoints_of(_shop([("Plain", None, False, False, 0)]))) == []


@pytest.mark.parametrize(
    ("service", "method", "kind"),
    [
        pytest.param(_shop(_SHOP), "Get", CallKind.UNARY_UNARY, id="unary"),
        pytest.param(_shop(_SHOP), "Watch", CallKind.UNARY_STREAM, id="server-streaming"),
        pytest.param(_shop(_SHOP), "Upload", CallKind.STREAM_UNARY, id="client-streaming"),
        pytest.param(_shop(_SHOP), "Chat", CallKind.STREAM_STREAM, id="bidi"),
        pytest.param(_MIRROR, "Stream", CallKind.UNARY_STREAM, id="mirror-stream"),
        pytest.param(_MIRROR, "Gather", CallKind.STREAM_UNARY, id="mirror-gather"),
        pytest.param(_ECHO, "Collect", CallKind.STREAM_UNARY, id="echo-collect"),
        pytest.param(_ECHO, "Echo", CallKind.UNARY_UNARY, id="echo-unary"),
    ],
)
def test_kind(service: ServiceDescriptor, method: str, kind: CallKind) -> None:
    found = [e for e in endpoints_of(service) if e.method.name == method]
    assert found
    assert {e.kind for e in found} == {kind}


@pytest.mark.parametrize(
    ("service", "method", "idempotency"),
    [
        pytest.param(_shop(_SHOP), "Get", Idempotency.NO_SIDE_EFFECTS, id="private-no-effects"),
        pytest.param(_shop(_SHOP), "Chat", Idempotency.IDEMPOTENT, id="private-idempotent"),
        pytest.param(_shop(_SHOP), "Watch", Idempotency.UNKNOWN, id="private-default"),
        pytest.param(_ECHO, "Echo", Idempotency.IDEMPOTENT, id="echo-idempotent"),
        pytest.param(_ECHO, "EchoOnce", Idempotency.UNKNOWN, id="echo-unknown"),
        pytest.param(_MIRROR, "GetBook", Idempotency.NO_SIDE_EFFECTS, id="mirror-no-effects"),
        pytest.param(_MIRROR, "DeleteBook", Idempotency.IDEMPOTENT, id="mirror-idempotent"),
    ],
)
def test_idempotency(service: ServiceDescriptor, method: str, idempotency: Idempotency) -> None:
    found = [e for e in endpoints_of(service) if e.method.name == method]
    assert found
    assert {e.idempotency for e in found} == {idempotency}


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        pytest.param(_ECHO, "Echo", "/hms.testing.v1.EchoService/Echo", id="echo"),
        pytest.param(_MIRROR, "GetBook", "/hms.testing.v1.MirrorService/GetBook", id="mirror"),
        pytest.param(_shop(_SHOP), "Multi", "/shop.v1.ShopService/Multi", id="private"),
    ],
)
def test_path(service: ServiceDescriptor, method: str, path: str) -> None:
    found = [e for e in endpoints_of(service) if e.method.name == method]
    assert found
    assert {e.path for e in found} == {path}


def test_endpoint_is_frozen() -> None:
    endpoint = next(endpoints_of(_ECHO))
    with pytest.raises(AttributeError):
        endpoint.service = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        pytest.param(
            http_pb2.HttpRule(post="/v1/items", body="missing"),
            "body 'missing' is not a top-level field",
            id="body-missing-field",
        ),
        pytest.param(
            http_pb2.HttpRule(get="/v1/{nope}"),
            "path variable 'nope' names no field",
            id="path-variable-no-field",
        ),
        pytest.param(
            http_pb2.HttpRule(get="/v1/{inner.nope}"),
            "path variable 'inner.nope' names no field",
            id="nested-path-variable-no-field",
        ),
        pytest.param(
            http_pb2.HttpRule(get="/v1/{inner}"),
            "path variable 'inner' cannot take text",
            id="path-variable-message",
        ),
        pytest.param(
            http_pb2.HttpRule(get="/v1/items", response_body="missing"),
            "response_body 'missing' is not a top-level field",
            id="response-body-missing",
        ),
        pytest.param(
            http_pb2.HttpRule(get="/v1/items", response_body="*"),
            "response_body cannot be '*'",
            id="response-body-star",
        ),
        pytest.param(
            http_pb2.HttpRule(
                get="/v1/items",
                additional_bindings=[http_pb2.HttpRule(post="/v1/x", body="missing")],
            ),
            "body 'missing' is not a top-level field",
            id="bad-additional-binding",
        ),
        pytest.param(
            http_pb2.HttpRule(
                get="/v1/items",
                additional_bindings=[
                    http_pb2.HttpRule(
                        get="/v1/x", additional_bindings=[http_pb2.HttpRule(get="/v1/y")]
                    )
                ],
            ),
            "additional_bindings cannot nest",
            id="nested-additional-bindings",
        ),
        pytest.param(http_pb2.HttpRule(body="*"), "no pattern", id="no-pattern"),
        pytest.param(
            http_pb2.HttpRule(get="v1/no-slash"),
            "bad path template 'v1/no-slash'",
            id="bad-template",
        ),
    ],
)
def test_bad_rule(rule: http_pb2.HttpRule, fragment: str) -> None:
    service = _shop([("Good", http_pb2.HttpRule(get="/v1/good"), False, False, 0)])
    bad = _shop(
        [
            ("Good", http_pb2.HttpRule(get="/v1/good"), False, False, 0),
            ("Bad", rule, False, False, 0),
        ]
    )
    assert len(list(endpoints_of(service))) == 1
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        list(endpoints_of(bad))
    if not any(word in fragment for word in ("nest", "pattern", "template")):
        # A rule that does not fit its messages names the method.
        assert "shop.v1.ShopService.Bad" in str(info.value)
