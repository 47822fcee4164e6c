"""`mesh token`: a JWT the stack's gateway accepts, signed with its development key.

    mesh token --sub maya --scope housing:apply --scope housing:read
    curl -H "Authorization: Bearer $(mesh token --sub maya --scope housing:apply)" ...

The key is `<state-dir>/jwt/dev-signing-key.pem`, made by `mesh up` (tools/devjwt.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "token", help="print a JWT for the stack's gateway, signed with its development key"
    )
    parser.add_argument("--sub", required=True, help="the caller (the token's subject)")
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        dest="scopes",
        metavar="SCOPE",
        help="a scope the token holds, e.g. housing:apply (repeatable)",
    )
    parser.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="good for (default 3600)"
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hms_tools.devjwt import mint_token

    print(mint_token(args.state_dir, args.sub, args.scopes, ttl=args.ttl))
    return 0
