"""The authorization matrix: one policy (mesh/authz, docs/authz.md) composed from every
manifest's ``[[accepts]]``, that `mesh up` writes to `<state-dir>/policy.toml` and hands to
every service (MESH_POLICY).

Each ``[[accepts]]`` table becomes one allow rule named after it: its callers as SPIFFE IDs
(``"*"``: every identity of the mesh, ``spiffe://hms.local/svc/*``), its methods as the
policy's patterns, always those of the deployment's own services, so one file serves every
deployment. Anything no rule allows is denied.

A deployment without a manifest (a test backend, tests/backends) is given one rule that lets
every mesh identity call the services it serves: tests of the mesh's own mechanics run it
without saying who calls it.

>>> print(compose_policy([fees]), end="")
# Written by `mesh up` from the manifests' [[accepts]] (services/*/service.toml) ...
mode = "enforce"
default = "deny"
<BLANKLINE>
[[allow]]
name = "fees accepts[0]"
callers = ["spiffe://hms.local/svc/gateway", "spiffe://hms.local/svc/licensing"]
methods = ["/hms.fees.v1.FeeService/CalculateFee"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from hms_tools.manifest import ANY_CALLER, Manifest
from mesh.authz.policy import Policy
from mesh.identity import TRUST_DOMAIN, spiffe_id

__all__ = ["ANY_MESH_IDENTITY", "compose_policy"]

#: Every identity of the mesh (a prefix pattern, docs/authz.md).
ANY_MESH_IDENTITY = f"spiffe://{TRUST_DOMAIN}/svc/*"

_HEADER = """\
# Written by `mesh up` from the manifests' [[accepts]] (services/*/service.toml): who may call
# what. Every service gets this one file; a call no rule allows is denied. Edit the manifests,
# not this file (docs/manifests.md).
mode = "enforce"
default = "deny"
"""


def compose_policy(
    manifests: Iterable[Manifest],
    open_to_mesh: Mapping[str, Sequence[str]] | None = None,
    *,
    mode: str = "enforce",
) -> str:
    """The policy text for `manifests`, plus, for each deployment of `open_to_mesh`
    (deployment -> the services it serves), a rule letting every mesh identity call them.
    `mode` "audit" lets every call through and logs each one the matrix would refuse (to try
    a new matrix on a running platform before enforcing it).

    The text is parsed before it is returned: a policy the services would refuse is a
    ValueError here, not a stack whose services all fail to start."""
    rules: list[tuple[str, list[str], list[str]]] = []
    for manifest in sorted(manifests, key=lambda m: m.name):
        for index, accept in enumerate(manifest.accepts):
            callers = [_caller(caller) for caller in accept.callers]
            rules.append((f"{manifest.name} accepts[{index}]", callers, list(accept.patterns)))
    for deployment, services in sorted((open_to_mesh or {}).items()):
        if services:
            methods = [f"/{service}/*" for service in services]
            rules.append(
                (f"{deployment} (no manifest): every mesh identity", [ANY_MESH_IDENTITY], methods)
            )
    if mode not in ("enforce", "audit"):
        raise ValueError(f"policy mode must be 'enforce' or 'audit', got {mode!r}")
    lines = [_HEADER.replace('mode = "enforce"', f"mode = {json.dumps(mode)}")]
    for name, callers, methods in rules:
        lines += [
            "[[allow]]",
            f"name = {json.dumps(name)}",
            f"callers = [{', '.join(json.dumps(c) for c in callers)}]",
            f"methods = [{', '.join(json.dumps(m) for m in methods)}]",
            "",
        ]
    text = "\n".join(lines).rstrip("\n") + "\n"
    Policy.parse(text, source="the policy composed from the manifests")
    return text


def _caller(caller: str) -> str:
    return ANY_MESH_IDENTITY if caller == ANY_CALLER else spiffe_id(caller)
