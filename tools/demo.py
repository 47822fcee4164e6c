"""The reference scenario, end to end: `make demo` (or `python -m hms_tools.demo`).

It starts the whole platform on loopback (etcd and NATS secured, every service of
services/*/service.toml in its own process, the gateway with its JWT gate on), then runs the
four flows through the gateway with tokens signed by the stack's development key (a housing
voucher, a passport renewal, a professional licence, an identity check report), waits for the
events they caused to reach notify and audit, prints each case's audit trail with its trace id,
runs the failure paths and prints a summary (tools/flows.py). Then it stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from hms_tools.devjwt import mint_token
from hms_tools.flows import callable_by, run_flows, wait_for_routes
from hms_tools.stack import Stack, StackConfig


async def main_async(state_dir: Path) -> int:
    stack = Stack(StackConfig(state_dir=state_dir))
    print(f"Starting etcd, NATS, {', '.join(stack.deployments)} and the gateway")
    print(f"(state in {state_dir}) ...")
    started = time.perf_counter()
    info = await stack.start()
    try:
        print(f"stack up in {time.perf_counter() - started:.1f} s: etcd {info['etcd']}, "
              f"NATS {info['nats']}, gateway {info['gateway']}")  # fmt: skip
        services = callable_by(stack.manifests[d] for d in stack.deployments)
        await wait_for_routes(info["gateway"], services)
        print(f"the gateway learnt the routes of {len(services)} services by reflection\n")

        def tokens(subject: str, scopes: Iterable[str]) -> str:
            # What `mesh token --sub SUBJECT --scope ...` prints.
            return mint_token(state_dir, subject, scopes)

        report = await run_flows(info["gateway"], tokens)
    finally:
        await stack.stop()
        print("stack stopped")
    took = time.perf_counter() - started
    print(f"\nSummary: {report.steps} requests, {len(report.cases)} cases audited, "
          f"{len(report.failures)} went wrong, {took:.1f} s in all")  # fmt: skip
    for failure in report.failures:
        print(f"  - {failure}")
    print("demo OK" if not report.failures else "demo FAILED")
    return 0 if not report.failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    if args.state_dir is not None:
        return asyncio.run(main_async(args.state_dir))
    with tempfile.TemporaryDirectory(prefix="hms-demo-") as tmp:
        return asyncio.run(main_async(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
