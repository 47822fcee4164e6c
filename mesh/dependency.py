"""Calls to the services a handler depends on, their failures told in the caller's words.

A dependency that is down or too slow is UNAVAILABLE naming it (the caller may try again); an
answer the handler expects (say NOT_FOUND from documents) is raised as its `MeshError` for the
handler to judge; any other failure is the caller's own fault (a bad request it built, a
policy that refuses it): INTERNAL, naming the dependency and what it said.

    document = await ask("documents", documents.GetDocument(request, timeout=2),
                         expected=(NotFound,))
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from mesh.errors import Internal, MeshError, Unavailable

__all__ = ["ask"]

T = TypeVar("T")

#: Codes that mean the dependency could not answer in time, not that it refused the request.
_DOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


async def ask(
    dependency: str, call: Awaitable[T], *, expected: tuple[type[MeshError], ...] = ()
) -> T:
    """The answer of `call` to `dependency`; its failure as the module's doc says."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        error = MeshError.from_rpc(exc)
    if isinstance(error, expected):
        raise error
    if error.code in _DOWN:
        raise Unavailable(f"{dependency} is unavailable: {error.message}")
    raise Internal(f"{dependency} failed the call: {error.code.name}: {error.message}")
