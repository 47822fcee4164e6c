"""Server-side authorization: a policy file of caller SPIFFE IDs and methods, enforced by a
server interceptor. Format and semantics: docs/authz.md. Install it on a service host::

    host = ServiceHost(config, interceptors=[AuthzInterceptor(PolicySource(path))])
"""

from __future__ import annotations

from mesh.authz.interceptor import AuthzInterceptor, PolicySource, caller_identity, denial_message
from mesh.authz.policy import (
    ALWAYS_ALLOWED_SERVICES,
    Action,
    Decision,
    Mode,
    Policy,
    PolicyError,
    Rule,
    is_always_allowed,
    load_policy,
)

__all__ = [
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
