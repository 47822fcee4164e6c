"""gRPC handlers of hms.eligibility.v1.EligibilityService: validate, evaluate, answer.

Expected errors are raised as `mesh.errors` exceptions; the service host's error interceptor
turns them into the call's status, so handlers never touch `context.abort`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from hms.eligibility.v1 import eligibility_pb2, eligibility_pb2_grpc
from hms_services.eligibility.rules import (
    HOUSING,
    HOUSING_RULES,
    PASSPORT,
    RULES,
    RULES_BY_ID,
    Applicant,
    Rule,
    evaluate,
)
from mesh import InvalidArgument, NotFound

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["EligibilityService"]

_KNOWN_IDS = ", ".join(RULES_BY_ID)


class EligibilityService(eligibility_pb2_grpc.EligibilityServiceServicer):
    """Answers whether an applicant is eligible under the schemes' codified rules (stateless).

    Example::

        eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(EligibilityService(), server)
    """

    async def Check(
        self,
        request: eligibility_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[
            eligibility_pb2.CheckRequest, eligibility_pb2.CheckResponse
        ],
    ) -> eligibility_pb2.CheckResponse:
        if not request.applicant_id.strip():
            raise InvalidArgument.field("applicant_id", "is required")
        rules = _select_rules(request.rule_ids)
        applicant = _applicant(request, {rule.scheme for rule in rules})
        decision = evaluate(applicant, rules)
        return eligibility_pb2.CheckResponse(
            applicant_id=request.applicant_id,
            eligible=decision.eligible,
            reasons=[
                eligibility_pb2.Reason(rule_id=o.rule_id, passed=o.passed, message=o.message)
                for o in decision.outcomes
            ],
        )

    async def GetRule(
        self,
        request: eligibility_pb2.GetRuleRequest,
        context: grpc.aio.ServicerContext[
            eligibility_pb2.GetRuleRequest, eligibility_pb2.GetRuleResponse
        ],
    ) -> eligibility_pb2.GetRuleResponse:
        if not request.rule_id:
            raise InvalidArgument.field("rule_id", f"is required (known rules: {_KNOWN_IDS})")
        rule = RULES_BY_ID.get(request.rule_id)
        if rule is None:
            raise NotFound(f"rule {request.rule_id!r} not found (known rules: {_KNOWN_IDS})")
        return eligibility_pb2.GetRuleResponse(rule=_rule_pb(rule))

    async def ListRules(
        self,
        request: eligibility_pb2.ListRulesRequest,
        context: grpc.aio.ServicerContext[
            eligibility_pb2.ListRulesRequest, eligibility_pb2.ListRulesResponse
        ],
    ) -> eligibility_pb2.ListRulesResponse:
        return eligibility_pb2.ListRulesResponse(rules=[_rule_pb(r) for r in RULES])


def _applicant(request: eligibility_pb2.CheckRequest, schemes: set[str]) -> Applicant:
    """The facts of `request` that the rules of `schemes` read, validated; raises
    InvalidArgument naming the first bad field. The facts of other schemes are left out."""
    applicant = Applicant()
    if HOUSING in schemes:
        applicant = _housing_facts(request)
    if PASSPORT in schemes:
        if not request.HasField("months_to_passport_expiry"):
            passport_rules = ", ".join(r.rule_id for r in RULES if r.scheme == PASSPORT)
            raise InvalidArgument.field(
                "months_to_passport_expiry",
                f"is required by the passport rules ({passport_rules}): months until the "
                "passport expires, negative once it has expired",
            )
        applicant = replace(applicant, months_to_passport_expiry=request.months_to_passport_expiry)
    return applicant


def _housing_facts(request: eligibility_pb2.CheckRequest) -> Applicant:
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
    return Applicant(
        annual_income_pence=request.annual_income_pence,
        household_size=request.household_size,
        residence_months=request.residence_months,
    )


def _select_rules(rule_ids: Iterable[str]) -> tuple[Rule, ...]:
    """The rules named by `rule_ids`, in request order and once each; the housing scheme's
    rules when empty (what callers meant before there was another scheme)."""
    ids = list(rule_ids)
    if not ids:
        return HOUSING_RULES
    selected: dict[str, Rule] = {}
    for i, rule_id in enumerate(ids):
        rule = RULES_BY_ID.get(rule_id)
        if rule is None:
            raise InvalidArgument.field(
                f"rule_ids[{i}]", f"unknown rule {rule_id!r} (known rules: {_KNOWN_IDS})"
            )
        # A repeated id is applied once, so there is one reason per applied rule.
        selected.setdefault(rule_id, rule)
    return tuple(selected.values())


def _rule_pb(rule: Rule) -> eligibility_pb2.Rule:
    return eligibility_pb2.Rule(
        rule_id=rule.rule_id,
        description=rule.description,
        threshold=rule.threshold,
        unit=rule.unit,
        scheme=rule.scheme,
    )
