"""`mesh events ls` and `mesh events tail SUBJECT`: look at the event streams of a running mesh.

- `ls`: every stream (messages, bytes, subjects), every consumer of each (pending, waiting for an
  ack, redelivered), and how many dead letters there are.
- `tail`: an ephemeral ordered consumer (from now, or `--from-start`) printing one JSON object per
  event, its payload decoded through the generated Protobuf types named by `ce-type`. A type this
  process does not know is shown as base64 with a note; tail never stops on a payload.

The NATS URL comes from `--nats`, then `MESH_NATS`, then `<state-dir>/stack.json` ("nats").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from mesh.events.subjects import DEFAULT_PREFIX, Headers, stream_name, validate_subject
from mesh.stack import read_stack_file

__all__ = [
    "ConsumerRow",
    "StreamRow",
    "TypeRegistry",
    "format_event",
    "format_ls",
    "nats_url",
    "register",
    "resolve_subject",
]

STREAM_COLUMNS = ("STREAM", "MESSAGES", "BYTES", "SUBJECTS")
CONSUMER_COLUMNS = ("CONSUMER", "STREAM", "PENDING", "ACK_PENDING", "REDELIVERED")
CONNECT_TIMEOUT = 2.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("events", help="list event streams, or tail a subject")
    actions = parser.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="streams, consumers, pending counts, dead letters")
    _add_common(ls)
    ls.set_defaults(func=run_ls)
    tail = actions.add_parser("tail", help="print events on SUBJECT as JSON, one per line")
    tail.add_argument(
        "subject",
        metavar="SUBJECT",
        help="a subject (wildcards allowed); one not under <prefix>.events. or <prefix>.dlq. "
        "is taken as an event type, e.g. hms.testing.v1.VoucherSubmitted or '>'",
    )
    tail.add_argument("--count", type=int, help="stop after N events (default: until Ctrl-C)")
    tail.add_argument("--from-start", action="store_true", help="replay stored events first")
    _add_common(tail)
    tail.set_defaults(func=run_tail)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", help="NATS URL (env MESH_NATS, else stack.json)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix (default hms)")
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")


def nats_url(
    flag: str | None, env: Mapping[str, str], state_dir: Path
) -> str:  # env passed in: read at the edge, tested without os.environ
    """`--nats`, else `MESH_NATS`, else stack.json's "nats".

    FileNotFoundError or ValueError when there is none.
    """
    if flag:
        return flag
    if env.get("MESH_NATS"):
        return env["MESH_NATS"]
    try:
        stack = read_stack_file(state_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no NATS URL: pass --nats, set MESH_NATS, or {exc}") from exc
    url = stack.get("nats")
    if not url:
        raise ValueError(f'no NATS URL: {state_dir / "stack.json"} has no "nats"')
    return str(url)


def resolve_subject(prefix: str, text: str) -> str:
    """The subject to tail: `text` itself if under `<prefix>.events.` or `<prefix>.dlq.`, else
    `text` taken as an event type (or pattern) under `<prefix>.events.`."""
    if text.startswith((f"{prefix}.events.", f"{prefix}.dlq.")):
        return validate_subject(text, wildcards=True)
    return validate_subject(f"{prefix}.events.{text}", wildcards=True)


# --- ls ---------------------------------------------------------------------------------------


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


async def _list(url: str) -> tuple[list[StreamRow], list[ConsumerRow]]:
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        streams, consumers = [], []
        for info in sorted(await js.streams_info(), key=lambda i: i.config.name or ""):
            name = info.config.name or "?"
            streams.append(
                StreamRow(
                    name, info.state.messages, info.state.bytes, tuple(info.config.subjects or ())
                )
            )
            for c in sorted(await js.consumers_info(name), key=lambda c: c.name):
                consumers.append(
                    ConsumerRow(
                        c.name,
                        name,
                        c.num_pending or 0,
                        c.num_ack_pending or 0,
                        c.num_redelivered or 0,
                    )
                )
        return streams, consumers
    finally:
        await nc.close()


def run_ls(args: argparse.Namespace) -> int:
    url = nats_url(args.nats, os.environ, args.state_dir)
    streams, consumers = _guarded(url, _list(url))
    print(format_ls(streams, consumers, stream_name(args.prefix, "dlq")))
    return 0


# --- tail -------------------------------------------------------------------------------------


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


async def _tail(
    url: str, subject: str, count: int | None, from_start: bool, registry: TypeRegistry
) -> None:
    from nats.js.api import DeliverPolicy

    nc = await _connect(url)
    try:
        sub = await nc.jetstream().subscribe(
            subject,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        )
        seen = 0
        while count is None or seen < count:
            msg = await sub.next_msg(timeout=None)  # type: ignore[arg-type]
            sequence = msg.metadata.sequence.stream if msg.reply else None
            print(format_event(msg.subject, sequence, msg.headers or {}, msg.data, registry))
            seen += 1
        await sub.unsubscribe()
    finally:
        await nc.close()


def run_tail(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    subject = resolve_subject(args.prefix, args.subject)
    url = nats_url(args.nats, os.environ, args.state_dir)
    registry = TypeRegistry.generated()
    _guarded(url, _tail(url, subject, args.count, args.from_start, registry))
    return 0


# --- connecting -------------------------------------------------------------------------------


async def _connect(url: str) -> Any:
    import nats

    async def quiet(_exc: Exception) -> None:
        return None  # the failure is raised from connect() and reported once, by main()

    # nats-py keeps retrying a refused first connect whatever its reconnect options say, so the
    # whole attempt gets a deadline of its own.
    try:
        return await asyncio.wait_for(
            nats.connect(
                url, allow_reconnect=False, connect_timeout=CONNECT_TIMEOUT, error_cb=quiet
            ),
            CONNECT_TIMEOUT,
        )
    except TimeoutError as exc:
        raise ConnectionError(f"NATS at {url} did not answer within {CONNECT_TIMEOUT} s") from exc


def _guarded(url: str, work: Any) -> Any:
    """Run `work`; NATS and socket failures become ConnectionError (exit 2 in `mesh`)."""
    import nats.errors

    try:
        return asyncio.run(work)
    except ConnectionError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConnectionError(f"NATS at {url}: {type(exc).__name__}: {exc}") from exc
