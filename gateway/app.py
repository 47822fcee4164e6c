"""The gateway as an ASGI application: HTTP/JSON in, a gRPC call through the mesh channel out.

One request passes these steps, in this order (each may answer on its own):

1. request id: ``X-Request-Id`` kept, or created; it goes to the backend and back; and the
   trace: the caller's ``traceparent`` continued, or a new trace, current for the backend call
   and in every answer's ``traceparent`` (gateway/tracing.py);
2. operations: ``/healthz``, ``/readyz`` (GET, always open), ``/metrics``, ``/openapi.json``
   (GET: open, behind the gate, or only on the ops listener, by ``GatewayConfig.ops``);
3. CORS: a preflight is answered here; other answers carry the CORS headers;
4. rate limit per client address: 429 with ``Retry-After``;
5. route: 404, or 405 with ``Allow``; client and bidi streaming methods answer 501;
6. the gate: ``Authorization`` sent twice is a 400 (public routes too); a bearer JWT unless
   the route is public (its contract says ``public: true``, or ``--public`` names it), 401
   with ``WWW-Authenticate``; then every scope the method's contract asks for
   (``(hms.api.v1.access)``, gateway/access.py), 403 naming the missing ones;
7. body (413 over the limit) and transcoding into the request message (400 naming the field);
8. the call, through the mesh channel (discovery, mTLS, deadline, retries, breakers): the
   deadline from ``Grpc-Timeout`` or the configured default; metadata from the headers, plus
   the verified identity;
9. the answer: JSON (or an ``HttpBody``'s bytes), the response metadata as ``Grpc-Metadata-*``
   and ``Grpc-Trailer-*`` headers; a server stream as NDJSON or SSE. A gRPC error becomes
   grpc-gateway's HTTP status and a ``google.rpc.Status`` body with the backend's details; a
   message that names addresses or is grpc core's text is replaced by the gateway's words
   (gateway/upstream.py) and logged with the request id. A failure that answers 5xx is logged
   (warning) with the request id, the method and the original message.

The ops listener (gateway/serve.py, ``--ops-port``) is served by :meth:`Gateway.ops`: the four
operations endpoints and nothing else. Limits on connections, request heads, timeouts and
requests in flight are the connection's business (gateway/protocol.py), before this app.

An exception nobody expected (grpc.aio's CancelledError from a closed channel included) never
reaches uvicorn: it answers 500 as a google.rpc.Status naming the request id, is logged once
with its traceback and counted (``gateway_unexpected_errors_total``).

With svc.trace records on (``records``, mesh.tracerecords), every routed request of a sampled
trace is one SIDE_GATEWAY record: the gateway's span, the HTTP method, route template and
status, the gRPC code (the backend's, or the gateway's own refusal's) and the instance the call
went to (none when the gateway answered itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hms_gateway import streaming
from hms_gateway.access import Access
from hms_gateway.asgi import (
    ClientGone,
    Receive,
    Request,
    Responder,
    Scope,
    Send,
    json_bytes,
    read_body,
)
from hms_gateway.auth import (
    IDENTITY_KEYS,
    JwtVerifier,
    bearer_challenge,
    identity_metadata,
    require_scopes,
)
from hms_gateway.config import GatewayConfig
from hms_gateway.endpoint import Endpoint
from hms_gateway.errors import GatewayError, http_status, status_body
from hms_gateway.headers import (
    from_metadata,
    is_printable_ascii,
    parse_grpc_timeout,
    single_header,
    success_status,
    to_metadata,
)
from hms_gateway.jsonpb import JsonOptions, pool_of
from hms_gateway.openapi import build_openapi
from hms_gateway.query import parse_query
from hms_gateway.ratelimit import RateLimiter
from hms_gateway.router import Match, MethodNotAllowed
from hms_gateway.routes import RouteTable
from hms_gateway.template.match import BadPath
from hms_gateway.tracing import NO_TRACING, RequestTrace, Tracing
from hms_gateway.transcode import HTTP_BODY, render_response
from hms_gateway.upstream import public_message, replacement
from mesh.aio import cancel_and_wait, cancelled_by_caller
from mesh.client.call import CallKind
from mesh.client.channel import MeshChannel
from mesh.client.rpc import MeshCall
from mesh.client.traffic import VERSION_METADATA
from mesh.tracecontext import from_carrier
from mesh.tracerecords import SIDE_GATEWAY, TraceEmitter

__all__ = ["Gateway", "GatewayMetrics"]

Operation = Callable[[Responder], Awaitable[None]]

log = logging.getLogger(__name__)

_JSON = "application/json"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class GatewayMetrics:
    """Requests by route and HTTP status, and their latency, for ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered by the gateway",
            ["service", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "Time from request to the end of the answer",
            ["service", "method"],
            registry=registry,
        )
        self.unexpected = Counter(
            "gateway_unexpected_errors",
            "Requests that failed with an exception the gateway did not expect (logged)",
            registry=registry,
        )
        # labels() hashes and locks on every call; a route's children are looked up once.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, service: str, method: str, status: int, seconds: float) -> None:
        key = (service, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(service, method, str(status)),
                self.latency.labels(service, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class Gateway:
    """The ASGI application. Serve it with uvicorn (see gateway/serve.py)."""

    def __init__(
        self,
        config: GatewayConfig,
        table: RouteTable,
        channel: MeshChannel,
        *,
        metrics: GatewayMetrics | None = None,
        ready: Callable[[], bool] = lambda: True,
        verifier: JwtVerifier | None = None,
        limiter: RateLimiter | None = None,
        tracing: Tracing = NO_TRACING,
        records: TraceEmitter | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.channel = channel
        self.metrics = metrics or GatewayMetrics(CollectorRegistry())
        self.ready = ready
        self.verifier = verifier or (JwtVerifier(config.jwt) if config.jwt else None)
        self.limiter = limiter or (RateLimiter(config.rate_limit) if config.rate_limit else None)
        self.tracing = tracing
        self.records = records
        self._openapi: tuple[int, bytes] = (-1, b"")
        probes: dict[str, Operation] = {"/healthz": self._healthz, "/readyz": self._readyz}
        documents: dict[str, Operation] = {
            "/metrics": self._metrics,
            "/openapi.json": self._openapi_json,
            "/routes": self._routes,
        }
        #: What the ops listener serves: everything operations.
        self._ops_listener = {**probes, **documents}
        #: What the public listener serves, by ``config.ops``: probes are always open.
        self._ops = {**probes, **documents} if config.ops == "open" else dict(probes)
        #: ``config.ops == "gate"``: served on the public listener to a verified token only.
        self._gated_ops = documents if config.ops == "gate" else {}
        if self._gated_ops and self.verifier is None:
            raise ValueError("ops 'gate' needs the gate: configure JWT verification")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def ops(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ops listener's ASGI app: the operations endpoints (GET), and 404 for the rest."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        request = Request(scope, receive)
        responder = Responder(send, [(b"x-request-id", request.request_id.encode("latin-1"))])
        operation = self._ops_listener.get(request.path)
        try:
            if operation is None:
                raise GatewayError.no_route(request.method, request.path)
            if request.method != "GET":
                raise GatewayError.method_not_allowed(request.method, request.path, ["GET"])
            await operation(responder)
        except GatewayError as error:
            await responder.error(error, self.config.json)
        except Exception:
            await self._unexpected(request, responder)

    # -- the pipeline -----------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        # Every answer, error or not, names the request and its trace (gateway/tracing.py).
        request_trace = self.tracing.begin(request.method, request.path, request.headers)
        common = [
            (b"x-request-id", request.request_id.encode("latin-1")),
            (b"traceparent", request_trace.traceparent.encode("ascii")),
        ]
        responder = Responder(send, common)
        endpoint: Endpoint | None = None
        call: MeshCall | None = None
        refused: grpc.StatusCode | None = None  # the gateway's own answer's code
        try:
            cors = self.config.cors
            if cors is not None:
                origin = request.header("origin")
                if request.method == "OPTIONS" and origin is not None:
                    wanted = request.header("access-control-request-method")
                    if wanted is not None:
                        await self._preflight(request, responder, origin, wanted)
                        return
                common.extend(
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in cors.simple_headers(origin)
                )
            operation = self._operation(request)
            if operation is not None:
                await operation(responder)
                return
            if self.limiter is not None:
                wait = self.limiter.acquire(request.client or "unknown")
                if wait is not None:
                    raise GatewayError.rate_limited(wait)
            endpoint, bindings = self._route(request)
            with request_trace.current(str(endpoint.mapping.template)):
                call = await self._serve(request, responder, endpoint, bindings)
        except GatewayError as error:
            refused = error.code
            await responder.error(error, self.config.json)
        except ClientGone:
            refused = grpc.StatusCode.CANCELLED
            responder.status = 499
        except asyncio.CancelledError:
            if cancelled_by_caller():
                refused = grpc.StatusCode.CANCELLED
                raise  # the server is cancelling this request (shutdown): not ours to answer
            refused = grpc.StatusCode.INTERNAL
            await self._unexpected(request, responder)  # e.g. grpc.aio's, from a closed channel
        except Exception:
            refused = grpc.StatusCode.INTERNAL
            await self._unexpected(request, responder)
        finally:
            self._finish(
                request,
                request_trace,
                endpoint=endpoint,
                call=call,
                refused=refused,
                status=responder.status,
                elapsed=time.perf_counter() - started,
            )

    def _finish(
        self,
        request: Request,
        request_trace: RequestTrace,
        *,
        endpoint: Endpoint | None,
        call: MeshCall | None,
        refused: grpc.StatusCode | None,
        status: int,
        elapsed: float,
    ) -> None:
        """A request answered with `status` (0: nothing was sent): counted, its span ended,
        and, routed and sampled, recorded on svc.trace."""
        service, method = ("", "") if endpoint is None else (endpoint.service, endpoint.method.name)
        self.metrics.observe(service, method, status, elapsed)
        request_trace.end(status)
        if self.records is None or endpoint is None:
            return
        span = request_trace.span.get_span_context()
        if not self.records.sampled(span.trace_id):
            return
        caller = from_carrier(request.headers)
        instance, address = call.instance if call is not None else ("", "")
        if refused is not None:
            code = refused.value[0]
        elif call is not None and call.error is not None:
            code = call.error.code().value[0]
        else:
            code = 0
        duration = int(elapsed * 1e9)
        self.records.call(
            SIDE_GATEWAY, span.trace_id, span.span_id, caller.span_id if caller else 0,
            self.records.identity, instance, address, endpoint.service, endpoint.method.name,
            code, time.time_ns() - duration, duration, 0, False, request.method,
            str(endpoint.mapping.template), status,
        )  # fmt: skip

    async def _unexpected(self, request: Request, responder: Responder) -> None:
        """Nothing reaches uvicorn: logged once with its traceback, counted, answered as a
        google.rpc.Status naming the request id (or, once an answer started, ended)."""
        log.exception("request %s failed unexpectedly", request.request_id)
        self.metrics.unexpected.inc()
        try:
            if responder.status == 0:
                await responder.error(GatewayError.internal(request.request_id), self.config.json)
            else:
                await responder.body(b"")
        except Exception as exc:  # the client is gone too: nothing more to tell anyone
            log.debug("request %s: could not answer: %s", request.request_id, exc)

    def _operation(self, request: Request) -> Operation | None:
        """The operations endpoint a GET asks for, if this listener serves it to this caller
        (behind the gate: 401 without a valid token)."""
        if request.method != "GET":
            return None
        operation = self._ops.get(request.path)
        if operation is None and request.path in self._gated_ops:
            assert self.verifier is not None  # checked in __init__
            self.verifier.verify(single_header(request.headers, "authorization"))
            operation = self._gated_ops[request.path]
        return operation

    def _route(self, request: Request) -> tuple[Endpoint, Any]:
        try:
            found = self.table.resolve(request.method, request.path)
        except BadPath as exc:
            raise GatewayError(400, grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if isinstance(found, Match):
            return found.route.payload, found.bindings
        if isinstance(found, MethodNotAllowed):
            raise GatewayError.method_not_allowed(request.method, request.path, found.allow)
        raise GatewayError.no_route(request.method, request.path)

    async def _serve(
        self, request: Request, responder: Responder, endpoint: Endpoint, bindings: Any
    ) -> MeshCall:
        """Answer a routed request; the call it made (GatewayError if it made none)."""
        if endpoint.kind.request_streaming:
            shape = "bidi" if endpoint.kind.response_streaming else "client"
            raise GatewayError(
                501,
                grpc.StatusCode.UNIMPLEMENTED,
                f"{endpoint.path} is a {shape}-streaming method; the REST gateway serves only "
                "unary and server-streaming methods",
            )
        # Two Authorization headers: which one the gate verified must not be a question (and
        # the backend would get both), public route or not.
        authorization = single_header(request.headers, "authorization")
        identity = None
        access = self.access(endpoint)
        if self.verifier is not None and not access.public:
            # Before anything else is read: a caller without a valid token, or without the
            # method's scopes, learns nothing more.
            identity = self.verifier.verify(authorization)
            require_scopes(identity, access, endpoint.path)
        metadata = to_metadata(
            request.headers, client_ip=request.client, host=request.host, reserved=IDENTITY_KEYS
        )
        if self.config.version_routes and not any(k == VERSION_METADATA for k, _ in metadata):
            pinned = self.config.version_for(request.path)
            if pinned is not None:  # the route's prefix names the versions (/v2/ -> >=2)
                metadata.append((VERSION_METADATA, pinned))
        if identity is not None:
            metadata.extend(identity_metadata(identity))
        body = await read_body(request, self.config.body_limit)
        query = parse_query(request.query)
        message = endpoint.mapping.build_request(
            endpoint.request_class,
            bindings,
            query,
            body,
            options=self.config.json,
            content_type=request.header("content-type") or "",
        )
        call = self.channel.call(
            endpoint.path,
            message,
            kind=endpoint.kind,
            serializer=endpoint.request_class.SerializeToString,
            deserializer=endpoint.response_class.FromString,
            idempotency=endpoint.idempotency,
            timeout=self._timeout(request),
            metadata=metadata,
        )
        if endpoint.kind is CallKind.UNARY_STREAM:
            await self._stream(request, responder, endpoint, call)
        else:
            await self._unary(request, responder, endpoint, call)
        return call

    def access(self, endpoint: Endpoint) -> Access:
        """Who may call `endpoint`: its contract's rule, made public by ``--public``."""
        if self.config.is_public(endpoint.service, endpoint.method.name):
            return Access(public=True)
        return endpoint.access

    def _timeout(self, request: Request) -> float:
        header = request.header("grpc-timeout")
        if header is None:
            return self.config.default_timeout
        return min(parse_grpc_timeout(header), self.config.max_timeout)

    async def _unary(
        self, request: Request, responder: Responder, endpoint: Endpoint, call: MeshCall
    ) -> None:
        try:
            response = await call
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            await self._rpc_error(request, responder, exc, endpoint)
            return
        data, content_type = render_response(
            response, response_body=endpoint.mapping.response_body, options=self.config.json
        )
        _check_content_type(content_type, endpoint)
        status = success_status(initial) or 200
        await responder.whole(status, data, content_type, from_metadata(initial, trailing))

    async def _stream(
        self, request: Request, responder: Responder, endpoint: Endpoint, rpc: MeshCall
    ) -> None:
        watcher = asyncio.create_task(_until_disconnect(request.receive))
        watcher.add_done_callback(lambda _: rpc.cancel())
        try:
            try:
                # The channel may refuse before sending (no instance, deadline too short).
                first = await rpc.read()
                initial = await rpc.initial_metadata()
            except grpc.aio.AioRpcError as exc:
                # Nothing sent yet: a plain error answer.
                await self._rpc_error(request, responder, exc, endpoint)
                return
            raw = endpoint.response_class.DESCRIPTOR.full_name == HTTP_BODY
            sse = not raw and streaming.wants_sse(request.header("accept"))
            frame, error_frame = (
                (streaming.sse_frame, streaming.sse_error)
                if sse
                else (streaming.ndjson_frame, streaming.ndjson_error)
            )
            if raw:
                kind = first.content_type if first is not grpc.aio.EOF else None
                content_type = kind or "application/octet-stream"
                _check_content_type(content_type, endpoint)
            else:
                content_type = streaming.SSE if sse else streaming.NDJSON
            headers = from_metadata(initial, None)
            if sse:
                headers.append(("cache-control", "no-cache"))
            await responder.start(200, content_type, headers)
            message = first
            try:
                while message is not grpc.aio.EOF:
                    if raw:
                        await responder.body(bytes(message.data), more=True)
                    else:
                        data, _ = render_response(message, options=self.config.json)
                        await responder.body(frame(data), more=True)
                    message = await rpc.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.CANCELLED or not watcher.done():
                    status = _status_json(exc, endpoint, request.request_id, self.config.json)
                    await responder.body(error_frame(json_bytes(status)), more=True)
            await responder.body(b"")
        except asyncio.CancelledError:
            if not watcher.done() or cancelled_by_caller():
                raise
            # The client left and the watcher cancelled the call: nobody to answer.
            responder.status = responder.status or 499
        finally:
            await cancel_and_wait(watcher)

    async def _rpc_error(
        self,
        request: Request,
        responder: Responder,
        exc: grpc.aio.AioRpcError,
        endpoint: Endpoint,
    ) -> None:
        headers = from_metadata(exc.initial_metadata(), exc.trailing_metadata())
        status_json = _status_json(exc, endpoint, request.request_id, self.config.json)
        if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
            # grpc-gateway sets WWW-Authenticate on UNAUTHENTICATED (DefaultHTTPErrorHandler,
            # runtime/errors.go), to the bare message; here the gate's RFC 6750 challenge,
            # carrying the message when the request sent credentials.
            sent = request.header("authorization") is not None
            challenge = bearer_challenge(status_json["message"] if sent else None)
            headers.append(("www-authenticate", challenge))
        body = json_bytes(status_json)
        status = http_status(exc.code(), _backend_details(exc))
        await responder.whole(status, body, _JSON, headers)

    async def _preflight(
        self, request: Request, responder: Responder, origin: str, wanted: str
    ) -> None:
        assert self.config.cors is not None
        headers = self.config.cors.preflight(
            origin, wanted, request.header("access-control-request-headers")
        )
        if headers is None:
            raise GatewayError(
                403,
                grpc.StatusCode.PERMISSION_DENIED,
                f"CORS preflight refused for origin {origin!r} and method {wanted!r}",
            )
        await responder.whole(204, b"", None, headers)

    # -- operations -------------------------------------------------------------------------

    async def _healthz(self, responder: Responder) -> None:
        await responder.whole(200, b'{"status":"ok"}', _JSON)

    async def _readyz(self, responder: Responder) -> None:
        if self.ready():
            body = json_bytes({"status": "ready", "services": sorted(self.table.services())})
            await responder.whole(200, body, _JSON)
        else:
            await responder.whole(503, b'{"status":"starting"}', _JSON)

    async def _metrics(self, responder: Responder) -> None:
        await responder.whole(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    async def _routes(self, responder: Responder) -> None:
        """The routes served, by service, and those refused (route ownership)."""
        body = {
            "services": {
                service: [
                    {"method": e.mapping.http_method, "template": str(e.mapping.template),
                     "rpc": e.path}
                    for e in endpoints
                ]
                for service, endpoints in sorted(self.table.services().items())
            },
            "refused": [
                {**dataclasses.asdict(refusal), "why": refusal.describe()}
                for refusal in self.table.refusals()
            ],
        }  # fmt: skip
        await responder.whole(200, json_bytes(body), _JSON)

    async def _openapi_json(self, responder: Responder) -> None:
        version, document = self._openapi
        if version != self.table.version:
            document = json_bytes(
                build_openapi(
                    self.table.endpoints(),
                    options=self.config.json,
                    access=self.access if self.verifier is not None else None,
                )
            )
            self._openapi = (self.table.version, document)
        await responder.whole(200, document, _JSON)


def _check_content_type(content_type: str, endpoint: Endpoint) -> None:
    """A backend's HttpBody content type goes out as a header: refuse one that cannot."""
    if not is_printable_ascii(content_type):
        raise GatewayError(
            502,
            grpc.StatusCode.INTERNAL,
            f"{endpoint.path} answered with a content type that is not a valid HTTP header "
            f"value: {content_type[:80]!r}",
        )


def _status_json(
    exc: grpc.aio.AioRpcError, endpoint: Endpoint, request_id: str, options: JsonOptions
) -> dict[str, Any]:
    """The google.rpc.Status of a failed call, with the details the backend attached, in
    order, each written with its fields by `options` and its type looked up among the
    service's (errors.status_body).

    The message is the backend's, unless it names addresses or is grpc core's text (then the
    gateway's words replace it: gateway/upstream.py). An UNAVAILABLE message that does not
    name the service is prefixed with it: the caller of a REST API should not have to guess
    which backend is down. A failure answered with a 5xx, or whose message is withheld, is
    logged with the request id and the original message.
    """
    details = _backend_details(exc)
    code = exc.code()
    original = exc.details() or ""
    service = endpoint.service
    shown = public_message(original)
    if shown:
        message = original
        if code is grpc.StatusCode.UNAVAILABLE and service not in message:
            message = f"{service} is unavailable: {message}"
    else:
        message = replacement(code, service)
    if not shown or http_status(code) >= 500:
        log.warning("request %s: %s failed: %s: %s", request_id, endpoint.path, code.name, original)
    pool = pool_of(endpoint.response_class)
    return status_body(code, message, details, options=options, pool=pool)


def _backend_details(exc: grpc.aio.AioRpcError) -> list[Any]:
    """The google.rpc details (Anys) a failed call carries; none if they do not decode."""
    for key, value in exc.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            with contextlib.suppress(Exception):  # undecodable details: keep code and message
                return list(status_pb2.Status.FromString(value).details)
    return []


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
