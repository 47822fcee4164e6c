"""The gateway, from the console: its routes (its `/routes`, with each method's access rule
from its `/openapi.json`), and the API explorer's requests, sent with a development token
(tools/devjwt.py) and a new trace, so that the answer can be opened as a trace.

Only the gateway's own URL is ever asked: a path must be a path (``/...``), never a URL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from hms_tools.console.aggregate import trace_id_of

__all__ = ["EXPLORE_METHODS", "ExploreRequest", "GatewayClient", "GatewayUnavailable"]

EXPLORE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
#: The development token's subject: the gateway passes it on as x-hms-subject.
SUBJECT = "console"
#: An answer body larger than this is cut (the page shows a JSON document, not a download).
MAX_SHOWN = 256 * 1024


class GatewayUnavailable(Exception):
    """The gateway did not answer, or not as a gateway does; the message says which."""


class ExploreRequest:
    """A request the explorer sends, checked: ValueError names what is wrong."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ValueError('send a JSON object: {"method", "path", "body", "scopes"}')
        method = body.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in EXPLORE_METHODS:
            raise ValueError(f"method {method!r}: one of {', '.join(EXPLORE_METHODS)}")
        path = body.get("path")
        if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"path {path!r}: a path on the gateway, starting with one '/'")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
            raise ValueError(f"path {path!r}: no spaces or control characters (percent-encode)")
        scopes = body.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes: a list of strings")
        self.method = method.upper()
        self.path = path
        self.scopes: Sequence[str] = scopes
        self.body: Any = body.get("body")


class GatewayClient:
    def __init__(self, url: str | None, state_dir: Path, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/") if url else None
        self.state_dir = state_dir
        self.timeout = timeout

    def _require(self) -> str:
        if not self.url:
            raise GatewayUnavailable("this stack runs no gateway (stack.json names none)")
        return self.url

    def _token(self, scopes: Sequence[str]) -> str:
        from hms_tools.devjwt import mint_token

        return str(mint_token(self.state_dir, SUBJECT, scopes, ttl=300))

    async def _get_json(self, http: httpx.AsyncClient, path: str) -> Any:
        answer = await http.get(path)
        if answer.status_code == 401:  # ops documents behind the gate: any valid token
            try:
                token = self._token(())
            except FileNotFoundError as exc:
                raise GatewayUnavailable(f"{path} needs a token, and {exc}") from exc
            answer = await http.get(path, headers={"authorization": f"Bearer {token}"})
        if answer.status_code != 200:
            raise GatewayUnavailable(
                f"the gateway answered {path} with {answer.status_code}: {answer.text[:200]}"
            )
        try:
            return answer.json()
        except ValueError as exc:
            raise GatewayUnavailable(f"the gateway's {path} is not JSON") from exc

    async def routes(self) -> list[dict[str, Any]]:
        """`/api/routes`: every route with its backend and access rule."""
        url = self._require()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=self.timeout) as http:
                served = await self._get_json(http, "/routes")
                document = await self._get_json(http, "/openapi.json")
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway at {url} did not answer: {exc}") from exc
        return join_routes(served, document)

    async def explore(self, request: ExploreRequest) -> dict[str, Any]:
        """`/api/explore`: the gateway's answer to `request`, and the trace it ran in."""
        url = self._require()
        token = self._token(request.scopes)  # ValueError (a bad scope), FileNotFoundError
        trace_id = secrets.token_hex(16)
        headers = {
            "authorization": f"Bearer {token}",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "accept": "application/json",
        }
        content: bytes | None = None
        if request.body is not None and request.method not in ("GET", "HEAD"):
            # A string is sent as it is (to try what malformed JSON gets), anything else as JSON.
            text = request.body if isinstance(request.body, str) else json.dumps(request.body)
            content = text.encode()
            headers["content-type"] = "application/json"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=self.timeout) as http:
                answer = await http.request(
                    request.method, request.path, content=content, headers=headers
                )
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"the gateway at {url} did not answer: {exc}") from exc
        return {
            "status": answer.status_code,
            "headers": dict(answer.headers),
            "body": shown_body(answer),
            "trace_id": trace_id_of(answer.headers.get("traceparent", "")) or trace_id,
        }


def shown_body(answer: httpx.Response) -> Any:
    """The answer's body for the page: JSON as JSON, text as text, anything else described."""
    kind = answer.headers.get("content-type", "")
    data = answer.content
    if not data:
        return None
    if "json" in kind:
        try:
            return answer.json()
        except ValueError:
            pass
    if "json" in kind or kind.startswith("text/") or not kind:
        text = data[:MAX_SHOWN].decode(errors="replace")
        return text + (f"... ({len(data)} bytes)" if len(data) > MAX_SHOWN else "")
    return f"({len(data)} bytes of {kind})"


def join_routes(served: Any, document: Any) -> list[dict[str, Any]]:
    """The gateway's `/routes` rows, each with its method's access rule from its OpenAPI
    document (``security: []`` public; no security at all: a gateway without the gate)."""
    access: dict[str, tuple[list[str], bool]] = {}
    for operations in (document.get("paths") or {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "summary" not in operation:
                continue
            security = operation.get("security")
            if not security:  # [] public, None no gate: either way no token needed
                access[operation["summary"]] = ([], True)
            else:
                scopes = sorted(
                    {s for requirement in security for v in requirement.values() for s in v}
                )
                access[operation["summary"]] = (scopes, False)
    rows = []
    for service, endpoints in sorted((served.get("services") or {}).items()):
        for endpoint in endpoints:
            rpc = str(endpoint.get("rpc", ""))
            method = rpc.rsplit("/", 1)[-1]
            scopes, public = access.get(f"{service}.{method}", ([], False))
            rows.append(
                {
                    "http_method": endpoint.get("method", ""),
                    "template": endpoint.get("template", ""),
                    "service": service,
                    "method": method,
                    "scopes": scopes,
                    "public": public,
                }
            )
    return rows
