"""Where a running stack is found: `<state-dir>/stack.json` and `<state-dir>/control.sock`,
and the `DEPLOYMENT=N` notation of `--scale`. Kept apart from tools/stack.py so that commands
which only read the stack file (`mesh ls`, `mesh events`) start without loading the stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CONTROL_SOCKET", "STACK_FILE", "parse_scale", "read_stack_file"]

STACK_FILE = "stack.json"
CONTROL_SOCKET = "control.sock"


def read_stack_file(state_dir: Path) -> dict[str, Any]:
    path = Path(state_dir) / STACK_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} not found: is `mesh up` running?") from exc


def parse_scale(text: str) -> dict[str, int]:
    """`eligibility=3,notify=2` -> {"eligibility": 3, "notify": 2}; ValueError naming the
    part that is wrong."""
    counts: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, number = part.partition("=")
        name, number = name.strip(), number.strip()
        if not sep or not name or not number:
            raise ValueError(f"scale {part!r}: write DEPLOYMENT=REPLICAS, e.g. eligibility=3")
        if not (number.isascii() and number.isdigit()) or int(number) > 64:
            raise ValueError(f"scale {part!r}: replicas must be a whole number from 0 to 64")
        if name in counts:
            raise ValueError(f"scale: {name!r} is given twice")
        counts[name] = int(number)
    return counts
