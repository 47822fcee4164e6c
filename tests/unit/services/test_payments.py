"""PaymentService handlers and the payment store (a real SQLite file and its outbox under
tmp_path): every bad input refused with its field, one payment per idempotency key (also
under concurrent writers on separate connections), declined payers, refunds, and each change's
event written in the same transaction as the row."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from hms.payments.v1 import payments_pb2
from hms_services.payments.service import PaymentService
from hms_services.payments.store import PAYER_DECLINED, Charge, Payment, PaymentStore
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mesh.events import Outbox
from mesh.testing import FakeContext

CONTEXT = FakeContext(allow_abort=False)
FLAGGED = "C99999"


def counting_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"pay-{next(counter):04d}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "payments.sqlite3"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    box = Outbox(db)
    yield box
    box.close()


@pytest.fixture
def store(db: Path) -> Iterator[PaymentStore]:
    with PaymentStore(db) as s:
        yield s


@pytest.fixture
def service(store: PaymentStore, outbox: Outbox) -> PaymentService:
    return PaymentService(store, outbox, new_id=counting_ids())


def charge_request(**overrides: Any) -> payments_pb2.ChargeRequest:
    fields: dict[str, Any] = {
        "idempotency_key": "licence-LIC-1-fee",
        "payer_id": "C12345",
        "amount_pence": 3400,
        "reference": "LIC-1",
    }
    fields.update(overrides)
    return payments_pb2.ChargeRequest(**fields)


def events(db: Path) -> list[tuple[str, str, bytes]]:
    """(type, aggregate, payload) of every event in the outbox, in order."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, aggregate, payload FROM outbox ORDER BY seq").fetchall()
    return [(kind, aggregate, bytes(payload)) for kind, aggregate, payload in rows]


def payment_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM payments").fetchone()
    return int(count)


# --- Charge: what is refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "mentions"),
    [
        pytest.param({"idempotency_key": ""}, "idempotency_key", "is required", id="key-missing"),
        pytest.param({"idempotency_key": "a key"}, "idempotency_key", "spaces", id="key-space"),
        pytest.param(
            {"idempotency_key": "k" * 129}, "idempotency_key", "at most 128", id="key-too-long"
        ),
        pytest.param({"payer_id": ""}, "payer_id", "is required", id="payer-missing"),
        pytest.param({"payer_id": "C1\t"}, "payer_id", "spaces", id="payer-tab"),
        pytest.param({"payer_id": "C1\x7f"}, "payer_id", "printable", id="payer-control"),
        pytest.param({"amount_pence": 0}, "amount_pence", "more than 0, got 0", id="amount-zero"),
        pytest.param(
            {"amount_pence": -3400}, "amount_pence", "more than 0, got -3400", id="amount-negative"
        ),
        pytest.param({"reference": "LIC-1\nLIC-2"}, "reference", "spaces", id="reference-newline"),
        pytest.param({"reference": "r" * 129}, "reference", "at most 128", id="reference-long"),
    ],
)
async def test_charge_refuses_bad_input_and_writes_nothing(
    service: PaymentService, db: Path, overrides: dict[str, Any], field: str, mentions: str
) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await service.Charge(charge_request(**overrides), CONTEXT)
    [(named, description)] = bad.value.violations
    assert named == field
    assert mentions in description
    assert payment_count(db) == 0
    assert events(db) == []


async def test_a_flagged_payer_is_declined_naming_the_reason(
    service: PaymentService, db: Path
) -> None:
    with pytest.raises(FailedPrecondition) as declined:
        await service.Charge(charge_request(payer_id=FLAGGED), CONTEXT)
    assert str(declined.value) == (
        f"payer '{FLAGGED}' is declined: the card issuer reported the card stolen"
    )
    info = declined.value.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["payer_id"]) == (PAYER_DECLINED, FLAGGED)
    assert payment_count(db) == 0
    assert events(db) == []


# --- Charge: once per key -----------------------------------------------------------------------


async def test_the_same_key_answers_the_same_payment_and_publishes_once(
    service: PaymentService, db: Path
) -> None:
    first = await service.Charge(charge_request(), CONTEXT)
    again = await service.Charge(charge_request(), CONTEXT)
    assert first == again
    assert first.payment == payments_pb2.Payment(
        payment_id="pay-0001",
        payer_id="C12345",
        amount_pence=3400,
        status=payments_pb2.PAYMENT_STATUS_CAPTURED,
        idempotency_key="licence-LIC-1-fee",
        reference="LIC-1",
    )
    [(kind, aggregate, payload)] = events(db)
    assert (kind, aggregate) == ("hms.payments.v1.PaymentCaptured", "LIC-1")
    assert payments_pb2.PaymentCaptured.FromString(payload).payment == first.payment


@pytest.mark.parametrize(
    ("overrides", "differs"),
    [
        pytest.param({"payer_id": "C67890"}, "payer_id", id="another-payer"),
        pytest.param({"amount_pence": 3401}, "amount_pence", id="another-amount"),
        pytest.param({"reference": "LIC-2"}, "reference", id="another-reference"),
        pytest.param(
            {"payer_id": "C67890", "amount_pence": 1}, "payer_id and amount_pence", id="both"
        ),
        # A declined payer reusing someone's key: the key's conflict is the answer.
        pytest.param({"payer_id": FLAGGED}, "payer_id", id="flagged-payer-on-a-taken-key"),
    ],
)
async def test_the_same_key_for_another_payment_is_already_exists_naming_the_key(
    service: PaymentService, db: Path, overrides: dict[str, Any], differs: str
) -> None:
    await service.Charge(charge_request(), CONTEXT)
    with pytest.raises(AlreadyExists) as taken:
        await service.Charge(charge_request(**overrides), CONTEXT)
    assert str(taken.value) == (
        f"idempotency key 'licence-LIC-1-fee' already took payment 'pay-0001' with another "
        f"{differs}; a new payment needs a new key"
    )
    assert payment_count(db) == 1
    assert len(events(db)) == 1


async def test_a_payer_flagged_after_paying_still_gets_the_payment_on_retry(
    service: PaymentService, store: PaymentStore
) -> None:
    first = await service.Charge(charge_request(payer_id="C55555"), CONTEXT)
    store.flag("C55555", "chargeback")
    assert await service.Charge(charge_request(payer_id="C55555"), CONTEXT) == first
    with pytest.raises(FailedPrecondition, match="is declined: chargeback"):
        await service.Charge(charge_request(payer_id="C55555", idempotency_key="k2"), CONTEXT)


async def test_without_a_reference_the_payment_id_is_the_aggregate(
    service: PaymentService, db: Path
) -> None:
    charged = await service.Charge(charge_request(reference=""), CONTEXT)
    [(_, aggregate, _)] = events(db)
    assert aggregate == charged.payment.payment_id == "pay-0001"


def test_concurrent_charges_with_one_key_on_separate_connections_take_one_payment(
    db: Path, outbox: Outbox
) -> None:
    writers = 8
    stores = [PaymentStore(db) for _ in range(writers)]

    def take(n: int) -> Payment:
        def captured(conn: sqlite3.Connection, payment: Payment) -> None:
            outbox.add(conn, payments_pb2.PaymentCaptured(), aggregate=payment.payment_id)

        charge = Charge("same-key", "C12345", 3400, "LIC-9")
        return stores[n % writers].charge(charge, f"pay-{n}", on_captured=captured)

    try:
        with ThreadPoolExecutor(writers) as pool:
            taken = list(pool.map(take, range(64)))
    finally:
        for s in stores:
            s.close()
    assert len({p.payment_id for p in taken}) == 1
    assert payment_count(db) == 1
    assert len(events(db)) == 1


def test_a_failed_event_write_leaves_no_payment(store: PaymentStore, db: Path) -> None:
    def broken(conn: sqlite3.Connection, payment: Payment) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        store.charge(Charge("k1", "C12345", 100), "pay-1", on_captured=broken)
    assert payment_count(db) == 0
    # The key is still free: the retry takes the payment.
    assert store.charge(Charge("k1", "C12345", 100), "pay-2").payment_id == "pay-2"


@settings(max_examples=40, deadline=None)
@given(
    charges=st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2", "k3"]),
            st.sampled_from(["C1", "C2", FLAGGED]),
            st.integers(min_value=1, max_value=3),
        ),
        max_size=25,
    )
)
async def test_any_sequence_of_charges_keeps_one_payment_and_one_event_per_key(
    charges: list[tuple[str, str, int]],
) -> None:
    with tempfile.TemporaryDirectory() as root:
        db = Path(root) / "payments.sqlite3"
        box = Outbox(db)
        with PaymentStore(db) as store:
            service = PaymentService(store, box, new_id=counting_ids())
            first_taken: dict[str, payments_pb2.Payment] = {}
            for key, payer, amount in charges:
                request = charge_request(idempotency_key=key, payer_id=payer, amount_pence=amount)
                taken = first_taken.get(key)
                if taken is not None and (taken.payer_id, taken.amount_pence) != (payer, amount):
                    with pytest.raises(AlreadyExists, match=f"idempotency key '{key}'"):
                        await service.Charge(request, CONTEXT)
                elif taken is None and payer == FLAGGED:
                    with pytest.raises(FailedPrecondition):
                        await service.Charge(request, CONTEXT)
                else:
                    answer = await service.Charge(request, CONTEXT)
                    assert first_taken.setdefault(key, answer.payment) == answer.payment
        box.close()
        assert payment_count(db) == len(first_taken)
        captured = [payments_pb2.PaymentCaptured.FromString(p).payment for _, _, p in events(db)]
        assert sorted(captured, key=str) == sorted(first_taken.values(), key=str)


# --- Refund -------------------------------------------------------------------------------------


async def test_refund_gives_the_payment_back_once_with_its_event(
    service: PaymentService, db: Path
) -> None:
    charged = await service.Charge(charge_request(), CONTEXT)
    request = payments_pb2.RefundRequest(
        payment_id=charged.payment.payment_id, reason="licence refused: not qualified"
    )
    refunded = await service.Refund(request, CONTEXT)
    assert refunded.payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert await service.Refund(request, CONTEXT) == refunded  # idempotent: no second event
    assert [(kind, aggregate) for kind, aggregate, _ in events(db)] == [
        ("hms.payments.v1.PaymentCaptured", "LIC-1"),
        ("hms.payments.v1.PaymentRefunded", "LIC-1"),
    ]
    event = payments_pb2.PaymentRefunded.FromString(events(db)[1][2])
    assert (event.payment, event.reason) == (refunded.payment, "licence refused: not qualified")
    got = await service.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=charged.payment.payment_id), CONTEXT
    )
    assert got.payment == refunded.payment
    # A refunded key is still that key's payment: a retried charge does not charge again.
    assert (await service.Charge(charge_request(), CONTEXT)).payment == refunded.payment


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        pytest.param(
            payments_pb2.RefundRequest(payment_id="pay-404"),
            NotFound,
            "payment 'pay-404' not found",
            id="unknown-payment",
        ),
        pytest.param(
            payments_pb2.RefundRequest(),
            InvalidArgument,
            "payment_id: is required",
            id="payment-id-missing",
        ),
        pytest.param(
            payments_pb2.RefundRequest(payment_id="pay-0001", reason="one\ntwo"),
            InvalidArgument,
            "reason: must be one printable line",
            id="reason-two-lines",
        ),
        pytest.param(
            payments_pb2.RefundRequest(payment_id="pay-0001", reason="x" * 501),
            InvalidArgument,
            "reason: must be one printable line of at most 500",
            id="reason-too-long",
        ),
    ],
)
async def test_refund_refuses_what_it_cannot_refund(
    service: PaymentService,
    db: Path,
    request_: payments_pb2.RefundRequest,
    error: type[Exception],
    message: str,
) -> None:
    await service.Charge(charge_request(), CONTEXT)
    with pytest.raises(error, match=message):
        await service.Refund(request_, CONTEXT)
    assert len(events(db)) == 1  # only the capture


@pytest.mark.parametrize(
    ("payment_id", "error"),
    [
        pytest.param("", InvalidArgument, id="missing"),
        pytest.param("pay-404", NotFound, id="unknown"),
    ],
)
async def test_get_payment_that_is_not_there(
    service: PaymentService, payment_id: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await service.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id), CONTEXT)
