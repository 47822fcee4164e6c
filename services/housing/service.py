"""gRPC handlers of hms.housing.v1.HousingService.

SubmitApplication checks the request's fields, asks eligibility for the MAX_INCOME decision
and documents for each document named (every one must exist; at least one must be a PAY_STUB
of the citizen), then saves the application: SUBMITTED with its VoucherSubmitted in one
transaction when eligible, REJECTED with no event when not. A refused request (bad fields, an
unknown document, no pay stub, a dependency down) leaves nothing behind.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.housing.v1 import housing_pb2, housing_pb2_grpc
from hms_services.housing.store import HousingStore, StoredApplication
from mesh.dependency import ask
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from mesh.server.enduser import may_act_for, require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["INCOME_RULE", "MAX_DOCUMENTS", "HousingService"]

#: The eligibility rule a voucher is decided by.
INCOME_RULE = "MAX_INCOME"
#: Documents one application may name (each is looked up in documents).
MAX_DOCUMENTS = 20
#: How long each call to a dependency may take (the caller's own deadline caps it).
DEFAULT_TIMEOUT = 2.0

ChannelSource = Callable[[], Awaitable["grpc.aio.Channel"]]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class HousingService(housing_pb2_grpc.HousingServiceServicer):
    """Decides and keeps housing voucher applications (see the module's doc).

    `channel` gives the channel to call eligibility and documents on (the service's
    `runtime.channel`); the clock and the id source are parameters so that tests can fix them.
    """

    def __init__(
        self,
        store: HousingStore,
        *,
        channel: ChannelSource,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], datetime.datetime] = _utc_now,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._store = store
        self._channel = channel
        self._timeout = timeout
        self._clock = clock
        self._new_id = new_id

    async def SubmitApplication(
        self,
        request: housing_pb2.SubmitApplicationRequest,
        context: grpc.aio.ServicerContext[
            housing_pb2.SubmitApplicationRequest, housing_pb2.SubmitApplicationResponse
        ],
    ) -> housing_pb2.SubmitApplicationResponse:
        _validate(request)
        require_acting_for(request.citizen_id, "citizen_id")
        channel = await self._channel()
        decision = await self._check_income(channel, request)
        await self._check_pay_stubs(channel, request.citizen_id, request.document_ids)
        status = housing_pb2.SUBMITTED if decision.eligible else housing_pb2.REJECTED
        application = StoredApplication(
            application_id=self._new_id(),
            citizen_id=request.citizen_id,
            annual_income_pence=request.annual_income_pence,
            household_size=request.household_size,
            residence_months=request.residence_months,
            document_ids=tuple(request.document_ids),
            status=status,
            eligible=decision.eligible,
            reasons=tuple(r.message for r in decision.reasons),
            create_time=self._clock(),
        )
        self._store.save(application)
        return housing_pb2.SubmitApplicationResponse(
            application_id=application.application_id,
            status=status,
            eligible=application.eligible,
            reasons=application.reasons,
        )

    async def GetApplication(
        self,
        request: housing_pb2.GetApplicationRequest,
        context: grpc.aio.ServicerContext[
            housing_pb2.GetApplicationRequest, housing_pb2.GetApplicationResponse
        ],
    ) -> housing_pb2.GetApplicationResponse:
        if not request.application_id.strip():
            raise InvalidArgument.field("application_id", "is required")
        application = self._store.application(request.application_id)
        # Another citizen's application is not found: its id reveals nothing.
        if application is None or not may_act_for(application.citizen_id):
            raise NotFound(f"application {request.application_id!r} not found")
        return housing_pb2.GetApplicationResponse(application=application.to_pb())

    async def _check_income(
        self, channel: grpc.aio.Channel, request: housing_pb2.SubmitApplicationRequest
    ) -> eligibility_pb2.CheckResponse:
        eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        check = eligibility_pb2.CheckRequest(
            applicant_id=request.citizen_id,
            annual_income_pence=request.annual_income_pence,
            household_size=request.household_size,
            residence_months=request.residence_months,
            rule_ids=[INCOME_RULE],
        )
        return await ask("eligibility", eligibility.Check(check, timeout=self._timeout))

    async def _check_pay_stubs(
        self, channel: grpc.aio.Channel, citizen_id: str, document_ids: Sequence[str]
    ) -> None:
        """Every document must exist; at least one must be a PAY_STUB of `citizen_id`."""
        documents = documents_pb2_grpc.DocumentsServiceStub(channel)
        pay_stubs = 0
        looked_up: set[str] = set()
        for i, document_id in enumerate(document_ids):
            if document_id in looked_up:
                continue
            looked_up.add(document_id)
            try:
                answer = await ask(
                    "documents",
                    documents.GetDocument(
                        documents_pb2.GetDocumentRequest(document_id=document_id),
                        timeout=self._timeout,
                    ),
                    expected=(NotFound, InvalidArgument),
                )
            except NotFound:
                raise InvalidArgument.field(
                    f"document_ids[{i}]", f"document {document_id!r} not found"
                ) from None
            except InvalidArgument as malformed:  # documents judges the form of its ids
                raise InvalidArgument.field(f"document_ids[{i}]", _problem(malformed)) from None
            document = answer.document
            if document.owner == citizen_id and document.kind == documents_pb2.PAY_STUB:
                pay_stubs += 1
        if not pay_stubs:
            named = f"{len(looked_up)} document(s) named" if looked_up else "no document named"
            raise FailedPrecondition(
                f"document_ids: a housing voucher needs at least one PAY_STUB document of "
                f"citizen {citizen_id!r}; {named}, none a PAY_STUB of theirs"
            )


def _problem(error: InvalidArgument) -> str:
    """What a dependency said is wrong with a value, without its own field names."""
    return "; ".join(problem for _, problem in error.violations) or error.message


def _validate(request: housing_pb2.SubmitApplicationRequest) -> None:
    """Raise InvalidArgument naming the first missing or wrong field of `request`."""
    if not request.citizen_id.strip():
        raise InvalidArgument.field("citizen_id", "is required")
    if request.annual_income_pence < 0:
        raise InvalidArgument.field(
            "annual_income_pence", f"must not be negative, got {request.annual_income_pence}"
        )
    if request.household_size < 1:
        raise InvalidArgument.field(
            "household_size",
            f"must be at least 1 (the applicant included), got {request.household_size}",
        )
    if request.residence_months < 0:
        raise InvalidArgument.field(
            "residence_months", f"must not be negative, got {request.residence_months}"
        )
    if len(request.document_ids) > MAX_DOCUMENTS:
        raise InvalidArgument.field(
            "document_ids", f"at most {MAX_DOCUMENTS} documents, got {len(request.document_ids)}"
        )
    for i, document_id in enumerate(request.document_ids):
        if not document_id.strip():
            raise InvalidArgument.field(f"document_ids[{i}]", "must not be empty")
