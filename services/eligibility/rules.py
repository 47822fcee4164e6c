"""The schemes' codified eligibility rules, as data, and their pure evaluation.

Each rule belongs to one scheme, and reads only that scheme's facts of the `Applicant`:

    HOUSING   MAX_INCOME, MIN_RESIDENCE, MAX_HOUSEHOLD   income, household size, residence
    PASSPORT  PASSPORT_RENEWAL_WINDOW                    months to the passport's expiry

No I/O and no gRPC here: the service validates a request (the facts of the schemes it
applies), builds an `Applicant`, picks the rules and calls `evaluate`.

>>> decision = evaluate(Applicant(3_500_000, 1, 12), HOUSING_RULES)
>>> decision.eligible, [o.rule_id for o in decision.outcomes]
(True, ['MAX_INCOME', 'MIN_RESIDENCE', 'MAX_HOUSEHOLD'])
>>> window = RULES_BY_ID["PASSPORT_RENEWAL_WINDOW"]
>>> evaluate(Applicant(months_to_passport_expiry=-61), [window]).eligible
False
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "HOUSING",
    "HOUSING_RULES",
    "INCOME_ALLOWANCE_PER_EXTRA_MEMBER_PENCE",
    "INCOME_LIMIT_PENCE",
    "MAX_HOUSEHOLD_SIZE",
    "MIN_RESIDENCE_MONTHS",
    "PASSPORT",
    "RENEWAL_MONTHS_AFTER_EXPIRY",
    "RENEWAL_MONTHS_BEFORE_EXPIRY",
    "RULES",
    "RULES_BY_ID",
    "Applicant",
    "Decision",
    "Outcome",
    "Rule",
    "evaluate",
    "format_pence",
    "income_limit_pence",
]

# Money is always int pence: floats cannot hold 0.10 exactly.
INCOME_LIMIT_PENCE = 3_500_000  # £35,000 for a household of one
INCOME_ALLOWANCE_PER_EXTRA_MEMBER_PENCE = 500_000  # +£5,000 per member after the first
MIN_RESIDENCE_MONTHS = 12
MAX_HOUSEHOLD_SIZE = 12
# A passport can be renewed from 9 months before it expires until 60 months after; one that
# expired longer ago needs a new application.
RENEWAL_MONTHS_BEFORE_EXPIRY = 9
RENEWAL_MONTHS_AFTER_EXPIRY = 60

HOUSING = "HOUSING"
PASSPORT = "PASSPORT"


@dataclass(frozen=True, slots=True)
class Applicant:
    """The facts the rules look at; the service has already validated those of the schemes it
    applies. The housing facts default to a household of one with nothing declared, which no
    passport rule reads; `months_to_passport_expiry` is None when not given."""

    annual_income_pence: int = 0
    household_size: int = 1
    residence_months: int = 0
    months_to_passport_expiry: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one rule for one applicant, with the figures compared."""

    rule_id: str
    passed: bool
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Eligible when every applied rule passed; one outcome per rule, in the order applied."""

    outcomes: tuple[Outcome, ...]

    @property
    def eligible(self) -> bool:
        return all(o.passed for o in self.outcomes)


@dataclass(frozen=True, slots=True)
class Rule:
    """One codified rule: what the API shows (id, description, threshold, unit) and its check."""

    rule_id: str
    scheme: str
    description: str
    threshold: int
    unit: str
    check: Callable[[Applicant], Outcome] = field(repr=False, compare=False)


def format_pence(pence: int) -> str:
    """Pounds with thousands separators, computed in integers: `format_pence(3500001)` is
    '£35,000.01'."""
    sign = "-" if pence < 0 else ""
    pounds, rest = divmod(abs(pence), 100)
    return f"{sign}£{pounds:,}.{rest:02d}"


def income_limit_pence(household_size: int) -> int:
    """The income limit for a household of `household_size` (at least 1) people."""
    return INCOME_LIMIT_PENCE + INCOME_ALLOWANCE_PER_EXTRA_MEMBER_PENCE * (household_size - 1)


def _people(n: int) -> str:
    return f"{n} person" if n == 1 else f"{n} people"


def _check_income(a: Applicant) -> Outcome:
    limit = income_limit_pence(a.household_size)
    income, cap = format_pence(a.annual_income_pence), format_pence(limit)
    household = _people(a.household_size)
    if a.annual_income_pence <= limit:
        message = f"annual household income {income} is within the limit of {cap} for {household}"
        return Outcome("MAX_INCOME", True, message)
    message = f"annual household income {income} exceeds the limit of {cap} for {household}"
    return Outcome("MAX_INCOME", False, message)


def _check_residence(a: Applicant) -> Outcome:
    months, minimum = a.residence_months, MIN_RESIDENCE_MONTHS
    if months >= minimum:
        message = f"{months} months at the current address meets the minimum of {minimum}"
        return Outcome("MIN_RESIDENCE", True, message)
    message = f"{months} months at the current address is below the minimum of {minimum}"
    return Outcome("MIN_RESIDENCE", False, message)


def _check_household(a: Applicant) -> Outcome:
    size, maximum = _people(a.household_size), _people(MAX_HOUSEHOLD_SIZE)
    if a.household_size <= MAX_HOUSEHOLD_SIZE:
        return Outcome(
            "MAX_HOUSEHOLD", True, f"household of {size} is within the maximum of {maximum}"
        )
    return Outcome("MAX_HOUSEHOLD", False, f"household of {size} exceeds the maximum of {maximum}")


def _months(n: int) -> str:
    return f"{n} month" if n == 1 else f"{n} months"


def _check_renewal_window(a: Applicant) -> Outcome:
    months = a.months_to_passport_expiry
    if months is None:  # the service requires the fact before applying a passport rule
        raise ValueError("PASSPORT_RENEWAL_WINDOW needs months_to_passport_expiry")
    before, after = RENEWAL_MONTHS_BEFORE_EXPIRY, RENEWAL_MONTHS_AFTER_EXPIRY
    window = f"from {_months(before)} before expiry until {_months(after)} after"
    if months > 0:
        when = f"the passport expires in {_months(months)}"
    elif months == 0:
        when = "the passport expires this month"
    else:
        when = f"the passport expired {_months(-months)} ago"
    if months > before:
        return Outcome(
            "PASSPORT_RENEWAL_WINDOW",
            False,
            f"{when}: too early to renew; renewal is open {window}",
        )
    if months < -after:
        return Outcome(
            "PASSPORT_RENEWAL_WINDOW",
            False,
            f"{when}: past the renewal window ({window}); apply for a new passport instead",
        )
    return Outcome("PASSPORT_RENEWAL_WINDOW", True, f"{when}: within the renewal window ({window})")


# The order here is the order of ListRules; the housing rules' order is that of the reasons
# when a request names no rules.
RULES: tuple[Rule, ...] = (
    Rule(
        rule_id="MAX_INCOME",
        scheme=HOUSING,
        description=(
            "Annual household income must not exceed £35,000, plus £5,000 for each household "
            "member after the first."
        ),
        threshold=INCOME_LIMIT_PENCE,
        unit="pence",
        check=_check_income,
    ),
    Rule(
        rule_id="MIN_RESIDENCE",
        scheme=HOUSING,
        description="The applicant must have lived at the current address for at least 12 months.",
        threshold=MIN_RESIDENCE_MONTHS,
        unit="months",
        check=_check_residence,
    ),
    Rule(
        rule_id="MAX_HOUSEHOLD",
        scheme=HOUSING,
        description="The household must have at most 12 people, the applicant included.",
        threshold=MAX_HOUSEHOLD_SIZE,
        unit="people",
        check=_check_household,
    ),
    Rule(
        rule_id="PASSPORT_RENEWAL_WINDOW",
        scheme=PASSPORT,
        description=(
            "A passport can be renewed from 9 months before it expires until 60 months after; "
            "one that expired longer ago needs a new application, not a renewal."
        ),
        threshold=RENEWAL_MONTHS_BEFORE_EXPIRY,
        unit="months before expiry",
        check=_check_renewal_window,
    ),
)

RULES_BY_ID: Mapping[str, Rule] = MappingProxyType({r.rule_id: r for r in RULES})
#: What a request that names no rules applies: the housing scheme, the only one there was
#: when `rule_ids` was introduced (hms.eligibility.v1.CheckRequest).
HOUSING_RULES: tuple[Rule, ...] = tuple(r for r in RULES if r.scheme == HOUSING)


def evaluate(applicant: Applicant, rules: Iterable[Rule]) -> Decision:
    """Apply `rules` to `applicant`, one outcome per rule, in the order given."""
    return Decision(tuple(rule.check(applicant) for rule in rules))
