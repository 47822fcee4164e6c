"""What the contracts define, read from the descriptor set `make proto` writes
(``gen/hms.binpb``, every file under protos/ with its imports): the gRPC services with their
methods, and the message types (events are message types). The manifests are checked against
it (tools/manifest.py, tools/manifest_check.py) without importing any generated module.

>>> contracts = Contracts.load(Path("gen/hms.binpb"))
>>> contracts.methods("hms.fees.v1.FeeService")
('CalculateFee',)
>>> "hms.housing.v1.VoucherSubmitted" in contracts.messages
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from google.protobuf import descriptor_pb2

__all__ = ["REPO", "Contracts", "ContractsError", "default_descriptor_set"]

#: The checkout this module belongs to (tools/ lives at its top).
REPO = Path(__file__).resolve().parent.parent


class ContractsError(ValueError):
    """The descriptor set is missing or unreadable; the message says how to make it."""


def default_descriptor_set(root: Path = REPO) -> Path:
    return Path(root) / "gen" / "hms.binpb"


@dataclass(frozen=True)
class Contracts:
    """The services (full name -> method names, in contract order), the message types (full
    names) and which services each .proto file defines (file name -> {short name: full name})."""

    services: Mapping[str, tuple[str, ...]]
    messages: frozenset[str]
    files: Mapping[str, Mapping[str, str]]

    @classmethod
    def load(cls, path: Path) -> Contracts:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ContractsError(
                f"cannot read the contracts' descriptor set {path}: {exc.strerror or exc} "
                "(`make proto` writes it)"
            ) from None
        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(data).file
        except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
            raise ContractsError(f"{path} is not a descriptor set: {exc}") from None
        return cls.of(files)

    @classmethod
    def of(cls, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> Contracts:
        services: dict[str, tuple[str, ...]] = {}
        messages: set[str] = set()
        by_file: dict[str, Mapping[str, str]] = {}
        for file in files:
            prefix = f"{file.package}." if file.package else ""
            own: dict[str, str] = {}
            for service in file.service:
                full = prefix + service.name
                services[full] = tuple(method.name for method in service.method)
                own[service.name] = full
            by_file[file.name] = MappingProxyType(own)
            pending = [(prefix + m.name, m) for m in file.message_type]
            while pending:  # nested types too: an event may be declared inside another message
                name, message = pending.pop()
                messages.add(name)
                pending += [(f"{name}.{n.name}", n) for n in message.nested_type]
        return cls(MappingProxyType(services), frozenset(messages), MappingProxyType(by_file))

    def methods(self, service: str) -> tuple[str, ...]:
        """The methods of `service` (a full name); KeyError if the contracts lack it."""
        return self.services[service]

    def near(self, name: str, known: Iterable[str]) -> str:
        """A hint for an unknown name: the known names of the same package, if any."""
        package = name.rpartition(".")[0]
        same = sorted(k for k in known if k.rpartition(".")[0] == package)
        if same:
            return f" (package {package} has: {', '.join(same)})"
        return f" (no package {package} in the contracts)" if package else ""
