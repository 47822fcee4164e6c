"""`mesh ls`: a table of registered instances, with the seconds left on each lease."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from hms_tools.cli.env import (
    add_identity_arguments,
    add_stack_arguments,
    cli_identity,
    etcd_endpoints,
    etcd_tls,
    namespace,
)

if TYPE_CHECKING:
    from mesh.controlplane import ClientTls

COLUMNS = ("SERVICE", "DEPLOYMENT", "ADDRESS", "VERSION", "IDENTITY", "TTL")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("ls", help="list registered instances")
    add_stack_arguments(parser)
    add_identity_arguments(parser)
    parser.set_defaults(func=run)


async def rows(
    endpoints: list[str], ns: str, tls: ClientTls | None = None
) -> tuple[list[tuple[str, ...]], list[str]]:
    """Table rows, and one warning per malformed entry."""
    from mesh.registry import keys
    from mesh.registry.etcd import Etcd

    etcd = Etcd(endpoints, tls=tls)
    await etcd.connect()
    try:
        _, items = await etcd.get_prefix(keys.services_prefix(ns))
        ttls: dict[int, int] = {}
        table, warnings = [], []
        for kv in items:
            try:
                instance = keys.decode(ns, kv.key, kv.value)
            except keys.RegistryValueError as exc:
                warnings.append(f"skipped {exc}")
                continue
            if kv.lease and kv.lease not in ttls:
                ttls[kv.lease] = await etcd.time_to_live(kv.lease)
            ttl = str(ttls[kv.lease]) if kv.lease else "-"
            table.append(
                (
                    instance.service,
                    instance.deployment,
                    instance.address,
                    instance.version,
                    instance.identity or "-",
                    ttl,
                )
            )
        return table, warnings
    finally:
        await etcd.close()


def format_table(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [COLUMNS, *table]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [COLUMNS, *table]
    ]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from mesh.registry.etcd import EtcdDenied, EtcdUnavailable

    endpoints = etcd_endpoints(args)
    tls = etcd_tls(args, endpoints, cli_identity(args))
    try:
        table, warnings = asyncio.run(rows(endpoints, namespace(args), tls))
    except EtcdDenied as exc:
        who = f" as {tls.cert.name}" if tls is not None else ""
        raise ConnectionError(f"etcd at {','.join(endpoints)} refused{who}: {exc}") from exc
    except EtcdUnavailable as exc:
        raise ConnectionError(f"etcd at {','.join(endpoints)} did not answer: {exc}") from exc
    print(format_table(table))
    if not table:
        print(f"(no instances registered under /{namespace(args)}/services/)")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0
