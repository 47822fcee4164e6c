"""`mesh manifest check`: every disagreement between the manifests (services/*/service.toml),
the contracts and the code, one per line, exit status 1 when there is any (`make lint` runs
it). `mesh manifest policy`: the authorization policy `mesh up` composes from them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("manifest", help="check the services' manifests (service.toml)")
    commands = parser.add_subparsers(dest="manifest_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="print every disagreement between the manifests, the contracts and the code; "
        "exit 1 if any",
    )
    policy = commands.add_parser(
        "policy", help="print the authorization policy mesh up composes from the manifests"
    )
    for command in (check, policy):
        command.add_argument(
            "--root",
            type=Path,
            default=None,
            help="the checkout to read (services/, gen/hms.binpb); default: this one",
        )
        command.add_argument(
            "--descriptor-set",
            type=Path,
            default=None,
            help="the contracts' descriptor set (default <root>/gen/hms.binpb, made by "
            "`make proto`)",
        )
    check.set_defaults(func=run_check)
    policy.set_defaults(func=run_policy)


def _root(args: argparse.Namespace) -> Path:
    from hms_tools.contracts import REPO

    return Path(args.root) if args.root is not None else REPO


def run_check(args: argparse.Namespace) -> int:
    from hms_tools.manifest import manifest_paths
    from hms_tools.manifest_check import check_tree

    root = _root(args)
    if not (root / "services").is_dir():
        raise FileNotFoundError(f"{root} has no services/ folder: give the checkout with --root")
    found = sorted(check_tree(root, args.descriptor_set))
    for disagreement in found:
        print(disagreement)
    count = len(manifest_paths(root / "services"))
    if found:
        print(f"{len(found)} disagreement(s) in {count} manifest(s)", file=sys.stderr)
        return 1
    print(f"{count} manifest(s) agree with the contracts and the code")
    return 0


def run_policy(args: argparse.Namespace) -> int:
    from hms_tools.authz_matrix import compose_policy
    from hms_tools.contracts import Contracts, default_descriptor_set
    from hms_tools.manifest import load_manifests

    root = _root(args)
    contracts = Contracts.load(args.descriptor_set or default_descriptor_set(root))
    print(compose_policy(load_manifests(root / "services", contracts).values()), end="")
    return 0
