"""gRPC handlers of hms.licensing.v1.LicensingService: a licence application as a saga.

    fees.CalculateFee -> record PENDING -> payments.Charge -> PAID -> the PDF ->
    documents.CreateDocument -> ISSUED (licence row + LicenceIssued, one transaction)

A declined payment (FAILED_PRECONDITION from payments) issues nothing. A failure after the
payment is compensated: payments.Refund, then REFUNDED + LicenceRefused in one transaction, and
the failure is answered saying the payment was refunded. The application is recorded under its
idempotency key before money moves and the charge's own idempotency key is derived from it, so
a retry, or the service starting after a crash, resumes an application where it stopped and
never charges twice. DECLINED and REFUNDED are final: the same key answers the same refusal.

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from hms.documents.v1 import documents_pb2, documents_pb2_grpc
from hms.fees.v1 import fees_pb2, fees_pb2_grpc
from hms.licensing.v1 import licensing_pb2, licensing_pb2_grpc
from hms.payments.v1 import payments_pb2, payments_pb2_grpc
from hms_services.licensing.pdf import LicenceText, licence_pdf
from hms_services.licensing.store import Application, IssuedLicence, LicenceStore, State
from mesh.deadline import inbound_scope
from mesh.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MeshError,
    NotFound,
    Unavailable,
)
from mesh.server.enduser import may_act_for, require_acting_for

if TYPE_CHECKING:
    import grpc.aio

__all__ = [
    "DO_NOT_RETRY",
    "MAX_KEY_LENGTH",
    "ChannelSource",
    "LicensingService",
    "charge_key",
]

log = logging.getLogger(__name__)

#: How the service reaches fees, payments and documents: the runtime's `channel` (a
#: MeshChannel) or, in tests, any grpc.aio channel; the generated stubs take either.
ChannelSource = Callable[[], Awaitable[Any]]

#: An idempotency key fits payments' 128-character key once `charge_key` prefixes it.
MAX_KEY_LENGTH = 100
#: The citizen owns the licence document: documents takes owners of up to 64 characters.
MAX_CITIZEN_ID_LENGTH = 64
MAX_LICENCE_TYPE_LENGTH = 64
#: payments takes a refund reason of one printable line of up to 500 characters.
MAX_REASON_LENGTH = 500

#: Trailing metadata that asks callers not to retry (gRFC A6 server pushback).
DO_NOT_RETRY = (("grpc-retry-pushback-ms", "-1"),)
_FINAL_REFUSALS = (State.DECLINED, State.REFUNDED)

#: Failures of documents answered as they are (the caller may retry later with a new key);
#: any other failure after payment is a fault here or there, answered INTERNAL.
_PASSED_ON = (Unavailable, DeadlineExceeded)


def charge_key(idempotency_key: str) -> str:
    """The payment's idempotency key for an application's: one payment per application, and
    apart from other callers' keys."""
    return f"licensing:{idempotency_key}"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_licence_id() -> str:
    return f"lic-{uuid.uuid4().hex}"


class _KeyLocks:
    """One asyncio lock per idempotency key, dropped when no call holds or awaits it: calls
    with the same key run one after another, so one application is driven by one call."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class LicensingService(licensing_pb2_grpc.LicensingServiceServicer):
    """Issues licences through fees, payments and documents, reached on `channel()` (the
    mesh channel in production, any grpc.aio channel in tests); the clock and the licence id
    source are parameters so that tests can fix them.

    Example::

        LicensingService(LicenceStore(path, runtime.outbox(path)), runtime.channel)
    """

    def __init__(
        self,
        store: LicenceStore,
        channel: ChannelSource,
        *,
        clock: Callable[[], datetime.datetime] = _utc_now,
        new_licence_id: Callable[[], str] = _new_licence_id,
    ) -> None:
        self._store = store
        self._channel = channel
        self._clock = clock
        self._new_licence_id = new_licence_id
        self._locks = _KeyLocks()

    async def ApplyForLicence(
        self,
        request: licensing_pb2.ApplyForLicenceRequest,
        context: grpc.aio.ServicerContext[
            licensing_pb2.ApplyForLicenceRequest, licensing_pb2.ApplyForLicenceResponse
        ],
    ) -> licensing_pb2.ApplyForLicenceResponse:
        _validate_application(request)
        require_acting_for(request.citizen_id, "citizen_id")
        key = request.idempotency_key
        async with self._locks.hold(key):
            application = self._store.application(key)
            if application is None:
                fee = await self._fee(request.licence_type)
                application = self._store.open(
                    Application(
                        licence_id=self._new_licence_id(),
                        idempotency_key=key,
                        citizen_id=request.citizen_id,
                        licence_type=request.licence_type,
                        fee_pence=fee,
                        state=State.PENDING,
                    ),
                    self._clock(),
                )
            _check_same_application(application, request)
            try:
                licence = await self._drive(application)
            except MeshError:
                current = self._store.application(key)
                if current is not None and current.state in _FINAL_REFUSALS:
                    # Its answer stands (a retry could only repeat it as FAILED_PRECONDITION):
                    # mesh clients do not retry an answer with a negative pushback (gRFC A6).
                    context.set_trailing_metadata(DO_NOT_RETRY)
                raise
        return licensing_pb2.ApplyForLicenceResponse(
            licence_id=licence.licence_id,
            status=licensing_pb2.ISSUED,
            fee_pence=licence.fee_pence,
            payment_id=licence.payment_id,
            document_id=licence.document_id,
        )

    async def GetLicence(
        self,
        request: licensing_pb2.GetLicenceRequest,
        context: grpc.aio.ServicerContext[
            licensing_pb2.GetLicenceRequest, licensing_pb2.GetLicenceResponse
        ],
    ) -> licensing_pb2.GetLicenceResponse:
        if not request.licence_id.strip():
            raise InvalidArgument.field("licence_id", "is required")
        licence = self._store.licence(request.licence_id)
        # Another citizen's licence is not found: its id reveals nothing.
        if licence is None or not may_act_for(licence.citizen_id):
            raise NotFound(f"licence {request.licence_id!r} not found")
        return licensing_pb2.GetLicenceResponse(licence=licence.pb())

    async def resume_unfinished(self) -> None:
        """Drive every application a crash or an outage left PENDING or PAID to ISSUED or
        REFUNDED (run at start: a citizen who paid and never retried is not left without
        either a licence or the money). An application that cannot move on yet is logged and
        left for the next retry or start."""
        for application in self._store.unfinished():
            async with self._locks.hold(application.idempotency_key):
                current = self._store.application(application.idempotency_key)
                if current is None or current.state not in (State.PENDING, State.PAID):
                    continue  # a retry finished it meanwhile
                try:
                    await self._drive(current)
                    log.info("resumed application %s: issued", current.licence_id)
                except MeshError as exc:
                    log.warning("resuming application %s: %s", current.licence_id, exc.message)
                except Exception:
                    log.exception("resuming application %s failed", current.licence_id)

    # -- the saga ---------------------------------------------------------------------------

    async def _drive(self, application: Application) -> IssuedLicence:
        """Take `application` from where it stands to its licence, or raise its refusal."""
        if application.state is State.PENDING:
            application = await self._charge(application)
        if application.state is State.PAID:
            return await self._issue(application)
        if application.state is State.ISSUED:
            licence = self._store.licence(application.licence_id)
            assert licence is not None  # ISSUED and its licence row commit together
            return licence
        raise _refusal(application)

    async def _fee(self, licence_type: str) -> int:
        stub = fees_pb2_grpc.FeeServiceStub(await self._channel())
        try:
            response: fees_pb2.CalculateFeeResponse = await stub.CalculateFee(
                fees_pb2.CalculateFeeRequest(licence_type=licence_type)
            )
        except grpc.aio.AioRpcError as exc:
            error = MeshError.from_rpc(exc)
            if isinstance(error, InvalidArgument):
                raise error from None  # an unknown licence type: fees names the known ones
            raise type(error)(f"fees: {error.message}; nothing was charged") from None
        if response.amount_pence < 0:
            raise Internal(f"fees answered a negative fee for {licence_type!r}")
        return response.amount_pence

    async def _charge(self, application: Application) -> Application:
        """PENDING -> PAID, or DECLINED (raised). Any other failure leaves it PENDING: the
        charge may or may not have happened, and a retry with the same key takes one payment."""
        if application.fee_pence == 0:  # nothing to pay: payments takes only amounts > 0
            return self._store.mark_paid(application, "", self._clock())
        stub = payments_pb2_grpc.PaymentServiceStub(await self._channel())
        try:
            response: payments_pb2.ChargeResponse = await stub.Charge(
                payments_pb2.ChargeRequest(
                    idempotency_key=charge_key(application.idempotency_key),
                    payer_id=application.citizen_id,
                    amount_pence=application.fee_pence,
                    reference=application.licence_id,
                )
            )
        except grpc.aio.AioRpcError as exc:
            error = MeshError.from_rpc(exc)
            if isinstance(error, FailedPrecondition):
                declined = self._store.mark_declined(application, error.message, self._clock())
                raise _refusal(declined) from None
            hint = "nothing was issued"
            if isinstance(error, _PASSED_ON):
                hint = "retry with the same idempotency key: it will not be charged twice"
            raise type(error)(f"payments: {error.message}; {hint}") from None
        return self._store.mark_paid(application, response.payment.payment_id, self._clock())

    async def _issue(self, application: Application) -> IssuedLicence:
        """PAID -> ISSUED; any failure is compensated (the payment refunded) and raised."""
        try:
            document_id = await self._store_document(application)
            return self._store.issue(application, document_id, self._clock())
        except Exception as exc:
            # Shielded and with no inbound deadline: the refund must not die with the call
            # that asked for the licence (a cancelled call, a spent deadline).
            refusal = await asyncio.shield(
                asyncio.ensure_future(self._compensate(application, exc))
            )
            raise refusal from None

    async def _store_document(self, application: Application) -> str:
        pdf = licence_pdf(
            LicenceText(
                licence_id=application.licence_id,
                citizen_id=application.citizen_id,
                licence_type=application.licence_type,
                fee_pence=application.fee_pence,
                payment_id=application.payment_id,
                issued_on=self._clock().date(),
            )
        )
        stub = documents_pb2_grpc.DocumentsServiceStub(await self._channel())
        response: documents_pb2.CreateDocumentResponse = await stub.CreateDocument(
            documents_pb2.CreateDocumentRequest(
                owner=application.citizen_id,
                kind=documents_pb2.LICENCE,
                file=httpbody_pb2.HttpBody(content_type="application/pdf", data=pdf),
            )
        )
        return response.document_id

    async def _compensate(self, application: Application, failure: Exception) -> MeshError:
        """Refund the payment and record it (REFUNDED + LicenceRefused); the error to answer.
        If the refund itself fails the application stays PAID, for a retry to finish."""
        with inbound_scope(None):
            if isinstance(failure, grpc.aio.AioRpcError):
                error: MeshError = MeshError.from_rpc(failure)
                reason = f"documents: {error.message}"
            elif isinstance(failure, MeshError):
                error, reason = failure, failure.message
            else:
                log.error(
                    "issuing licence %s failed after payment",
                    application.licence_id,
                    exc_info=failure,
                )
                error, reason = Internal("internal error"), "internal error"
            reason = _one_line(reason)
            answer = type(error) if isinstance(error, _PASSED_ON) else Internal
            what = f"licence {application.licence_id} could not be issued ({reason})"
            if application.payment_id:
                refunded = await self._refund(application, reason)
                if refunded is not None:
                    return Unavailable(
                        f"{what} and refunding payment {application.payment_id} failed "
                        f"({refunded.message}); retry with the same idempotency key to finish "
                        "the application or refund it"
                    )
            self._store.refund(application, reason, self._clock())
            log.warning("%s; payment %r refunded", what, application.payment_id)
            if not application.payment_id:
                return answer(f"{what}; there was nothing to refund")
            return answer(f"{what}; payment {application.payment_id} was refunded")

    async def _refund(self, application: Application, reason: str) -> MeshError | None:
        """Refund the application's payment; the error if payments would not."""
        stub = payments_pb2_grpc.PaymentServiceStub(await self._channel())
        try:
            await stub.Refund(
                payments_pb2.RefundRequest(
                    payment_id=application.payment_id,
                    reason=_one_line(f"licence {application.licence_id} not issued: {reason}"),
                )
            )
        except grpc.aio.AioRpcError as exc:
            error = MeshError.from_rpc(exc)
            log.error("refunding payment %s failed: %s", application.payment_id, error.message)
            return error
        return None


def _word_problem(value: str, limit: int) -> str | None:
    """What is wrong with `value` as an id or key (one printable word of at most `limit`
    characters), or None."""
    if not value.strip():
        return "is required"
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    if not value.isprintable() or any(c.isspace() for c in value):
        return f"must be printable without spaces, got {value!r}"
    return None


def _validate_application(request: licensing_pb2.ApplyForLicenceRequest) -> None:
    """Raise InvalidArgument naming every missing or wrong field of `request`. The limits
    are what fees, payments and documents take, so that a bad field is refused here, before
    anything is recorded, rather than by a dependency halfway."""
    checks = [
        ("citizen_id", request.citizen_id, MAX_CITIZEN_ID_LENGTH),
        ("licence_type", request.licence_type, MAX_LICENCE_TYPE_LENGTH),
        ("idempotency_key", request.idempotency_key, MAX_KEY_LENGTH),
    ]
    problems = [
        (name, problem)
        for name, value, limit in checks
        if (problem := _word_problem(value, limit)) is not None
    ]
    if problems:
        raise InvalidArgument.fields(problems)


def _one_line(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """`text` as one printable line of at most `limit` characters (payments' refund reason)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _refusal(application: Application) -> FailedPrecondition:
    """The answer of an application that ended without a licence (DECLINED, REFUNDED)."""
    key = application.idempotency_key
    if application.state is State.DECLINED:
        return FailedPrecondition(
            f"the payment for licence application {key!r} was declined: "
            f"{application.reason}; no licence was issued"
        )
    if application.state is State.REFUNDED:
        return FailedPrecondition(
            f"licence application {key!r} was not issued ({application.reason}) and its "
            f"payment {application.payment_id or '(none)'} was refunded; apply again with a "
            "new idempotency key"
        )
    raise ValueError(f"application {application.licence_id} is {application.state}, not refused")


def _check_same_application(
    application: Application, request: licensing_pb2.ApplyForLicenceRequest
) -> None:
    """The same key must mean the same application: another citizen or type is a client
    reusing a key by mistake, answered ALREADY_EXISTS rather than another's licence."""
    if (application.citizen_id, application.licence_type) != (
        request.citizen_id,
        request.licence_type,
    ):
        # Which citizen or type holds the key is not said: it may be someone else's.
        raise AlreadyExists(
            f"idempotency key {request.idempotency_key!r} was already used for another "
            "application (another citizen or licence type); use a new key for a new application"
        )
