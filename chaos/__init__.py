"""Reliability under fire: `python -m chaos` (or `make chaos`) runs each scenario of
docs/reliability.md under steady load and records what callers saw; `chaos.load` is the load
generator it and the operations tests share."""


class ScenarioFailed(RuntimeError):
    """A scenario could not be run to its end (a wait timed out, the stack broke)."""
