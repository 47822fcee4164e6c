"""Where the CLI finds the stack: flags, then the environment, then `<state-dir>/stack.json`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hms_tools.stackfile import read_stack_file

__all__ = ["add_stack_arguments", "etcd_endpoints", "namespace"]


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etcd", help="etcd endpoint(s), host:port[,host:port] (env MESH_ETCD)")
    parser.add_argument("--namespace", help="registry namespace (env MESH_NAMESPACE, default hms)")
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")


def etcd_endpoints(args: argparse.Namespace) -> list[str]:
    value = args.etcd or os.environ.get("MESH_ETCD")
    if not value:
        try:
            value = read_stack_file(args.state_dir)["etcd"]
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no etcd endpoint: pass --etcd, set MESH_ETCD, or {exc}"
            ) from exc
    return [e for e in str(value).split(",") if e]


def namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or os.environ.get("MESH_NAMESPACE") or "hms")
