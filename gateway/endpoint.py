"""What a route leads to: one gRPC method under one HTTP binding, with everything a call needs.

Built from descriptors alone (reflection or a descriptor set), so the gateway needs no
generated code for the services it fronts. One method with ``additional_bindings`` gives one
:class:`Endpoint` per binding; they share the method, its message classes and its access rule
(``(hms.api.v1.access)``, gateway/access.py), which the gate enforces.

>>> from hms.testing.v1 import echo_pb2
>>> service = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
>>> [(e.mapping.http_method, e.mapping.template) for e in endpoints_of(service)][:1]
[('POST', '/v1/echo')]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from hms_gateway.access import Access, access_of
from hms_gateway.transcode import RequestMapping
from mesh.client.call import CallKind
from mesh.resilience.retry import Idempotency

if TYPE_CHECKING:
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor

__all__ = ["Endpoint", "endpoints_of", "http_rule_of"]

# The `google.api.http` extension of MethodOptions. protoc's annotations_pb2.pyi declares it a
# plain FieldDescriptor; types-protobuf's Extensions API takes the typed extension handle it is.
_HTTP: _ExtensionFieldDescriptor[descriptor_pb2.MethodOptions, http_pb2.HttpRule]
_HTTP = annotations_pb2.http  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One HTTP binding of one gRPC method."""

    service: str  #: full gRPC service name, ``hms.testing.v1.EchoService``
    method: MethodDescriptor
    mapping: RequestMapping
    request_class: type[Message]
    response_class: type[Message]
    kind: CallKind
    idempotency: Idempotency
    #: Who may call it (a public method, the scopes a token must hold, or any valid token).
    access: Access = field(default_factory=Access)

    @property
    def path(self) -> str:
        """The gRPC method path, ``/hms.testing.v1.EchoService/Echo``."""
        return f"/{self.service}/{self.method.name}"


def http_rule_of(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    """The method's ``google.api.http`` option, or None when it has none.

    Read from the method's serialized options rather than ``GetOptions()``: for descriptors
    built in a private pool (learnt by reflection) the extension is only known to the default
    pool, where importing ``annotations_pb2`` registered it.
    """
    options = _method_options(method)
    if not options.HasExtension(_HTTP):
        return None
    return options.Extensions[_HTTP]


def _method_options(method: MethodDescriptor) -> descriptor_pb2.MethodOptions:
    proto = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(proto)
    return proto.options


def _kind_of(method: MethodDescriptor) -> CallKind:
    return {
        (False, False): CallKind.UNARY_UNARY,
        (False, True): CallKind.UNARY_STREAM,
        (True, False): CallKind.STREAM_UNARY,
        (True, True): CallKind.STREAM_STREAM,
    }[(method.client_streaming, method.server_streaming)]


def endpoints_of(service: ServiceDescriptor) -> Iterator[Endpoint]:
    """Every HTTP binding of every annotated method of `service`; unannotated ones are skipped.

    Raises ``ValueError`` naming the method when a rule does not fit its messages or its
    access option cannot be read or breaks the contract.
    """
    for method in service.methods:
        rule = http_rule_of(method)
        if rule is None:
            continue
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        options = _method_options(method)
        idempotency = Idempotency(options.idempotency_level)
        access = access_of(method)
        for mapping in RequestMapping.from_rule(rule, method):
            yield Endpoint(
                service=service.full_name,
                method=method,
                mapping=mapping,
                request_class=request_class,
                response_class=response_class,
                kind=_kind_of(method),
                idempotency=idempotency,
                access=access,
            )
