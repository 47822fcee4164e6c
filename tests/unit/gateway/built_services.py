"""Services built on the fly for gateway tests: one method per google.api.http rule."""

from __future__ import annotations

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

_F = descriptor_pb2.FieldDescriptorProto


def service_with_rules(full_name: str, rules: dict[str, http_pb2.HttpRule]) -> ServiceDescriptor:
    """A service `pkg.Name` in a private pool: one method per rule, Thing -> Thing."""
    package, _, name = full_name.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/{name.lower()}.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    thing = proto.message_type.add(name="Thing")
    thing.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    service = proto.service.add(name=name)
    for method_name, rule in rules.items():
        method = service.method.add(
            name=method_name, input_type=f".{package}.Thing", output_type=f".{package}.Thing"
        )
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        dependency = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(dependency)
        pool.Add(dependency)
    pool.Add(proto)
    return pool.FindServiceByName(full_name)
