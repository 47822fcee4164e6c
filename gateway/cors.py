"""CORS for the gateway: which browser origins may call it, answered per the Fetch standard.

A browser calling the gateway from another origin first sends a preflight (``OPTIONS`` with
``Origin`` and ``Access-Control-Request-Method``) for anything beyond a simple request; the
gateway answers it here, without routing, so that a policy applies the same to every route.
:meth:`CorsPolicy.preflight` returns the headers of a successful answer, or None when the
origin, method or a requested header is not allowed: the caller then answers 403 with no CORS
headers, and the browser refuses the actual request. :meth:`CorsPolicy.simple_headers` are the
headers added to every normal response.

``allow_origins`` are exact serialized origins (``https://app.example:8443``) or ``"*"``
alone. ``"*"`` with ``allow_credentials`` is refused: the Fetch standard does not let a
browser send cookies or ``Authorization`` to a wildcard, so the policy could never work as
written. With a list of origins, or with credentials, the request's origin is echoed and the
response says ``Vary: Origin``, so that caches keep one answer per origin. ``"null"`` (what
sandboxed frames and ``file:`` pages send) cannot be listed: any page can produce it.

Header names compare case-insensitively; methods, as HTTP says, case-sensitively.
``allow_headers=("*",)`` allows any requested header (answered by echoing the request's list,
which, unlike a literal ``*``, also works with credentials).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CorsPolicy"]

_WILDCARD = "*"
# A serialized origin: scheme "://" host, optional port; no path, query, fragment or userinfo.
# The host is ASCII (IDNs in punycode), as browsers serialize it; no wildcards.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")
# RFC 9110 token: methods and header names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _tokens(name: str, values: object, *, wildcard: bool) -> None:
    if not isinstance(values, tuple):
        raise ValueError(f"{name} must be a tuple of strings, not {values!r}")
    for value in values:
        if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
            raise ValueError(f"{name}: {value!r} is not an HTTP token")
        if value == _WILDCARD and (not wildcard or len(values) > 1):
            raise ValueError(f'{name}: "*" is only allowed alone, in allow_headers')


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may call, with which methods and headers; see the module docstring."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 600

    def __post_init__(self) -> None:
        if not isinstance(self.allow_origins, tuple) or not self.allow_origins:
            raise ValueError("allow_origins must be a non-empty tuple of origins or ('*',)")
        for origin in self.allow_origins:
            if origin == _WILDCARD:
                if len(self.allow_origins) > 1:
                    raise ValueError('allow_origins: "*" must be alone')
            elif (
                not isinstance(origin, str)
                or _ORIGIN.fullmatch(origin) is None
                or origin != origin.lower()
            ):
                raise ValueError(
                    f"allow_origins: {origin!r} is not a lower-case serialized origin "
                    "such as https://app.example or https://app.example:8443 "
                    "(no path, no trailing slash; 'null' is not allowed)"
                )
        if not self.allow_methods:
            raise ValueError("allow_methods must not be empty")
        _tokens("allow_methods", self.allow_methods, wildcard=False)
        _tokens("allow_headers", self.allow_headers, wildcard=True)
        _tokens("expose_headers", self.expose_headers, wildcard=False)
        if not isinstance(self.allow_credentials, bool):
            raise ValueError(f"allow_credentials must be a bool, not {self.allow_credentials!r}")
        if self.allow_credentials and self.allow_origins == (_WILDCARD,):
            raise ValueError(
                'allow_origins "*" cannot be used with allow_credentials: the Fetch standard '
                "refuses credentialed responses to a wildcard origin; list the origins"
            )
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0:
            raise ValueError(f"max_age must be an integer number of seconds >= 0: {self.max_age}")

    @property
    def _any_origin(self) -> bool:
        return self.allow_origins == (_WILDCARD,)

    @property
    def _echoes_origin(self) -> bool:
        # "*" with credentials is refused, so credentials always mean a list, echoed.
        return not self._any_origin

    def allows_origin(self, origin: str | None) -> bool:
        """Whether ``origin`` (an ``Origin`` header's value) may call."""
        if origin is None:
            return False
        if self._any_origin:
            return True
        # Browsers send scheme and host in lower case; be lenient about other clients.
        return origin.lower() in self.allow_origins

    @staticmethod
    def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
        """Whether a request is a CORS preflight: OPTIONS with Origin and A-C-Request-Method."""
        if method != "OPTIONS":
            return False
        names = {name.lower() for name in headers}
        return "origin" in names and "access-control-request-method" in names

    def preflight(
        self, origin: str | None, request_method: str | None, request_headers: str | None
    ) -> list[tuple[str, str]] | None:
        """The headers answering a preflight, or None if it is refused (answer 403, no CORS).

        ``request_headers`` is the ``Access-Control-Request-Headers`` value (comma-separated),
        or None when absent.
        """
        if not self.allows_origin(origin) or request_method not in self.allow_methods:
            return None
        requested = [
            name.strip().lower() for name in (request_headers or "").split(",") if name.strip()
        ]
        if any(_TOKEN.fullmatch(name) is None for name in requested):
            return None
        if self.allow_headers == (_WILDCARD,):
            allowed_headers = requested
        else:
            allowed = {name.lower() for name in self.allow_headers}
            if any(name not in allowed for name in requested):
                return None
            allowed_headers = [name.lower() for name in self.allow_headers]
        assert origin is not None  # allows_origin refuses None
        headers = self._origin_headers(origin)
        headers.append(("access-control-allow-methods", ", ".join(self.allow_methods)))
        if allowed_headers:
            headers.append(("access-control-allow-headers", ", ".join(allowed_headers)))
        headers.append(("access-control-max-age", str(self.max_age)))
        # The answer depends on all three request headers: a cache must not mix them up.
        headers.append(
            ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        )
        return headers

    def simple_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers for a normal (non-preflight) response to a request from ``origin``.

        An origin that is not allowed gets no CORS headers (the browser then hides the
        response from the page); ``Vary: Origin`` is there whenever the answer depends on it.
        """
        headers: list[tuple[str, str]] = []
        if self._any_origin:
            # The same answer for every origin (and for none): no Vary needed.
            headers = self._origin_headers(_WILDCARD)
        elif origin is not None and self.allows_origin(origin):
            headers = self._origin_headers(origin)
        if headers and self.expose_headers:
            headers.append(("access-control-expose-headers", ", ".join(self.expose_headers)))
        if self._echoes_origin:
            headers.append(("vary", "Origin"))
        return headers

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        headers = [
            ("access-control-allow-origin", origin if self._echoes_origin else _WILDCARD),
        ]
        if self.allow_credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return headers
