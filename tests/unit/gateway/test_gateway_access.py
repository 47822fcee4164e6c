"""hms_gateway.access: the (hms.api.v1.access) option, learnt from descriptors alone.

Services are built in private pools from the file descriptors in gen/hms.binpb, with the option
written as bytes by that pool's own classes: nothing here needs the option's generated module,
as a gateway learning a backend by reflection does not. One test learns through a real
reflection server in process, one in a fresh interpreter that never imports generated code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

from hms.testing.v1 import echo_pb2
from hms_gateway.access import ACCESS_EXTENSION, Access, access_of
from hms_gateway.endpoint import endpoints_of
from hms_gateway.learn import load_descriptor_set
from hms_gateway.reflection import build_pool, fetch_service
from hms_gateway.routes import RouteTable

_F = descriptor_pb2.FieldDescriptorProto
_BINPB = Path(echo_pb2.__file__).parents[3] / "hms.binpb"
_ACCESS_FILE = "hms/api/v1/access.proto"
_IMPORTS = (
    "google/protobuf/descriptor.proto",
    "google/api/http.proto",
    "google/api/annotations.proto",
    _ACCESS_FILE,
)


def _repo_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(_BINPB.read_bytes()).file
    return {proto.name: proto for proto in files}


_FILES = _repo_files()


def _option_bytes(option: dict[str, Any]) -> bytes:
    """MethodOptions bytes holding (hms.api.v1.access) = `option`, written with the classes of a
    private pool (the extension number comes from access.proto, not from here)."""
    pool = build_pool([_FILES[name] for name in _IMPORTS])
    extension = pool.FindExtensionByName(ACCESS_EXTENSION)
    classes = message_factory.GetMessageClassesForFiles(
        [_ACCESS_FILE, "google/protobuf/descriptor.proto"], pool
    )
    options = classes["google.protobuf.MethodOptions"]()
    access = options.Extensions[extension]
    access.SetInParent()
    access.scopes.extend(option.get("scopes", ()))
    access.public = option.get("public", False)
    return bytes(options.SerializeToString())


def _file_with(
    package: str, options: dict[str, dict[str, Any] | None], *, imports_access: bool = True
) -> descriptor_pb2.FileDescriptorProto:
    """A file with service `Guarded`: one GET-routed method per entry, its access option set to
    the entry (None: no option)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/guarded.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto", *([_ACCESS_FILE] if imports_access else [])],
    )
    thing = proto.message_type.add(name="Thing")
    thing.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    service = proto.service.add(name="Guarded")
    for method_name, option in options.items():
        method = service.method.add(
            name=method_name, input_type=f".{package}.Thing", output_type=f".{package}.Thing"
        )
        rule = http_pb2.HttpRule(get=f"/v1/{package}/{method_name.lower()}")
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
        if option is not None:
            method.options.MergeFromString(_option_bytes(option))
    return proto


def _service(proto: descriptor_pb2.FileDescriptorProto) -> ServiceDescriptor:
    pool = build_pool([*(_FILES[name] for name in _IMPORTS), proto])
    return pool.FindServiceByName(f"{proto.package}.Guarded")


# -- the option, read off a private pool --------------------------------------------------------

LEARNT = {
    "one-scope": ({"scopes": ["housing:apply"]}, Access(scopes=("housing:apply",))),
    "two-scopes-in-order": (
        {"scopes": ["passport:renew", "documents:read"]},
        Access(scopes=("passport:renew", "documents:read")),
    ),
    "public": ({"public": True}, Access(public=True)),
    "public-false-and-no-scopes": ({"public": False}, Access()),
    "no-option": (None, Access()),
}


@pytest.mark.parametrize("case", sorted(LEARNT))
def test_access_learnt_from_a_private_pool(case: str) -> None:
    option, expected = LEARNT[case]
    service = _service(_file_with("learnt.v1", {"Call": option}))
    assert access_of(service.methods_by_name["Call"]) == expected
    (endpoint,) = endpoints_of(service)
    assert endpoint.access == expected


def test_a_file_that_does_not_import_access_proto_has_no_rule() -> None:
    proto = _file_with("plain.v1", {"Call": None}, imports_access=False)
    pool = build_pool([*(_FILES[name] for name in _IMPORTS[:3]), proto])
    method = pool.FindServiceByName("plain.v1.Guarded").methods_by_name["Call"]
    assert access_of(method) == Access()


REFUSED = {
    "public-with-scopes": (
        {"public": True, "scopes": ["a:b"]},
        "a public method needs no token, so it cannot require scopes ('a:b')",
    ),
    "scope-with-a-space": ({"scopes": ["housing apply"]}, "scope 'housing apply' is not a scope"),
    "empty-scope": ({"scopes": [""]}, "scope '' is not a scope token"),
    "scope-with-a-quote": ({"scopes": ['a"b']}, "scope 'a\"b' is not a scope token"),
    "scope-not-ascii": ({"scopes": ["logement:déposer"]}, "is not a scope token"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_option_that_breaks_the_contract_refuses_the_method(case: str) -> None:
    option, fragment = REFUSED[case]
    service = _service(_file_with("refused.v1", {"Call": option}))
    with pytest.raises(ValueError, match=re.escape("refused.v1.Guarded.Call: option")) as caught:
        access_of(service.methods_by_name["Call"])
    assert fragment in str(caught.value)
    with pytest.raises(ValueError, match=re.escape("refused.v1.Guarded.Call")):
        list(endpoints_of(service))


# -- the repository's contracts ------------------------------------------------------------------

CONTRACTS = {
    "hms.eligibility.v1.EligibilityService.Check": Access(scopes=("eligibility:check",)),
    "hms.eligibility.v1.EligibilityService.GetRule": Access(public=True),
    "hms.eligibility.v1.EligibilityService.ListRules": Access(public=True),
    "hms.housing.v1.HousingService.SubmitApplication": Access(scopes=("housing:apply",)),
    "hms.documents.v1.DocumentsService.GetDocumentContent": Access(scopes=("documents:read",)),
    "hms.testing.v1.MirrorService.GetBook": Access(),
}


@pytest.mark.parametrize("method", sorted(CONTRACTS))
def test_the_contracts_rules_from_the_descriptor_set(method: str) -> None:
    table = RouteTable()
    load_descriptor_set(_BINPB, table)
    service, _, name = method.rpartition(".")
    (endpoint, *_) = (e for e in table.services()[service] if e.method.name == name)
    assert endpoint.access == CONTRACTS[method]


def test_generated_modules_give_the_same_rules() -> None:
    """Descriptors of the default pool (generated code imported) read as the private pool's."""
    from hms.eligibility.v1 import eligibility_pb2

    service = eligibility_pb2.DESCRIPTOR.services_by_name["EligibilityService"]
    for method in service.methods:
        assert access_of(method) == CONTRACTS[method.full_name]


def test_no_generated_code_is_needed() -> None:
    """In a fresh interpreter that never imports the option's generated module."""
    script = f"""
import sys
from hms_gateway.learn import load_descriptor_set
from hms_gateway.routes import RouteTable
table = RouteTable()
load_descriptor_set(__import__("pathlib").Path({str(_BINPB)!r}), table)
assert not any(name.startswith("hms.") for name in sys.modules), sorted(sys.modules)
check = [e for e in table.services()["hms.eligibility.v1.EligibilityService"]
         if e.method.name == "Check"][0]
print(check.access.scopes)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('eligibility:check',)"


# -- through a real reflection server -----------------------------------------------------------


@pytest.fixture
async def reflecting() -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    """A grpc.aio server reflecting a service of a private pool (no handlers: only learnt)."""
    proto = _file_with(
        "reflected.v1",
        {"Apply": {"scopes": ["housing:apply"]}, "Rules": {"public": True}, "Plain": None},
    )
    pool = descriptor_pool.DescriptorPool()
    for name in _IMPORTS:
        pool.Add(_FILES[name])
    pool.Add(proto)
    server = grpc.aio.server()
    reflection.enable_server_reflection(
        ["reflected.v1.Guarded", reflection.SERVICE_NAME], server, pool=pool
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, "reflected.v1.Guarded"
    finally:
        await channel.close()
        await server.stop(0)


async def test_access_learnt_by_reflection(reflecting: tuple[grpc.aio.Channel, str]) -> None:
    channel, name = reflecting

    async def open_stream(method: str, requests: Any) -> Any:
        stream = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return stream(requests, timeout=5)

    service = await fetch_service(open_stream, name)
    assert {e.method.name: e.access for e in endpoints_of(service)} == {
        "Apply": Access(scopes=("housing:apply",)),
        "Rules": Access(public=True),
        "Plain": Access(),
    }
