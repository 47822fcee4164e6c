"""Server interceptor that records each inbound call's deadline for the handler, so that the
calls it makes through a MeshChannel inherit what is left (see mesh.deadline). Sync handlers
are left alone: they run in a thread pool, outside the mesh's async client."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from mesh.deadline import inbound_scope
from mesh.server.wrap import Around, AroundInterceptor

__all__ = ["DeadlineInterceptor"]


class _Inbound:
    """Around one call: its deadline, for the handler (mesh.deadline.inbound_scope)."""

    __slots__ = ("_scope",)

    def __init__(self, context: Any) -> None:
        self._scope = inbound_scope(context.time_remaining())

    async def __aenter__(self) -> None:
        self._scope.__enter__()

    async def __aexit__(
        self, type_: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._scope.__exit__(type_, exc, tb)


_AROUND = Around(scope=_Inbound)


class DeadlineInterceptor(AroundInterceptor):
    def around(self, method: str) -> Around:
        return _AROUND
