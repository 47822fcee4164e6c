"""`mesh up`: etcd, NATS, every service its manifest declares (services/*/service.toml: its
replicas unless `--scale` says otherwise, its drain delay) and the gateway on this machine,
supervised until Ctrl-C or SIGTERM. Every service enforces one authorization policy composed
from the manifests' [[accepts]] (`<state-dir>/policy.toml`), or the one `--policy` gives."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hms_tools.stackfile import parse_scale

if TYPE_CHECKING:
    from hms_tools.stack import StackConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "up", help="start etcd, NATS, every service its manifest declares and the gateway locally"
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    parser.add_argument("--namespace", default="hms")
    parser.add_argument("--only", nargs="*", default=(), help="start only these deployments")
    parser.add_argument(
        "--scale",
        default="",
        metavar="DEPLOYMENT=N[,...]",
        help="replicas per deployment, e.g. eligibility=3,notify=2 (default: each "
        "manifest's replicas)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=None,
        metavar="FILE",
        help="the authorization policy every service enforces (docs/authz.md); default: the "
        "one composed from the manifests' [[accepts]], written to <state-dir>/policy.toml",
    )
    parser.add_argument(
        "--policy-mode",
        choices=("enforce", "audit"),
        default="enforce",
        help="audit: the composed policy lets every call through and logs those it would "
        "refuse (try a new matrix before enforcing it)",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        dest="gateway_args",
        metavar="ARG",
        help="pass ARG on to `mesh gateway` (repeatable; write it with '=', e.g. "
        "--gateway-arg=--strict --gateway-arg=--port=8080); see `mesh gateway --help`",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N worker processes per replica of every service without state, each "
        "registered on its own, so a replica uses N cores (default 1; services with a "
        "SQLite file keep one)",
    )
    parser.add_argument(
        "--ha",
        action="store_true",
        help="a 3-member etcd cluster and a 3-node NATS JetStream cluster (streams on 3 "
        "replicas) instead of one of each: losing any one of them loses nothing "
        "(docs/deploy.md)",
    )
    parser.add_argument(
        "--insecure-control-plane",
        action="store_true",
        help="run etcd and NATS in plaintext, open to any local process (default: TLS with "
        "certificates from the stack's CA, each deployment allowed only its own keys and "
        "events: docs/security.md)",
    )
    parser.set_defaults(func=run)


def summary(info: dict[str, Any]) -> str:
    clustered = " (3-member cluster)" if info.get("ha") else ""
    lines = [
        f"etcd     {info['etcd']}{clustered}",
        f"nats     {info['nats']}{clustered}",
        f"tls      {info['tls_dir']} (ops certificate: {info['ops_cert']}.pem)",
    ]
    if info.get("policy"):
        lines.append(f"policy   {info['policy']} (who may call what)")
    if info.get("gateway"):
        lines.append(f"gateway  {info['gateway']} (REST; /openapi.json lists the routes)")
    for service in info["services"].values():
        for replica in service["replicas"]:
            for instance in replica["instances"]:
                lines.append(
                    f"{replica['name']:<14} {instance['address']:<22} {instance['service']}"
                )
    return "\n".join(lines)


async def serve(config: StackConfig) -> None:
    from hms_tools.stack import Stack

    stack = Stack(config, report=lambda text: print(text, flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    info = await stack.start()
    try:
        print(summary(info), flush=True)
        print(
            f"stack ready: {config.state_dir / 'stack.json'}; `mesh restart DEPLOYMENT` and "
            "`mesh scale DEPLOYMENT=N` change it live; Ctrl-C stops everything",
            flush=True,
        )
        await stop.wait()
    finally:
        print("stopping ...", flush=True)
        await stack.stop()
        print("stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    from hms_tools.stack import StackConfig

    config = StackConfig(
        state_dir=args.state_dir,
        namespace=args.namespace,
        deployments=tuple(args.only),
        scale=parse_scale(args.scale) if args.scale else {},
        gateway_args=tuple(args.gateway_args),
        insecure_control_plane=args.insecure_control_plane,
        ha=args.ha,
        workers=args.workers,
        policy=args.policy,
        policy_mode=args.policy_mode,
    )
    asyncio.run(serve(config))
    return 0
