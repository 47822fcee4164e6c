"""`mesh new-service` (tools/scaffold.py, tools/cli/new_service.py): which names it refuses and
why, the package added to pyproject.toml in its place, and what it writes: a contract that
compiles (with its REST route and access rule), a manifest that reads against it, code whose
servicer `mesh manifest check` finds, and nothing at all when the name is taken.

tests/e2e/test_new_service.py runs ruff, buf lint and the written tests on a clone."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grpc_tools
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from hms_tools.cli import main
from hms_tools.contracts import REPO, Contracts
from hms_tools.manifest import State, load_manifest
from hms_tools.manifest_check import check_tree
from hms_tools.scaffold import ScaffoldError, add_package, check_name, create_service, service_files

PYPROJECT = """\
[tool.setuptools]
packages = [
    "mesh",
    "hms_services",
    "hms_services.audit",
    "hms_services.notify",
    "hms_tools",
]
"""


@pytest.mark.parametrize("name", ["parking", "p", "tax2", "a" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("", "the name is empty", id="empty"),
        pytest.param("fee-calc", "'-' cannot be in a Python package name", id="dash"),
        pytest.param("fee_calc", "'_' cannot be in a DNS label", id="underscore"),
        pytest.param("Parking", "use lower case", id="upper"),
        pytest.param("2fa", "must start with a letter", id="digit-first"),
        pytest.param("park.ing", "1 to 63 lower-case ASCII letters and digits", id="dot"),
        pytest.param("café", "1 to 63 lower-case ASCII letters and digits", id="not-ascii"),
        pytest.param("a" * 64, "1 to 63", id="too-long"),
        pytest.param("import", "is a Python keyword", id="keyword"),
        pytest.param("gateway", "is reserved", id="gateway"),
        pytest.param("ops", "is reserved", id="ops"),
        pytest.param("echo", "is reserved", id="test-backend"),
    ],
)
def test_names_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(ScaffoldError) as caught:
        check_name(name)
    assert str(caught.value).startswith(f"cannot name a service {name!r}: ")
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("name", "after"),
    [("licensing", "audit"), ("aardvark", "hms_services"), ("zoo", "notify")],
)
def test_the_package_goes_in_order_among_the_services(name: str, after: str) -> None:
    text = add_package(PYPROJECT, name)
    packages = tomllib.loads(text)["tool"]["setuptools"]["packages"]
    expected = "hms_services" if after == "hms_services" else f"hms_services.{after}"
    assert packages[packages.index(expected) + 1] == f"hms_services.{name}"
    assert text.count(f'    "hms_services.{name}",\n') == 1


def test_a_listed_package_is_refused() -> None:
    with pytest.raises(ScaffoldError, match=r"already lists hms_services\.notify"):
        add_package(PYPROJECT, "notify")


def test_the_platforms_pyproject_takes_a_new_package() -> None:
    text = add_package((REPO / "pyproject.toml").read_text(), "parking")
    assert "hms_services.parking" in tomllib.loads(text)["tool"]["setuptools"]["packages"]


def test_the_files_it_writes() -> None:
    written = service_files("parking")
    assert sorted(written) == [
        "protos/hms/parking/v1/parking.proto",
        "services/parking/__init__.py",
        "services/parking/main.py",
        "services/parking/service.py",
        "services/parking/service.toml",
        "tests/integration/platform/test_parking_service.py",
        "tests/unit/services/test_parking.py",
    ]
    for path, text in written.items():
        if path.endswith(".py"):
            ast.parse(text, path)  # SyntaxError fails the test
        assert "$" not in text, path  # every placeholder filled


def compile_contract(tmp_path: Path, proto: str) -> Contracts:
    """protoc over the written contract, as `make proto` does; its descriptor set."""
    (tmp_path / "protos" / "hms" / "parking" / "v1").mkdir(parents=True)
    (tmp_path / "protos/hms/parking/v1/parking.proto").write_text(proto)
    googleapis = Path(annotations_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out = tmp_path / "hms.binpb"
    status = protoc.main(
        [
            "protoc",
            f"-I{tmp_path / 'protos'}",
            f"-I{REPO / 'protos'}",
            f"-I{googleapis}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "hms/parking/v1/parking.proto",
        ]
    )
    assert status == 0
    return Contracts.load(out)


def test_the_contract_compiles_with_a_route_and_an_access_rule(tmp_path: Path) -> None:
    written = service_files("parking", "Parking permits")
    contracts = compile_contract(tmp_path, written["protos/hms/parking/v1/parking.proto"])
    assert contracts.methods("hms.parking.v1.ParkingService") == ("Greet",)
    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "hms.binpb").read_bytes())
    (own,) = [f for f in files.file if f.name == "hms/parking/v1/parking.proto"]
    options = own.service[0].method[0].options
    assert options.Extensions[annotations_pb2.http].get == "/v1/parking/greetings/{name}"
    access = next(f for f in files.file if f.name == "hms/api/v1/access.proto")
    assert "hms/api/v1/access.proto" in own.dependency
    assert access.extension[0].name == "access"
    assert options.HasField("idempotency_level")
    # The manifest reads against it, and the check finds the servicer in the code.
    root = tmp_path / "tree"
    for path, text in written.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "gen").mkdir()
    (root / "gen" / "hms.binpb").write_bytes((tmp_path / "hms.binpb").read_bytes())
    manifest = load_manifest(root / "services/parking/service.toml", contracts)
    assert (manifest.name, manifest.description, manifest.state) == (
        "parking",
        "Parking permits",
        State.NONE,
    )
    assert manifest.accepts_from("gateway", "hms.parking.v1.ParkingService")
    assert check_tree(root) == []


@pytest.mark.parametrize("description", ['say "hi"', "two\nlines", "back\\slash"])
def test_a_description_that_would_break_the_files(description: str) -> None:
    with pytest.raises(ScaffoldError, match="one line without quotes"):
        service_files("parking", description)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "services").mkdir()
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    return tmp_path


def test_create_writes_the_service_and_lists_its_package(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-service", "parking", "--root", str(checkout)]) == 0
    printed = capsys.readouterr().out
    assert "wrote services/parking/service.toml" in printed
    assert "make proto" in printed
    assert (checkout / "services/parking/main.py").is_file()
    packages = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "hms_services.parking" in packages["packages"]


@pytest.mark.parametrize(
    ("existing", "named"),
    [
        ("services/parking/notes.txt", "services/parking"),
        ("protos/hms/parking/README", "protos/hms/parking"),
        ("tests/unit/services/test_parking.py", "tests/unit/services/test_parking.py"),
    ],
)
def test_a_name_in_use_is_refused_and_nothing_written(
    checkout: Path, existing: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (checkout / existing).parent.mkdir(parents=True, exist_ok=True)
    (checkout / existing).write_text("mine\n")
    before = sorted(p for p in checkout.rglob("*"))
    assert main(["new-service", "parking", "--root", str(checkout)]) == 2
    assert f"{named} already exist(s)" in capsys.readouterr().err
    assert sorted(p for p in checkout.rglob("*")) == before
    assert (checkout / "pyproject.toml").read_text() == PYPROJECT


def test_a_tree_that_is_not_the_checkout(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="is not the platform's checkout"):
        create_service(tmp_path, "parking")
