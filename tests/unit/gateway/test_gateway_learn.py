"""Static route learning from a descriptor set, and build_pool's ordering and errors.

RegistryLearner needs etcd and live servers; it is covered by the integration tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from hms.testing.v1 import echo_pb2
from hms_gateway.learn import load_descriptor_set
from hms_gateway.reflection import ReflectionError, build_pool
from hms_gateway.router import Match
from hms_gateway.routes import RouteTable

_F = descriptor_pb2.FieldDescriptorProto
_BINPB = Path(echo_pb2.__file__).parents[3] / "hms.binpb"


def _repo_files() -> list[descriptor_pb2.FileDescriptorProto]:
    return list(descriptor_pb2.FileDescriptorSet.FromString(_BINPB.read_bytes()).file)


def _annotated(files: list[descriptor_pb2.FileDescriptorProto]) -> set[str]:
    """Services with at least one google.api.http rule, read straight off the descriptors
    (so adding a service to protos/ does not break this test)."""
    return {
        f"{file.package}.{service.name}"
        for file in files
        for service in file.service
        if any(m.options.HasExtension(annotations_pb2.http) for m in service.method)
    }


_ANNOTATED = _annotated(_repo_files())


def _write(path: Path, files: list[descriptor_pb2.FileDescriptorProto]) -> Path:
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


def _extra_file(
    package: str, services: dict[str, dict[str, http_pb2.HttpRule | None]]
) -> descriptor_pb2.FileDescriptorProto:
    """A file importing google/api/annotations.proto, with one message Thing {name}."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/extra.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    thing = proto.message_type.add(name="Thing")
    thing.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    for service_name, methods in services.items():
        service = proto.service.add(name=service_name)
        for method_name, rule in methods.items():
            method = service.method.add(
                name=method_name, input_type=f".{package}.Thing", output_type=f".{package}.Thing"
            )
            if rule is not None:
                method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return proto


# -- load_descriptor_set --------------------------------------------------------------------


def test_repo_descriptor_set_loads_annotated_services() -> None:
    assert {"hms.testing.v1.EchoService", "hms.eligibility.v1.EligibilityService"} <= _ANNOTATED
    table = RouteTable()
    learnt = load_descriptor_set(_BINPB, table)
    assert set(learnt) == _ANNOTATED
    assert len(learnt) == len(_ANNOTATED)
    assert set(table.services()) == _ANNOTATED
    assert table.version == len(_ANNOTATED)


@pytest.mark.parametrize(
    ("method", "path", "target"),
    [
        pytest.param("POST", "/v1/echo", "/hms.testing.v1.EchoService/Echo", id="echo"),
        pytest.param(
            "GET", "/v1/items/special", "/hms.testing.v1.MirrorService/GetSpecialItem", id="mirror"
        ),
        pytest.param(
            "GET",
            "/v1/notifications",
            "/hms.notify.v1.NotifyService/ListNotifications",
            id="notify",
        ),
        pytest.param(
            "GET",
            "/v1/rules/r1",
            "/hms.eligibility.v1.EligibilityService/GetRule",
            id="eligibility",
        ),
    ],
)
def test_repo_descriptor_set_routes(method: str, path: str, target: str) -> None:
    table = RouteTable()
    load_descriptor_set(_BINPB, table)
    found = table.resolve(method, path)
    assert isinstance(found, Match)
    endpoint = found.route.payload
    assert endpoint.path == target
    # Messages come from the file's own pool, not the generated modules.
    assert endpoint.request_class.DESCRIPTOR.file.pool is not echo_pb2.DESCRIPTOR.pool


def test_unannotated_services_are_skipped(tmp_path: Path) -> None:
    extra = _extra_file(
        "extra.v1",
        {
            "Plain": {"A": None, "B": None},
            "Mixed": {"Hidden": None, "Shown": http_pb2.HttpRule(get="/v1/extra/{name}")},
        },
    )
    path = _write(tmp_path / "set.binpb", [*_repo_files(), extra])
    table = RouteTable()
    learnt = load_descriptor_set(path, table)
    assert set(learnt) == {*_ANNOTATED, "extra.v1.Mixed"}
    assert "extra.v1.Plain" not in table.services()
    assert [e.method.name for e in table.services()["extra.v1.Mixed"]] == ["Shown"]


def test_package_less_service(tmp_path: Path) -> None:
    proto = descriptor_pb2.FileDescriptorProto(
        name="bare.proto", syntax="proto3", dependency=["google/api/annotations.proto"]
    )
    proto.message_type.add(name="Thing")
    method = proto.service.add(name="Bare").method.add(
        name="Get", input_type=".Thing", output_type=".Thing"
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(get="/bare"))
    path = _write(tmp_path / "bare.binpb", [*_repo_files(), proto])
    table = RouteTable()
    assert "Bare" in load_descriptor_set(path, table)
    found = table.resolve("GET", "/bare")
    assert isinstance(found, Match)
    assert found.route.payload.path == "/Bare/Get"


def test_empty_file_is_an_empty_set(tmp_path: Path) -> None:
    path = tmp_path / "empty.binpb"
    path.write_bytes(b"")
    table = RouteTable()
    assert load_descriptor_set(path, table) == []
    assert table.version == 0


def _imports_left_out() -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in _repo_files() if f.name == "hms/testing/v1/mirror.proto"]


def _bad_rule() -> list[descriptor_pb2.FileDescriptorProto]:
    extra = _extra_file(
        "extra.v1", {"Broken": {"Put": http_pb2.HttpRule(put="/v1/x", body="missing")}}
    )
    return [*_repo_files(), extra]


def _bad_variable() -> list[descriptor_pb2.FileDescriptorProto]:
    extra = _extra_file("extra.v1", {"Broken": {"Get": http_pb2.HttpRule(get="/v1/{nope}")}})
    return [*_repo_files(), extra]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        pytest.param(None, ["No such file"], id="missing-file"),
        pytest.param("dir", ["Is a directory"], id="directory"),
        pytest.param(b"not a descriptor set", ["not a FileDescriptorSet"], id="random-bytes"),
        pytest.param(b"\x0a\x10truncated", ["not a FileDescriptorSet"], id="truncated"),
        pytest.param(
            _imports_left_out,
            ["google/api/annotations.proto", "build it with imports included"],
            id="without-imports",
        ),
        pytest.param(
            _bad_rule,
            ["extra.v1.Broken.Put", "body 'missing' is not a top-level field"],
            id="rule-does-not-fit",
        ),
        pytest.param(
            _bad_variable,
            ["extra.v1.Broken.Get", "path variable 'nope' names no field"],
            id="variable-names-no-field",
        ),
    ],
)
def test_errors_name_the_file(tmp_path: Path, content: object, fragments: list[str]) -> None:
    path = tmp_path / "routes.binpb"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif callable(content):
        _write(path, content())
    table = RouteTable()
    with pytest.raises(ValueError, match=re.escape(f"descriptor set {path}: ")) as info:
        load_descriptor_set(path, table)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "extra.v1.Broken" not in table.services()


# -- build_pool -----------------------------------------------------------------------------


def _file(name: str, *deps: str, message: str = "") -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name=name, package="t", syntax="proto3", dependency=list(deps)
    )
    if message:
        proto.message_type.add(name=message)
    return proto


def test_build_pool_falls_back_on_well_known_and_google_rpc_types() -> None:
    """An Any may hold a google.rpc or well-known type the service's files never import: Go
    resolves every linked type (protojson's default resolver, protoregistry.GlobalTypes)."""
    pool = build_pool([_file("a.proto", message="A")])
    wanted = [
        "google.rpc.BadRequest",
        "google.rpc.BadRequest.FieldViolation",
        "google.rpc.Status",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
    ]
    assert [pool.FindMessageTypeByName(name).full_name for name in wanted] == wanted
    assert pool.FindMessageTypeByName("t.A").file.name == "a.proto"
    # Only those: the gateway's other types (its own generated code) are not the service's.
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("hms.testing.v1.EchoRequest")


def test_build_pool_a_services_own_copy_of_a_fallback_file_wins() -> None:
    own = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/error_details.proto", package="google.rpc", syntax="proto3"
    )
    own.message_type.add(name="ErrorInfo").field.add(
        name="reason", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL
    )
    pool = build_pool([own])
    assert [f.name for f in pool.FindMessageTypeByName("google.rpc.ErrorInfo").fields] == ["reason"]


def test_build_pool_a_file_imported_from_the_fallback_need_not_be_sent() -> None:
    uses = _file("uses.proto", "google/protobuf/timestamp.proto")
    uses.message_type.add(name="U").field.add(
        name="at",
        number=1,
        type=_F.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=_F.LABEL_OPTIONAL,
    )
    pool = build_pool([uses])
    field = pool.FindMessageTypeByName("t.U").fields_by_name["at"]
    assert field.message_type.full_name == "google.protobuf.Timestamp"


def _orders() -> list[object]:
    files = _repo_files()
    return [
        pytest.param(files, id="as-built"),
        pytest.param(files[::-1], id="reversed"),
        pytest.param(sorted(files, key=lambda f: f.name), id="by-name"),
        pytest.param(sorted(files, key=lambda f: f.name, reverse=True), id="by-name-reversed"),
        pytest.param(files[1::2] + files[::2], id="interleaved"),
    ]


@pytest.mark.parametrize("files", _orders())
def test_build_pool_any_order(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    pool = build_pool(files)
    for service in _ANNOTATED:
        assert pool.FindServiceByName(service).full_name == service
    assert pool.FindFileByName("google/api/annotations.proto").name


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(
            [_file("c.proto", "b.proto"), _file("b.proto", "a.proto"), _file("a.proto")],
            id="chain-reversed",
        ),
        pytest.param(
            [_file("a.proto"), _file("b.proto", "a.proto"), _file("c.proto", "b.proto")],
            id="chain-forward",
        ),
        pytest.param(
            [
                _file("d.proto", "b.proto", "c.proto"),
                _file("b.proto", "a.proto"),
                _file("c.proto", "a.proto"),
                _file("a.proto"),
            ],
            id="diamond",
        ),
        pytest.param(iter([_file("b.proto", "a.proto"), _file("a.proto")]), id="iterator"),
    ],
)
def test_build_pool_dependencies_first(files: object) -> None:
    pool = build_pool(files)  # type: ignore[arg-type]
    assert pool.FindFileByName("a.proto").name == "a.proto"


def test_build_pool_empty() -> None:
    pool = build_pool([])
    with pytest.raises(KeyError):
        pool.FindFileByName("a.proto")


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        pytest.param([_file("a.proto", "a.proto")], "import cycle through a.proto", id="self"),
        pytest.param(
            [_file("a.proto", "b.proto"), _file("b.proto", "a.proto")],
            "import cycle through a.proto",
            id="two-files",
        ),
        pytest.param(
            [_file("z.proto", "y.proto"), _file("y.proto", "x.proto"), _file("x.proto", "z.proto")],
            "import cycle through x.proto",
            id="three-files",
        ),
        pytest.param(
            [_file("a.proto", "missing.proto")],
            "file missing.proto is imported but was not received",
            id="missing-import",
        ),
        pytest.param(
            [_file("b.proto", "a.proto"), _file("a.proto", "gone.proto")],
            "file gone.proto is imported but was not received",
            id="missing-indirect-import",
        ),
        pytest.param(
            [_imports_left_out()[0]],
            "file google/api/annotations.proto is imported but was not received",
            id="mirror-alone",
        ),
    ],
)
def test_build_pool_structure_errors(
    files: list[descriptor_pb2.FileDescriptorProto], fragment: str
) -> None:
    with pytest.raises(ReflectionError, match=re.escape(fragment)):
        build_pool(files)


def _unresolved() -> list[descriptor_pb2.FileDescriptorProto]:
    proto = _file("bad.proto", message="M")
    proto.message_type[0].field.add(
        name="f", number=1, type=_F.TYPE_MESSAGE, type_name=".t.Nope", label=_F.LABEL_OPTIONAL
    )
    return [proto]


def _duplicate_symbol() -> list[descriptor_pb2.FileDescriptorProto]:
    return [_file("a.proto", message="Same"), _file("b.proto", "a.proto", message="Same")]


def _bad_field_number() -> list[descriptor_pb2.FileDescriptorProto]:
    proto = _file("bad.proto", message="M")
    proto.message_type[0].field.add(
        name="f", number=0, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL
    )
    return [proto]


@pytest.mark.parametrize(
    ("make", "name"),
    [
        pytest.param(_unresolved, "bad.proto", id="unresolved-type"),
        pytest.param(_duplicate_symbol, "b.proto", id="duplicate-symbol"),
        pytest.param(_bad_field_number, "bad.proto", id="field-number-zero"),
    ],
)
def test_build_pool_invalid_file(make, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReflectionError, match=re.escape(f"file {name} is not a valid descriptor")):
        build_pool(make())
