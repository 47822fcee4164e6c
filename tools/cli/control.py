"""`mesh restart DEPLOYMENT` and `mesh scale DEPLOYMENT=N`: change a running `mesh up` stack
through its control socket (`<state-dir>/control.sock`), printing each step as it happens.

The operation runs in the stack's supervisor: if this command is interrupted, the step under
way still completes (a rolling restart is not left with two processes in one slot)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from hms_tools.control import send_request
from hms_tools.stackfile import CONTROL_SOCKET, parse_scale


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    restart = sub.add_parser(
        "restart",
        help="rolling restart of a deployment in the running stack, one replica at a time",
    )
    restart.add_argument("deployment")
    restart.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    restart.set_defaults(func=run_restart)

    scale = sub.add_parser("scale", help="change a deployment's replica count in the running stack")
    scale.add_argument("target", metavar="DEPLOYMENT=N", help="e.g. eligibility=3")
    scale.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    scale.set_defaults(func=run_scale)


def _send(state_dir: Path, request: dict[str, Any]) -> int:
    asyncio.run(send_request(state_dir / CONTROL_SOCKET, request, lambda t: print(t, flush=True)))
    return 0


def run_restart(args: argparse.Namespace) -> int:
    return _send(args.state_dir, {"command": "restart", "deployment": args.deployment})


def run_scale(args: argparse.Namespace) -> int:
    counts = parse_scale(args.target)
    if len(counts) != 1:
        raise ValueError(f"scale {args.target!r}: one DEPLOYMENT=N at a time")
    ((deployment, replicas),) = counts.items()
    return _send(
        args.state_dir, {"command": "scale", "deployment": deployment, "replicas": replicas}
    )
