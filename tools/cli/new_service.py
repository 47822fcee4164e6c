"""`mesh new-service NAME`: write a new service (contract, handlers, wiring, manifest, unit and
integration tests) and add its package to pyproject.toml (tools/scaffold.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "new-service",
        help="write a new service: contract, handlers, main, service.toml and tests",
    )
    parser.add_argument(
        "name", help="lower-case letters and digits, starting with a letter (e.g. parking)"
    )
    parser.add_argument(
        "--description", default=None, help="one line for its manifest (default 'The NAME service')"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="the checkout to write into (default: this one)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hms_tools.contracts import REPO
    from hms_tools.scaffold import create_service

    root = Path(args.root) if args.root is not None else REPO
    written = create_service(root, args.name, args.description)
    for path in written:
        print(f"wrote {path.relative_to(root)}")
    name = args.name
    print(
        f"\nnext: `make proto` (generates hms.{name}.v1), then\n"
        f"  .venv/bin/pytest tests/unit/services/test_{name}.py "
        f"tests/integration/platform/test_{name}_service.py\n"
        f"  .venv/bin/mesh manifest check    # `make lint` runs it too\n"
        f"  .venv/bin/mesh up                # starts {name} with the rest"
    )
    return 0
