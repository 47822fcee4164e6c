"""gRPC handlers of hms.identity.v1.IdentityService: validate the citizen id, look it up.

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hms.identity.v1 import identity_pb2, identity_pb2_grpc
from hms_services.identity.store import CitizenRegister, Standing
from mesh import InvalidArgument
from mesh.server.enduser import require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["CITIZEN_ID_FORM", "IdentityService", "validate_citizen_id"]

# [0-9], not \d (which takes any Unicode digit), and fullmatch (`$` would let a "\n" through).
_CITIZEN_ID = re.compile(r"C[0-9]{5,9}")
#: What a citizen id looks like, as error messages say it.
CITIZEN_ID_FORM = '"C" followed by 5 to 9 digits, e.g. C12345'
# How much of a wrong id an error message repeats: enough to recognise it, never a megabyte.
_SHOWN_CHARS = 24

_STATUS = {
    Standing.VERIFIED: identity_pb2.VERIFIED,
    Standing.SUSPENDED: identity_pb2.SUSPENDED,
}


def validate_citizen_id(citizen_id: str) -> None:
    """Raise InvalidArgument naming `citizen_id` unless it has the register's form."""
    if not citizen_id.strip():
        raise InvalidArgument.field("citizen_id", f"is required: {CITIZEN_ID_FORM}")
    if _CITIZEN_ID.fullmatch(citizen_id) is None:
        raise InvalidArgument.field(
            "citizen_id", f"must be {CITIZEN_ID_FORM}; got {_shown(citizen_id)}"
        )


def _shown(value: str) -> str:
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"


class IdentityService(identity_pb2_grpc.IdentityServiceServicer):
    """Answers a citizen's standing from the `CitizenRegister`; one not in it is UNKNOWN.

    Example::

        identity_pb2_grpc.add_IdentityServiceServicer_to_server(
            IdentityService(CitizenRegister("/var/lib/hms/identity.sqlite3")), server
        )
    """

    def __init__(self, register: CitizenRegister) -> None:
        self._register = register

    async def VerifyCitizen(
        self,
        request: identity_pb2.VerifyCitizenRequest,
        context: grpc.aio.ServicerContext[
            identity_pb2.VerifyCitizenRequest, identity_pb2.VerifyCitizenResponse
        ],
    ) -> identity_pb2.VerifyCitizenResponse:
        validate_citizen_id(request.citizen_id)
        require_acting_for(request.citizen_id, "citizen_id")
        citizen = self._register.get(request.citizen_id)
        status = identity_pb2.UNKNOWN if citizen is None else _STATUS[citizen.standing]
        return identity_pb2.VerifyCitizenResponse(citizen_id=request.citizen_id, status=status)
