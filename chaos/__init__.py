"""Reliability under fire: `python -m chaos` (or `make chaos`) runs each scenario of
docs/reliability.md under steady load and records what callers saw; `chaos.load` is the load
generator it and the operations tests share."""
