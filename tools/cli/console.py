"""`mesh console`: the live mesh in a browser page (tools/console/), for the stack in
`--state-dir` (its stack.json), watched as the operator `ops`.

    mesh console                  # prints http://127.0.0.1:PORT/ ; Ctrl-C stops it
    mesh console --port 9190      # a fixed port (Prometheus' http_sd_configs reads /api/sd)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "console", help="serve the live mesh console (and Prometheus service discovery)"
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".mesh"), help="default .mesh/")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0: any free)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port {args.port}: must be within 0..65535")
    from hms_tools.console.server import ConsoleSettings, serve

    settings = ConsoleSettings.from_stack(args.state_dir)
    # One line per request to the gateway (routes, the explorer) is noise on the console.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def listening(url: str) -> None:
        print(f"mesh console: {url}", flush=True)
        print("Ctrl-C stops it.", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(settings, args.host, args.port, on_listening=listening))
    except OSError as exc:  # the port taken, the address not ours
        raise ConnectionError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return 0
