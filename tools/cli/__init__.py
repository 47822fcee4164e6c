"""The `mesh` command. Each subcommand lives in its own module with a `register(subparsers)`.

Environment variables are read here, at the edge (see `hms_tools.cli.env`), never in the library.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hms_tools.cli import (
    audit,
    certs,
    console,
    control,
    controlplane,
    deploy,
    events,
    gateway,
    k8s,
    ls,
    manifest,
    new_service,
    token,
    traffic,
    up,
)
from hms_tools.errors import OperatorError

COMMANDS = (
    certs,
    up,
    control,
    ls,
    events,
    console,
    gateway,
    audit,
    manifest,
    new_service,
    token,
    deploy,
    k8s,
    controlplane,
    traffic,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="HMS Mesh operations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, ConnectionError, OperatorError) as exc:
        print(f"mesh {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
