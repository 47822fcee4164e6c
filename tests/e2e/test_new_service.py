"""`mesh new-service` on a clone of the repository at HEAD, as a developer runs it: the new
service passes ruff, buf lint and `mesh manifest check`, `mesh up` would start it, and its own
unit and integration tests pass (the integration test starts it for real and calls it).

The clone reuses this checkout's .venv: the clone's folders are put first on PYTHONPATH under
their installed names (a folder of symlinks: hms_services -> services/, ...), so the clone's
code is what runs, and its contracts are generated into its own gen/ with grpc_tools.protoc as
`make proto` does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.api import annotations_pb2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAME = "parking"
#: Installed name -> folder (pyproject's [tool.setuptools.package-dir]).
PACKAGES = {"mesh": "mesh", "hms_gateway": "gateway", "hms_services": "services",
            "hms_tools": "tools"}  # fmt: skip


def run(command: list[str], tree: Path, env: dict[str, str], timeout: float = 120) -> str:
    """Run `command` in `tree`; its output, or a failure showing it."""
    done = subprocess.run(
        command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output}"
    return output


def environment(tree: Path, links: Path) -> dict[str, str]:
    """This environment, but importing `tree`'s code and contracts first, and no MESH_*."""
    for installed, folder in PACKAGES.items():
        (links / installed).symlink_to(tree / folder, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (links, tree, tree / "gen"))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def generate_contracts(tree: Path, env: dict[str, str]) -> None:
    """What `make proto` does, into the tree's gen/ (and google/api for buf, as `make lint`)."""
    googleapis = Path(annotations_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(tree / "protos")) for p in (tree / "protos").rglob("*.proto"))
    (tree / "gen").mkdir()
    command = [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"-I{googleapis}",
               f"-I{well_known}", "--python_out=gen", "--pyi_out=gen", "--grpc_python_out=gen",
               "--descriptor_set_out=gen/hms.binpb", "--include_imports"]  # fmt: skip
    run([*command, *(f"protos/{p}" for p in protos)], tree, env)
    deps = tree / ".build" / "buf-deps" / "google" / "api"
    deps.mkdir(parents=True)
    for proto in (googleapis / "google" / "api").glob("*.proto"):
        shutil.copy(proto, deps)


def clone(tree: Path) -> None:
    """The repository at HEAD, as CI sees it (the lead commits before CI runs)."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(tree)], check=True, timeout=120)


def test_a_new_service_builds_lints_checks_and_passes_its_tests(tmp_path: Path) -> None:
    tree = tmp_path / "clone"
    clone(tree)
    (tmp_path / "links").mkdir()
    env = environment(tree, tmp_path / "links")
    mesh = [sys.executable, "-m", "hms_tools.cli"]

    written = run([*mesh, "new-service", NAME, "--description", "Parking permits"], tree, env)
    assert f"wrote services/{NAME}/service.toml" in written
    assert f'"hms_services.{NAME}",' in (tree / "pyproject.toml").read_text()
    refused = subprocess.run(
        [*mesh, "new-service", NAME],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert f"services/{NAME}, protos/hms/{NAME} already exist(s)" in refused.stderr

    generate_contracts(tree, env)
    new_files = [
        f"services/{NAME}",
        f"tests/unit/services/test_{NAME}.py",
        f"tests/integration/platform/test_{NAME}_service.py",
    ]
    run([str(BIN / "ruff"), "check", *new_files], tree, env)
    run([str(BIN / "ruff"), "format", "--check", *new_files], tree, env)
    run([str(BIN / "buf"), "lint"], tree, env)
    assert "agree with the contracts and the code" in run([*mesh, "manifest", "check"], tree, env)

    # `mesh up` starts it with the rest, and its policy lets the gateway call it.
    started = run(
        [sys.executable, "-c", "from hms_tools.stack import discover_services as d; print(d())"],
        tree,
        env,
    )
    assert f"'{NAME}'" in started
    policy = run([*mesh, "manifest", "policy"], tree, env)
    assert f'methods = ["/hms.{NAME}.v1.ParkingService/*"]' in policy

    tests = [
        f"tests/unit/services/test_{NAME}.py",
        f"tests/integration/platform/test_{NAME}_service.py",
    ]
    output = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], tree, env, 240
    )
    assert "7 passed" in output, output
