"""gRPC handlers of hms.passport.v1.PassportService.

SubmitRenewal checks, in order: the request's fields; the citizen's standing (identity); the
passport in passport's own register (issued to this citizen); the renewal window
(eligibility, from the passport's expiry date); the photo (documents: there, the citizen's, a
PHOTO). Only then is the renewal saved with its RenewalSubmitted, in one transaction: a
refused renewal leaves nothing behind.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms.identity.v1 import identity_pb2, identity_pb2_grpc
from hms.passport.v1 import passport_pb2, passport_pb2_grpc
from hms_services.passport.store import IssuedPassport, PassportStore, StoredRenewal
from mesh.dependency import ask
from mesh.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from mesh.server.enduser import may_act_for, require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["RENEWAL_RULE", "PassportService", "months_until"]

#: The eligibility rule that says whether a passport may be renewed yet.
RENEWAL_RULE = "PASSPORT_RENEWAL_WINDOW"
#: How long each call to a dependency may take (the caller's own deadline caps it).
DEFAULT_TIMEOUT = 2.0

_PASSPORT_NUMBER = re.compile(r"[0-9]{9}")
_KIND_NAMES = {number: name for name, number in documents_pb2.DocumentKind.items()}

ChannelSource = Callable[[], Awaitable["grpc.aio.Channel"]]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


def months_until(today: datetime.date, expiry: datetime.date) -> int:
    """Whole months from `today` to `expiry`, negative once it has passed.

    >>> months_until(datetime.date(2025, 1, 31), datetime.date(2025, 3, 30))
    1
    """
    months = (expiry.year - today.year) * 12 + expiry.month - today.month
    # A month not yet complete does not count (towards the future or the past).
    if months > 0 and expiry.day < today.day:
        months -= 1
    elif months < 0 and expiry.day > today.day:
        months += 1
    return months


class PassportService(passport_pb2_grpc.PassportServiceServicer):
    """Takes passport renewals (see the module's doc).

    `channel` gives the channel to call identity, eligibility and documents on (the service's
    `runtime.channel`); the clock and the id source are parameters so that tests can fix them.
    """

    def __init__(
        self,
        store: PassportStore,
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

    async def SubmitRenewal(
        self,
        request: passport_pb2.SubmitRenewalRequest,
        context: grpc.aio.ServicerContext[
            passport_pb2.SubmitRenewalRequest, passport_pb2.SubmitRenewalResponse
        ],
    ) -> passport_pb2.SubmitRenewalResponse:
        _validate(request)
        require_acting_for(request.citizen_id, "citizen_id")
        channel = await self._channel()
        await self._verify_citizen(channel, request.citizen_id)
        passport = self._issued_to(request.citizen_id, request.passport_number)
        now = self._clock()
        await self._check_window(channel, request.citizen_id, passport, now.date())
        await self._check_photo(channel, request.citizen_id, request.photo_document_id)
        renewal = StoredRenewal(
            renewal_id=self._new_id(),
            citizen_id=request.citizen_id,
            passport_number=request.passport_number,
            photo_document_id=request.photo_document_id,
            status=passport_pb2.SUBMITTED,
            create_time=now,
        )
        self._store.submit(renewal)
        return passport_pb2.SubmitRenewalResponse(
            renewal_id=renewal.renewal_id, status=passport_pb2.SUBMITTED
        )

    async def GetRenewal(
        self,
        request: passport_pb2.GetRenewalRequest,
        context: grpc.aio.ServicerContext[
            passport_pb2.GetRenewalRequest, passport_pb2.GetRenewalResponse
        ],
    ) -> passport_pb2.GetRenewalResponse:
        if not request.renewal_id.strip():
            raise InvalidArgument.field("renewal_id", "is required")
        renewal = self._store.renewal(request.renewal_id)
        # Another citizen's renewal is not found: its id reveals nothing.
        if renewal is None or not may_act_for(renewal.citizen_id):
            raise NotFound(f"renewal {request.renewal_id!r} not found")
        return passport_pb2.GetRenewalResponse(renewal=renewal.to_pb())

    async def _verify_citizen(self, channel: grpc.aio.Channel, citizen_id: str) -> None:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        # identity judges the form of a citizen id: its INVALID_ARGUMENT names citizen_id,
        # this request's field too, so it is the caller's to see.
        answer = await ask(
            "identity",
            identity.VerifyCitizen(
                identity_pb2.VerifyCitizenRequest(citizen_id=citizen_id), timeout=self._timeout
            ),
            expected=(InvalidArgument,),
        )
        if answer.status == identity_pb2.VERIFIED:
            return
        if answer.status == identity_pb2.UNKNOWN:
            raise NotFound(f"citizen {citizen_id!r} not found in the citizen register")
        if answer.status == identity_pb2.SUSPENDED:
            raise FailedPrecondition(
                f"citizen {citizen_id!r} is suspended in the citizen register: "
                "no renewal can be taken"
            )
        raise Internal(f"identity answered citizen {citizen_id!r} with status {answer.status}")

    def _issued_to(self, citizen_id: str, number: str) -> IssuedPassport:
        passport = self._store.issued_passport(number)
        # Whether the number exists at all is not told: it would reveal others' passports.
        if passport is None or passport.holder != citizen_id:
            raise FailedPrecondition(
                f"passport_number: {number} is not a passport issued to citizen {citizen_id!r}"
            )
        return passport

    async def _check_window(
        self,
        channel: grpc.aio.Channel,
        citizen_id: str,
        passport: IssuedPassport,
        today: datetime.date,
    ) -> None:
        eligibility = eligibility_pb2_grpc.EligibilityServiceStub(channel)
        request = eligibility_pb2.CheckRequest(
            applicant_id=citizen_id,
            months_to_passport_expiry=months_until(today, passport.expiry_date),
            rule_ids=[RENEWAL_RULE],
        )
        decision = await ask("eligibility", eligibility.Check(request, timeout=self._timeout))
        if decision.eligible:
            return
        failed = [r for r in decision.reasons if not r.passed]
        raise FailedPrecondition.violated(
            f"passport {passport.number} cannot be renewed: "
            + "; ".join(r.message for r in failed),
            [("ELIGIBILITY", r.rule_id, r.message) for r in failed],
        )

    async def _check_photo(
        self, channel: grpc.aio.Channel, citizen_id: str, document_id: str
    ) -> None:
        documents = documents_pb2_grpc.DocumentsServiceStub(channel)
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
                "photo_document_id", f"document {document_id!r} not found"
            ) from None
        except InvalidArgument as malformed:  # documents judges the form of its ids
            raise InvalidArgument.field("photo_document_id", _problem(malformed)) from None
        document = answer.document
        if document.owner != citizen_id:
            raise InvalidArgument.field(
                "photo_document_id",
                f"document {document_id!r} is not a document of citizen {citizen_id!r}",
            )
        if document.kind != documents_pb2.PHOTO:
            kind = _KIND_NAMES.get(document.kind, str(document.kind))
            raise InvalidArgument.field(
                "photo_document_id", f"document {document_id!r} is a {kind}, not a PHOTO"
            )


def _problem(error: InvalidArgument) -> str:
    """What a dependency said is wrong with a value, without its own field names."""
    return "; ".join(problem for _, problem in error.violations) or error.message


def _validate(request: passport_pb2.SubmitRenewalRequest) -> None:
    """Raise InvalidArgument naming the first missing or malformed field of `request`."""
    if not request.citizen_id.strip():
        raise InvalidArgument.field("citizen_id", "is required")
    if not request.passport_number:
        raise InvalidArgument.field("passport_number", "is required")
    if not _PASSPORT_NUMBER.fullmatch(request.passport_number):
        raise InvalidArgument.field(
            "passport_number", f"must be 9 digits, got {request.passport_number!r}"
        )
    if not request.photo_document_id.strip():
        raise InvalidArgument.field("photo_document_id", "is required")
