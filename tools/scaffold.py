"""`mesh new-service NAME`: a new service that builds, lints, passes its tests and starts with
`mesh up` as written, to be grown from there (docs/new-service.md).

It writes the contract (protos/hms/NAME/v1/NAME.proto, one method with a REST route and an
access rule), the handlers and wiring (services/NAME/{__init__,service,main}.py), the manifest
(services/NAME/service.toml), a unit test of the handlers and an integration test that starts
the service for real and calls it, and adds ``hms_services.NAME`` to pyproject's packages.
Nothing is overwritten: a name in use anywhere is refused before anything is written.
"""

from __future__ import annotations

import keyword
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hms_tools.manifest import RESERVED_NAMES

__all__ = ["ScaffoldError", "add_package", "check_name", "create_service", "service_files"]

# A Python package (no '-') and a DNS label in the certificate (no '_'): both at once.
_NAME = re.compile(r"[a-z][a-z0-9]{0,62}")
_PACKAGE_LINE = re.compile(r'^(\s*)"hms_services\.([a-z0-9_]+)",\s*$')


class ScaffoldError(ValueError):
    """A name that cannot be used, or a tree the service cannot be added to; says why."""


@dataclass(frozen=True)
class Names:
    """How the service's name is spelt in each place."""

    name: str  # fees: the deployment, the folder, hms_services.fees, hms.fees.v1
    camel: str  # Fees: FeesService

    @classmethod
    def of(cls, name: str) -> Names:
        return cls(name, name[0].upper() + name[1:])

    @property
    def service(self) -> str:
        return f"hms.{self.name}.v1.{self.camel}Service"


def check_name(name: str) -> str:
    """`name` if a new service may take it; ScaffoldError saying why not."""
    why = _name_problem(name)
    if why is not None:
        raise ScaffoldError(f"cannot name a service {name!r}: {why}")
    return name


def _name_problem(name: str) -> str | None:
    if not name:
        return "the name is empty"
    if "-" in name:
        return (
            "'-' cannot be in a Python package name (hms_services.<name>); use letters and digits"
        )
    if "_" in name:
        return (
            "'_' cannot be in a DNS label (its certificate names <name>.svc.hms.local); use "
            "letters and digits"
        )
    if name != name.lower():
        return "use lower case: it names a Python package, a proto package and a DNS label"
    if not name[0].isalpha():
        return "it must start with a letter (a Python package and a DNS label do)"
    if not _NAME.fullmatch(name):
        return "use 1 to 63 lower-case ASCII letters and digits, starting with a letter"
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword: hms_services.{name} could not be imported"
    if name in RESERVED_NAMES:
        return (
            f"{name!r} is reserved (the gateway, operators, the control plane and the test "
            f"backends: {', '.join(sorted(RESERVED_NAMES))})"
        )
    return None


def service_files(name: str, description: str | None = None) -> dict[str, str]:
    """The files of a new service `name`, by path from the checkout's root."""
    names = Names.of(check_name(name))
    description = (description or f"The {name} service").strip().rstrip(".")
    if "\n" in description or '"' in description or "\\" in description:
        raise ScaffoldError("the description must be one line without quotes or backslashes")
    values = {"name": names.name, "Camel": names.camel, "description": description}
    return {
        path.replace("NAME", names.name): string.Template(text).substitute(values)
        for path, text in _TEMPLATES.items()
    }


def add_package(pyproject: str, name: str) -> str:
    """pyproject.toml's text with ``"hms_services.<name>"`` added to [tool.setuptools]
    packages, in order among the other services."""
    lines = pyproject.splitlines(keepends=True)
    services = [(i, m) for i, line in enumerate(lines) if (m := _PACKAGE_LINE.match(line))]
    if any(m.group(2) == name for _, m in services):
        raise ScaffoldError(f"pyproject.toml already lists hms_services.{name}")
    if services:
        before = [i for i, m in services if m.group(2) < name]
        at = before[-1] + 1 if before else services[0][0]
        indent = services[0][1].group(1)
    else:
        anchor = [i for i, line in enumerate(lines) if line.strip() == '"hms_services",']
        if not anchor:
            raise ScaffoldError('pyproject.toml\'s packages list has no "hms_services" entry')
        at = anchor[0] + 1
        indent = lines[anchor[0]][: len(lines[anchor[0]]) - len(lines[anchor[0]].lstrip())]
    lines.insert(at, f'{indent}"hms_services.{name}",\n')
    text = "".join(lines)
    packages = tomllib.loads(text)["tool"]["setuptools"]["packages"]
    if f"hms_services.{name}" not in packages:
        raise ScaffoldError("could not add the package to pyproject.toml's packages list")
    return text


def create_service(root: Path, name: str, description: str | None = None) -> list[Path]:
    """Write the new service's files under the checkout `root` and add its package to
    pyproject.toml; the paths written. Refuses, writing nothing, if any of them exists."""
    root = Path(root)
    files = service_files(name, description)
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not (root / "services").is_dir():
        raise ScaffoldError(f"{root} is not the platform's checkout (no pyproject.toml, services/)")
    folders = [p for p in (f"services/{name}", f"protos/hms/{name}") if (root / p).exists()]
    taken = folders or [p for p in files if (root / p).exists()]
    if taken:
        raise ScaffoldError(
            f"cannot name a service {name!r}: {', '.join(taken)} already exist(s); "
            "mesh new-service writes new services only"
        )
    new_pyproject = add_package(pyproject.read_text(), name)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    pyproject.write_text(new_pyproject)
    return [*written, pyproject]


_PROTO = """\
syntax = "proto3";

package hms.$name.v1;

import "google/api/annotations.proto";
import "hms/api/v1/access.proto";

// ${Camel}Service: $description.
service ${Camel}Service {
  // Greet answers a greeting for a name; a blank or over-long name is INVALID_ARGUMENT naming
  // the field. Safe to retry.
  rpc Greet(GreetRequest) returns (GreetResponse) {
    option idempotency_level = NO_SIDE_EFFECTS;
    option (google.api.http) = {get: "/v1/$name/greetings/{name}"};
    option (hms.api.v1.access) = {
      scopes: ["$name:read"]
    };
  }
}

// GreetRequest names who is greeted.
message GreetRequest {
  // 1 to 100 characters (spaces around it are not counted).
  string name = 1;
}

// GreetResponse is the greeting.
message GreetResponse {
  string greeting = 1;
}
"""

_INIT = '''\
"""The $name service: $description (written by `mesh new-service`)."""
'''

_SERVICE = '''\
"""gRPC handlers of hms.$name.v1.${Camel}Service: validate, answer.

Expected errors are raised as `mesh` errors; the service host turns them into the call's
status (docs/new-service.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hms.$name.v1 import ${name}_pb2, ${name}_pb2_grpc
from mesh import InvalidArgument

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["MAX_NAME_LENGTH", "${Camel}Service"]

MAX_NAME_LENGTH = 100


class ${Camel}Service(${name}_pb2_grpc.${Camel}ServiceServicer):
    async def Greet(
        self,
        request: ${name}_pb2.GreetRequest,
        context: grpc.aio.ServicerContext[${name}_pb2.GreetRequest, ${name}_pb2.GreetResponse],
    ) -> ${name}_pb2.GreetResponse:
        name = request.name.strip()
        if not name:
            raise InvalidArgument.field("name", "is required")
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument.field(
                "name", f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}"
            )
        return ${name}_pb2.GreetResponse(greeting=f"Hello, {name}")
'''

_MAIN = '''\
"""Runs the $name service: `python -m hms_services.$name.main --help`."""

from __future__ import annotations

from hms_services.$name.service import ${Camel}Service
from mesh import run_service


def main() -> None:
    run_service("$name", lambda runtime: [${Camel}Service()])


if __name__ == "__main__":
    main()
'''

_MANIFEST = """\
# What the $name deployment is: `mesh up`, the authorization matrix and `mesh manifest check`
# (part of `make lint`) read it. Every field: docs/manifests.md.
name = "$name"
version = "0.1.0"
description = "$description"
replicas = 1
state = "none"
serves = ["hms.$name.v1.${Camel}Service"]

# The REST gateway may call every method; each route's scopes are in the contract.
[[accepts]]
from = ["gateway"]
methods = ["*"]
"""

_UNIT_TEST = '''\
"""${Camel}Service's handlers, called directly (no server)."""

from __future__ import annotations

import pytest

from hms.$name.v1 import ${name}_pb2
from hms_services.$name.service import MAX_NAME_LENGTH, ${Camel}Service
from mesh.errors import InvalidArgument
from mesh.testing import FakeContext

# The handlers use nothing of the context, and raise mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)
LONGEST = "x" * MAX_NAME_LENGTH


async def greet(name: str) -> ${name}_pb2.GreetResponse:
    return await ${Camel}Service().Greet(${name}_pb2.GreetRequest(name=name), CONTEXT)


@pytest.mark.parametrize(
    ("name", "greeting"),
    [
        pytest.param("Ada", "Hello, Ada", id="plain"),
        pytest.param("  Ada  ", "Hello, Ada", id="spaces-dropped"),
        pytest.param(LONGEST, f"Hello, {LONGEST}", id="longest"),
    ],
)
async def test_greet_answers(name: str, greeting: str) -> None:
    assert (await greet(name)).greeting == greeting


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("", "is required", id="missing"),
        pytest.param("   ", "is required", id="blank"),
        pytest.param(LONGEST + "x", f"must be at most {MAX_NAME_LENGTH} characters", id="long"),
    ],
)
async def test_greet_refuses_a_bad_name(name: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await greet(name)
    ((field, description),) = caught.value.violations
    assert field == "name"
    assert description.startswith(problem)
'''

_INTEGRATION_TEST = '''\
"""The $name service as a real process: registered in a real etcd, called over mTLS with the
policy `mesh up` composes from its manifest, which refuses a caller it does not accept."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from hms.$name.v1 import ${name}_pb2, ${name}_pb2_grpc
from hms_tools import certs
from hms_tools.authz_matrix import compose_policy
from hms_tools.contracts import REPO, Contracts, default_descriptor_set
from hms_tools.devstack import EtcdProcess
from hms_tools.manifest import load_manifest
from mesh.registry.watch import Discovery

from ..conftest import mesh_channel, service_process, wait_for_deployment

pytestmark = pytest.mark.integration


async def test_$name(etcd: EtcdProcess, discovery: Discovery, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    certs.ensure(tls_dir, ["$name", "gateway", "ops"])
    manifest = load_manifest(
        REPO / "services" / "$name" / "service.toml", Contracts.load(default_descriptor_set())
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(compose_policy([manifest]))
    proc = service_process(
        "$name", "$name", etcd=etcd.endpoint, tls_dir=tls_dir, base=tmp_path,
        extra=(f"--policy={policy}",),
    ).start()  # fmt: skip
    try:
        instance = await wait_for_deployment(discovery, "$name", proc)
        assert instance.service == "hms.$name.v1.${Camel}Service"
        request = ${name}_pb2.GreetRequest(name="Ada")
        # The manifest accepts the gateway.
        async with mesh_channel(instance, tls_dir, "gateway") as channel:
            stub = ${name}_pb2_grpc.${Camel}ServiceStub(channel)
            assert (await stub.Greet(request, timeout=10)).greeting == "Hello, Ada"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Greet(${name}_pb2.GreetRequest(name=" "), timeout=10)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert (bad.value.details() or "").startswith("name: is required")
        # It does not accept the operators' identity.
        async with mesh_channel(instance, tls_dir, "ops") as channel:
            stub = ${name}_pb2_grpc.${Camel}ServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.Greet(request, timeout=10)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        proc.stop(timeout=10)
'''

_TEMPLATES = {
    "protos/hms/NAME/v1/NAME.proto": _PROTO,
    "services/NAME/__init__.py": _INIT,
    "services/NAME/service.py": _SERVICE,
    "services/NAME/main.py": _MAIN,
    "services/NAME/service.toml": _MANIFEST,
    "tests/unit/services/test_NAME.py": _UNIT_TEST,
    "tests/integration/platform/test_NAME_service.py": _INTEGRATION_TEST,
}
