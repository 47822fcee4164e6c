"""The layout's rules, checked in fresh interpreters: dependencies point one way (the library
imports neither the gateway, the services nor the tooling; the gateway and the services import
no tooling), the `mesh` command starts without the gateway's server and JWT libraries, and
pyproject installs every package folder under its installed name."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Installed name -> folder (pyproject's [tool.setuptools.package-dir]; `mesh` is its own).
FOLDERS = {
    "mesh": "mesh",
    "hms_gateway": "gateway",
    "hms_services": "services",
    "hms_tools": "tools",
}


def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def import_all(package: str) -> str:
    """Code that imports every module of `package`."""
    return (
        "import importlib, pkgutil\n"
        f"import {package} as root\n"
        "for m in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
    )


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        pytest.param("mesh", {"hms_gateway", "hms_services", "hms_tools", "uvicorn"}, id="mesh"),
        pytest.param("hms_gateway", {"hms_services", "hms_tools"}, id="gateway"),
        pytest.param("hms_services", {"hms_gateway", "hms_tools", "uvicorn"}, id="services"),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    loaded = imported_after(import_all(package))
    assert package in loaded
    assert not loaded & forbidden, f"{package} loads {sorted(loaded & forbidden)}"


def test_the_mesh_command_starts_without_the_gateways_libraries() -> None:
    loaded = imported_after("from hms_tools.cli import build_parser\nbuild_parser()")
    assert not loaded & {"uvicorn", "jwt", "hms_gateway", "nats", "grpc"}, loaded


def test_pyproject_installs_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {**config["package-dir"], "mesh": "mesh"} == FOLDERS
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert set(config["packages"]) == found
