"""The public surface of `mesh`: what a service author imports, each name documented, and
loaded only when used."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import mesh

PUBLIC = {
    "AlreadyExists", "ClientConfig", "EventMeta", "FailedPrecondition", "IdempotentHandler",
    "InvalidArgument", "MeshChannel", "MeshError", "NotFound", "PermissionDenied", "Runtime",
    "Unavailable", "end_user", "may_act_for", "require_acting_for", "run_service",
}  # fmt: skip


def test_all_is_the_chosen_surface() -> None:
    assert set(mesh.__all__) == PUBLIC
    assert sorted(mesh.__all__) == mesh.__all__


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(mesh, name)
    assert value.__module__.startswith("mesh.")
    assert inspect.getdoc(value), f"mesh.{name} has no docstring"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = mesh.Nope  # type: ignore[attr-defined]


def test_importing_the_package_loads_nothing_heavy() -> None:
    probe = (
        "import sys, mesh.identity; print(sorted(m for m in sys.modules if m in ('grpc', 'nats')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
