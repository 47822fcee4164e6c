"""`mesh audit verify`: recompute the audit log's hash chain and name the first broken entry.

By default it asks the running audit service (VerifyChain, through the mesh as the operators'
identity, `ops`, found like `mesh ls` finds etcd); `--db PATH` verifies an audit database file
offline instead, opened read-only. It prints that the chain is intact and how many entries it
holds (exit 0), or the first broken entry and what is wrong with it (exit 1); a service or file
it cannot reach or read exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from hms_tools.cli.env import (
    add_identity_arguments,
    add_stack_arguments,
    cli_identity,
    etcd_endpoints,
    etcd_tls,
    namespace,
)

__all__ = ["ChainReport", "register", "report_lines"]

#: The file `mesh up` writes the stack's serving policy to (tools/stack.py).
_SERVING_FILE = "serving.toml"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("audit", help="check the audit log")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", help="recompute the audit hash chain; exit 1 naming the first broken entry"
    )
    verify.add_argument(
        "--db",
        type=Path,
        help="verify this audit database file offline (read-only) instead of asking the service",
    )
    verify.add_argument(
        "--timeout", type=float, default=60.0, help="for the service's answer, s (default 60)"
    )
    verify.add_argument(
        "--serving",
        help="who may serve what (env MESH_SERVING, else the stack's serving.toml if there)",
    )
    add_stack_arguments(verify)
    add_identity_arguments(verify)
    verify.set_defaults(func=run_verify)


@dataclass(frozen=True)
class ChainReport:
    """What VerifyChain (or the offline check) found, wherever it came from."""

    where: str
    intact: bool
    entries: int
    first_broken_sequence: int
    problem: str


def report_lines(report: ChainReport) -> list[str]:
    """What `mesh audit verify` prints for `report`."""
    if report.intact:
        return [f"audit chain intact ({report.where}): {report.entries} entries"]
    return [
        f"audit chain BROKEN ({report.where}) at entry {report.first_broken_sequence}"
        f" ({report.entries} entries checked)",
        f"  {report.problem}",
    ]


def _offline(path: Path) -> ChainReport:
    from hms_services.audit.store import verify_database

    verdict = verify_database(path)
    return ChainReport(
        str(path),
        verdict.intact,
        verdict.entries,
        verdict.first_broken_sequence,
        verdict.problem,
    )


def _serving_path(args: argparse.Namespace) -> Path | None:
    given = args.serving or os.environ.get("MESH_SERVING")
    if given:
        return Path(given)
    stack_file = Path(args.state_dir) / _SERVING_FILE
    return stack_file if stack_file.is_file() else None


async def _through_the_mesh(args: argparse.Namespace) -> ChainReport:
    import grpc

    from hms.audit.v1 import audit_pb2, audit_pb2_grpc
    from mesh.authz.serving import load_serving
    from mesh.client import ClientConfig, MeshChannel
    from mesh.registry.etcd import EtcdUnavailable

    endpoints = etcd_endpoints(args)
    identity = cli_identity(args)
    serving = _serving_path(args)
    config = ClientConfig(
        etcd=tuple(endpoints),
        namespace=namespace(args),
        tls=identity,
        etcd_tls=etcd_tls(args, endpoints, identity),
        serving=load_serving(serving) if serving is not None else None,
    )
    who = f" as {identity.name}" if identity is not None else ""
    try:
        channel = await MeshChannel.connect(config)
    except EtcdUnavailable as exc:  # EtcdDenied too
        raise ConnectionError(f"etcd at {','.join(endpoints)}{who}: {exc}") from exc
    async with channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        try:
            answer = await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(
                f"VerifyChain{who} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    return ChainReport(
        "the audit service",
        answer.intact,
        answer.entries,
        answer.first_broken_sequence,
        answer.problem,
    )


def run_verify(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0 s, got {args.timeout}")
    report = _offline(args.db) if args.db is not None else asyncio.run(_through_the_mesh(args))
    for line in report_lines(report):
        print(line)
    return 0 if report.intact else 1
