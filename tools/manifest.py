"""A service's manifest, `services/<name>/service.toml`: what the deployment is, serves, calls,
publishes and subscribes to, and who may call it. `mesh up` (tools/stack.py), the
authorization matrix (tools/authz_matrix.py), `mesh manifest check` (tools/manifest_check.py)
and `mesh new-service` (tools/scaffold.py) read it through `load_manifest`; the format is in
docs/manifests.md.

The loader lives in the tooling, not in `mesh`: a running service never reads its manifest,
`mesh up` turns it into flags (replicas, --drain-delay) and the policy file it hands out.

A manifest is checked whole against the contracts (tools/contracts.py) when it is read: an
unknown key, a value of the wrong type, a name other than its folder's, a gRPC service or
event type the contracts do not define, a method its services do not have, each is a
`ManifestError` naming the file, the field and what was expected::

    services/fees/service.toml: replicas: must be a whole number from 0 to 64, got -1
    services/fees/service.toml: accepts[0].methods[1]: 'Quote' is not a method of
        hms.fees.v1.FeeService (it has: CalculateFee)

What a manifest says about other deployments and about the code (a callee that accepts the
caller, a publisher for each subscribed event, the servicers the code defines) is
`mesh manifest check`'s to hold.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hms_tools.contracts import Contracts
from mesh.identity import check_deployment

__all__ = [
    "ANY_CALLER",
    "MANIFEST_FILE",
    "MAX_REPLICAS",
    "OUTSIDE_CALLERS",
    "RESERVED_NAMES",
    "Accept",
    "Manifest",
    "ManifestError",
    "Resources",
    "State",
    "deployment_folders",
    "load_manifest",
    "load_manifests",
    "manifest_from_mapping",
    "manifest_paths",
    "parse_manifest",
]

MANIFEST_FILE = "service.toml"
#: `from = ["*"]`: every identity of the mesh.
ANY_CALLER = "*"
#: Callers that are not deployments: the REST gateway and the operators' tools.
OUTSIDE_CALLERS = frozenset({"gateway", "ops"})
#: Names a deployment cannot take: the callers above, the control plane's own identities
#: (tools/controlplane.py) and the test backends.
RESERVED_NAMES = OUTSIDE_CALLERS | {"root", "etcd", "nats", "echo", "mirror"}
#: As `mesh up --scale` allows (tools/stackfile.py).
MAX_REPLICAS = 64
#: Longer than any sensible drain; a typo such as 300 for 3.00 is caught.
MAX_DRAIN_DELAY = 120.0

_REQUIRED = ("name", "version", "description", "replicas", "state", "serves")
_OPTIONAL = (
    "drain_delay",
    "calls",
    "publishes",
    "subscribes",
    "accepts",
    "resources",
    "labels",
)
_ACCEPT_KEYS = ("from", "methods")
_RESOURCE_KEYS = ("cpu", "memory")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FULL_NAME = re.compile(rf"{_IDENT}(?:\.{_IDENT})+")
_METHOD = re.compile(_IDENT)
_FULL_METHOD = re.compile(rf"/(?P<service>{_IDENT}(?:\.{_IDENT})+)/(?P<method>\*|{_IDENT})")
# Semantic versioning: MAJOR.MINOR.PATCH, then an optional pre-release and build.
_VERSION = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?"
)
# Kubernetes quantities: CPU in cores or millicores, memory in bytes with a unit.
_CPU = re.compile(r"(\d+(\.\d+)?|\d+m)")
_MEMORY = re.compile(r"\d+(Ki|Mi|Gi|Ti|k|M|G|T)?")


class ManifestError(ValueError):
    """A manifest that cannot be used: the file, the field and what was expected.

    >>> str(ManifestError("must be 'none' or 'sqlite', got 'pg'", source="x.toml", field="state"))
    "x.toml: state: must be 'none' or 'sqlite', got 'pg'"
    """

    def __init__(self, problem: str, *, source: str, field: str | None = None) -> None:
        self.problem, self.source, self.field = problem, source, field
        super().__init__(": ".join(part for part in (source, field, problem) if part))


class State(StrEnum):
    """What a deployment keeps: nothing, or one SQLite file in its data dir."""

    NONE = "none"
    SQLITE = "sqlite"


@dataclass(frozen=True)
class Accept:
    """One ``[[accepts]]`` table: `callers` (deployment names, gateway, ops, or "*") may call
    `methods` as written; `patterns` are the same methods as the authorization policy names
    them (``/pkg.Service/Method`` or ``/pkg.Service/*``)."""

    callers: tuple[str, ...]
    methods: tuple[str, ...]
    patterns: tuple[str, ...]

    def admits(self, caller: str) -> bool:
        return ANY_CALLER in self.callers or caller in self.callers

    def covers(self, service: str) -> bool:
        """Whether at least one method of `service` is accepted."""
        return any(p.startswith(f"/{service}/") for p in self.patterns)


@dataclass(frozen=True)
class Resources:
    """What one replica asks for, as Kubernetes writes it (None: not said)."""

    cpu: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    replicas: int
    state: State
    serves: tuple[str, ...]
    calls: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    accepts: tuple[Accept, ...] = ()
    #: Seconds a draining replica serves on (--drain-delay); None: the service's default.
    drain_delay: float | None = None
    resources: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The file it was read from ("<string>" when parsed from text).
    source: str = "<string>"

    def accepts_from(self, caller: str, service: str | None = None) -> bool:
        """Whether `caller` may call at least one method (of `service`, if given)."""
        return any(
            a.admits(caller) and (service is None or a.covers(service)) for a in self.accepts
        )


def manifest_paths(services_dir: Path) -> list[Path]:
    """Every `<services_dir>/<name>/service.toml`, sorted by name."""
    return sorted(Path(services_dir).glob(f"*/{MANIFEST_FILE}"))


def deployment_folders(services_dir: Path) -> list[str]:
    """The deployments `mesh up` starts: folders with a service.toml and a main.py."""
    return [p.parent.name for p in manifest_paths(services_dir) if (p.parent / "main.py").is_file()]


def load_manifest(path: Path, contracts: Contracts, *, source: str | None = None) -> Manifest:
    """Read and check `path`; its folder's name is the name it must carry. Messages name the
    file as `source` (default: the path as given)."""
    path = Path(path)
    shown = source if source is not None else str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot be read: {exc.strerror or exc}", source=shown) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"is not UTF-8 text: {exc}", source=shown) from None
    return parse_manifest(text, source=shown, folder=path.parent.name, contracts=contracts)


def load_manifests(services_dir: Path, contracts: Contracts) -> dict[str, Manifest]:
    """Every manifest under `services_dir` by name; the first bad one raises."""
    manifests = (load_manifest(path, contracts) for path in manifest_paths(services_dir))
    return {m.name: m for m in manifests}


def parse_manifest(text: str, *, source: str, folder: str, contracts: Contracts) -> Manifest:
    """A manifest from its TOML text; `folder` is the name it must carry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"is not valid TOML: {exc}", source=source) from None
    return manifest_from_mapping(data, source=source, folder=folder, contracts=contracts)


def manifest_from_mapping(
    data: Mapping[str, Any], *, source: str, folder: str, contracts: Contracts
) -> Manifest:
    """A manifest from parsed TOML (or any mapping of the same shape)."""
    return _Reader(source, contracts).manifest(data, folder)


class _Reader:
    """Reads one parsed manifest, raising ManifestError at the first problem."""

    def __init__(self, source: str, contracts: Contracts) -> None:
        self.source = source
        self.contracts = contracts

    def error(self, field: str | None, problem: str) -> ManifestError:
        return ManifestError(problem, source=self.source, field=field)

    def manifest(self, data: Mapping[str, Any], folder: str) -> Manifest:
        self.keys(data, None, required=_REQUIRED, optional=_OPTIONAL)
        name = self.name(data["name"], folder)
        serves = self.names(data, "serves", self.service, required=True)
        return Manifest(
            name=name,
            version=self.version(data["version"]),
            description=self.text(data, "description"),
            replicas=self.replicas(data["replicas"]),
            state=self.state(data["state"]),
            serves=serves,
            calls=self.names(data, "calls", self.service),
            publishes=self.names(data, "publishes", self.message),
            subscribes=self.names(data, "subscribes", self.message),
            accepts=self.accepts(data.get("accepts"), serves),
            drain_delay=self.drain_delay(data.get("drain_delay")),
            resources=self.resources(data.get("resources")),
            labels=self.labels(data.get("labels")),
            source=self.source,
        )

    # -- shape ------------------------------------------------------------------------------

    def keys(
        self,
        table: object,
        field: str | None,
        *,
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> Mapping[str, Any]:
        required, optional = tuple(required), tuple(optional)
        if not isinstance(table, Mapping):
            expected = ", ".join(required + optional)
            raise self.error(field, f"must be a table of {expected}, got {_show(table)}")
        unknown = sorted(str(key) for key in table if key not in required + optional)
        if unknown:
            raise self.error(
                field,
                f"unknown key(s) {', '.join(map(repr, unknown))}; expected "
                + ", ".join(required + optional),
            )
        for key in required:
            if key not in table:
                raise self.error(_at(field, key), "is required")
        return table

    def text(self, data: Mapping[str, Any], key: str) -> str:
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_show(value)}")
        if "\n" in value:
            raise self.error(key, "must be one line")
        return value

    def strings(self, value: object, field: str, *, required: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(field, f"must be a list of strings, got {_show(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{field}[{index}]", f"must be a string, got {_show(item)}")
        if required and not value:
            raise self.error(field, "must not be empty")
        for index, item in enumerate(value):
            if item in value[:index]:
                raise self.error(f"{field}[{index}]", f"{item!r} is listed twice")
        return tuple(value)

    # -- fields -----------------------------------------------------------------------------

    def name(self, value: object, folder: str) -> str:
        if not isinstance(value, str):
            raise self.error("name", f"must be a string, got {_show(value)}")
        try:
            check_deployment(value)
        except ValueError as exc:
            raise self.error("name", str(exc)) from None
        if value != folder:
            raise self.error(
                "name", f"is {value!r} but the folder is {folder!r}: they must be the same"
            )
        if value in RESERVED_NAMES:
            raise self.error(
                "name",
                f"{value!r} is reserved (the gateway, operators, the control plane and the "
                f"test backends: {', '.join(sorted(RESERVED_NAMES))})",
            )
        return value

    def version(self, value: object) -> str:
        if not isinstance(value, str) or not _VERSION.fullmatch(value):
            raise self.error(
                "version",
                f"must be a version MAJOR.MINOR.PATCH such as '1.0.0', got {_show(value)}",
            )
        return value

    def replicas(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPLICAS:
            raise self.error(
                "replicas", f"must be a whole number from 0 to {MAX_REPLICAS}, got {_show(value)}"
            )
        return value

    def state(self, value: object) -> State:
        allowed = " or ".join(repr(s.value) for s in State)
        if not isinstance(value, str) or value not in {s.value for s in State}:
            raise self.error("state", f"must be {allowed}, got {_show(value)}")
        return State(value)

    def drain_delay(self, value: object) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_DRAIN_DELAY
        ):
            raise self.error(
                "drain_delay",
                f"must be a number of seconds from 0 to {MAX_DRAIN_DELAY:g}, got {_show(value)}",
            )
        return float(value)

    def names(
        self,
        data: Mapping[str, Any],
        key: str,
        check: Callable[[str, str], None],
        *,
        required: bool = False,
    ) -> tuple[str, ...]:
        if key not in data:
            return ()
        values = self.strings(data[key], key, required=required)
        for index, value in enumerate(values):
            check(value, f"{key}[{index}]")
        return values

    def service(self, value: str, field: str) -> None:
        if not _FULL_NAME.fullmatch(value):
            raise self.error(field, f"{value!r} is not a gRPC service's full name (pkg.Service)")
        if value not in self.contracts.services:
            hint = self.contracts.near(value, self.contracts.services)
            raise self.error(field, f"{value!r} is not a service of the contracts{hint}")

    def message(self, value: str, field: str) -> None:
        if not _FULL_NAME.fullmatch(value):
            raise self.error(field, f"{value!r} is not an event's full name (pkg.Message)")
        if value not in self.contracts.messages:
            hint = self.contracts.near(value, self.contracts.messages)
            raise self.error(field, f"{value!r} is not a message type of the contracts{hint}")

    def accepts(self, value: object, serves: tuple[str, ...]) -> tuple[Accept, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
            raise self.error(
                "accepts", f"must be an array of tables ([[accepts]]), got {_show(value)}"
            )
        found = []
        for index, table in enumerate(value):
            field = f"accepts[{index}]"
            self.keys(table, field, required=_ACCEPT_KEYS)
            callers = self.callers(table["from"], f"{field}.from")
            methods = self.strings(table["methods"], f"{field}.methods", required=True)
            patterns = self.methods(methods, f"{field}.methods", serves)
            found.append(Accept(callers, methods, patterns))
        return tuple(found)

    def callers(self, value: object, field: str) -> tuple[str, ...]:
        callers = self.strings(value, field, required=True)
        for index, caller in enumerate(callers):
            if caller == ANY_CALLER:
                if len(callers) > 1:
                    raise self.error(
                        f"{field}[{index}]", "'*' admits every mesh identity: write it alone"
                    )
                continue
            try:
                check_deployment(caller, "caller")
            except ValueError as exc:
                raise self.error(
                    f"{field}[{index}]", f"{exc}; or '*' for every mesh identity"
                ) from None
        return callers

    def methods(
        self, methods: tuple[str, ...], field: str, serves: tuple[str, ...]
    ) -> tuple[str, ...]:
        """The policy's patterns for `methods`, each checked against the served services."""
        patterns: list[str] = []
        for index, method in enumerate(methods):
            at = f"{field}[{index}]"
            if method == "*":
                if len(methods) > 1:
                    raise self.error(
                        at, "'*' is every method of the served services: write it alone"
                    )
                patterns += [f"/{service}/*" for service in serves]
            elif (full := _FULL_METHOD.fullmatch(method)) is not None:
                patterns.append(self.full_method(full["service"], full["method"], at, serves))
            elif _METHOD.fullmatch(method):
                patterns.append(self.short_method(method, at, serves))
            else:
                raise self.error(
                    at,
                    f"{method!r} is not a method: write '*', a method's name such as 'Check', or "
                    "'/pkg.Service/Method'",
                )
        return tuple(patterns)

    def full_method(self, service: str, method: str, at: str, serves: tuple[str, ...]) -> str:
        if service not in serves:
            raise self.error(
                at,
                f"{service} is not a service this deployment serves ({', '.join(serves)}): a "
                "deployment says who may call its own methods only",
            )
        known = self.contracts.methods(service)
        if method != "*" and method not in known:
            raise self.error(
                at, f"{method!r} is not a method of {service} (it has: {', '.join(known)})"
            )
        return f"/{service}/{method}"

    def short_method(self, method: str, at: str, serves: tuple[str, ...]) -> str:
        owners = [s for s in serves if method in self.contracts.methods(s)]
        if not owners:
            known = "; ".join(f"{s}: {', '.join(self.contracts.methods(s))}" for s in serves)
            raise self.error(at, f"{method!r} is not a method of the served services ({known})")
        if len(owners) > 1:
            raise self.error(
                at,
                f"{method!r} is a method of {' and '.join(owners)}: write "
                f"'/{owners[0]}/{method}' to say which",
            )
        return f"/{owners[0]}/{method}"

    def resources(self, value: object) -> Resources:
        if value is None:
            return Resources()
        table = self.keys(value, "resources", required=(), optional=_RESOURCE_KEYS)
        found: dict[str, str] = {}
        for key, pattern, example in (
            ("cpu", _CPU, "'500m' or '2'"),
            ("memory", _MEMORY, "'256Mi'"),
        ):
            if key not in table:
                continue
            item = table[key]
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.error(
                    f"resources.{key}",
                    f"must be a Kubernetes quantity such as {example}, got {_show(item)}",
                )
            found[key] = item
        return Resources(**found)

    def labels(self, value: object) -> Mapping[str, str]:
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            raise self.error("labels", f"must be a table of strings, got {_show(value)}")
        for key, item in value.items():
            if not key:
                raise self.error("labels", "a label's name must not be empty")
            if not isinstance(item, str):
                raise self.error(f"labels.{key}", f"must be a string, got {_show(item)}")
        return MappingProxyType(dict(value))


def _at(field: str | None, key: str) -> str:
    return f"{field}.{key}" if field else key


def _show(value: object) -> str:
    """A value as the manifest's reader wrote it, and its TOML type."""
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    shown = repr(value)
    if isinstance(value, bool):
        shown = "true" if value else "false"
    return f"{shown[:60]} ({kind})"
