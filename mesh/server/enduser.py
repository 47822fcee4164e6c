"""Who the call is for: the end user the REST gateway verified, believed only from the gateway.

The gateway checks a caller's JWT and passes the result on as metadata (`x-hms-subject`, and
`x-hms-claims`, the claims as JSON). Any mesh peer could send the same metadata, so a service
host runs `EndUserInterceptor`: for each call it believes that metadata only when the calling
certificate's identity is one of the gateway's, and a handler reads the result with
`end_user()`, never the raw metadata. Sent by anyone else, the metadata is dropped (logged once
per caller and method):

    user = end_user()          # EndUser(subject="alice", claims={...}) or None
    if user is None:
        raise PermissionDenied("sign in first")

Scopes say what a user may do, not whose data: a handler whose request names a citizen calls
`require_acting_for(citizen_id, "citizen_id")`, which lets the citizen themself (the token's
subject) and staff (a token with the `caseworker` scope) through, and refuses anyone else
with PERMISSION_DENIED; a call from another service (no end user) is the matrix's to judge.
Reading a record by id, `may_act_for(record.owner)` tells whether to answer or say NOT_FOUND
(so that ids of other citizens' records reveal nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

from mesh.claims import granted_scopes
from mesh.errors import PermissionDenied
from mesh.identity import caller_identity
from mesh.server.wrap import Around, AroundInterceptor

__all__ = [
    "CLAIMS_KEY",
    "DEFAULT_GATEWAY_IDENTITIES",
    "STAFF_SCOPE",
    "SUBJECT_KEY",
    "EndUser",
    "EndUserInterceptor",
    "end_user",
    "may_act_for",
    "require_acting_for",
    "signed_in",
]

log = logging.getLogger(__name__)

SUBJECT_KEY = "x-hms-subject"
CLAIMS_KEY = "x-hms-claims"
DEFAULT_GATEWAY_IDENTITIES = ("spiffe://hms.local/svc/gateway",)
#: The scope of staff who act for any citizen (caseworkers).
STAFF_SCOPE = "caseworker"

_current: contextvars.ContextVar[EndUser | None] = contextvars.ContextVar(
    "mesh_end_user", default=None
)


@dataclass(frozen=True)
class EndUser:
    subject: str
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes the token granted (none if its scope claims are malformed: the gateway
        refuses such a token, so only a broken sender gets here)."""
        try:
            return granted_scopes(self.claims)
        except ValueError:
            return frozenset()

    def acts_for(self, owner: str) -> bool:
        """Whether this user may act on `owner`'s behalf: it is them, or staff.

        >>> EndUser("C12345").acts_for("C12345"), EndUser("C12345").acts_for("C99999")
        (True, False)
        >>> EndUser("kim", MappingProxyType({"scope": "caseworker"})).acts_for("C99999")
        True
        """
        return self.subject == owner or STAFF_SCOPE in self.scopes


@contextlib.contextmanager
def signed_in(subject: str, scopes: Collection[str] = ()) -> Iterator[EndUser]:
    """Handle calls as `subject` holding `scopes`, as if the gateway had verified its token
    (for handler tests, which call handlers without a server or an interceptor)."""
    user = EndUser(subject, MappingProxyType({"sub": subject, "scope": " ".join(scopes)}))
    token = _current.set(user)
    try:
        yield user
    finally:
        _current.reset(token)


def may_act_for(owner: str) -> bool:
    """Whether the call being handled may act for `owner`: no end user (a call from another
    service, which the authorization policy let in), the owner themself, or staff."""
    user = _current.get()
    return user is None or user.acts_for(owner)


def require_acting_for(owner: str, field_name: str) -> None:
    """Raises PermissionDenied naming `field_name` unless the call may act for `owner`."""
    user = _current.get()
    if user is not None and not user.acts_for(owner):
        raise PermissionDenied(
            f"{field_name}: {owner!r} is not the signed-in user {user.subject!r}; acting for "
            f"another citizen needs the {STAFF_SCOPE!r} scope"
        )


def end_user() -> EndUser | None:
    """The end user of the call being handled, as the gateway verified it; None when the call
    did not come through the gateway with a verified token."""
    return _current.get()


def _from_metadata(metadata: Any) -> tuple[str | None, str | None]:
    subject = claims = None
    for key, value in metadata or ():
        if key == SUBJECT_KEY and isinstance(value, str):
            subject = value
        elif key == CLAIMS_KEY and isinstance(value, str):
            claims = value
    return subject, claims


class _Scope:
    __slots__ = ("_owner", "_token", "_user")

    def __init__(self, owner: EndUserInterceptor, method: str, context: Any) -> None:
        self._owner = owner
        self._user = owner.verified(method, context)
        self._token: contextvars.Token[EndUser | None] | None = None

    async def __aenter__(self) -> None:
        self._token = _current.set(self._user)

    async def __aexit__(
        self, type_: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)


class EndUserInterceptor(AroundInterceptor):
    def __init__(self, gateway_identities: Collection[str] = DEFAULT_GATEWAY_IDENTITIES) -> None:
        super().__init__()
        self.gateway_identities = frozenset(gateway_identities)
        self._warned: set[tuple[str | None, str]] = set()

    def around(self, method: str) -> Around:
        return Around(scope=lambda context: _Scope(self, method, context))

    def verified(self, method: str, context: Any) -> EndUser | None:
        subject, claims = _from_metadata(context.invocation_metadata())
        if subject is None and claims is None:
            return None
        caller = caller_identity(context.auth_context())
        if caller not in self.gateway_identities:
            if (caller, method) not in self._warned:
                self._warned.add((caller, method))
                log.warning(
                    "%s: dropped end-user metadata (%s) sent by %s, which is not the gateway",
                    method,
                    SUBJECT_KEY,
                    caller or "an unauthenticated caller",
                )
            return None
        try:
            parsed = json.loads(claims) if claims else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict) or subject is None:
            return None
        return EndUser(subject, MappingProxyType(parsed))
