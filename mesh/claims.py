"""What a verified token's claims grant: pure functions, shared by the gateway (which checks
a method's scopes) and the services (which read the end user's scopes from `mesh.end_user()`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["granted_scopes"]


def granted_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token's claims grant: ``scope`` (space-separated) and ``scp`` (a list, or
    space-separated). Raises ``ValueError`` saying which claim is malformed.

    >>> sorted(granted_scopes({"scope": "housing:apply  housing:read", "scp": ["audit:read"]}))
    ['audit:read', 'housing:apply', 'housing:read']
    """
    granted: set[str] = set()
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise ValueError("'scope' must be a string of space-separated scopes")
        granted.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        granted.update(scp.split())
    elif isinstance(scp, list):
        if not all(isinstance(item, str) and item for item in scp):
            raise ValueError("'scp' must be a list of non-empty strings")
        granted.update(scp)
    elif scp is not None:
        raise ValueError("'scp' must be a list of scopes or a space-separated string")
    return frozenset(granted)
