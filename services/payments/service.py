"""gRPC handlers of hms.payments.v1.PaymentService: validate, take or refund in the store
with the event in the same transaction (the outbox), answer.

Every change publishes an event through the outbox, its aggregate the payment's `reference`
(the licence or application it pays for, so audit lists the charge and its compensation under
that case) or, without one, the payment id.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from hms.payments.v1 import payments_pb2, payments_pb2_grpc
from hms_services.payments.store import Charge, Payment, PaymentStore
from mesh import InvalidArgument, NotFound
from mesh.events import Outbox

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["PaymentService"]

_MAX_ID_CHARS = 128
_MAX_REASON_CHARS = 500


def _new_id() -> str:
    return uuid.uuid4().hex


class PaymentService(payments_pb2_grpc.PaymentServiceServicer):
    """Takes payments once per idempotency key and refunds them (see the module docstring).

    Example::

        db = data_dir / "payments.sqlite3"
        PaymentService(PaymentStore(db), runtime.outbox(db))
    """

    def __init__(
        self, store: PaymentStore, outbox: Outbox, *, new_id: Callable[[], str] = _new_id
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._new_id = new_id

    async def Charge(
        self,
        request: payments_pb2.ChargeRequest,
        context: grpc.aio.ServicerContext[payments_pb2.ChargeRequest, payments_pb2.ChargeResponse],
    ) -> payments_pb2.ChargeResponse:
        _check_word("idempotency_key", request.idempotency_key, required=True)
        _check_word("payer_id", request.payer_id, required=True)
        if request.amount_pence <= 0:
            raise InvalidArgument.field(
                "amount_pence", f"must be more than 0, got {request.amount_pence}"
            )
        _check_word("reference", request.reference, required=False)

        def captured(conn: sqlite3.Connection, payment: Payment) -> None:
            event = payments_pb2.PaymentCaptured(payment=_payment_pb(payment))
            self._outbox.add(conn, event, aggregate=_aggregate(payment))

        charge = Charge(
            request.idempotency_key, request.payer_id, request.amount_pence, request.reference
        )
        payment = self._store.charge(charge, self._new_id(), on_captured=captured)
        return payments_pb2.ChargeResponse(payment=_payment_pb(payment))

    async def Refund(
        self,
        request: payments_pb2.RefundRequest,
        context: grpc.aio.ServicerContext[payments_pb2.RefundRequest, payments_pb2.RefundResponse],
    ) -> payments_pb2.RefundResponse:
        _check_word("payment_id", request.payment_id, required=True)
        reason = request.reason.strip()
        if len(reason) > _MAX_REASON_CHARS or not reason.isprintable():
            raise InvalidArgument.field(
                "reason", f"must be one printable line of at most {_MAX_REASON_CHARS} characters"
            )

        def refunded(conn: sqlite3.Connection, payment: Payment) -> None:
            event = payments_pb2.PaymentRefunded(payment=_payment_pb(payment), reason=reason)
            self._outbox.add(conn, event, aggregate=_aggregate(payment))

        payment = self._store.refund(request.payment_id, reason, on_refunded=refunded)
        return payments_pb2.RefundResponse(payment=_payment_pb(payment))

    async def GetPayment(
        self,
        request: payments_pb2.GetPaymentRequest,
        context: grpc.aio.ServicerContext[
            payments_pb2.GetPaymentRequest, payments_pb2.GetPaymentResponse
        ],
    ) -> payments_pb2.GetPaymentResponse:
        _check_word("payment_id", request.payment_id, required=True)
        payment = self._store.get(request.payment_id)
        if payment is None:
            raise NotFound(f"payment {request.payment_id!r} not found")
        return payments_pb2.GetPaymentResponse(payment=_payment_pb(payment))


def _check_word(field: str, value: str, *, required: bool) -> None:
    """An id, key or reference: one printable word of at most 128 characters."""
    if not value:
        if required:
            raise InvalidArgument.field(field, "is required")
        return
    if len(value) > _MAX_ID_CHARS:
        raise InvalidArgument.field(
            field, f"must be at most {_MAX_ID_CHARS} characters, got {len(value)}"
        )
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidArgument.field(
            field, f"must be printable without spaces, got {value[:_MAX_ID_CHARS]!r}"
        )


def _aggregate(payment: Payment) -> str:
    return payment.reference or payment.payment_id


def _payment_pb(payment: Payment) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        payment_id=payment.payment_id,
        payer_id=payment.payer_id,
        amount_pence=payment.amount_pence,
        status=cast("payments_pb2.PaymentStatus", payment.status),
        idempotency_key=payment.idempotency_key,
        reference=payment.reference,
    )
