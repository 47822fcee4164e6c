"""gRPC handlers of hms.testing.v1.MirrorService, the REST gateway's conformance backend.

Every method answers with the request it received and the metadata it came with, so a test
sees exactly what the gateway made of an HTTP request. ``Shape`` and ``Stream`` also fail with
a chosen status code and google.rpc details (``fail_details``, then ``opaque_details`` packed as
given), send chosen response metadata and trailers, or choose the HTTP success status through
``x-http-code``; like Echo, it fails with arbitrary codes on purpose, so it uses
``context.abort``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from hms.testing.v1 import mirror_pb2, mirror_pb2_grpc
from mesh import InvalidArgument

__all__ = ["MirrorService"]

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_MAX_STREAM = 1_000
_SERVICE = "/hms.testing.v1.MirrorService/"


def _metadata_seen(context: Any) -> list[mirror_pb2.MetadataEntry]:
    entries = []
    for key, value in context.invocation_metadata() or ():
        text = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        entries.append(mirror_pb2.MetadataEntry(key=key, value=text))
    return entries


def _opaque(request: mirror_pb2.MirrorRequest) -> list[any_pb2.Any]:
    return [any_pb2.Any(type_url=o.type_url, value=o.value) for o in request.opaque_details]


async def _fail(request: mirror_pb2.MirrorRequest, context: Any) -> None:
    """Abort with the request's fail_code and fail_message, and its details as
    ``grpc-status-details-bin`` (the google.rpc.Status grpc-status-details carry)."""
    code = _status(request.fail_code)
    message = request.fail_message or "shaped"
    details = [*request.fail_details, *_opaque(request)]
    if not details:
        await context.abort(code, message)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    trailers = (("grpc-status-details-bin", status.SerializeToString()),)
    await context.abort(code, message, trailers)


def _status(number: int) -> grpc.StatusCode:
    code = _STATUS_BY_NUMBER.get(number)
    if code is None or code is grpc.StatusCode.OK:
        raise InvalidArgument.field("fail_code", f"{number} is not a gRPC error code (1..16)")
    return code


class MirrorService(mirror_pb2_grpc.MirrorServiceServicer):
    """Answers every call with what it received.

    Example::

        mirror_pb2_grpc.add_MirrorServiceServicer_to_server(MirrorService(), server)
    """

    @staticmethod
    def _mirror(
        method: str, request: mirror_pb2.MirrorRequest, context: Any
    ) -> mirror_pb2.MirrorResponse:
        return mirror_pb2.MirrorResponse(
            received=request, method=_SERVICE + method, metadata=_metadata_seen(context)
        )

    async def GetBook(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("GetBook", request, context)

    async def ListBooks(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("ListBooks", request, context)

    async def CreateBook(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("CreateBook", request, context)

    async def UpdateBook(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("UpdateBook", request, context)

    async def DeleteBook(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("DeleteBook", request, context)

    async def PublishBook(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("PublishBook", request, context)

    async def GetItem(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("GetItem", request, context)

    async def GetSpecialItem(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("GetSpecialItem", request, context)

    async def GetFile(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("GetFile", request, context)

    async def Lookup(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("Lookup", request, context)

    async def GetReceived(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        return self._mirror("GetReceived", request, context)

    async def Shape(self, request: Any, context: Any) -> mirror_pb2.MirrorResponse:
        if request.delay_ms > 0:
            await asyncio.sleep(request.delay_ms / 1000)
        initial = list(request.response_headers.items())
        if request.http_status:
            initial.append(("x-http-code", str(request.http_status)))
        if initial:
            await context.send_initial_metadata(initial)
        if request.response_trailers:
            context.set_trailing_metadata(list(request.response_trailers.items()))
        if request.fail_code:
            await _fail(request, context)
        reply = self._mirror("Shape", request, context)
        reply.attached.extend(_opaque(request))
        return reply

    async def Upload(
        self, request: mirror_pb2.UploadRequest, context: Any
    ) -> mirror_pb2.UploadResponse:
        data = bytes(request.file.data)
        return mirror_pb2.UploadResponse(
            name=request.name,
            content_type=request.file.content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    async def Download(self, request: Any, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(
            content_type=request.content_type or "text/plain; charset=utf-8",
            data=f"contents of {request.name}\n".encode(),
        )

    async def Stream(
        self, request: mirror_pb2.MirrorRequest, context: Any
    ) -> AsyncIterator[mirror_pb2.MirrorResponse]:
        if not 0 <= request.count <= _MAX_STREAM:
            raise InvalidArgument(f"count must be within 0..{_MAX_STREAM}, not {request.count}")
        for index in range(request.count):
            if request.fail_code and index == request.fail_after:
                await _fail(request, context)
            reply = self._mirror("Stream", request, context)
            reply.index = index
            yield reply
        if request.fail_code and request.fail_after >= request.count:
            await _fail(request, context)

    async def Gather(
        self, request_iterator: AsyncIterator[mirror_pb2.MirrorRequest], context: Any
    ) -> mirror_pb2.MirrorResponse:
        last = mirror_pb2.MirrorRequest()
        async for request in request_iterator:
            last = request
        return self._mirror("Gather", last, context)
