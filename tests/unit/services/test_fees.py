"""FeeService handlers, called directly (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms.fees.v1 import fees_pb2
from hms_services.fees.service import FEES_PENCE, FeeService
from mesh.errors import InvalidArgument
from mesh.testing import FakeContext

# The handler uses nothing of the context, and raises mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)
KNOWN = sorted(FEES_PENCE)


async def calculate(licence_type: str) -> fees_pb2.CalculateFeeResponse:
    return await FeeService().CalculateFee(
        fees_pb2.CalculateFeeRequest(licence_type=licence_type), CONTEXT
    )


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("licence_type", "problem"),
    [
        pytest.param("", "is required", id="missing"),
        pytest.param("  ", "is required", id="blank"),
        pytest.param("FISHING", "unknown licence type 'FISHING'", id="unknown"),
        pytest.param("street_trading", "'street_trading'", id="case-sensitive"),
        pytest.param(" STREET_TRADING", "' STREET_TRADING'", id="leading-space"),
        pytest.param("STREET-TRADING", "'STREET-TRADING'", id="hyphen"),
        pytest.param("STREET_TRADING\n", "'STREET_TRADING\\n'", id="trailing-newline"),
    ],
)
async def test_calculate_rejects_a_missing_or_unknown_type(licence_type: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await calculate(licence_type)
    [(field, description)] = caught.value.violations
    assert field == "licence_type"
    assert problem in description
    # Names the types that are known, so the caller can pick one.
    for known in KNOWN:
        assert known in description
    assert caught.value.message.startswith("licence_type: ")


async def test_a_huge_type_is_refused_without_repeating_it() -> None:
    with pytest.raises(InvalidArgument) as caught:
        await calculate("Z" * 100_000)
    assert [f for f, _ in caught.value.violations] == ["licence_type"]
    assert "100000 characters" in caught.value.message
    assert len(caught.value.message) < 400


# --- the fee table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("licence_type", "amount_pence"),
    [
        pytest.param("STREET_TRADING", 45_000, id="street-trading"),
        pytest.param("TAXI_DRIVER", 22_000, id="taxi-driver"),
        pytest.param("TAXI_VEHICLE", 26_500, id="taxi-vehicle"),
        pytest.param("ALCOHOL_PREMISES", 19_000, id="alcohol-premises"),
        pytest.param("PERSONAL_ALCOHOL", 3_700, id="personal-alcohol"),
        pytest.param("FOOD_BUSINESS", 7_500, id="food-business"),
    ],
)
async def test_calculate_answers_the_fee(licence_type: str, amount_pence: int) -> None:
    response = await calculate(licence_type)
    assert (response.licence_type, response.amount_pence) == (licence_type, amount_pence)


def test_every_fee_is_a_positive_whole_number_of_pence() -> None:
    assert KNOWN  # the table is not empty
    for licence_type, amount in FEES_PENCE.items():
        assert type(amount) is int, licence_type
        assert amount > 0, licence_type


async def test_another_fee_table_is_used_as_given() -> None:
    service = FeeService({"KENNEL": 1})
    response = await service.CalculateFee(
        fees_pb2.CalculateFeeRequest(licence_type="KENNEL"), CONTEXT
    )
    assert response.amount_pence == 1
    with pytest.raises(InvalidArgument, match=r"known types: KENNEL$"):
        await service.CalculateFee(
            fees_pb2.CalculateFeeRequest(licence_type="STREET_TRADING"), CONTEXT
        )


@given(licence_type=st.text(max_size=30) | st.sampled_from(KNOWN))
async def test_any_text_is_a_fee_or_refused_naming_the_field(licence_type: str) -> None:
    if licence_type in FEES_PENCE:
        response = await calculate(licence_type)
        assert response.amount_pence == FEES_PENCE[licence_type]
        return
    with pytest.raises(InvalidArgument) as caught:
        await calculate(licence_type)
    assert [f for f, _ in caught.value.violations] == ["licence_type"]
