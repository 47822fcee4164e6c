"""gRPC handlers of hms.report.v1.ReportService: ask identity through the mesh, say it in a
sentence.

identity is asked with a deadline of its own (never later than the caller's, which the mesh
channel carries over). What identity answers becomes report's answer:

    VERIFIED, UNKNOWN, SUSPENDED        "ID C12345 is verified", "is unknown", "is suspended"
    INVALID_ARGUMENT (the id's form)    INVALID_ARGUMENT naming `id`, the request's field
    down, too slow or overloaded        UNAVAILABLE naming identity (the cause is logged, not
                                        shown: grpc core's text can carry addresses)
    anything else                       INTERNAL naming identity and the code it answered

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from hms.identity.v1 import identity_pb2, identity_pb2_grpc
from hms.report.v1 import report_pb2, report_pb2_grpc
from mesh.errors import Internal, InvalidArgument, MeshError, Unavailable
from mesh.server.enduser import require_acting_for

__all__ = ["DEFAULT_IDENTITY_TIMEOUT", "ChannelSource", "ReportService"]

log = logging.getLogger(__name__)

#: Seconds identity gets to answer; a caller with less time left gives it less.
DEFAULT_IDENTITY_TIMEOUT = 2.0

#: Gives the channel to call identity on: the service's `runtime.channel` (a MeshChannel).
ChannelSource = Callable[[], Awaitable[Any]]

_WORDS: dict[int, str] = {
    identity_pb2.VERIFIED: "verified",
    identity_pb2.UNKNOWN: "unknown",
    identity_pb2.SUSPENDED: "suspended",
}

# How much of a citizen id identity did not judge a log line repeats.
_LOGGED_CHARS = 40

#: Codes that mean identity could not answer (in time), not that it refused the question.
_DOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ReportService(report_pb2_grpc.ReportServiceServicer):
    """Writes reports from what identity knows (stateless).

    Example::

        ReportService(runtime.channel)
    """

    def __init__(
        self, channel: ChannelSource, *, identity_timeout: float = DEFAULT_IDENTITY_TIMEOUT
    ) -> None:
        self._channel = channel
        self._identity_timeout = identity_timeout

    async def CreateIdentityCheckReport(
        self,
        request: report_pb2.CreateIdentityCheckReportRequest,
        context: grpc.aio.ServicerContext[
            report_pb2.CreateIdentityCheckReportRequest,
            report_pb2.CreateIdentityCheckReportResponse,
        ],
    ) -> report_pb2.CreateIdentityCheckReportResponse:
        if not request.id.strip():
            raise InvalidArgument.field("id", "is required: the citizen id, e.g. C12345")
        require_acting_for(request.id, "id")
        status = await self._standing(request.id)
        word = _WORDS.get(status)
        if word is None:  # a newer identity with a standing this report has no words for
            raise Internal(
                f"identity answered ID {request.id} with status {status}, not known here"
            )
        return report_pb2.CreateIdentityCheckReportResponse(report=f"ID {request.id} is {word}")

    async def _standing(self, citizen_id: str) -> int:
        """identity's status for `citizen_id`; its failures told as the module's doc says."""
        identity = identity_pb2_grpc.IdentityServiceStub(await self._channel())
        try:
            answer = await identity.VerifyCitizen(
                identity_pb2.VerifyCitizenRequest(citizen_id=citizen_id),
                timeout=self._identity_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _told(MeshError.from_rpc(exc), citizen_id) from None
        status: int = answer.status
        return status


def _told(error: MeshError, citizen_id: str) -> MeshError:
    """The error report answers for identity's `error`."""
    if isinstance(error, InvalidArgument):
        # identity validated our `id` as its `citizen_id`: name the field the caller sent.
        violations = [
            ("id" if field == "citizen_id" else field, problem)
            for field, problem in error.violations
        ]
        return InvalidArgument.fields(violations or [("id", error.message)])
    # The id is left out of these messages: identity, which judges its form, did not answer.
    shown = citizen_id[:_LOGGED_CHARS]
    if error.code in _DOWN:
        log.warning("identity could not check %r: %s: %s", shown, error.code.name, error.message)
        return Unavailable(
            f"identity is unavailable ({error.code.name}): the citizen could not be checked; "
            "try again later"
        )
    log.error("identity failed the check of %r: %s: %s", shown, error.code.name, error.message)
    return Internal(f"identity failed the citizen check ({error.code.name})")
