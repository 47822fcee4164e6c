"""Authorization policy: which caller identities may call which methods. Pure, no I/O but
`load_policy`.

A policy is a TOML document (format and examples in docs/authz.md)::

    mode = "enforce"                      # or "audit": log what would be denied, allow it
    default = "deny"                      # optional with allow rules; required without them
    [[deny]]
    name = "no-ops-writes"
    callers = ["spiffe://hms.local/svc/ops"]
    methods = ["/hms.notify.v1.NotifyService/Send"]
    [[allow]]
    callers = ["spiffe://hms.local/svc/*"]
    methods = ["/hms.eligibility.v1.EligibilityService/*"]

Evaluation (`Policy.decide`), as gRFC A43 and Istio do it, first match wins:

1. health checking and server reflection are always allowed (`ALWAYS_ALLOWED_SERVICES`);
2. any matching deny rule denies;
3. any matching allow rule allows;
4. everything else gets the policy's `default`: deny, unless the file says
   ``default = "allow"`` (then it has no allow rules: an open policy, or a block list).

The format fails closed: a document must say what it allows. An empty file, and one with no
allow rules that does not say ``default = "allow"``, is refused rather than read as "allow
everything"; `[[deny]]` tables come before the first `[[allow]]`, so that an allow-list cut
short between two rules is refused or allows less, never more (docs/authz.md, "Failing
closed").

A caller without an identity (`None`: plaintext, or a certificate without exactly one URI SAN)
matches no allow pattern, not even ``"*"`` (any *authenticated* caller), so unless the
default is allow it is denied. A deny rule's ``"*"`` matches every caller, identity or not: no one
escapes a deny rule by presenting no identity.

>>> policy = Policy.parse('[[allow]]\\ncallers = ["*"]\\nmethods = ["/a.B/*"]')
>>> policy.decide("spiffe://hms.local/svc/x", "/a.B/C").allowed
True
>>> policy.decide(None, "/a.B/C").reason
'no allow rule matches (default deny)'
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "ALWAYS_ALLOWED_SERVICES",
    "Action",
    "Decision",
    "Mode",
    "Policy",
    "PolicyError",
    "Rule",
    "is_always_allowed",
    "load_policy",
]

# Operators and load balancers must always see health; grpcurl needs reflection.
ALWAYS_ALLOWED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_ALWAYS_ALLOWED_PREFIXES = tuple(f"/{service}/" for service in ALWAYS_ALLOWED_SERVICES)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# "*", "/pkg.Service/*" or "/pkg.Service/Method".
_METHOD_PATTERN = re.compile(rf"\*|/{_IDENT}(?:\.{_IDENT})*/(?:\*|{_IDENT})")
# A SPIFFE ID, or a prefix of one ending in "*"; "*" alone is handled apart.
_CALLER_PATTERN = re.compile(r"spiffe://[^\s*]*\*?")
_TOP_KEYS = frozenset({"mode", "default", "deny", "allow"})
# A `[[deny]]` or `[[allow]]` header line (the key may be quoted: `[["deny"]]`).
_TABLE_HEADER = re.compile(r"""^[ \t]*\[\[[ \t]*(["']?)(deny|allow)\1[ \t]*\]\]""", re.MULTILINE)
_RULE_KEYS = frozenset({"name", "callers", "methods"})


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the file, the rule and the field.

    >>> str(PolicyError("must not be empty", source="authz.toml", rule="allow[0]", field="methods"))
    'authz.toml: allow[0]: methods: must not be empty'
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        rule: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problem, self.source, self.rule, self.field = problem, source, rule, field
        where = [part for part in (source, rule, field) if part]
        super().__init__(": ".join([*where, problem]))

    def at(self, source: str) -> PolicyError:
        """The same error, located in `source` (a file name)."""
        return PolicyError(self.problem, source=source, rule=self.rule, field=self.field)


class Mode(StrEnum):
    """ENFORCE denies; AUDIT logs what it would deny and lets the call through."""

    ENFORCE = "enforce"
    AUDIT = "audit"


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


def is_always_allowed(method: str) -> bool:
    """Whether `method` belongs to health checking or reflection, which no policy blocks.

    >>> is_always_allowed("/grpc.health.v1.Health/Check")
    True
    """
    return method.startswith(_ALWAYS_ALLOWED_PREFIXES)


@dataclass(frozen=True)
class Rule:
    """One allow or deny rule: it matches when the caller matches any of `callers` and the
    method any of `methods`. `index` is its position among the rules of its action."""

    action: Action
    index: int
    callers: tuple[str, ...]
    methods: tuple[str, ...]
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise PolicyError("must be a non-empty string", rule=self.label, field="name")
        for field, patterns, check in (
            ("callers", self.callers, _check_caller),
            ("methods", self.methods, _check_method),
        ):
            if not isinstance(patterns, tuple) or not patterns:
                raise PolicyError("must be a non-empty list", rule=self.label, field=field)
            for position, pattern in enumerate(patterns):
                problem = check(pattern)
                if problem is not None:
                    raise PolicyError(problem, rule=self.label, field=f"{field}[{position}]")

    @property
    def label(self) -> str:
        """How messages name the rule: ``deny[0] "no-ops-writes"`` or ``allow[2]``."""
        return _label(self.action, self.index, self.name)

    def matches(self, caller: str | None, method: str) -> bool:
        return self._matches_caller(caller) and any(
            _method_matches(pattern, method) for pattern in self.methods
        )

    def _matches_caller(self, caller: str | None) -> bool:
        if caller is None:
            # Fail safe: a deny rule for everyone also covers callers without an identity.
            return self.action is Action.DENY and "*" in self.callers
        return any(_caller_matches(pattern, caller) for pattern in self.callers)


@dataclass(frozen=True)
class Decision:
    """The outcome for one call; `rule` is the label of the rule that decided, if any."""

    allowed: bool
    rule: str | None
    reason: str


_ALWAYS = Decision(True, None, "health and reflection are always allowed")
_DEFAULT_ALLOW = Decision(True, None, "no rule matches (default allow)")
_DEFAULT_DENY = Decision(False, None, "no allow rule matches (default deny)")


@dataclass(frozen=True)
class Policy:
    """Deny rules, allow rules, a mode and a default; `source` names where it came from in
    messages.

    `default` decides the calls no rule matches: DENY (so an empty policy denies everything
    but health and reflection) or ALLOW, which allow rules would contradict.
    """

    deny: tuple[Rule, ...] = ()
    allow: tuple[Rule, ...] = ()
    mode: Mode = Mode.ENFORCE
    source: str = "<policy>"
    default: Action = Action.DENY

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "default", Action(self.default))
        if self.default is Action.ALLOW and self.allow:
            raise PolicyError(
                'is "allow", so the allow rules would change nothing: remove them, or use '
                'default = "deny" to allow only what they list',
                source=self.source,
                field="default",
            )
        seen: set[str] = set()
        for action, rules in ((Action.DENY, self.deny), (Action.ALLOW, self.allow)):
            for index, rule in enumerate(rules):
                if rule.action is not action or rule.index != index:
                    raise PolicyError(
                        f"sits at {action}[{index}]: a rule's action and index are its place",
                        source=self.source,
                        rule=rule.label,
                    )
                if rule.name is not None:
                    if rule.name in seen:
                        raise PolicyError(
                            f"rule name {rule.name!r} is used twice; names must be unique",
                            source=self.source,
                            rule=rule.label,
                            field="name",
                        )
                    seen.add(rule.name)

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> Policy:
        """Parse a TOML policy document; raise PolicyError naming what is wrong.

        Beyond `from_mapping`: an empty document is refused, and deny tables must come before
        the first allow table."""
        if not text.strip():
            raise PolicyError(
                "is empty: a policy must say what it allows (allow rules, or "
                'default = "allow" for an open policy)',
                source=source,
            )
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}", source=source) from None
        policy = cls.from_mapping(data, source)
        _check_deny_first(text, data, source)
        return policy

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<mapping>") -> Policy:
        """Build a policy from parsed TOML (or any mapping of the same shape)."""
        if not isinstance(data, Mapping):
            raise PolicyError("must be a table of mode, deny and allow", source=source)
        unknown = sorted(str(key) for key in data if key not in _TOP_KEYS)
        if unknown:
            raise PolicyError(
                f"unknown key(s) {', '.join(map(repr, unknown))}; "
                "expected mode, default, deny, allow",
                source=source,
            )
        mode = data.get("mode", Mode.ENFORCE.value)
        if not isinstance(mode, str) or mode not in {m.value for m in Mode}:
            raise PolicyError(
                f"must be 'enforce' or 'audit', got {mode!r}", source=source, field="mode"
            )
        default = data.get("default")
        if default is not None and (
            not isinstance(default, str) or default not in {a.value for a in Action}
        ):
            raise PolicyError(
                f"must be 'deny' or 'allow', got {default!r}", source=source, field="default"
            )
        try:
            deny = _parse_rules(data, Action.DENY)
            allow = _parse_rules(data, Action.ALLOW)
            if default is None and not allow:
                # Fail closed: "no allow rules" is what an empty or cut-short file looks like.
                what = "no allow rules" if deny else "no rules"
                calls = "every call no deny rule matches" if deny else "every call"
                raise PolicyError(
                    f"has {what} and no default, so it would allow {calls}: "
                    'write default = "allow" if that is meant, or add allow rules'
                )
            return cls(
                deny=deny,
                allow=allow,
                mode=Mode(mode),
                source=source,
                default=Action(default) if default is not None else Action.DENY,
            )
        except PolicyError as exc:
            raise exc.at(source) from None

    def decide(self, caller: str | None, method: str) -> Decision:
        """Whether `caller` (a SPIFFE ID, None without identity) may call `method`
        (``/pkg.Service/Method``). The mode does not change the decision, only what the
        interceptor does with it."""
        if is_always_allowed(method):
            return _ALWAYS
        for rule in self.deny:
            if rule.matches(caller, method):
                return Decision(False, rule.label, f"denied by {rule.label}")
        for rule in self.allow:
            if rule.matches(caller, method):
                return Decision(True, rule.label, f"allowed by {rule.label}")
        return _DEFAULT_ALLOW if self.default is Action.ALLOW else _DEFAULT_DENY


def load_policy(path: Path) -> Policy:
    """Read and parse a policy file. Raises PolicyError (also for a file that is not UTF-8)
    or OSError (a file that cannot be read)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text: {exc}", source=str(path)) from None
    return Policy.parse(text, source=str(path))


def _check_deny_first(text: str, data: Mapping[str, Any], source: str) -> None:
    """Refuse a `[[deny]]` table after an `[[allow]]` one: cut short between them, the file
    would keep an allow rule and lose a deny rule that came after it, and allow more."""
    allows = denies = 0
    for header in _TABLE_HEADER.finditer(text):
        if header.group(2) == Action.ALLOW.value:
            allows += 1
        else:
            if allows:
                _deny_after_allow(data, denies, source)
            denies += 1
    # Arrays written inline (`allow = [{...}]`) have no headers; the keys keep their order.
    keys = [key for key in data if key in (Action.DENY.value, Action.ALLOW.value)]
    if keys == [Action.ALLOW.value, Action.DENY.value]:
        _deny_after_allow(data, 0, source)


def _deny_after_allow(data: Mapping[str, Any], index: int, source: str) -> None:
    tables = data.get(Action.DENY.value)
    table = tables[index] if isinstance(tables, list) and index < len(tables) else None
    name = table.get("name") if isinstance(table, Mapping) else None
    raise PolicyError(
        "comes after an allow rule: write every [[deny]] before the first [[allow]] "
        "(a file cut short must not keep an allow rule and lose a deny rule)",
        source=source,
        rule=_label(Action.DENY, index, name if isinstance(name, str) and name else None),
    )


def _label(action: Action, index: int, name: str | None = None) -> str:
    base = f"{action}[{index}]"
    return f"{base} {json.dumps(name)}" if isinstance(name, str) else base


def _parse_rules(data: Mapping[str, Any], action: Action) -> tuple[Rule, ...]:
    if action.value not in data:
        return ()
    tables = data[action.value]
    if not isinstance(tables, list) or not tables:
        raise PolicyError(
            f"must be a non-empty array of tables ([[{action}]]); remove it for no rules",
            field=action.value,
        )
    return tuple(_parse_rule(action, index, table) for index, table in enumerate(tables))


def _parse_rule(action: Action, index: int, table: object) -> Rule:
    if not isinstance(table, Mapping):
        raise PolicyError("must be a table with callers and methods", rule=f"{action}[{index}]")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise PolicyError(
            f"must be a non-empty string, got {name!r}", rule=_label(action, index), field="name"
        )
    label = _label(action, index, name)
    unknown = sorted(str(key) for key in table if key not in _RULE_KEYS)
    if unknown:
        raise PolicyError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; expected name, callers, methods",
            rule=label,
        )
    lists = {}
    for field in ("callers", "methods"):
        if field not in table:
            raise PolicyError("is required", rule=label, field=field)
        value = table[field]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise PolicyError(f"must be a list of strings, got {value!r}", rule=label, field=field)
        lists[field] = tuple(value)
    return Rule(action, index, lists["callers"], lists["methods"], name)


def _check_caller(pattern: object) -> str | None:
    if isinstance(pattern, str) and (pattern == "*" or _CALLER_PATTERN.fullmatch(pattern)):
        return None
    return (
        f"{pattern!r} is not a caller pattern: use a SPIFFE ID "
        "(spiffe://hms.local/svc/<deployment>), a prefix of one ending in '*', or '*'"
    )


def _check_method(pattern: object) -> str | None:
    if isinstance(pattern, str) and _METHOD_PATTERN.fullmatch(pattern):
        return None
    return (
        f"{pattern!r} is not a method pattern: use '/pkg.Service/Method', '/pkg.Service/*' or '*'"
    )


def _caller_matches(pattern: str, caller: str) -> bool:
    if pattern.endswith("*"):
        return caller.startswith(pattern[:-1])  # "*" alone: the empty prefix, any caller
    return caller == pattern


def _method_matches(pattern: str, method: str) -> bool:
    if pattern.endswith("*"):
        return method.startswith(pattern[:-1])  # "/pkg.Service/*" or "*"
    return method == pattern
