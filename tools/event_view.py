"""What `mesh events` shows, apart from fetching it: streams and consumers as a table, one
event as a JSON line (its payload decoded through the generated Protobuf types), and the
subject a `tail` argument names. Pure, except that `TypeRegistry.generated()` imports the
generated modules; tested without NATS."""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from mesh.events.subjects import Headers, validate_subject

__all__ = [
    "CONSUMER_COLUMNS",
    "STREAM_COLUMNS",
    "ConsumerRow",
    "StreamRow",
    "TypeRegistry",
    "format_event",
    "format_ls",
    "resolve_subject",
]

STREAM_COLUMNS = ("STREAM", "MESSAGES", "BYTES", "SUBJECTS")
CONSUMER_COLUMNS = ("CONSUMER", "STREAM", "PENDING", "ACK_PENDING", "REDELIVERED")


def resolve_subject(prefix: str, text: str) -> str:
    """The subject to tail: `text` itself if under `<prefix>.events.` or `<prefix>.dlq.`, else
    `text` taken as an event type (or pattern) under `<prefix>.events.`."""
    if text.startswith((f"{prefix}.events.", f"{prefix}.dlq.")):
        return validate_subject(text, wildcards=True)
    return validate_subject(f"{prefix}.events.{text}", wildcards=True)


@dataclass(frozen=True)
class StreamRow:
    name: str
    messages: int
    bytes: int
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class ConsumerRow:
    name: str
    stream: str
    pending: int  # not yet delivered
    ack_pending: int  # delivered, not acked yet
    redelivered: int


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    ]


def format_ls(streams: Sequence[StreamRow], consumers: Sequence[ConsumerRow], dlq: str) -> str:
    """Streams, then consumers, then the dead-letter count of stream `dlq`."""
    if not streams:
        return "(no streams)"
    lines = _table(
        STREAM_COLUMNS,
        [(s.name, str(s.messages), str(s.bytes), ",".join(s.subjects)) for s in streams],
    )
    lines.append("")
    if consumers:
        lines += _table(
            CONSUMER_COLUMNS,
            [
                (c.name, c.stream, str(c.pending), str(c.ack_pending), str(c.redelivered))
                for c in consumers
            ],
        )
    else:
        lines.append("(no consumers)")
    lines.append("")
    letters = next((s for s in streams if s.name == dlq), None)
    if letters is None:
        lines.append(f"dead letters: no {dlq} stream")
    else:
        lines.append(f"dead letters: {letters.messages} in {dlq}")
    return "\n".join(lines)


class TypeRegistry:
    """Message classes by Protobuf full name: the generated `*_pb2` modules of `package` (they
    register in the default pool when imported), then the descriptor set `make proto` writes
    beside the package (`gen/hms.binpb`), for types with no importable module."""

    def __init__(self, pools: Sequence[descriptor_pool.DescriptorPool]) -> None:
        self._pools = pools

    @classmethod
    def generated(cls, package: str = "hms") -> TypeRegistry:
        pools = [descriptor_pool.Default()]
        try:
            root = importlib.import_module(package)
        except ImportError:
            return cls(pools)
        for module in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if module.name.endswith("_pb2"):
                importlib.import_module(module.name)
        for directory in root.__path__:
            binpb = Path(directory).parent / f"{package}.binpb"
            if binpb.is_file():
                file_set = descriptor_pb2.FileDescriptorSet.FromString(binpb.read_bytes())
                pool = descriptor_pool.DescriptorPool()
                for file in file_set.file:
                    pool.Add(file)
                pools.append(pool)
        return cls(pools)

    def message_class(self, full_name: str) -> type[Message] | None:
        for pool in self._pools:
            try:
                descriptor = pool.FindMessageTypeByName(full_name)
            except KeyError:
                continue
            return message_factory.GetMessageClass(descriptor)
        return None


def format_event(
    subject: str,
    sequence: int | None,
    headers: Mapping[str, str],
    data: bytes,
    registry: TypeRegistry,
) -> str:
    """One JSON line: subject, stream sequence, the ce-* attributes, dead-letter headers if any,
    and `data` (the decoded payload) or `data_base64` with a `note` saying why."""
    type_name = headers.get(Headers.TYPE, "")
    event: dict[str, Any] = {
        "subject": subject,
        "seq": sequence,
        "id": headers.get(Headers.ID) or headers.get(Headers.MSG_ID),
        "type": type_name or None,
        "source": headers.get(Headers.SOURCE),
        "time": headers.get(Headers.TIME),
    }
    dead = {k: v for k, v in headers.items() if k.startswith("Hms-Dlq-")}
    if dead:
        event["dead_letter"] = dead
    message_class = registry.message_class(type_name) if type_name else None
    if message_class is None:
        reason = f"unknown type {type_name}" if type_name else "no ce-type header"
        event["note"] = f"{reason}: payload shown as base64"
        event["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        try:
            decoded = message_class.FromString(data)
            event["data"] = json_format.MessageToDict(decoded, preserving_proto_field_name=True)
        except DecodeError as exc:
            event["note"] = f"payload does not decode as {type_name} ({exc}): shown as base64"
            event["data_base64"] = base64.b64encode(data).decode("ascii")
    return json.dumps(event, ensure_ascii=False)
