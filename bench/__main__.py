"""`python -m bench [--only NAME ...] [--quick]`: run the benchmarks, record and report them.

Each benchmark runs in its own event loop, one after the other (they would skew each other on
2 cores). Figures are merged into bench/results.json, printed, and written between the markers
of docs/benchmarks.md; a benchmark that fails is reported and leaves its earlier figures alone.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    BENCHMARKS,
    Figures,
    check_figures,
    merge_results,
    render_markdown,
    render_text,
    replace_generated,
    split_entries,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DOCS = ROOT / "docs" / "benchmarks.md"

# Written once, when docs/benchmarks.md does not exist; after that it is edited by hand.
INTRO = """\
# Benchmarks

`make bench` (or `python -m bench`) runs every benchmark and rewrites the tables below;
`python -m bench --only registry` runs one, keeping the others' earlier figures, and
`--quick` runs a smaller sample (for a smoke test, not for the record). Raw figures are in
`bench/results.json`. All benchmarks together take under 10 minutes.

Machine: 2 cores, one loopback etcd 3.5 started for the run (throwaway data dir). Every figure
is wall-clock time from `time.perf_counter()` in the benchmark process.

## What each benchmark measures

**registry**: how fast the registry reflects an instance coming and going.

- `register_to_watch_*_ms`: from `Registration.start()` of a new instance to a `Discovery`
  in the same process seeing it ADDED, over 200 registrations made one at a time (each is
  revoked, and its REMOVED seen, before the next; 5 warm-ups first are not counted). This is
  lease grant + transaction put + watch delivery, all on loopback.
- `kill9_to_vanish_ttlN_*_s`: from `kill -9` of a running echo service (lease TTL N s) to its
  key's REMOVED, i.e. lease expiry (5 runs at TTL 2, 2 at TTL 10; `--quick`: 3 at TTL 2). The
  last keepalive went out up to TTL/3 before the kill and etcd looks for expired leases every
  500 ms, so expect TTL - TTL/3 .. TTL + 0.5 s: a crashed instance can outlive its TTL by half
  a second. Each kill waits a random 0-0.5 s first; killing the moment the previous key went
  would fall in step with etcd's expiry tick and give only 1.5 or 2.0 s at TTL 2.
- `sigterm_to_vanish_*_ms`: from SIGTERM of an echo service to REMOVED (5 runs): the graceful
  drain revokes the lease first, so the keys go at once. `sigterm_to_exit_*_ms` is to the
  process's exit.

## Results

"""


def load_benchmarks() -> dict[str, ModuleType]:
    """The registered benchmark modules by NAME, checked for the expected shape."""
    modules: dict[str, ModuleType] = {}
    for module_name in BENCHMARKS:
        module = importlib.import_module(module_name)
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not callable(getattr(module, "run", None)):
            raise TypeError(f"{module_name} must define NAME: str and async def run(quick)")
        if name in modules:
            raise ValueError(f"benchmark name {name!r} is used twice ({module_name})")
        modules[name] = module
    return modules


def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=names, help=f"one of {', '.join(names)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples, for a smoke test")
    return parser.parse_args(argv)


def run_one(module: ModuleType, quick: bool) -> tuple[Figures, float]:
    started = time.perf_counter()
    figures = check_figures(module.NAME, asyncio.run(module.run(quick)))
    return figures, time.perf_counter() - started


def read_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a JSON object ({exc}): fix or delete it") from exc


def write_docs(path: Path, results: dict[str, Any]) -> None:
    generated = render_markdown(results)
    document = path.read_text() if path.exists() else INTRO
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_generated(document, generated))


def main(argv: Sequence[str] | None = None) -> int:
    modules = load_benchmarks()
    args = parse_args(argv, list(modules))
    selected = args.only or list(modules)
    new: dict[str, Figures] = {}
    runs: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name in selected:
        print(f"bench: running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr)
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        try:
            figures, elapsed = run_one(modules[name], args.quick)
        except Exception:
            traceback.print_exc()
            print(f"bench: {name} FAILED; its earlier figures are kept", file=sys.stderr)
            failed.append(name)
            continue
        print(f"bench: {name} took {elapsed:.1f} s", file=sys.stderr)
        for entry, entry_figures in split_entries(name, figures).items():
            new[entry] = entry_figures
            runs[entry] = {"date": date, "quick": args.quick, "elapsed_s": round(elapsed, 1)}
    if new:
        meta = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "runs": runs,
        }
        results = merge_results(read_results(RESULTS), new, meta, order=list(modules))
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        write_docs(DOCS, results)
        print(render_text(results, names=list(new)), end="")
        print(f"bench: wrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
