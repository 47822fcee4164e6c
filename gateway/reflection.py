"""Learn a gRPC service's descriptors from a running instance by server reflection.

The gateway fronts services it has no generated code for, so it asks one of their instances
(through the mesh channel: discovery, mTLS and deadlines as for any call) for the file that
defines the service and every file that one imports, and builds them into a private
``DescriptorPool``: one pool per service, so two services that ship different versions of a
shared file never clash. A type that none of those files defines is looked up, last, among the
well-known types and ``google.rpc``'s (status, error details, codes), so that an Any holding
one resolves even when the service's files do not import it: a backend packs an ErrorInfo or a
Timestamp from whatever it links, as grpc-gateway resolves them from every type linked into
its binary (protojson's default resolver, ``protoregistry.GlobalTypes``).

grpcio serves ``grpc.reflection.v1alpha``; servers in other languages may serve only
``grpc.reflection.v1``. The two protocols have the same messages, so v1alpha is asked first and
v1 when the server answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2

from mesh.client.call import CallKind
from mesh.client.channel import MeshChannel
from mesh.resilience.retry import Idempotency

__all__ = [
    "Opener",
    "ReflectionError",
    "build_pool",
    "fetch_service",
    "via_channel",
]

_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
# A file imports a bounded number of others; a server that keeps naming new ones is broken.
_MAX_FILES = 500


class ReflectionError(Exception):
    """The service's descriptors could not be learnt; the message says which and why."""


# Opens a ServerReflectionInfo stream: (method path, outgoing requests) -> the call.
Opener = Callable[[str, AsyncIterator[reflection_pb2.ServerReflectionRequest]], Awaitable[Any]]


def via_channel(
    channel: MeshChannel, service: str, timeout: float, version: str | None = None
) -> Opener:
    """Reflection through the mesh channel: a ready instance of `service` answers (one that
    registered `version`, when given: during a rolling upgrade, any instance could still be an
    old one, and its descriptors would be taken for the new version's)."""

    async def open_stream(
        method: str, requests: AsyncIterator[reflection_pb2.ServerReflectionRequest]
    ) -> Any:
        return channel.call(
            method,
            requests,
            kind=CallKind.STREAM_STREAM,
            serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            idempotency=Idempotency.NO_SIDE_EFFECTS,
            timeout=timeout,
            service=service,
            version=version,
        )

    return open_stream


async def fetch_service(open_stream: Opener, service: str) -> ServiceDescriptor:
    """The descriptor of `service`, asked over streams from `open_stream`.

    Raises ``ReflectionError`` (reflection not served, the service unknown to its own server,
    a broken file set) or ``grpc.aio.AioRpcError`` (no instance reachable).
    """
    last: grpc.aio.AioRpcError | None = None
    for method in _METHODS:
        try:
            files = await _fetch_files(open_stream, method, service)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            last = exc
            continue
        pool = build_pool(files)
        try:
            return pool.FindServiceByName(service)
        except KeyError:
            raise ReflectionError(f"{service}: reflection returned files without it") from None
    assert last is not None  # _METHODS is not empty, and each one tried failed UNIMPLEMENTED
    raise ReflectionError(f"{service}: server reflection is not served ({last.details()})")


async def _fetch_files(
    open_stream: Opener, method: str, service: str
) -> list[descriptor_pb2.FileDescriptorProto]:
    requests: asyncio.Queue[reflection_pb2.ServerReflectionRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        while (request := await requests.get()) is not None:
            yield request

    rpc = await open_stream(method, outgoing())
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    try:
        requests.put_nowait(reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
        while True:
            reply = await rpc.read()
            if reply is grpc.aio.EOF:
                raise ReflectionError(f"{service}: reflection stream ended early")
            if reply.HasField("error_response"):
                error = reply.error_response
                raise ReflectionError(
                    f"{service}: reflection answered {error.error_code} {error.error_message!r}"
                )
            for data in reply.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(data)
                files.setdefault(proto.name, proto)
            missing = _missing(files.values(), files)
            if not missing:
                return list(files.values())
            if len(files) > _MAX_FILES:
                raise ReflectionError(f"{service}: more than {_MAX_FILES} files imported")
            # One at a time: each answer may bring several of the missing files at once.
            requests.put_nowait(reflection_pb2.ServerReflectionRequest(file_by_filename=missing[0]))
    finally:
        requests.put_nowait(None)
        rpc.cancel()


def _missing(
    protos: Iterable[descriptor_pb2.FileDescriptorProto], have: Container[str]
) -> list[str]:
    return sorted({dep for proto in protos for dep in proto.dependency if dep not in have})


# The files a private pool falls back on, with everything they import.
_KNOWN_FILES: dict[str, FileDescriptor] = {
    module.DESCRIPTOR.name: module.DESCRIPTOR
    for module in (
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
        code_pb2,
        error_details_pb2,
        status_pb2,
    )
}


@functools.cache
def _known_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    file = _KNOWN_FILES.get(name)
    if file is None:
        raise KeyError(name)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


class _Files:
    """A descriptor database of the files received, then the well-known and google.rpc ones:
    what a private pool reads its types from (DescriptorPool's ``descriptor_db``), loading a
    fallback file only when a type its own files lack is asked for."""

    def __init__(self, files: Mapping[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._files = files
        # Top-level names -> the first file defining them (a second one is the pool's to
        # refuse when it loads that file).
        self._symbols: dict[str, str] = {}
        for proto in files.values():
            prefix = f"{proto.package}." if proto.package else ""
            for kind in (proto.message_type, proto.enum_type, proto.service, proto.extension):
                for element in kind:
                    self._symbols.setdefault(prefix + element.name, proto.name)

    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:
        own = self._files.get(name)
        return own if own is not None else _known_file(name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:
        # A nested name (a message's nested type, field or enum value) is found by its
        # top-level enclosing name.
        name = symbol
        while name:
            if name in self._symbols:
                return self._files[self._symbols[name]]
            name = name.rpartition(".")[0]
        return _known_file(descriptor_pool.Default().FindFileContainingSymbol(symbol).name)

    def FindFileContainingExtension(self, extendee: str, number: int) -> None:
        raise KeyError(f"{extendee} ({number})")

    def FindAllExtensionNumbers(self, extendee: str) -> list[int]:
        return []


def build_pool(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """A private pool holding `files`, each loaded once its imports are, falling back on the
    well-known and google.rpc types for a name they do not define (module docstring).

    Raises ``ReflectionError`` for an import cycle, a missing import or a file the pool
    refuses (the message names the file).
    """
    by_name = {proto.name: proto for proto in files}
    pool = descriptor_pool.DescriptorPool(descriptor_db=_Files(by_name))
    added: set[str] = set()
    visiting: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        if name in visiting:
            raise ReflectionError(f"import cycle through {name}")
        proto = by_name.get(name)
        if proto is None:
            if name in _KNOWN_FILES:
                return  # the pool loads the process's own copy when it is first needed
            raise ReflectionError(f"file {name} is imported but was not received")
        visiting.add(name)
        for dependency in proto.dependency:
            add(dependency)
        visiting.discard(name)
        try:
            pool.FindFileByName(name)  # loads it from the database, and checks it
        except (TypeError, ValueError, KeyError) as exc:
            raise ReflectionError(f"file {name} is not a valid descriptor: {exc}") from None
        added.add(name)

    for name in sorted(by_name):
        add(name)
    return pool
