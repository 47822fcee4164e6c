"""Registry key layout and value schema (pure; the contract is written up in docs/registry.md).

One key per (gRPC service, instance):

    /<namespace>/services/<grpc.full.ServiceName>/<instance-id>  ->  JSON object

All keys of one instance hang on one etcd lease, the instance's heartbeat.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mesh.identity import identity_dns_name

__all__ = [
    "Instance",
    "RegistryValueError",
    "decode",
    "encode",
    "instance_key",
    "is_valid_segment",
    "new_instance_id",
    "parse_key",
    "service_prefix",
    "services_prefix",
]

_SERVICE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_WEIGHT = 10_000


class RegistryValueError(ValueError):
    """A registry key or value that does not follow the schema; the message says why."""


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r}: use lowercase letters, digits, '-' or '_'")
    return namespace


def _shown(key: bytes) -> str:
    """A key as it appears in messages and logs: undecodable bytes and control characters
    escaped, so a hostile key cannot forge log lines."""
    return key.decode(errors="backslashreplace").encode("unicode_escape").decode()


def services_prefix(namespace: str) -> bytes:
    """Prefix of every instance of every service: b"/hms/services/"."""
    return f"/{_check_namespace(namespace)}/services/".encode()


def service_prefix(namespace: str, service: str) -> bytes:
    """Prefix of every instance of one gRPC service (the trailing slash keeps
    `a.B` from matching `a.Bc`)."""
    if not _SERVICE_RE.fullmatch(service):
        raise ValueError(f"service {service!r} is not a full gRPC service name like pkg.v1.Name")
    return services_prefix(namespace) + service.encode() + b"/"


def instance_key(namespace: str, service: str, instance_id: str) -> bytes:
    if not is_valid_segment(instance_id):
        raise ValueError(f"instance id {instance_id!r}: use letters, digits, '.', '_' or '-'")
    return service_prefix(namespace, service) + instance_id.encode()


def parse_key(namespace: str, key: bytes) -> tuple[str, str]:
    """(service, instance_id) of a registry key; RegistryValueError if it is not one."""
    prefix = services_prefix(namespace)
    try:
        text = key.decode()
    except UnicodeDecodeError as exc:
        raise RegistryValueError(f"key {_shown(key)} is not UTF-8") from exc
    if not key.startswith(prefix):
        raise RegistryValueError(f"key {_shown(key)} is not under '{prefix.decode()}'")
    parts = text[len(prefix) :].split("/")
    if (
        len(parts) != 2
        or not _SERVICE_RE.fullmatch(parts[0])
        or not _SEGMENT_RE.fullmatch(parts[1])
    ):
        raise RegistryValueError(
            f"key {text!r} is not {prefix.decode()}<grpc.full.ServiceName>/<instance-id>"
        )
    return parts[0], parts[1]


def is_valid_segment(text: str) -> bool:
    """May `text` be an instance id (one segment of a registry key)?"""
    return _SEGMENT_RE.fullmatch(text) is not None


def new_instance_id(deployment: str) -> str:
    """An id unique to this process; made once and kept, so re-registration never duplicates."""
    return f"{deployment}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Instance:
    """One registered instance of one gRPC service."""

    service: str
    instance_id: str
    address: str
    deployment: str
    version: str = "0.0.0"
    identity: str = ""
    zone: str = ""
    weight: int = 100
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _SERVICE_RE.fullmatch(self.service):
            raise RegistryValueError(f"service {self.service!r} is not a full gRPC service name")
        if not _SEGMENT_RE.fullmatch(self.instance_id):
            raise RegistryValueError(f"instance id {self.instance_id!r} is not a key segment")
        host, sep, port = self.address.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
        if not sep or not host or not valid_port:
            raise RegistryValueError(f"address {self.address!r} is not host:port")
        if not self.deployment:
            raise RegistryValueError("deployment is empty")
        if self.identity:
            # Callers derive the TLS name they pin from it: an identity that is not a mesh
            # SPIFFE ID could never be checked, so the entry is refused here, not at call time.
            try:
                identity_dns_name(self.identity)
            except ValueError as exc:
                raise RegistryValueError(f"identity: {exc}") from None
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise RegistryValueError(f"weight {self.weight!r} is not an integer")
        if not 1 <= self.weight <= MAX_WEIGHT:
            raise RegistryValueError(f"weight {self.weight} is outside 1..{MAX_WEIGHT}")
        bad = [k for k, v in self.metadata.items() if not isinstance(v, str)]
        if bad:
            raise RegistryValueError(f"metadata values must be strings (keys {bad})")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def key(self, namespace: str) -> bytes:
        return instance_key(namespace, self.service, self.instance_id)


# Field name -> accepted JSON type, for the schema check in decode().
_FIELDS: dict[str, type] = {
    "address": str,
    "deployment": str,
    "version": str,
    "identity": str,
    "zone": str,
    "weight": int,
    "metadata": dict,
}
_REQUIRED = ("address", "deployment")


def encode(instance: Instance) -> bytes:
    """The JSON value written under the instance's key."""
    body = {
        "address": instance.address,
        "deployment": instance.deployment,
        "version": instance.version,
        "identity": instance.identity,
        "zone": instance.zone,
        "weight": instance.weight,
        "metadata": dict(instance.metadata),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode(namespace: str, key: bytes, value: bytes) -> Instance:
    """Parse one registry entry; RegistryValueError names the key and what is wrong.

    Unknown JSON fields are ignored so that newer writers can add fields.
    """
    service, instance_id = parse_key(namespace, key)
    where = _shown(key)
    try:
        body: Any = json.loads(value)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting or ints
        raise RegistryValueError(f"{where}: value is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise RegistryValueError(f"{where}: value is not a JSON object")
    missing = [name for name in _REQUIRED if name not in body]
    if missing:
        raise RegistryValueError(f"{where}: missing {', '.join(missing)}")
    for name, kind in _FIELDS.items():
        if name in body and (not isinstance(body[name], kind) or isinstance(body[name], bool)):
            raise RegistryValueError(f"{where}: {name} must be a JSON {kind.__name__}")
    known = {name: body[name] for name in _FIELDS if name in body}
    try:
        return Instance(service=service, instance_id=instance_id, **known)
    except RegistryValueError as exc:
        raise RegistryValueError(f"{where}: {exc}") from exc
