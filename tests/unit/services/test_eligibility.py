"""EligibilityService handlers and the codified rules, called directly (no server)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms.eligibility.v1 import eligibility_pb2
from hms_services.eligibility.rules import (
    HOUSING_RULES,
    RULES,
    RULES_BY_ID,
    format_pence,
    income_limit_pence,
)
from hms_services.eligibility.service import EligibilityService
from mesh.errors import InvalidArgument, NotFound
from mesh.testing import FakeContext

ALL_IDS = [r.rule_id for r in RULES]
HOUSING_IDS = [r.rule_id for r in HOUSING_RULES]
HOUSING_ONLY = ["MAX_INCOME", "MIN_RESIDENCE", "MAX_HOUSEHOLD"]
WINDOW = "PASSPORT_RENEWAL_WINDOW"


# The handlers use nothing of the context, and raise mesh errors rather than abort.
CONTEXT = FakeContext(allow_abort=False)


def check_request(**overrides: Any) -> eligibility_pb2.CheckRequest:
    """A valid, eligible applicant unless overridden."""
    fields: dict[str, Any] = {
        "applicant_id": "app-1",
        "annual_income_pence": 2_000_000,
        "household_size": 1,
        "residence_months": 24,
    }
    fields.update(overrides)
    return eligibility_pb2.CheckRequest(**fields)


async def check(**overrides: Any) -> eligibility_pb2.CheckResponse:
    return await EligibilityService().Check(check_request(**overrides), CONTEXT)


def reason(response: eligibility_pb2.CheckResponse, rule_id: str) -> eligibility_pb2.Reason:
    (found,) = [r for r in response.reasons if r.rule_id == rule_id]
    return found


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "also_mentions"),
    [
        pytest.param({"applicant_id": ""}, "applicant_id", [], id="applicant_id-missing"),
        pytest.param({"applicant_id": "  "}, "applicant_id", [], id="applicant_id-blank"),
        pytest.param(
            {"annual_income_pence": -1}, "annual_income_pence", ["-1"], id="income-negative"
        ),
        pytest.param({"household_size": 0}, "household_size", ["0"], id="household-zero"),
        pytest.param({"household_size": -3}, "household_size", ["-3"], id="household-negative"),
        pytest.param({"residence_months": -1}, "residence_months", ["-1"], id="residence-negative"),
        pytest.param(
            {"rule_ids": ["NOPE"]}, "rule_ids[0]", ["NOPE", *ALL_IDS], id="rule_ids-unknown-first"
        ),
        pytest.param(
            {"rule_ids": ["MAX_INCOME", "max_household"]},
            "rule_ids[1]",
            ["max_household", *ALL_IDS],
            id="rule_ids-unknown-second-case-sensitive",
        ),
        pytest.param(
            {"applicant_id": "", "household_size": 0},
            "applicant_id",
            [],
            id="first-problem-reported",
        ),
    ],
)
async def test_check_rejects_invalid_input(
    overrides: dict[str, Any], field: str, also_mentions: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await check(**overrides)
    assert [f for f, _ in caught.value.violations] == [field]
    assert caught.value.message.startswith(f"{field}: ")
    for text in also_mentions:
        assert text in caught.value.message


async def test_get_rule_without_id_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as caught:
        await EligibilityService().GetRule(eligibility_pb2.GetRuleRequest(), CONTEXT)
    assert [f for f, _ in caught.value.violations] == ["rule_id"]


async def test_get_rule_unknown_id_is_not_found_naming_it() -> None:
    with pytest.raises(NotFound, match="NO_SUCH_RULE"):
        await EligibilityService().GetRule(
            eligibility_pb2.GetRuleRequest(rule_id="NO_SUCH_RULE"), CONTEXT
        )


# --- decisions at the boundaries ----------------------------------------------------------


@pytest.mark.parametrize(
    ("income", "household", "passed"),
    [
        pytest.param(0, 1, True, id="no-income"),
        pytest.param(3_500_000, 1, True, id="one-person-exactly-at-limit"),
        pytest.param(3_500_001, 1, False, id="one-person-one-penny-over"),
        pytest.param(4_000_000, 2, True, id="two-people-exactly-at-limit"),
        pytest.param(4_000_001, 2, False, id="two-people-one-penny-over"),
        pytest.param(9_000_000, 12, True, id="twelve-people-exactly-at-limit"),
        pytest.param(9_000_001, 12, False, id="twelve-people-one-penny-over"),
    ],
)
async def test_max_income_scales_with_household(income: int, household: int, passed: bool) -> None:
    response = await check(
        annual_income_pence=income, household_size=household, rule_ids=["MAX_INCOME"]
    )
    assert reason(response, "MAX_INCOME").passed is passed
    assert response.eligible is passed


async def test_max_income_message_states_the_figures_in_pounds() -> None:
    response = await check(annual_income_pence=4_000_001, household_size=2)
    message = reason(response, "MAX_INCOME").message
    assert "£40,000.01" in message
    assert "£40,000.00" in message
    assert "2 people" in message


@pytest.mark.parametrize(
    ("months", "passed"),
    [
        pytest.param(0, False, id="none"),
        pytest.param(11, False, id="one-month-short"),
        pytest.param(12, True, id="exactly-twelve"),
        pytest.param(240, True, id="long"),
    ],
)
async def test_min_residence(months: int, passed: bool) -> None:
    response = await check(residence_months=months)
    outcome = reason(response, "MIN_RESIDENCE")
    assert outcome.passed is passed
    assert str(months) in outcome.message
    assert "12" in outcome.message


@pytest.mark.parametrize(
    ("size", "passed"),
    [
        pytest.param(1, True, id="one"),
        pytest.param(12, True, id="exactly-twelve"),
        pytest.param(13, False, id="thirteen"),
    ],
)
async def test_max_household(size: int, passed: bool) -> None:
    response = await check(household_size=size, rule_ids=["MAX_HOUSEHOLD"])
    assert reason(response, "MAX_HOUSEHOLD").passed is passed
    assert response.eligible is passed


async def test_the_housing_rules_apply_when_none_are_named() -> None:
    # Passport facts given too: still only the housing scheme, as before there were schemes.
    response = await check(months_to_passport_expiry=-100)
    assert [r.rule_id for r in response.reasons] == HOUSING_ONLY
    assert HOUSING_IDS == HOUSING_ONLY
    assert response.eligible
    assert response.applicant_id == "app-1"


async def test_one_failing_rule_makes_the_applicant_ineligible() -> None:
    response = await check(residence_months=3)
    assert not response.eligible
    assert [r.rule_id for r in response.reasons if not r.passed] == ["MIN_RESIDENCE"]


@pytest.mark.parametrize(
    ("rule_ids", "expected"),
    [
        pytest.param(["MIN_RESIDENCE"], ["MIN_RESIDENCE"], id="one"),
        pytest.param(
            ["MAX_HOUSEHOLD", "MAX_INCOME"], ["MAX_HOUSEHOLD", "MAX_INCOME"], id="request-order"
        ),
        pytest.param(["MAX_INCOME", "MAX_INCOME"], ["MAX_INCOME"], id="repeated-id-once"),
    ],
)
async def test_rule_ids_select_a_subset(rule_ids: list[str], expected: list[str]) -> None:
    # Income far over the limit: only the rules asked for decide.
    response = await check(annual_income_pence=10**12, rule_ids=rule_ids)
    assert [r.rule_id for r in response.reasons] == expected
    assert response.eligible is ("MAX_INCOME" not in expected)


# --- passport renewal window ------------------------------------------------------------


async def check_passport(months: int | None, **overrides: Any) -> eligibility_pb2.CheckResponse:
    """A passport check as passport makes it: no housing facts, one rule named."""
    fields: dict[str, Any] = {"applicant_id": "C12345", "rule_ids": [WINDOW]}
    if months is not None:
        fields["months_to_passport_expiry"] = months
    fields.update(overrides)
    return await EligibilityService().Check(eligibility_pb2.CheckRequest(**fields), CONTEXT)


@pytest.mark.parametrize(
    ("months", "passed", "mentions"),
    [
        pytest.param(120, False, ["expires in 120 months", "too early"], id="ten-years-left"),
        pytest.param(10, False, ["expires in 10 months", "too early"], id="one-month-too-early"),
        pytest.param(9, True, ["expires in 9 months", "within"], id="window-opens"),
        pytest.param(1, True, ["expires in 1 month:", "within"], id="one-month-left"),
        pytest.param(0, True, ["expires this month", "within"], id="expires-this-month"),
        pytest.param(-1, True, ["expired 1 month ago", "within"], id="just-expired"),
        pytest.param(-60, True, ["expired 60 months ago", "within"], id="window-closes"),
        pytest.param(-61, False, ["expired 61 months ago", "new passport"], id="one-month-late"),
        pytest.param(-600, False, ["expired 600 months ago", "new passport"], id="long-lapsed"),
    ],
)
async def test_passport_renewal_window(months: int, passed: bool, mentions: list[str]) -> None:
    response = await check_passport(months)
    assert [r.rule_id for r in response.reasons] == [WINDOW]
    assert response.eligible is passed
    outcome = reason(response, WINDOW)
    assert outcome.passed is passed
    for text in mentions:
        assert text in outcome.message
    assert "9 months before expiry until 60 months after" in outcome.message


async def test_a_passport_check_needs_the_months_to_expiry() -> None:
    with pytest.raises(InvalidArgument) as caught:
        await check_passport(None)
    assert [f for f, _ in caught.value.violations] == ["months_to_passport_expiry"]
    assert WINDOW in caught.value.message


async def test_a_passport_check_reads_no_housing_facts() -> None:
    # household_size 0 and a negative income would be refused by a housing check.
    response = await check_passport(3, household_size=0, annual_income_pence=-5)
    assert response.eligible


async def test_a_housing_check_needs_no_passport_facts() -> None:
    response = await check(rule_ids=["MAX_INCOME"])
    assert response.eligible
    assert [r.rule_id for r in response.reasons] == ["MAX_INCOME"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({}, "months_to_passport_expiry", id="passport-fact-missing"),
        pytest.param(
            {"months_to_passport_expiry": 3, "household_size": 0},
            "household_size",
            id="housing-fact-wrong",
        ),
    ],
)
async def test_rules_of_two_schemes_need_the_facts_of_both(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await check(rule_ids=["MAX_INCOME", WINDOW], **overrides)
    assert [f for f, _ in caught.value.violations] == [field]


async def test_rules_of_two_schemes_decide_together() -> None:
    response = await check(rule_ids=[WINDOW, "MAX_INCOME"], months_to_passport_expiry=-61)
    assert [(r.rule_id, r.passed) for r in response.reasons] == [
        (WINDOW, False),
        ("MAX_INCOME", True),
    ]
    assert not response.eligible


# --- rule catalogue -----------------------------------------------------------------------


async def test_list_rules_returns_every_rule_of_every_scheme_in_order() -> None:
    response = await EligibilityService().ListRules(eligibility_pb2.ListRulesRequest(), CONTEXT)
    assert [(r.rule_id, r.scheme, r.threshold, r.unit) for r in response.rules] == [
        ("MAX_INCOME", "HOUSING", 3_500_000, "pence"),
        ("MIN_RESIDENCE", "HOUSING", 12, "months"),
        ("MAX_HOUSEHOLD", "HOUSING", 12, "people"),
        (WINDOW, "PASSPORT", 9, "months before expiry"),
    ]
    assert all(r.description for r in response.rules)


@pytest.mark.parametrize("rule_id", [pytest.param(i, id=i) for i in ALL_IDS])
async def test_get_rule_returns_the_rule(rule_id: str) -> None:
    response = await EligibilityService().GetRule(
        eligibility_pb2.GetRuleRequest(rule_id=rule_id), CONTEXT
    )
    assert response.rule.rule_id == rule_id
    assert response.rule.threshold == RULES_BY_ID[rule_id].threshold
    assert response.rule.scheme == RULES_BY_ID[rule_id].scheme


@pytest.mark.parametrize(
    ("pence", "text"),
    [
        pytest.param(0, "£0.00", id="zero"),
        pytest.param(5, "£0.05", id="pennies"),
        pytest.param(3_500_000, "£35,000.00", id="limit"),
        pytest.param(3_500_001, "£35,000.01", id="limit-plus-one"),
        pytest.param(123_456_789_01, "£123,456,789.01", id="large"),
        pytest.param(-150, "-£1.50", id="negative"),
    ],
)
def test_format_pence(pence: int, text: str) -> None:
    assert format_pence(pence) == text


@pytest.mark.parametrize(
    ("size", "limit"),
    [
        pytest.param(1, 3_500_000, id="one"),
        pytest.param(2, 4_000_000, id="two"),
        pytest.param(5, 5_500_000, id="five"),
    ],
)
def test_income_limit_pence(size: int, limit: int) -> None:
    assert income_limit_pence(size) == limit


# --- properties ---------------------------------------------------------------------------

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

INT32_MIN = -(2**31)

valid_requests = st.builds(
    eligibility_pb2.CheckRequest,
    applicant_id=st.text(min_size=1).filter(lambda s: s.strip() != ""),
    annual_income_pence=st.integers(0, INT64_MAX),
    household_size=st.integers(1, INT32_MAX),
    residence_months=st.integers(0, INT32_MAX),
    rule_ids=st.lists(st.sampled_from(ALL_IDS), max_size=5),
    months_to_passport_expiry=st.integers(INT32_MIN, INT32_MAX),
)


@given(request=valid_requests)
async def test_check_decides_every_valid_request(request: eligibility_pb2.CheckRequest) -> None:
    response = await EligibilityService().Check(request, CONTEXT)
    applied = list(dict.fromkeys(request.rule_ids)) or HOUSING_IDS
    assert [r.rule_id for r in response.reasons] == applied
    assert response.eligible == all(r.passed for r in response.reasons)
    assert all(r.message for r in response.reasons)
    assert response.applicant_id == request.applicant_id


@given(months=st.integers(INT32_MIN, INT32_MAX))
async def test_the_renewal_window_is_nine_months_before_to_sixty_after(months: int) -> None:
    response = await check_passport(months)
    assert response.eligible is (-60 <= months <= 9)
