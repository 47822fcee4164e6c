"""`mesh manifest check`: every disagreement between the manifests (services/*/service.toml),
the contracts (gen/hms.binpb) and the services' code, one line each.

Read from the tree, importing nothing of it (so a temporary tree checks as well as this one):

- each manifest reads (tools/manifest.py: its keys and types, its services, events and
  methods in the contracts), and each service folder has both a manifest and a main.py;
- `serves` is what the code serves: the generated ``...Servicer`` classes its classes
  subclass (found in the syntax of ``services/<name>/*.py``, as `served_services` finds them
  by importing), no more and no fewer; no service is served by two deployments;
- each called service is served by a deployment that accepts the caller for at least one of
  its methods;
- each subscribed event type has a publisher;
- each caller an ``[[accepts]]`` names is a deployment, ``gateway``, ``ops`` or ``*``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from hms_tools.contracts import Contracts, ContractsError, default_descriptor_set
from hms_tools.manifest import (
    ANY_CALLER,
    MANIFEST_FILE,
    OUTSIDE_CALLERS,
    Manifest,
    ManifestError,
    load_manifest,
)

__all__ = ["Disagreement", "check_tree", "servicers_in_code"]


@dataclass(frozen=True, order=True)
class Disagreement:
    """Where (a file, and a field in it) and what."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


def check_tree(root: Path, descriptor_set: Path | None = None) -> list[Disagreement]:
    """Every disagreement in the checkout at `root` (its services/ and its contracts'
    descriptor set, by default `<root>/gen/hms.binpb`)."""
    root = Path(root)
    descriptors = descriptor_set if descriptor_set is not None else default_descriptor_set(root)
    try:
        contracts = Contracts.load(descriptors)
    except ContractsError as exc:
        return [Disagreement(_shown(root, descriptors), str(exc))]
    return _Check(root, contracts).run()


class _Check:
    def __init__(self, root: Path, contracts: Contracts) -> None:
        self.root = root
        self.services_dir = root / "services"
        self.contracts = contracts
        self.found: list[Disagreement] = []
        self.manifests: dict[str, Manifest] = {}
        #: Deployments whose manifest does not read: what others say of them is not judged.
        self.unreadable: set[str] = set()

    def report(self, source: str, problem: str) -> None:
        self.found.append(Disagreement(source, problem))

    def run(self) -> list[Disagreement]:
        folders = sorted(
            p for p in self.services_dir.iterdir() if p.is_dir() and not p.name.startswith("_")
        )
        for folder in folders:
            self.read(folder)
        for manifest in self.manifests.values():
            self.serves(manifest)
            self.calls(manifest)
            self.subscribes(manifest)
            self.accepts(manifest)
        return self.found

    def source(self, name: str) -> str:
        return f"services/{name}/{MANIFEST_FILE}"

    def read(self, folder: Path) -> None:
        path = folder / MANIFEST_FILE
        where = f"services/{folder.name}"
        if not path.is_file():
            if (folder / "main.py").is_file():
                self.report(
                    where,
                    "has a main.py but no service.toml: mesh up starts only "
                    "what a manifest declares (mesh new-service writes one)",
                )
            return
        if not (folder / "main.py").is_file():
            self.report(
                self.source(folder.name), f"{where} has no main.py: mesh up cannot start it"
            )
        try:
            self.manifests[folder.name] = load_manifest(
                path, self.contracts, source=self.source(folder.name)
            )
        except ManifestError as exc:
            self.unreadable.add(folder.name)
            self.found.append(
                Disagreement(exc.source, ": ".join(filter(None, (exc.field, exc.problem))))
            )

    def serves(self, manifest: Manifest) -> None:
        source = self.source(manifest.name)
        folder = self.services_dir / manifest.name
        in_code = servicers_in_code(folder, self.contracts, self.root)
        if not (folder / "main.py").is_file() and not in_code:
            return  # reported: there is no code to hold it to yet
        for index, service in enumerate(manifest.serves):
            if service not in in_code:
                self.report(
                    source,
                    f"serves[{index}]: {service} is declared, but no class "
                    f"in services/{manifest.name}/ serves it (none subclasses "
                    f"{service.rpartition('.')[2]}Servicer)",
                )
            for other in self.manifests.values():
                if other.name < manifest.name and service in other.serves:
                    self.report(
                        source,
                        f"serves[{index}]: {service} is also served by "
                        f"{other.name}: a service has one deployment",
                    )
        for service, where in sorted(in_code.items()):
            if service not in manifest.serves:
                self.report(
                    source,
                    f"serves: the code serves {service} ({where}), but the "
                    "manifest does not declare it",
                )

    def calls(self, manifest: Manifest) -> None:
        source = self.source(manifest.name)
        for index, service in enumerate(manifest.calls):
            servers = [m for m in self.manifests.values() if service in m.serves]
            if not servers and not self.unreadable:
                self.report(source, f"calls[{index}]: no deployment serves {service}")
            for server in servers:
                if not server.accepts_from(manifest.name, service):
                    self.report(
                        source,
                        f"calls[{index}]: {server.name} serves {service} but "
                        f"accepts none of its methods from {manifest.name} (add an "
                        f"[[accepts]] to {self.source(server.name)})",
                    )

    def subscribes(self, manifest: Manifest) -> None:
        source = self.source(manifest.name)
        for index, event in enumerate(manifest.subscribes):
            published = any(event in m.publishes for m in self.manifests.values())
            if not published and not self.unreadable:
                self.report(source, f"subscribes[{index}]: no deployment publishes {event}")

    def accepts(self, manifest: Manifest) -> None:
        source = self.source(manifest.name)
        known = set(self.manifests) | self.unreadable | OUTSIDE_CALLERS | {ANY_CALLER}
        for index, accept in enumerate(manifest.accepts):
            for position, caller in enumerate(accept.callers):
                if caller not in known:
                    self.report(
                        source,
                        f"accepts[{index}].from[{position}]: {caller!r} is not "
                        "a deployment (services/*/service.toml), 'gateway', 'ops' "
                        "or '*'",
                    )


def servicers_in_code(
    folder: Path, contracts: Contracts, root: Path | None = None
) -> dict[str, str]:
    """The gRPC services the code under `folder` serves -> where (file and class): classes
    that subclass a generated ``<Service>Servicer`` of the contracts."""
    found: dict[str, str] = {}
    for path in sorted(Path(folder).rglob("*.py")):
        try:
            tree = ast.parse(path.read_bytes(), str(path))
        except (OSError, SyntaxError, ValueError):
            continue  # not ours to judge: ruff and the tests report it
        names = _imported_names(tree)
        shown = _shown(root, path) if root is not None else str(path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                service = _servicer(_dotted(base), names, contracts)
                if service is not None:
                    found.setdefault(service, f"{shown}: class {node.name}")
    return found


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the full dotted name it stands for, for every import in `tree`."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    names[alias.asname] = alias.name
                else:  # `import a.b.c` binds `a`, which stands for itself
                    top = alias.name.partition(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner is not None else None
    return None


def _servicer(dotted: str | None, names: dict[str, str], contracts: Contracts) -> str | None:
    """The service whose generated servicer `dotted` (as written in a class's bases) is."""
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    if head not in names:
        return None
    full = f"{names[head]}.{rest}" if rest else names[head]
    module, _, cls = full.rpartition(".")
    if not module.endswith("_pb2_grpc") or not cls.endswith("Servicer"):
        return None
    proto = module.removesuffix("_pb2_grpc").replace(".", "/") + ".proto"
    return contracts.files.get(proto, {}).get(cls.removesuffix("Servicer"))


def _shown(root: Path | None, path: Path) -> str:
    if root is None:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
