"""Server-side enforcement of an authorization policy (see `mesh.authz.policy`).

`AuthzInterceptor` decides every call from the caller's SPIFFE ID, taken from its mTLS
certificate, and the method. A denied call ends with PERMISSION_DENIED naming the caller, the
method and the rule; in audit mode it is logged and let through. `PolicySource` follows the
policy file on disk: an edit takes effect without a restart, and a file that does not load
(empty, cut short, not TOML, unreadable, gone) keeps the previous policy (it never fails
open) and logs why at ERROR, naming the file.

    interceptor = AuthzInterceptor(PolicySource(Path("/etc/hms/authz.toml")))
    host = ServiceHost(config, interceptors=[interceptor])
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from mesh.authz.policy import Decision, Mode, Policy, PolicyError, is_always_allowed, load_policy
from mesh.identity import caller_identity
from mesh.server.wrap import Around, AroundInterceptor, Refusal

__all__ = ["AuthzInterceptor", "PolicySource", "caller_identity", "denial_message"]

log = logging.getLogger(__name__)

# What identifies one version of a file: a rename gives a new inode even within one mtime tick.
_Stamp = tuple[int, int, int]


def denial_message(caller: str | None, method: str, decision: Decision) -> str:
    """What a denied caller is told (and what the log says).

    >>> denial_message(None, "/a.B/C", Decision(False, None, "no allow rule matches"))
    'an unauthenticated caller may not call /a.B/C (no allow rule matches)'
    """
    who = caller if caller is not None else "an unauthenticated caller"
    return f"{who} may not call {method} ({decision.reason})"


class PolicySource:
    """The policy in a file, re-read when the file changes (mtime, size or inode).

    The file is looked at most once per `check_interval` seconds (0: on every call), on the
    `clock` passed in. The first load happens here and raises (PolicyError, OSError) after
    logging why, so a service does not start with a broken, empty or missing policy. Later
    failures keep the last good policy and are logged once per problem; a file that cannot
    be read is tried again at every check until it can.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not check_interval >= 0:
            raise ValueError(f"check_interval must be >= 0 s, got {check_interval}")
        self.path = Path(path)
        self.check_interval = check_interval
        self.reloads = 0
        self._clock = clock
        self._lock = threading.Lock()  # sync handlers decide in grpc.aio's thread pool
        try:
            self._stamp: _Stamp | None = self._stat()
            self._policy = load_policy(self.path)
        except OSError as exc:
            log.error("refusing to start: %s", self._unreadable(exc))
            raise
        except PolicyError as exc:
            log.error("refusing to start: authorization policy %s", exc)
            raise
        self._checked_at = clock()
        self._last_error: str | None = None

    @property
    def policy(self) -> Policy:
        """The policy in force: the last one that loaded."""
        return self._policy

    def current(self) -> Policy:
        """The policy in force, after looking at the file if `check_interval` has passed."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= self.check_interval:
                self._checked_at = now
                self._refresh()
            return self._policy

    def _refresh(self) -> None:
        try:
            stamp = self._stat()
        except OSError as exc:
            self._stamp = None  # whatever comes back next is a change
            self._error(self._unreadable(exc))
            return
        if stamp == self._stamp:
            return
        # Stat before reading: a write after this stat shows up as a change next time.
        self._stamp = stamp
        try:
            policy = load_policy(self.path)
        except OSError as exc:
            self._stamp = None  # try again at the next check: it may become readable
            self._error(self._unreadable(exc))
            return
        except PolicyError as exc:
            self._error(str(exc))
            return
        self._policy, self._last_error = policy, None
        self.reloads += 1
        log.info(
            "reloaded authorization policy %s (mode %s, default %s)",
            self.path,
            policy.mode,
            policy.default,
        )

    def _stat(self) -> _Stamp:
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_ino, stat.st_size

    def _unreadable(self, exc: OSError) -> str:
        return f"cannot read policy file {self.path}: {exc.strerror or exc}"

    def _error(self, problem: str) -> None:
        if problem != self._last_error:
            log.error("keeping the previous authorization policy: %s", problem)
        self._last_error = problem


class AuthzInterceptor(AroundInterceptor):
    """Enforces a policy on every call, in all four handler shapes, async and sync.

    Give it a `Policy` (fixed) or a `PolicySource` (follows its file). Health checking and
    reflection are never wrapped: no policy can block them.
    """

    def __init__(self, policy: Policy | PolicySource) -> None:
        super().__init__()
        self._current: Callable[[], Policy] = (
            policy.current if isinstance(policy, PolicySource) else lambda: policy
        )

    def around(self, method: str) -> Around | None:
        if is_always_allowed(method):
            return None
        # The refusal reads the current policy at call time, so wrapping once per method is safe.
        return Around(refuse=lambda context: self._refuse(method, context))

    def refusal(self, method: str, auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
        """The message to deny a call with, or None to let it through (audit mode logs it)."""
        policy = self._current()
        caller = caller_identity(auth_context)
        decision = policy.decide(caller, method)
        if decision.allowed:
            return None
        message = denial_message(caller, method, decision)
        if policy.mode is Mode.AUDIT:
            log.warning("authz audit, would deny: %s [policy %s]", message, policy.source)
            return None
        log.info("authz denied: %s [policy %s]", message, policy.source)
        return message

    def _refuse(self, method: str, context: Any) -> Refusal | None:
        message = self.refusal(method, context.auth_context())
        return None if message is None else Refusal(grpc.StatusCode.PERMISSION_DENIED, message)
