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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hms_tools.cli.env import add_identity_arguments, add_nats_tls_arguments, cli_identity
from hms_tools.cli.env import nats_settings as _nats_settings
from hms_tools.stackfile import read_stack_file

if TYPE_CHECKING:
    from hms_tools.event_view import ConsumerRow, StreamRow, TypeRegistry
    from mesh.controlplane import NatsAccess

__all__ = ["nats_url", "register"]

CONNECT_TIMEOUT = 2.0
#: The default subject prefix (mesh.events.subjects.DEFAULT_PREFIX, which a test compares):
#: written out so that building the parser does not load the events package.
DEFAULT_PREFIX = "hms"


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
    parser.add_argument(
        "--nats", help="NATS URL, nats:// or tls:// (env MESH_NATS, else stack.json)"
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix (default hms)")
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    add_identity_arguments(parser)
    add_nats_tls_arguments(parser)


def nats_access(args: argparse.Namespace, url: str) -> NatsAccess:
    """How to reach NATS at `url`: TLS as the operator's identity for tls:// (README.md)."""
    return _nats_settings(args, url.split(","), cli_identity(args))


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


# --- ls ---------------------------------------------------------------------------------------


async def _list(url: str, access: NatsAccess) -> tuple[list[StreamRow], list[ConsumerRow]]:
    from hms_tools.event_view import ConsumerRow, StreamRow

    nc = await _connect(url, access)
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
    from hms_tools.event_view import format_ls
    from mesh.events.subjects import stream_name

    url = nats_url(args.nats, os.environ, args.state_dir)
    streams, consumers = _guarded(url, _list(url, nats_access(args, url)))
    print(format_ls(streams, consumers, stream_name(args.prefix, "dlq")))
    return 0


# --- tail -------------------------------------------------------------------------------------


async def _tail(
    url: str,
    access: NatsAccess,
    subject: str,
    *,
    count: int | None,
    from_start: bool,
    registry: TypeRegistry,
) -> None:
    from nats.js.api import DeliverPolicy

    from hms_tools.event_view import format_event

    nc = await _connect(url, access)
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
    from hms_tools.event_view import TypeRegistry, resolve_subject

    subject = resolve_subject(args.prefix, args.subject)
    url = nats_url(args.nats, os.environ, args.state_dir)
    registry = TypeRegistry.generated()
    access = nats_access(args, url)
    work = _tail(
        url, access, subject, count=args.count, from_start=args.from_start, registry=registry
    )
    _guarded(url, work)
    return 0


# --- connecting -------------------------------------------------------------------------------


#: What NATS refused this process, said asynchronously (a permissions violation is not an
#: answer to the request that caused it: the request just times out). `_guarded` names it.
_refusals: list[str] = []


async def _connect(url: str, access: NatsAccess) -> Any:
    import nats

    async def quiet(exc: Exception) -> None:
        # Failures are raised from connect() or the request and reported once, by main();
        # a refusal is kept to say why a request went unanswered.
        if "permissions violation" in str(exc).lower():
            _refusals.append(str(exc))

    # nats-py keeps retrying a refused first connect whatever its reconnect options say, so the
    # whole attempt gets a deadline of its own.
    try:
        return await asyncio.wait_for(
            nats.connect(
                url.split(","),
                allow_reconnect=False,
                connect_timeout=CONNECT_TIMEOUT,
                error_cb=quiet,
                **access.options(),
            ),
            CONNECT_TIMEOUT,
        )
    except TimeoutError as exc:
        raise ConnectionError(f"NATS at {url} did not answer within {CONNECT_TIMEOUT} s") from exc


def _guarded(url: str, work: Any) -> Any:
    """Run `work`; NATS and socket failures become ConnectionError (exit 2 in `mesh`)."""
    import nats.errors

    _refusals.clear()
    try:
        return asyncio.run(work)
    except ConnectionError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if _refusals:  # the request timed out because NATS refused it
            raise ConnectionError(
                f"NATS at {url} refused: {_refusals[-1]} (this identity may not: docs/security.md)"
            ) from exc
        raise ConnectionError(f"NATS at {url}: {type(exc).__name__}: {exc}") from exc
