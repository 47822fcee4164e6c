"""Audit: every platform event once, append-only and hash-chained (see chain.py)."""
