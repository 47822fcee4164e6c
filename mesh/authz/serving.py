"""Who may serve what: the identities allowed to serve each gRPC service, enforced by callers.

Registering is not proof. Anyone who can write to the registry and holds a mesh certificate
could register under any service and receive its callers' calls; so every caller (a mesh
channel, the gateway) uses an instance only if the identity in its registry entry (which the
TLS handshake then checks against the server's certificate) is allowed to serve the service.
An entry that breaks the binding is ignored with a warning naming its key and identity.

The binding is a TOML file (`mesh up` writes one for the services it runs):

    [serve]
    "hms.eligibility.v1.EligibilityService" = ["spiffe://hms.local/svc/eligibility"]
    "hms.testing.v1.*" = ["spiffe://hms.local/svc/echo", "spiffe://hms.local/svc/mirror"]

A key is a full service name, a package followed by `.*`, or `*`; a value lists identities,
each exact or ending in `*`. A service that no key covers may be served by no one. Without a
file (a caller given none: development, tests) any identity may serve any service, and the
caller says so once at start.

>>> policy = ServingPolicy.parse('[serve]\\n"a.v1.*" = ["spiffe://hms.local/svc/a"]')
>>> policy.refusal("a.v1.S", "spiffe://hms.local/svc/evil")
'spiffe://hms.local/svc/evil may not serve a.v1.S (allowed: spiffe://hms.local/svc/a)'
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServingPolicy", "load_serving"]


@dataclass(frozen=True)
class ServingPolicy:
    #: (service pattern, identity patterns), most specific service pattern first.
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    source: str = "<string>"

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> ServingPolicy:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{source}: not TOML: {exc}") from None
        table = document.get("serve")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{source}: needs a [serve] table with at least one service")
        unknown = set(document) - {"serve"}
        if unknown:
            raise ValueError(f"{source}: unknown table(s) {sorted(unknown)}")
        rules = []
        for service, identities in table.items():
            if service != "*" and (not service or "*" in service.removesuffix(".*")):
                raise ValueError(f"{source}: {service!r}: a service, pkg.*, or *")
            if not isinstance(identities, list) or not all(
                isinstance(i, str) and i.startswith("spiffe://") for i in identities
            ):
                raise ValueError(f"{source}: {service!r}: a list of spiffe:// identities")
            rules.append((service, tuple(identities)))
        rules.sort(key=lambda rule: _specificity(rule[0]), reverse=True)
        return cls(tuple(rules), source)

    def refusal(self, service: str, identity: str) -> str | None:
        """Why `identity` may not serve `service`, or None if it may."""
        for pattern, identities in self.rules:
            if _covers(pattern, service):
                if any(_matches(allowed, identity) for allowed in identities):
                    return None
                shown = ", ".join(identities) or "nobody"
                return f"{identity or 'no identity'} may not serve {service} (allowed: {shown})"
        return f"no rule of {self.source} lets anyone serve {service}"


def load_serving(path: Path) -> ServingPolicy:
    """The binding in `path`; ValueError (naming the file) if it is missing or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"serving policy {path}: {exc.strerror or exc}") from None
    return ServingPolicy.parse(text, str(path))


def _specificity(pattern: str) -> int:
    return -1 if pattern == "*" else len(pattern) + (0 if pattern.endswith(".*") else 1000)


def _covers(pattern: str, service: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return service.startswith(pattern[:-1])
    return service == pattern


def _matches(allowed: str, identity: str) -> bool:
    if allowed.endswith("*"):
        return identity.startswith(allowed[:-1])
    return identity == allowed
