"""Authorization policy: parsing (each mistake named), evaluation order, wildcards, callers
without identity, audit mode, health always allowed; decide() total over arbitrary input.
Failing closed: a document that does not say what it allows is refused, and no prefix of an
allow-list (a file cut short) allows more than the whole file."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mesh.authz
from mesh.authz import Action, Decision, Mode, Policy, PolicyError, Rule, load_policy

GATEWAY = "spiffe://hms.local/svc/gateway"
OPS = "spiffe://hms.local/svc/ops"
ELIGIBILITY = "spiffe://hms.local/svc/eligibility"
OUTSIDER = "spiffe://other.domain/svc/ops"
SEND = "/hms.notify.v1.NotifyService/Send"
LIST = "/hms.notify.v1.NotifyService/List"
CHECK = "/hms.eligibility.v1.EligibilityService/Check"
FEES = "/hms.fees.v1.FeeService/Calculate"

EXAMPLE = f"""
mode = "enforce"

[[deny]]
name = "no-ops-writes"
callers = ["{OPS}"]
methods = ["{SEND}"]

[[allow]]
name = "gateway-to-everything"
callers = ["{GATEWAY}"]
methods = ["*"]

[[allow]]
callers = ["spiffe://hms.local/svc/*"]
methods = ["/hms.eligibility.v1.EligibilityService/*", "/hms.notify.v1.NotifyService/*"]
"""


def policy_of(text: str) -> Policy:
    return Policy.parse(text, source="authz.toml")


# --- parsing ----------------------------------------------------------------------------------


def test_example_parses() -> None:
    policy = policy_of(EXAMPLE)
    assert policy.mode is Mode.ENFORCE
    assert policy.source == "authz.toml"
    assert policy.deny == (Rule(Action.DENY, 0, (OPS,), (SEND,), "no-ops-writes"),)
    assert [rule.label for rule in policy.allow] == [
        'allow[0] "gateway-to-everything"',
        "allow[1]",
    ]


def rule(action: str = "allow", **fields: Any) -> str:
    """A policy with one rule: callers and methods valid unless overridden (None drops one)."""
    values = {"callers": [GATEWAY], "methods": ["*"], **fields}
    lines = [f"[[{action}]]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


OPEN = 'default = "allow"\n'  # how a policy says it allows what no rule denies


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "authz.toml: is empty: a policy must say what it allows", id="empty"),
        pytest.param(" \n\t\n", "authz.toml: is empty", id="whitespace"),
        pytest.param(
            "# allow everyone?\n",
            "authz.toml: has no rules and no default, so it would allow every call: "
            'write default = "allow" if that is meant',
            id="comment-only",
        ),
        pytest.param('mode = "enforce"\n', "authz.toml: has no rules and no default", id="mode"),
        pytest.param(
            rule("deny"),
            "authz.toml: has no allow rules and no default, so it would allow every call no "
            "deny rule matches",
            id="deny-only",
        ),
    ],
)
def test_a_document_that_does_not_say_what_it_allows_is_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "default", "allowed"),
    [
        pytest.param(OPEN, Action.ALLOW, True, id="open"),
        pytest.param('default = "deny"', Action.DENY, False, id="closed"),
        pytest.param(OPEN + rule("deny", callers=[OPS]), Action.ALLOW, True, id="block-list"),
        pytest.param(rule(callers=[OPS], methods=[SEND]), Action.DENY, False, id="allow-list"),
        pytest.param('default = "deny"\n' + rule(callers=[OPS]), Action.DENY, False, id="both"),
    ],
)
def test_default_decides_what_no_rule_matches(text: str, default: Action, allowed: bool) -> None:
    policy = policy_of(text)
    assert policy.default is default
    assert policy.decide(GATEWAY, FEES).allowed is allowed
    assert policy.decide(None, FEES).allowed is allowed


def test_a_policy_built_in_code_denies_by_default() -> None:
    assert Policy().default is Action.DENY
    assert not Policy().decide(OPS, SEND).allowed
    assert Policy(default=Action.ALLOW).decide(OPS, SEND).allowed


def test_load_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "authz.toml"
    path.write_text(EXAMPLE)
    assert load_policy(path).source == str(path)
    path.write_text('mode = "strict"')
    with pytest.raises(
        PolicyError, match=f"^{re.escape(str(path))}: mode: must be 'enforce' or 'audit'"
    ):
        load_policy(path)


def test_load_policy_rejects_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "authz.toml"
    path.write_bytes(b'mode = "\xff"')
    with pytest.raises(PolicyError, match=f"^{re.escape(str(path))}: not UTF-8 text"):
        load_policy(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("mode = ", "authz.toml: not valid TOML: ", id="toml-syntax"),
        pytest.param(
            "modes = 'audit'", "authz.toml: unknown key(s) 'modes'; expected", id="unknown-top-key"
        ),
        pytest.param(
            'default = "open"', "authz.toml: default: must be 'deny' or 'allow'", id="default"
        ),
        pytest.param("default = true", "authz.toml: default: must be 'deny'", id="default-type"),
        pytest.param(
            OPEN + rule(),
            'authz.toml: default: is "allow", so the allow rules would change nothing',
            id="default-allow-with-allow-rules",
        ),
        pytest.param(
            rule() + "\n" + rule("deny", name="late"),
            'authz.toml: deny[0] "late": comes after an allow rule: write every [[deny]] '
            "before the first [[allow]]",
            id="deny-after-allow",
        ),
        pytest.param(
            rule("deny") + "\n" + rule() + "\n" + rule("deny", methods=[SEND]),
            "authz.toml: deny[1]: comes after an allow rule",
            id="deny-between-allows",
        ),
        pytest.param(
            rule() + '\n[["deny"]]\ncallers = ["*"]\nmethods = ["*"]',
            "authz.toml: deny[0]: comes after an allow rule",
            id="deny-after-allow-quoted-header",
        ),
        pytest.param(
            f'allow = [{{callers = ["*"], methods = ["*"]}}]\n'
            f'deny = [{{callers = ["{OPS}"], methods = ["*"]}}]',
            "authz.toml: deny[0]: comes after an allow rule",
            id="deny-after-allow-inline",
        ),
        pytest.param(
            'mode = "strict"', "authz.toml: mode: must be 'enforce' or 'audit'", id="mode"
        ),
        pytest.param("mode = 1", "authz.toml: mode: must be 'enforce' or 'audit'", id="mode-type"),
        pytest.param(
            "allow = []", "authz.toml: allow: must be a non-empty array", id="allow-empty"
        ),
        pytest.param("deny = 'x'", "authz.toml: deny: must be a non-empty array", id="deny-type"),
        pytest.param("allow = [1]", "authz.toml: allow[0]: must be a table", id="rule-not-table"),
        pytest.param(
            rule(caller=["x"]), "authz.toml: allow[0]: unknown key(s) 'caller'", id="unknown-key"
        ),
        pytest.param(
            rule(name="gw", method="*"),
            "authz.toml: allow[0] \"gw\": unknown key(s) 'method'",
            id="unknown-key-named",
        ),
        pytest.param(
            rule(callers=None), "authz.toml: allow[0]: callers: is required", id="no-callers"
        ),
        pytest.param(
            rule("deny", methods=None), "authz.toml: deny[0]: methods: is required", id="no-methods"
        ),
        pytest.param(
            rule(callers=GATEWAY),
            "authz.toml: allow[0]: callers: must be a list of strings, got 'spiffe:",
            id="callers-string",
        ),
        pytest.param(
            rule(methods=["*", 3]),
            "authz.toml: allow[0]: methods: must be a list of strings",
            id="methods-mixed-types",
        ),
        pytest.param(
            rule(callers=[]),
            "authz.toml: allow[0]: callers: must be a non-empty list",
            id="callers-empty",
        ),
        pytest.param(
            rule(name="x", methods=[]),
            'authz.toml: allow[0] "x": methods: must be a non-empty list',
            id="methods-empty",
        ),
        pytest.param(
            rule(name=""), "authz.toml: allow[0]: name: must be a non-empty", id="name-empty"
        ),
        pytest.param(
            rule(name=3), "authz.toml: allow[0]: name: must be a non-empty", id="name-type"
        ),
        pytest.param(
            rule(name="gw", callers=[GATEWAY, "gateway"]),
            "authz.toml: allow[0] \"gw\": callers[1]: 'gateway' is not a caller pattern",
            id="caller-not-spiffe",
        ),
        pytest.param(
            rule(callers=["spiffe://hms.local/*/gateway"]),
            "authz.toml: allow[0]: callers[0]: 'spiffe://hms.local/*/gateway' is not a caller",
            id="caller-star-inside",
        ),
        pytest.param(
            rule(callers=["spiffe://hms.local/svc/a b"]),
            "callers[0]: 'spiffe://hms.local/svc/a b' is not a caller pattern",
            id="caller-space",
        ),
        pytest.param(rule(callers=["**"]), "callers[0]: '**' is not a caller", id="caller-stars"),
        pytest.param(
            rule(methods=["Send"]),
            "authz.toml: allow[0]: methods[0]: 'Send' is not a method pattern: use",
            id="method-bare",
        ),
        pytest.param(
            rule(methods=["/hms.notify.v1.NotifyService"]),
            "methods[0]: '/hms.notify.v1.NotifyService' is not a method pattern",
            id="method-no-method",
        ),
        pytest.param(
            rule(methods=["/hms.notify.v1.*/Send"]),
            "methods[0]: '/hms.notify.v1.*/Send' is not a method pattern",
            id="method-star-in-service",
        ),
        pytest.param(
            rule(methods=["/hms.notify.v1.NotifyService/Se*"]),
            "methods[0]: '/hms.notify.v1.NotifyService/Se*' is not a method pattern",
            id="method-partial-star",
        ),
        pytest.param(
            rule(methods=["hms.notify.v1.NotifyService/Send"]),
            "is not a method pattern",
            id="method-no-leading-slash",
        ),
        pytest.param(
            rule(methods=["/hms.notify.v1.NotifyService/Send/"]),
            "is not a method pattern",
            id="method-trailing-slash",
        ),
        pytest.param(
            rule(name="a") + "\n" + rule("deny", name="a"),
            "authz.toml: allow[0] \"a\": name: rule name 'a' is used twice",
            id="duplicate-name",
        ),
        pytest.param(
            rule() + "\n" + rule(methods=["/x.Y/Z", "*", ""]),
            "authz.toml: allow[1]: methods[2]: '' is not a method pattern",
            id="second-rule-named-by-index",
        ),
    ],
)
def test_parse_error_names_file_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_parse_error_carries_its_parts() -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(rule(name="gw", methods=["bad"]))
    error = caught.value
    assert (error.source, error.rule, error.field) == ("authz.toml", 'allow[0] "gw"', "methods[0]")


@pytest.mark.parametrize(
    ("callers", "methods"),
    [
        pytest.param(["*"], ["*"], id="everything"),
        pytest.param(["spiffe://*"], ["/Bare/Method"], id="any-spiffe-bare-service"),
        pytest.param(["spiffe://hms.local/svc/"], ["/a_b.C9/*"], id="prefix-like-exact"),
        pytest.param([GATEWAY, OPS], [SEND, LIST, "/hms.fees.v1.FeeService/*"], id="lists"),
    ],
)
def test_valid_patterns_parse(callers: list[str], methods: list[str]) -> None:
    assert policy_of(rule(callers=callers, methods=methods)).allow[0].methods == tuple(methods)


def test_rule_built_in_code_is_validated_too() -> None:
    with pytest.raises(PolicyError, match=r"^deny\[0\]: methods\[0\]: 'x' is not a method"):
        Rule(Action.DENY, 0, ("*",), ("x",))
    with pytest.raises(PolicyError, match=r"allow\[0\]: sits at deny\[0\]"):
        Policy(deny=(Rule(Action.ALLOW, 0, ("*",), ("*",)),))


# --- decide -----------------------------------------------------------------------------------


def decided(policy: Policy, caller: str | None, method: str) -> tuple[bool, str | None]:
    decision = policy.decide(caller, method)
    return decision.allowed, decision.rule


@pytest.mark.parametrize(
    ("caller", "method", "allowed", "rule_label"),
    [
        pytest.param(OPS, SEND, False, 'deny[0] "no-ops-writes"', id="deny-before-allow"),
        pytest.param(OPS, LIST, True, "allow[1]", id="deny-is-per-method"),
        pytest.param(GATEWAY, SEND, True, 'allow[0] "gateway-to-everything"', id="exact-caller"),
        pytest.param(GATEWAY, FEES, True, 'allow[0] "gateway-to-everything"', id="any-method"),
        pytest.param(ELIGIBILITY, CHECK, True, "allow[1]", id="prefix-and-service"),
        pytest.param(ELIGIBILITY, FEES, False, None, id="default-deny-method"),
        pytest.param(OUTSIDER, CHECK, False, None, id="default-deny-caller"),
        pytest.param("spiffe://hms.local/svcx/a", CHECK, False, None, id="prefix-is-a-real-prefix"),
        pytest.param(None, CHECK, False, None, id="no-identity-default-deny"),
        pytest.param(None, "/grpc.health.v1.Health/Check", True, None, id="health"),
        pytest.param(OPS, "/grpc.health.v1.Health/Watch", True, None, id="health-watch"),
        pytest.param(
            OUTSIDER,
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            True,
            None,
            id="reflection-v1alpha",
        ),
        pytest.param(
            None,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            True,
            None,
            id="reflection-v1",
        ),
        pytest.param(
            GATEWAY,
            "/grpc.health.v1.HealthX/Check",
            True,
            'allow[0] "gateway-to-everything"',
            id="not-health",
        ),
        pytest.param(OPS, "/grpc.health.v1.HealthX/Check", False, None, id="not-health-denied"),
    ],
)
def test_decide_example(
    caller: str | None, method: str, allowed: bool, rule_label: str | None
) -> None:
    assert decided(policy_of(EXAMPLE), caller, method) == (allowed, rule_label)


def test_decision_reasons() -> None:
    policy = policy_of(EXAMPLE)
    assert policy.decide(OPS, SEND) == Decision(
        False, 'deny[0] "no-ops-writes"', 'denied by deny[0] "no-ops-writes"'
    )
    assert policy.decide(OPS, LIST).reason == "allowed by allow[1]"
    assert policy.decide(OPS, FEES).reason == "no allow rule matches (default deny)"
    assert policy.decide(OPS, "/grpc.health.v1.Health/Check").reason == (
        "health and reflection are always allowed"
    )


def test_health_is_allowed_even_against_a_deny_rule_for_everyone() -> None:
    policy = policy_of(OPEN + rule("deny", callers=["*"], methods=["*"]))
    assert policy.decide(OPS, "/grpc.health.v1.Health/Check").allowed
    assert not policy.decide(OPS, SEND).allowed


@pytest.mark.parametrize(
    ("caller", "method", "allowed"),
    [
        pytest.param(OPS, SEND, True, id="any-caller"),
        pytest.param(None, SEND, True, id="no-identity"),
        pytest.param("", "", True, id="empty-strings"),
    ],
)
def test_an_open_policy_allows_everything(caller: str | None, method: str, allowed: bool) -> None:
    assert policy_of(OPEN).decide(caller, method) == Decision(
        allowed, None, "no rule matches (default allow)"
    )


def test_an_open_policy_with_deny_rules_is_a_block_list() -> None:
    policy = policy_of(
        OPEN + rule("deny", callers=[OPS], methods=["/hms.notify.v1.NotifyService/*"])
    )
    assert decided(policy, OPS, SEND) == (False, "deny[0]")
    assert decided(policy, OPS, FEES) == (True, None)
    assert decided(policy, GATEWAY, SEND) == (True, None)


@pytest.mark.parametrize(
    ("policy_text", "allowed"),
    [
        pytest.param(rule(callers=["*"]), False, id="allow-star-is-authenticated-only"),
        pytest.param(rule(callers=["spiffe://*"]), False, id="allow-prefix"),
        pytest.param(OPEN + rule("deny", callers=[OPS]), True, id="deny-other-caller-only"),
        pytest.param(OPEN + rule("deny", callers=["spiffe://*"]), True, id="deny-prefix-not-none"),
        pytest.param(OPEN + rule("deny", callers=["*"]), False, id="deny-star-covers-no-identity"),
    ],
)
def test_caller_without_identity(policy_text: str, allowed: bool) -> None:
    assert policy_of(policy_text).decide(None, SEND).allowed is allowed


def test_allow_star_admits_any_identity() -> None:
    policy = policy_of(rule(callers=["*"], methods=[SEND]))
    assert policy.decide(OUTSIDER, SEND).allowed
    assert not policy.decide(OUTSIDER, LIST).allowed


def test_audit_mode_decides_the_same() -> None:
    audit = policy_of('mode = "audit"\n' + EXAMPLE.replace('mode = "enforce"', ""))
    assert audit.mode is Mode.AUDIT
    enforce = policy_of(EXAMPLE)
    for caller in (OPS, GATEWAY, ELIGIBILITY, OUTSIDER, None):
        for method in (SEND, LIST, CHECK, FEES):
            assert audit.decide(caller, method) == enforce.decide(caller, method)


def test_public_surface() -> None:
    assert sorted(mesh.authz.__all__) == [
        "ALWAYS_ALLOWED_SERVICES",
        "Action",
        "AuthzInterceptor",
        "Decision",
        "Mode",
        "Policy",
        "PolicyError",
        "PolicySource",
        "Rule",
        "caller_identity",
        "denial_message",
        "is_always_allowed",
        "load_policy",
    ]


# --- properties -------------------------------------------------------------------------------

_identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_methods = st.one_of(
    st.text(),
    st.builds(lambda s, m: f"/{s}/{m}", _identifiers, _identifiers),
    st.sampled_from([SEND, LIST, CHECK, FEES, "/grpc.health.v1.Health/Check", "", "*", "/"]),
)
_callers = st.one_of(
    st.none(),
    st.text(),
    st.builds(lambda d: f"spiffe://hms.local/svc/{d}", st.text()),
    st.sampled_from([OPS, GATEWAY, ELIGIBILITY, OUTSIDER, "", "*"]),
)


@given(caller=_callers, method=_methods)
def test_decide_never_raises(caller: str | None, method: str) -> None:
    for policy in (policy_of(EXAMPLE), policy_of(OPEN), policy_of(OPEN + rule("deny"))):
        decision = policy.decide(caller, method)
        assert isinstance(decision.allowed, bool)
        assert decision.reason


@given(caller=_callers, method=_methods)
def test_deny_rule_always_wins(caller: str | None, method: str) -> None:
    both = policy_of(rule("deny", callers=["*"]) + "\n" + rule(callers=["*"]))
    assert not both.decide(caller, method).allowed or mesh.authz.is_always_allowed(method)


# The calls every prefix of a policy is tried on: each caller against each method.
_GRID = [
    (caller, method)
    for caller in (OPS, GATEWAY, ELIGIBILITY, OUTSIDER, "spiffe://hms.local/svc/x", None)
    for method in (SEND, LIST, CHECK, FEES, "/hms.eligibility.v1.EligibilityService/List")
]

ALLOW_LIST_WITH_DEFAULT = f"""
mode = "enforce"
default = "deny"

[[deny]]
name = "no-ops-writes"
callers = ["{OPS}"]
methods = ["{SEND}"]

[[deny]]
callers = ["{OUTSIDER}", "spiffe://hms.local/svc/x"]
methods = ["*"]

[[allow]]
callers = ["spiffe://hms.local/svc/*"]
methods = ["/hms.eligibility.v1.EligibilityService/*", "/hms.notify.v1.NotifyService/*"]
"""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(EXAMPLE, id="example"),
        pytest.param(ALLOW_LIST_WITH_DEFAULT, id="explicit-default-deny"),
        pytest.param(EXAMPLE.replace('mode = "enforce"', 'mode = "audit"'), id="audit"),
    ],
)
def test_no_prefix_of_an_allow_list_allows_more(text: str) -> None:
    """A file cut short anywhere (a write caught half-way, a full disk) is refused, or its
    policy allows no call the whole file denies."""
    whole = policy_of(text)
    allowed = {call for call in _GRID if whole.decide(*call).allowed}
    refused = 0
    for end in range(len(text)):
        try:
            prefix = policy_of(text[:end])
        except PolicyError:
            refused += 1
            continue
        assert prefix.mode is whole.mode
        extra = {call for call in _GRID if prefix.decide(*call).allowed} - allowed
        assert not extra, f"cut after {end} characters, {text[:end]!r} allows {extra}"
    assert refused > len(text) * 0.9  # nearly every cut is refused outright


@given(text=st.text())
def test_parse_raises_only_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        Policy.parse(text)


_toml_values = st.recursive(
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "callers", "methods", "mode", "x"]), children, max_size=3
        ),
    ),
    max_leaves=12,
)


@given(
    data=st.dictionaries(
        st.sampled_from(["mode", "default", "allow", "deny", "other"]),
        st.one_of(
            _toml_values,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": _toml_values,
                        "callers": st.one_of(_toml_values, st.lists(_callers)),
                        "methods": st.one_of(_toml_values, st.lists(_methods)),
                    },
                ),
                max_size=3,
            ),
        ),
        max_size=3,
    )
)
def test_from_mapping_raises_only_policy_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(PolicyError):
        Policy.from_mapping(data)
