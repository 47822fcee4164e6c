"""The mesh's error hierarchy: every expected error is bound to a gRPC status code.

    MeshError                      (base; .code is a grpc.StatusCode)
    ├── InvalidArgument            INVALID_ARGUMENT: a request field is wrong; names the field
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION
    ├── PermissionDenied           PERMISSION_DENIED
    ├── Unavailable                UNAVAILABLE: no instance, etcd unreachable, ...
    └── DeadlineExceeded           DEADLINE_EXCEEDED

Handlers raise these; the service host's error interceptor turns them into the call's status.
Anything else a handler raises is a bug: it is logged and answered as INTERNAL without leaking
its text to the caller.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
]


class MeshError(Exception):
    """An expected error with the gRPC status code it answers as."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    """A request field is missing or wrong.

    >>> raise InvalidArgument.field("applicant_id", "is required")
    Traceback (most recent call last):
    mesh.errors.InvalidArgument: applicant_id: is required
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def field(cls, name: str, problem: str) -> InvalidArgument:
        """An error that starts with the field's name, so callers know what to fix."""
        return cls(f"{name}: {problem}", field=name)


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
